//! Shared by pmsctl's process tests: an in-memory admin backend served by a real
//! `pms_transport::AdminServer` over mutual TLS on 127.0.0.1, and what a pmsctl run printed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pms_transport::{
    AdminBackend, AdminError, AdminServer, BackendFuture, ClusterStatus, DigestAlgorithm,
    GroupMemberStatus, GroupRole, MasterKeyRotation, MessageState, MessageStatusReport, NewUser,
    NodeStatus, Password, UserSummary,
};
use pms_types::{GroupId, MessageId, NodeId, UnixMillis, UserId};

pub const KNOWN_MESSAGE_ID: &str = "00112233445566778899aabbccddeeff";

/// Accounts in memory, and a cluster of two nodes whose second one can be made unreachable.
#[derive(Default)]
pub struct FakeBackend {
    pub users: Mutex<BTreeMap<UserId, bool>>,
    /// `cluster status` reports node 2 unreachable while set.
    pub node_2_down: AtomicBool,
}

fn not_found(what: impl std::fmt::Display) -> AdminError {
    AdminError::NotFound {
        what: what.to_string(),
    }
}

impl AdminBackend for FakeBackend {
    fn add_user(&self, user: NewUser) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let mut users = self.users.lock().unwrap();
            if users.contains_key(&user.user) {
                return Err(AdminError::AlreadyExists {
                    what: format!("user {}", user.user),
                });
            }
            users.insert(user.user, user.messaging_enabled);
            Ok(())
        })
    }

    fn remove_user(&self, user: UserId) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let removed = self.users.lock().unwrap().remove(&user);
            removed
                .map(|_| ())
                .ok_or_else(|| not_found(format!("user {user}")))
        })
    }

    fn set_messaging_enabled(&self, user: UserId, enabled: bool) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let mut users = self.users.lock().unwrap();
            let flag = users
                .get_mut(&user)
                .ok_or_else(|| not_found(format!("user {user}")))?;
            *flag = enabled;
            Ok(())
        })
    }

    fn set_digest_algorithms(
        &self,
        user: UserId,
        _algorithms: Vec<DigestAlgorithm>,
        _password: Option<Password>,
    ) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            if self.users.lock().unwrap().contains_key(&user) {
                Ok(())
            } else {
                Err(not_found(format!("user {user}")))
            }
        })
    }

    fn list_users(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> BackendFuture<'_, Vec<UserSummary>> {
        Box::pin(async move {
            let users = self.users.lock().unwrap();
            Ok(users
                .iter()
                .filter(|(user, _)| after.as_ref().is_none_or(|after| *user > after))
                .take(limit)
                .map(|(user, enabled)| UserSummary {
                    user: user.clone(),
                    messaging_enabled: *enabled,
                    digest_algorithms: Vec::new(),
                })
                .collect())
        })
    }

    fn message_status(&self, message_id: MessageId) -> BackendFuture<'_, MessageStatusReport> {
        Box::pin(async move {
            if message_id.as_str() != KNOWN_MESSAGE_ID {
                return Err(not_found(format!("message {message_id}")));
            }
            Ok(MessageStatusReport {
                message_id,
                state: MessageState::Delivered,
                recipient: UserId::parse("bob").unwrap(),
                enqueued_at: UnixMillis(1_700_000_000_000),
                updated_at: UnixMillis(1_700_000_000_250),
            })
        })
    }

    fn add_node(&self, _node: NodeId, _address: String) -> BackendFuture<'_, ()> {
        Box::pin(async move { Ok(()) })
    }

    fn remove_node(&self, _node: NodeId) -> BackendFuture<'_, ()> {
        Box::pin(async move { Ok(()) })
    }

    fn rotate_master_key(&self) -> BackendFuture<'_, MasterKeyRotation> {
        Box::pin(async move {
            Ok(MasterKeyRotation {
                from: "aaaa".into(),
                to: "bbbb".into(),
                accounts_rewrapped: 2,
            })
        })
    }

    fn cluster_status(&self) -> BackendFuture<'_, ClusterStatus> {
        Box::pin(async move {
            let member = |node: u64| NodeStatus {
                node: NodeId(node),
                address: format!("127.0.0.{node}:50051"),
                groups: vec![GroupMemberStatus {
                    group: GroupId(0),
                    role: if node == 1 {
                        GroupRole::Leader
                    } else {
                        GroupRole::Follower
                    },
                    last_applied_index: Some(12),
                    leader: Some(NodeId(1)),
                    lag: Some(0),
                    term: Some(1),
                }],
                unreachable: None,
                version: Some("0.1.0".into()),
            };
            let mut second = member(2);
            if self.node_2_down.load(Ordering::SeqCst) {
                second.groups.clear();
                second.version = None;
                second.unreachable = Some("connection refused".into());
            }
            Ok(ClusterStatus {
                reporting_node: NodeId(1),
                nodes: vec![member(1), second],
            })
        })
    }
}

/// What a pmsctl run printed and how it exited.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Serves the fake backend's admin API on 127.0.0.1; returns its address and a stop handle.
pub async fn serve(certs: &Path, backend: Arc<FakeBackend>) -> Served {
    let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), certs, backend)
        .await
        .unwrap();
    let admin = server.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Served {
        admin,
        stop,
        serving,
    }
}

/// A served admin API: its address, and the means to stop it and wait until it stopped.
pub struct Served {
    pub admin: String,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub serving: tokio::task::JoinHandle<Result<(), pms_transport::TransportError>>,
}
