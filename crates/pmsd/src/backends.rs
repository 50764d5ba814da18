//! The adapters that connect the layers inside `pmsd`: `ReplicatedMailboxes` implements the
//! edge's `MailboxService` over `pms-replication`, and `AdminApi` implements the admin gRPC
//! service's `AdminBackend` over the same groups.
//!
//! Invariant: a user's data key is generated and wrapped here, and the HA1 values (of the
//! algorithms the account's policy allows, no others) are sealed here, before `ProvisionUser`
//! is proposed; only the wrapped and sealed forms enter the Raft log, and only the directory's
//! log (the mailbox group's copy of the record carries neither).
//! Invariant: after `RemoveUser` commits, the unwrapped key is evicted from the edge's keyring.

use std::collections::BTreeMap;
use std::sync::Arc;

use pms_crypto::{DataKey, seal_credentials, wrap_data_key};
use pms_edge::keyring::Keyring;
use pms_mailbox::{
    BoxFuture, CatchUp, Command, CommandResponse, Credentials, DigestAlgorithm, MailboxService,
    MessageState as StoredState, ProposeError, UserRecord, query,
};
use pms_replication::{GroupRole as ReplicaRole, Replication, ReplicationError};
use pms_sip::digest::{Algorithm, ha1};
use pms_transport::{
    AdminBackend, AdminError, BackendFuture, ClusterStatus, GroupMemberStatus, GroupRole,
    MasterKeyRotation, MessageState, MessageStatusReport, NewUser, NodeStatus, Password,
    UserSummary, local_status,
};
use pms_types::{Clock, GroupId, MessageId, NodeId, StateRead, UserId};

use crate::cluster::ClusterRouter;

/// The edge's view of the replicated groups: commands go to each group's leader through the
/// router; reads are of this node's replica.
pub struct ReplicatedMailboxes {
    pub replication: Arc<Replication>,
    pub router: Arc<ClusterRouter>,
}

impl MailboxService for ReplicatedMailboxes {
    fn propose(
        &self,
        group: GroupId,
        command: Command,
    ) -> BoxFuture<'_, Result<CommandResponse, ProposeError>> {
        Box::pin(async move {
            self.router.propose(group, command).await.map_err(|error| {
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

    fn confirm_leadership(&self, group: GroupId) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match self.replication.group(group) {
                Some(group) => group.confirm_leadership(LEADERSHIP_CONFIRM_TIMEOUT).await,
                None => false,
            }
        })
    }

    fn is_leader(&self, group: GroupId) -> bool {
        self.replication
            .group(group)
            .is_some_and(|group| group.is_leader())
    }

    fn catch_up(&self, group: GroupId) -> BoxFuture<'_, CatchUp> {
        Box::pin(async move {
            if self.is_leader(group) {
                return CatchUp::Leading;
            }
            match self.router.catch_up(group, CATCH_UP_TIMEOUT).await {
                Ok(()) => CatchUp::CaughtUp,
                Err(error) => {
                    tracing::debug!(%group, %error, "this replica could not catch up with its leader");
                    CatchUp::Failed
                }
            }
        })
    }
}

/// How long a mailbox waits for a quorum to confirm its leader before a delivery.
const LEADERSHIP_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a lookup that found nothing waits for this replica to catch up with its leader
/// before it answers with what it has (a SIP request waits this much at most).
const CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

fn fatal(error: ReplicationError) -> ProposeError {
    ProposeError::Fatal {
        reason: error.to_string(),
    }
}

/// The admin API over the replicated directory.
pub struct AdminApi {
    pub replication: Arc<Replication>,
    pub router: Arc<ClusterRouter>,
    pub keyring: Arc<Keyring>,
    pub realm: String,
    pub grpc_address: String,
    pub clock: Arc<dyn Clock>,
    /// The node's digest policy (`--digest-algorithms`): what an account that follows the
    /// node's policy stores HA1 values for.
    pub digest_algorithms: Vec<DigestAlgorithm>,
    /// Where backups are made before they are streamed (`<data-dir>/backups`), and the data
    /// dir's `mailbox-groups` file they carry.
    pub data_dir: std::path::PathBuf,
    pub node_id: NodeId,
}

impl AdminApi {
    /// The algorithms whose HA1 an account with policy `account` stores.
    fn stored_algorithms(&self, account: &[DigestAlgorithm]) -> Vec<DigestAlgorithm> {
        if account.is_empty() {
            self.digest_algorithms.clone()
        } else {
            account.to_vec()
        }
    }

    /// The HA1 values of `password` for exactly `algorithms`.
    fn credentials(
        &self,
        user: &UserId,
        password: &Password,
        algorithms: &[DigestAlgorithm],
    ) -> Credentials {
        let hash =
            |algorithm: Algorithm| ha1(algorithm, user.as_str(), &self.realm, password.expose());
        Credentials {
            realm: self.realm.clone(),
            ha1_md5: algorithms
                .contains(&DigestAlgorithm::Md5)
                .then(|| hash(Algorithm::Md5)),
            ha1_sha256: algorithms
                .contains(&DigestAlgorithm::Sha256)
                .then(|| hash(Algorithm::Sha256)),
        }
    }

    fn seal(&self, user: &UserId, credentials: &Credentials) -> Vec<u8> {
        seal_credentials(
            &self.keyring.master(),
            user.as_str(),
            &pms_mailbox::encode(credentials),
        )
    }

    async fn propose(
        &self,
        group: GroupId,
        command: Command,
    ) -> Result<CommandResponse, AdminError> {
        self.router.propose(group, command).await.map_err(|error| {
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

    fn state(&self, group: GroupId) -> Result<Arc<dyn pms_storage::Store>, AdminError> {
        self.replication
            .require_group(group)
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

/// Every file under `dir`, relative to it.
fn files_under(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![std::path::PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in std::fs::read_dir(dir.join(&relative))? {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
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
            let data_key = DataKey::generate();
            let credentials = self.credentials(
                &user.user,
                &user.password,
                &self.stored_algorithms(&user.digest_algorithms),
            );
            let record = UserRecord {
                user: user.user.clone(),
                sealed_credentials: self.seal(&user.user, &credentials),
                digest_algorithms: user.digest_algorithms.clone(),
                messaging_enabled: user.messaging_enabled,
                wrapped_data_key: wrap_data_key(&self.keyring.master(), name, &data_key),
                created_at: self.clock.now(),
            };
            // The mailbox first: once the directory knows the account (and the edge lets it
            // in), its mailbox exists. A mailbox left by an interrupted earlier attempt is fine.
            // Its copy carries no secret: only the directory authenticates and opens messages.
            let mailbox = self.replication.group_for_user(&user.user);
            let mailbox_record = UserRecord {
                sealed_credentials: Vec::new(),
                wrapped_data_key: Vec::new(),
                ..record.clone()
            };
            match self
                .propose(
                    mailbox,
                    Command::ProvisionUser {
                        record: mailbox_record,
                    },
                )
                .await?
            {
                CommandResponse::Done | CommandResponse::UserExists { .. } => {}
                other => expect_done(other)?,
            }
            expect_done(
                self.propose(GroupId::DIRECTORY, Command::ProvisionUser { record })
                    .await?,
            )
        })
    }

    fn remove_user(&self, user: UserId) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            // The directory first: it holds the data key every node opens messages with, so
            // its removal shreds them at once; then the mailbox's queue and bindings go.
            let remove = Command::RemoveUser { user: user.clone() };
            let directory = self.propose(GroupId::DIRECTORY, remove.clone()).await?;
            self.keyring.forget(&user);
            let mailbox = self
                .propose(self.replication.group_for_user(&user), remove)
                .await?;
            match (directory, mailbox) {
                (CommandResponse::UnknownUser { .. }, CommandResponse::UnknownUser { .. }) => {
                    Err(AdminError::NotFound {
                        what: format!("user {user}"),
                    })
                }
                (CommandResponse::Done | CommandResponse::UnknownUser { .. }, mailbox) => {
                    match mailbox {
                        CommandResponse::UnknownUser { .. } => Ok(()),
                        other => expect_done(other),
                    }
                }
                (other, _) => expect_done(other),
            }
        })
    }

    fn set_messaging_enabled(&self, user: UserId, enabled: bool) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            // The edge reads the flag from the directory only.
            expect_done(
                self.propose(
                    GroupId::DIRECTORY,
                    Command::SetMessagingEnabled { user, enabled },
                )
                .await?,
            )
        })
    }

    fn set_digest_algorithms(
        &self,
        user: UserId,
        algorithms: Vec<pms_transport::DigestAlgorithm>,
        password: Option<Password>,
    ) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            // The edge reads the policy from the directory only, like the enabled flag.
            let allowed = self.stored_algorithms(&algorithms);
            let credentials = match password {
                Some(password) => self.credentials(&user, &password, &allowed),
                None => {
                    let state = self.state(GroupId::DIRECTORY)?;
                    let record = query::user(&*state, GroupId::DIRECTORY, &user)
                        .map_err(internal)?
                        .ok_or_else(|| AdminError::NotFound {
                            what: format!("user {user}"),
                        })?;
                    let mut stored = self.keyring.credentials(&record).map_err(internal)?;
                    if let Some(missing) = allowed
                        .iter()
                        .find(|algorithm| stored.ha1(**algorithm).is_none())
                    {
                        return Err(AdminError::InvalidArgument {
                            reason: format!(
                                "user {user} has no stored HA1 for {missing} (PMS keeps only those its policy allowed): give the account's password with --password"
                            ),
                        });
                    }
                    stored.retain(&allowed);
                    stored
                }
            };
            let sealed_credentials = self.seal(&user, &credentials);
            expect_done(
                self.propose(
                    GroupId::DIRECTORY,
                    Command::SetDigestAlgorithms {
                        user,
                        algorithms,
                        sealed_credentials,
                    },
                )
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
            let state = self.state(GroupId::DIRECTORY)?;
            let users = query::users(&*state, GroupId::DIRECTORY, after.as_ref(), limit)
                .map_err(internal)?;
            Ok(users
                .into_iter()
                .map(|record| UserSummary {
                    user: record.user,
                    messaging_enabled: record.messaging_enabled,
                    digest_algorithms: record.digest_algorithms,
                })
                .collect())
        })
    }

    fn message_status(&self, message_id: MessageId) -> BackendFuture<'_, MessageStatusReport> {
        Box::pin(async move {
            // A message id does not name its group: look in every mailbox group's replica.
            let mut found = None;
            for group in self.replication.groups() {
                if group.id() == GroupId::DIRECTORY {
                    continue;
                }
                let state = self.state(group.id())?;
                found =
                    query::message_status(&*state, group.id(), &message_id).map_err(internal)?;
                if found.is_some() {
                    break;
                }
            }
            let status = found.ok_or_else(|| AdminError::NotFound {
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
            let mut members = self.members();
            members
                .entry(node.0)
                .or_insert_with(|| self.grpc_address.clone());
            let asked = members.iter().map(|(id, address)| async move {
                if *id == node.0 {
                    Ok(local_status(
                        node,
                        address,
                        &self.replication,
                        &self.keyring.master().fingerprint(),
                    ))
                } else {
                    self.router
                        .peers()
                        .node_status(address, STATUS_CALL_TIMEOUT)
                        .await
                }
            });
            let answers = futures::future::join_all(asked).await;
            // The leader's last log index per group, to tell each member's lag.
            let mut leader_last_log: BTreeMap<GroupId, u64> = BTreeMap::new();
            for answer in answers.iter().flatten() {
                for group in &answer.groups {
                    if let (ReplicaRole::Leader, Some(last)) = (group.role, group.last_log_index) {
                        leader_last_log.insert(group.group, last);
                    }
                }
            }
            let nodes = members
                .iter()
                .zip(answers)
                .map(|((id, address), answer)| match answer {
                    Ok(status) => NodeStatus {
                        node: NodeId(*id),
                        address: address.clone(),
                        groups: status
                            .groups
                            .iter()
                            .map(|group| GroupMemberStatus {
                                group: group.group,
                                role: match group.role {
                                    ReplicaRole::Leader => GroupRole::Leader,
                                    ReplicaRole::Follower => GroupRole::Follower,
                                    ReplicaRole::Candidate => GroupRole::Candidate,
                                    ReplicaRole::Learner => GroupRole::Learner,
                                    ReplicaRole::Shutdown => GroupRole::Unknown,
                                },
                                last_applied_index: group.last_applied_index,
                                leader: group.leader.map(NodeId),
                                lag: leader_last_log.get(&group.group).map(|last| {
                                    last.saturating_sub(group.last_applied_index.unwrap_or(0))
                                }),
                                term: Some(group.term),
                            })
                            .collect(),
                        unreachable: None,
                        version: Some(status.version.clone()).filter(|v| !v.is_empty()),
                    },
                    Err(error) => NodeStatus {
                        node: NodeId(*id),
                        address: address.clone(),
                        groups: Vec::new(),
                        unreachable: Some(error.to_string()),
                        version: None,
                    },
                })
                .collect();
            Ok(ClusterStatus {
                reporting_node: node,
                nodes,
            })
        })
    }

    fn add_node(&self, node: NodeId, address: String) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            self.check_new_node(node, &address).await?;
            self.router
                .change_membership(node.0, Some(address))
                .await
                .map_err(membership_error)
        })
    }

    fn backup(&self) -> BackendFuture<'_, pms_transport::BackupFiles> {
        Box::pin(async move {
            // A barrier per group: once this node applied an entry proposed now, it has applied
            // everything the group committed before the backup began.
            let fingerprint = self.keyring.master().fingerprint();
            let groups: Vec<GroupId> = self.replication.groups().map(|group| group.id()).collect();
            for group in groups {
                let barrier = Command::CheckMasterKey {
                    fingerprint: fingerprint.clone(),
                };
                if let CommandResponse::MasterKeyMismatch { recorded } =
                    self.propose(group, barrier).await?
                {
                    return Err(AdminError::FailedPrecondition {
                        reason: format!(
                            "group {group} recorded master key fingerprint {recorded}, this node has {fingerprint}"
                        ),
                    });
                }
            }
            let now = self.clock.now();
            let dir = self.data_dir.join("backups").join(now.0.to_string());
            std::fs::create_dir_all(&dir).map_err(internal)?;
            let store = self.state(GroupId::DIRECTORY)?;
            let checkpoint = dir.join("db");
            tokio::task::spawn_blocking(move || store.checkpoint(&checkpoint))
                .await
                .map_err(internal)?
                .map_err(internal)?;
            std::fs::copy(
                self.data_dir.join(crate::node::MAILBOX_GROUPS_FILE),
                dir.join("mailbox-groups"),
            )
            .map_err(internal)?;
            let manifest = serde_json::json!({
                "format": 1,
                "node": self.node_id.0,
                "created_at_ms": now.0,
                "mailbox_groups": self.replication.mailbox_group_count(),
                "master_key_fingerprint": fingerprint,
                "pms_version": env!("CARGO_PKG_VERSION"),
            });
            std::fs::write(dir.join("backup.json"), manifest.to_string()).map_err(internal)?;
            let files = files_under(&dir).map_err(internal)?;
            Ok(pms_transport::BackupFiles { dir, files })
        })
    }

    fn rotate_master_key(&self) -> BackendFuture<'_, MasterKeyRotation> {
        Box::pin(async move {
            let new_key = self.keyring.current().clone();
            let to = new_key.fingerprint();
            let directory = self.state(GroupId::DIRECTORY)?;
            let from = query::master_key_fingerprint(&*directory, GroupId::DIRECTORY)
                .map_err(internal)?
                .ok_or_else(|| AdminError::Unavailable {
                    reason: "the directory has no master key recorded yet: retry once the cluster has started".into(),
                })?;
            if from == to && self.keyring.previous().is_none() {
                return Err(AdminError::FailedPrecondition {
                    reason: format!(
                        "nothing to rotate to: this node's --master-key-file is the cluster's key ({to}). Make a new key (`pmsctl cert create-master-key NEW`), restart every node, one at a time, with --master-key-file NEW --previous-master-key-file OLD, then run this again (docs/operations.md, \"Master-key rotation\")"
                    ),
                });
            }
            self.check_members_hold_key(&to).await?;
            if from != to {
                let change = Command::ChangeMasterKey {
                    from: from.clone(),
                    to: to.clone(),
                };
                if let CommandResponse::MasterKeyMismatch { recorded } =
                    self.propose(GroupId::DIRECTORY, change).await?
                {
                    return Err(AdminError::FailedPrecondition {
                        reason: format!(
                            "the cluster's master key is {recorded}, neither this node's previous key nor its new one ({to}): was another rotation run meanwhile? Check `pmsctl cluster status` and the nodes' logs"
                        ),
                    });
                }
            }
            // Wrap with the new key from here, without waiting for the directory watcher.
            self.keyring.activate(&to);
            let accounts_rewrapped = self.rewrap_accounts(&new_key).await?;
            tracing::info!(%from, %to, accounts_rewrapped, "master key rotated");
            Ok(MasterKeyRotation {
                from,
                to,
                accounts_rewrapped,
            })
        })
    }

    fn remove_node(&self, node: NodeId) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            // Removing a node that is no member is a mistake (a typo in the id), not a no-op.
            let member = self.replication.groups().any(|group| {
                group
                    .status()
                    .members
                    .iter()
                    .any(|member| member.node == node.0)
            });
            if !member {
                return Err(AdminError::NotFound {
                    what: format!("node {node} in the cluster (see `pmsctl cluster status`)"),
                });
            }
            self.router
                .change_membership(node.0, None)
                .await
                .map_err(membership_error)
        })
    }
}

impl AdminApi {
    /// Refuses to add a node that could not work as a member (issue 9 item 1): one this node
    /// cannot reach over mutual TLS with the cluster's CA, one answering with another node id,
    /// one of another cluster, one started with another master key, or an id that is already a
    /// member elsewhere. Each refusal says what to do. (That the node caught up before it
    /// votes is the membership change's own order: learner until caught up, then voter.)
    async fn check_new_node(&self, node: NodeId, address: &str) -> Result<(), AdminError> {
        let refuse = |reason: String| AdminError::FailedPrecondition {
            reason: format!("node {node} at {address} was not added: {reason}"),
        };
        let member_elsewhere = self.replication.groups().find_map(|group| {
            group
                .member_address(node.0)
                .filter(|member_address| member_address != address)
        });
        if let Some(member_address) = member_elsewhere {
            return Err(refuse(format!(
                "node {node} is already a member, at {member_address}; remove it first (`pmsctl cluster remove-node {node}`) or use another node id"
            )));
        }
        let status = self
            .new_node_status(address)
            .await
            .map_err(|error| match error {
                pms_transport::ForwardError::Refused { detail, .. }
                    if detail.contains("cluster mismatch") =>
                {
                    refuse(format!(
                        "it belongs to another cluster ({detail}). A node joins only with a fresh data dir: start it with an empty --data-dir and --join"
                    ))
                }
                error => refuse(format!(
                    "this node cannot reach it over mutual TLS with the cluster's CA ({error}). Check that it runs with --grpc {address} and with a node certificate made by this cluster's CA (`pmsctl cert create-node` where ca.key is kept; copy ca.crt, node.crt and node.key, never ca.key, into its --certs-dir)"
                )),
            })?;
        if status.node != node {
            return Err(refuse(format!(
                "the node answering there is node {}, not node {node}",
                status.node
            )));
        }
        let ours = self.router.peers().identity().get();
        if let (Some(ours), Some(theirs)) = (&ours, &status.cluster_id)
            && ours != theirs
        {
            return Err(refuse(format!(
                "it belongs to another cluster ({theirs}; this one is {ours}). A node joins only with a fresh data dir: start it with an empty --data-dir and --join"
            )));
        }
        let fingerprint = self.keyring.master().fingerprint();
        match &status.master_key_fingerprint {
            Some(theirs) if *theirs == fingerprint => {}
            Some(theirs) => {
                return Err(refuse(format!(
                    "it loaded the master key with fingerprint {theirs}, the cluster's is {fingerprint}: start it with the cluster's master key file (--master-key-file)"
                )));
            }
            None => {
                return Err(refuse(format!(
                    "it does not report its master key fingerprint (a PMS older than {}): upgrade it first",
                    env!("CARGO_PKG_VERSION")
                )));
            }
        }
        Ok(())
    }

    /// Every node any group knows of, with its address.
    fn members(&self) -> BTreeMap<u64, String> {
        let mut members = BTreeMap::new();
        for group in self.replication.groups() {
            for member in group.status().members {
                members.entry(member.node).or_insert(member.address);
            }
        }
        members
    }

    /// Refuses a rotation unless every member loaded `fingerprint` as its `--master-key-file`
    /// (a member without it could open nothing the cluster wraps from then on).
    async fn check_members_hold_key(&self, fingerprint: &str) -> Result<(), AdminError> {
        for (node, address) in self.members() {
            if node == self.node_id.0 {
                continue;
            }
            let status = self
                .router
                .peers()
                .node_status(&address, NEW_NODE_CHECK_TIMEOUT)
                .await
                .map_err(|error| AdminError::FailedPrecondition {
                    reason: format!(
                        "node {node} at {address} did not answer ({error}): every member must hold the new master key before the rotation; bring it back or remove it first"
                    ),
                })?;
            if status.master_key_fingerprint.as_deref() != Some(fingerprint) {
                return Err(AdminError::FailedPrecondition {
                    reason: format!(
                        "node {node} has not loaded the new master key {fingerprint} (it reports {}): restart it with --master-key-file NEW --previous-master-key-file OLD, then run this again",
                        status.master_key_fingerprint.as_deref().unwrap_or("none")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Rewraps, under `new_key`, the data key and credentials of every account the directory
    /// holds that `new_key` does not open yet. Returns how many it rewrapped.
    async fn rewrap_accounts(&self, new_key: &pms_crypto::MasterKey) -> Result<u64, AdminError> {
        let directory = self.state(GroupId::DIRECTORY)?;
        let mut rewrapped = 0;
        let mut after: Option<UserId> = None;
        loop {
            let page = query::users(
                &*directory,
                GroupId::DIRECTORY,
                after.as_ref(),
                REWRAP_PAGE_SIZE,
            )
            .map_err(internal)?;
            let Some(last) = page.last() else {
                return Ok(rewrapped);
            };
            after = Some(last.user.clone());
            for record in page {
                let name = record.user.as_str();
                if record.wrapped_data_key.is_empty()
                    || pms_crypto::unwrap_data_key(new_key, name, &record.wrapped_data_key).is_ok()
                {
                    continue;
                }
                let unreadable = |error: pms_crypto::Error| AdminError::FailedPrecondition {
                    reason: format!(
                        "account {name}: no loaded master key opens it ({error}); is --previous-master-key-file the cluster's old key on this node?"
                    ),
                };
                let data_key = self
                    .keyring
                    .unwrap_any(&record.user, &record.wrapped_data_key)
                    .map_err(unreadable)?;
                let credentials = self
                    .keyring
                    .open_credentials_any(&record.user, &record.sealed_credentials)
                    .map_err(unreadable)?;
                let command = Command::RewrapUser {
                    user: record.user.clone(),
                    expected_wrapped_data_key: record.wrapped_data_key.clone(),
                    wrapped_data_key: wrap_data_key(new_key, name, &data_key),
                    sealed_credentials: seal_credentials(new_key, name, &credentials),
                };
                match self.propose(GroupId::DIRECTORY, command).await? {
                    CommandResponse::Done => rewrapped += 1,
                    // Removed, or removed and added again (under the new key) meanwhile.
                    CommandResponse::UnknownUser { .. } | CommandResponse::RecordChanged { .. } => {
                    }
                    other => {
                        return Err(AdminError::Internal {
                            reason: format!("rewrapping {name}: unexpected answer {other:?}"),
                        });
                    }
                }
            }
        }
    }

    /// The new node's own status. A node started a moment ago may not listen yet: no answer is
    /// asked again until [`NEW_NODE_CHECK_TIMEOUT`]; a refusal is final.
    async fn new_node_status(
        &self,
        address: &str,
    ) -> Result<pms_transport::PeerNodeStatus, pms_transport::ForwardError> {
        let deadline = std::time::Instant::now() + NEW_NODE_CHECK_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.router.peers().node_status(address, left).await {
                Err(pms_transport::ForwardError::OutcomeUnknown { .. })
                    if deadline > std::time::Instant::now() + NEW_NODE_RETRY_INTERVAL =>
                {
                    tokio::time::sleep(NEW_NODE_RETRY_INTERVAL).await;
                }
                answer => return answer,
            }
        }
    }
}

/// Accounts read per page while rewrapping.
const REWRAP_PAGE_SIZE: usize = 256;

/// How long between two status calls to a new node that did not answer.
const NEW_NODE_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// How long `add-node` waits for the new node to answer its status call.
const NEW_NODE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long `cluster status` waits for each node's own view.
const STATUS_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn membership_error(error: ReplicationError) -> AdminError {
    match error {
        ReplicationError::Refused { detail, .. } => {
            AdminError::FailedPrecondition { reason: detail }
        }
        error if error.is_retryable() => AdminError::Unavailable {
            reason: error.to_string(),
        },
        error => AdminError::Internal {
            reason: error.to_string(),
        },
    }
}
