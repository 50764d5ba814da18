//! The adapters that connect the layers inside `pmsd`: `ReplicatedMailboxes` implements the
//! edge's `MailboxService` over `pms-replication`, and `AdminApi` implements the admin gRPC
//! service's `AdminBackend` over the same groups.
//!
//! Invariant: a user's data key is generated and wrapped here, before `ProvisionUser` is
//! proposed; only the wrapped form enters the Raft log.
//! Invariant: after `RemoveUser` commits, the unwrapped key is evicted from the edge's keyring.

use std::sync::Arc;

use pms_crypto::{DataKey, wrap_data_key};
use pms_edge::keyring::Keyring;
use pms_mailbox::{
    BoxFuture, Command, CommandResponse, Credentials, MailboxService, MessageState as StoredState,
    ProposeError, UserRecord, query,
};
use pms_replication::{Replication, ReplicationError};
use pms_sip::digest::{Algorithm, ha1};
use pms_transport::{
    AdminBackend, AdminError, BackendFuture, ClusterStatus, GroupMemberStatus, GroupRole,
    MessageState, MessageStatusReport, NewUser, NodeStatus, UserSummary,
};
use pms_types::{Clock, GroupId, MessageId, NodeId, StateRead, UserId};

/// The edge's view of the replicated groups.
pub struct ReplicatedMailboxes {
    pub replication: Arc<Replication>,
}

impl MailboxService for ReplicatedMailboxes {
    fn propose(
        &self,
        group: GroupId,
        command: Command,
    ) -> BoxFuture<'_, Result<CommandResponse, ProposeError>> {
        Box::pin(async move {
            let group = self.replication.require_group(group).map_err(fatal)?;
            group.propose(command).await.map_err(|error| {
                if error.is_retryable() {
                    ProposeError::Retry {
                        reason: error.to_string(),
                    }
                } else {
                    fatal(error)
                }
            })
        })
    }

    fn state(&self, group: GroupId) -> Arc<dyn StateRead + Send + Sync> {
        match self.replication.group(group) {
            Some(group) => group.store().clone(),
            // Invariant: pmsd opens every group the edge is configured with before serving.
            None => panic!("group {group} is not open on this node"),
        }
    }

    fn is_leader(&self, group: GroupId) -> bool {
        self.replication
            .group(group)
            .is_some_and(|group| group.is_leader())
    }
}

fn fatal(error: ReplicationError) -> ProposeError {
    ProposeError::Fatal {
        reason: error.to_string(),
    }
}

/// The admin API over the replicated directory.
pub struct AdminApi {
    pub replication: Arc<Replication>,
    pub keyring: Arc<Keyring>,
    pub group: GroupId,
    pub realm: String,
    pub grpc_address: String,
    pub clock: Arc<dyn Clock>,
}

impl AdminApi {
    async fn propose(&self, command: Command) -> Result<CommandResponse, AdminError> {
        let group = self
            .replication
            .require_group(self.group)
            .map_err(|error| AdminError::Internal {
                reason: error.to_string(),
            })?;
        group.propose(command).await.map_err(|error| {
            if error.is_retryable() {
                AdminError::Unavailable {
                    reason: error.to_string(),
                }
            } else {
                AdminError::Internal {
                    reason: error.to_string(),
                }
            }
        })
    }

    fn state(&self) -> Result<Arc<dyn pms_storage::Store>, AdminError> {
        self.replication
            .require_group(self.group)
            .map(|group| group.store().clone())
            .map_err(|error| AdminError::Internal {
                reason: error.to_string(),
            })
    }
}

fn expect_done(response: CommandResponse) -> Result<(), AdminError> {
    match response {
        CommandResponse::Done => Ok(()),
        CommandResponse::UserExists { user } => Err(AdminError::AlreadyExists {
            what: format!("user {user}"),
        }),
        CommandResponse::UnknownUser { user } => Err(AdminError::NotFound {
            what: format!("user {user}"),
        }),
        other => Err(AdminError::Internal {
            reason: format!("unexpected response {other:?}"),
        }),
    }
}

fn internal(error: impl std::fmt::Display) -> AdminError {
    AdminError::Internal {
        reason: error.to_string(),
    }
}

impl AdminBackend for AdminApi {
    fn add_user(&self, user: NewUser) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let name = user.user.as_str();
            let password = user.password.expose();
            let data_key = DataKey::generate();
            let record = UserRecord {
                user: user.user.clone(),
                credentials: Credentials {
                    realm: self.realm.clone(),
                    ha1_md5: ha1(Algorithm::Md5, name, &self.realm, password),
                    ha1_sha256: ha1(Algorithm::Sha256, name, &self.realm, password),
                },
                messaging_enabled: user.messaging_enabled,
                wrapped_data_key: wrap_data_key(self.keyring.master(), name, &data_key),
                created_at: self.clock.now(),
            };
            expect_done(self.propose(Command::ProvisionUser { record }).await?)
        })
    }

    fn remove_user(&self, user: UserId) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let result = expect_done(
                self.propose(Command::RemoveUser { user: user.clone() })
                    .await?,
            );
            self.keyring.forget(&user);
            result
        })
    }

    fn set_messaging_enabled(&self, user: UserId, enabled: bool) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            expect_done(
                self.propose(Command::SetMessagingEnabled { user, enabled })
                    .await?,
            )
        })
    }

    fn list_users(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> BackendFuture<'_, Vec<UserSummary>> {
        Box::pin(async move {
            let state = self.state()?;
            let users =
                query::users(&*state, self.group, after.as_ref(), limit).map_err(internal)?;
            Ok(users
                .into_iter()
                .map(|record| UserSummary {
                    user: record.user,
                    messaging_enabled: record.messaging_enabled,
                })
                .collect())
        })
    }

    fn message_status(&self, message_id: MessageId) -> BackendFuture<'_, MessageStatusReport> {
        Box::pin(async move {
            let state = self.state()?;
            let status = query::message_status(&*state, self.group, &message_id)
                .map_err(internal)?
                .ok_or_else(|| AdminError::NotFound {
                    what: format!("message {message_id}"),
                })?;
            Ok(MessageStatusReport {
                message_id: status.message_id,
                state: match status.state {
                    StoredState::Queued => MessageState::Enqueued,
                    StoredState::Delivered => MessageState::Delivered,
                    StoredState::Expired => MessageState::Expired,
                    StoredState::Failed { code } => MessageState::Failed { sip_code: code },
                },
                recipient: status.recipient,
                enqueued_at: status.enqueued_at,
                updated_at: status.updated_at,
            })
        })
    }

    fn cluster_status(&self) -> BackendFuture<'_, ClusterStatus> {
        Box::pin(async move {
            let node = NodeId(self.replication.node_id());
            let groups = self
                .replication
                .groups()
                .map(|group| GroupMemberStatus {
                    group: group.id(),
                    role: if group.is_leader() {
                        GroupRole::Leader
                    } else {
                        GroupRole::Follower
                    },
                    last_applied_index: group.last_applied_index(),
                    leader: group.current_leader().map(NodeId),
                })
                .collect();
            Ok(ClusterStatus {
                reporting_node: node,
                nodes: vec![NodeStatus {
                    node,
                    address: self.grpc_address.clone(),
                    groups,
                }],
            })
        })
    }
}
