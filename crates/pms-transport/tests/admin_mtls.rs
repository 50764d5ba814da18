//! The admin API over real sockets and real mutual TLS on 127.0.0.1: an in-memory
//! `AdminBackend` served by `AdminServer`, called through `AdminClient` with certificates made by
//! `pms-crypto`. Checks that admin calls work end to end, that errors keep their gRPC meaning,
//! and that only the admin certificate from the cluster CA gets in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pms_transport::{
    AdminBackend, AdminClient, AdminError, AdminServer, BackendFuture, ClusterStatus,
    DigestAlgorithm, GroupMemberStatus, GroupRole, MessageState, MessageStatusReport, NewUser,
    NodeStatus, Password, UserSummary,
};
use pms_types::{GroupId, MessageId, NodeId, UnixMillis, UserId};

/// Accounts in a map, one known message, and a count of calls that reached it.
#[derive(Default)]
struct FakeBackend {
    users: Mutex<BTreeMap<UserId, bool>>,
    calls: AtomicUsize,
}

impl FakeBackend {
    fn called(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

fn known_message() -> MessageStatusReport {
    MessageStatusReport {
        message_id: MessageId::parse("00112233445566778899aabbccddeeff").unwrap(),
        state: MessageState::Delivered,
        recipient: UserId::parse("bob").unwrap(),
        enqueued_at: UnixMillis(1_700_000_000_000),
        updated_at: UnixMillis(1_700_000_000_500),
    }
}

impl AdminBackend for FakeBackend {
    fn add_user(&self, user: NewUser) -> BackendFuture<'_, ()> {
        self.called();
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
        self.called();
        Box::pin(async move {
            match self.users.lock().unwrap().remove(&user) {
                Some(_) => Ok(()),
                None => Err(AdminError::NotFound {
                    what: format!("user {user}"),
                }),
            }
        })
    }

    fn set_messaging_enabled(&self, user: UserId, enabled: bool) -> BackendFuture<'_, ()> {
        self.called();
        Box::pin(async move {
            match self.users.lock().unwrap().get_mut(&user) {
                Some(flag) => {
                    *flag = enabled;
                    Ok(())
                }
                None => Err(AdminError::NotFound {
                    what: format!("user {user}"),
                }),
            }
        })
    }

    fn set_digest_algorithms(
        &self,
        user: UserId,
        _algorithms: Vec<DigestAlgorithm>,
        _password: Option<Password>,
    ) -> BackendFuture<'_, ()> {
        self.called();
        Box::pin(async move {
            if self.users.lock().unwrap().contains_key(&user) {
                Ok(())
            } else {
                Err(AdminError::NotFound {
                    what: format!("user {user}"),
                })
            }
        })
    }

    fn list_users(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> BackendFuture<'_, Vec<UserSummary>> {
        self.called();
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
        self.called();
        Box::pin(async move {
            let known = known_message();
            if message_id == known.message_id {
                Ok(known)
            } else {
                Err(AdminError::NotFound {
                    what: format!("message {message_id}"),
                })
            }
        })
    }

    fn add_node(&self, _node: NodeId, _address: String) -> BackendFuture<'_, ()> {
        self.called();
        Box::pin(async move { Ok(()) })
    }

    fn remove_node(&self, _node: NodeId) -> BackendFuture<'_, ()> {
        self.called();
        Box::pin(async move { Ok(()) })
    }

    fn cluster_status(&self) -> BackendFuture<'_, ClusterStatus> {
        self.called();
        Box::pin(async move { Ok(sample_cluster()) })
    }
}

fn sample_cluster() -> ClusterStatus {
    ClusterStatus {
        reporting_node: NodeId(1),
        nodes: vec![NodeStatus {
            node: NodeId(1),
            address: "127.0.0.1:50051".into(),
            groups: vec![GroupMemberStatus {
                group: GroupId(0),
                role: GroupRole::Leader,
                last_applied_index: Some(7),
                leader: Some(NodeId(1)),
                lag: Some(0),
                term: Some(1),
            }],
            unreachable: None,
            version: Some("0.1.0".into()),
        }],
    }
}

/// A certs dir with a CA, a node certificate for the loopback names, and client certificates
/// for `admin` and `bob`.
fn cluster_certs(dir: &Path) {
    pms_crypto::create_ca(dir).unwrap();
    let hosts = [
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "::1".to_owned(),
    ];
    pms_crypto::create_node(dir, &hosts).unwrap();
    pms_crypto::create_client(dir, "admin").unwrap();
    pms_crypto::create_client(dir, "bob").unwrap();
}

struct Running {
    address: String,
    backend: Arc<FakeBackend>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), pms_transport::TransportError>>,
    _certs: tempfile::TempDir,
    certs_dir: PathBuf,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.await.unwrap().unwrap();
    }
}

async fn start() -> Running {
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().to_path_buf();
    cluster_certs(&certs_dir);
    let backend = Arc::new(FakeBackend::default());
    let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), &certs_dir, backend.clone())
        .await
        .unwrap();
    let address = server.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Running {
        address,
        backend,
        stop: Some(stop),
        server,
        _certs: certs,
        certs_dir,
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn new_user(name: &str, messaging_enabled: bool) -> NewUser {
    NewUser {
        user: user(name),
        password: Password::new("correct horse").unwrap(),
        messaging_enabled,
        digest_algorithms: Vec::new(),
    }
}

#[tokio::test]
async fn admin_adds_lists_enables_and_removes_users_over_mtls() {
    let running = start().await;
    let client = AdminClient::connect(&running.address, &running.certs_dir)
        .await
        .unwrap();

    client.add_user(new_user("alice", true)).await.unwrap();
    client.add_user(new_user("bob", false)).await.unwrap();
    let again = client.add_user(new_user("alice", true)).await;
    assert!(
        matches!(again, Err(AdminError::AlreadyExists { .. })),
        "{again:?}"
    );

    let users = client.list_users().await.unwrap();
    assert_eq!(
        users,
        vec![
            UserSummary {
                user: user("alice"),
                messaging_enabled: true,
                digest_algorithms: Vec::new(),
            },
            UserSummary {
                user: user("bob"),
                messaging_enabled: false,
                digest_algorithms: Vec::new(),
            },
        ]
    );

    client
        .set_messaging_enabled(&user("bob"), true)
        .await
        .unwrap();
    client.remove_user(&user("alice")).await.unwrap();
    let users = client.list_users().await.unwrap();
    assert_eq!(
        users,
        vec![UserSummary {
            user: user("bob"),
            messaging_enabled: true,
            digest_algorithms: Vec::new(),
        }]
    );

    running.stop().await;
}

#[tokio::test]
async fn not_found_is_distinguishable_on_the_client() {
    let running = start().await;
    let client = AdminClient::connect(&running.address, &running.certs_dir)
        .await
        .unwrap();

    let removed = client.remove_user(&user("nobody")).await;
    assert!(
        matches!(removed, Err(AdminError::NotFound { ref what }) if what.contains("nobody")),
        "{removed:?}"
    );
    let enabled = client.set_messaging_enabled(&user("nobody"), true).await;
    assert!(
        matches!(enabled, Err(AdminError::NotFound { .. })),
        "{enabled:?}"
    );
    let unknown = client
        .message_status(&MessageId::parse("ffff").unwrap())
        .await;
    assert!(
        matches!(unknown, Err(AdminError::NotFound { .. })),
        "{unknown:?}"
    );

    let known = known_message();
    assert_eq!(
        client.message_status(&known.message_id).await.unwrap(),
        known
    );
    assert_eq!(client.cluster_status().await.unwrap(), sample_cluster());

    running.stop().await;
}

#[tokio::test]
async fn users_are_listed_in_pages_that_end() {
    let running = start().await;
    let client = AdminClient::connect(&running.address, &running.certs_dir)
        .await
        .unwrap();
    for name in ["carol", "alice", "bob"] {
        client.add_user(new_user(name, true)).await.unwrap();
    }

    let first = client.list_users_page(None, 2).await.unwrap();
    let names: Vec<_> = first
        .users
        .iter()
        .map(|u| u.user.as_str().to_owned())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(first.next_after, Some(user("bob")));

    let second = client
        .list_users_page(first.next_after.as_ref(), 2)
        .await
        .unwrap();
    let names: Vec<_> = second
        .users
        .iter()
        .map(|u| u.user.as_str().to_owned())
        .collect();
    assert_eq!(names, ["carol"]);
    assert_eq!(second.next_after, None);

    running.stop().await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let running = start().await;
    // A rogue certs dir: its own CA and admin client certificate, but it trusts the real CA, so
    // only the server's check of the client certificate can stop it.
    let rogue = tempfile::tempdir().unwrap();
    pms_crypto::create_ca(rogue.path()).unwrap();
    pms_crypto::create_client(rogue.path(), "admin").unwrap();
    std::fs::copy(
        running.certs_dir.join("ca.crt"),
        rogue.path().join("ca.crt"),
    )
    .unwrap();

    match AdminClient::connect(&running.address, rogue.path()).await {
        // TLS 1.3: the client may finish its handshake before the server's alert arrives.
        Ok(client) => {
            let listed = client.list_users().await;
            assert!(
                matches!(listed, Err(AdminError::Unavailable { .. })),
                "{listed:?}"
            );
        }
        Err(error) => assert!(
            matches!(error, pms_transport::TransportError::Connect { .. }),
            "{error:?}"
        ),
    }
    assert_eq!(running.backend.calls.load(Ordering::SeqCst), 0);

    running.stop().await;
}

#[tokio::test]
async fn a_client_certificate_with_another_common_name_gets_permission_denied() {
    let running = start().await;
    let client = AdminClient::connect_as(&running.address, &running.certs_dir, "bob")
        .await
        .unwrap();

    let listed = client.list_users().await;
    assert!(
        matches!(listed, Err(AdminError::PermissionDenied { .. })),
        "{listed:?}"
    );
    let added = client.add_user(new_user("mallory", true)).await;
    assert!(
        matches!(added, Err(AdminError::PermissionDenied { .. })),
        "{added:?}"
    );
    assert_eq!(running.backend.calls.load(Ordering::SeqCst), 0);
    assert!(running.backend.users.lock().unwrap().is_empty());

    running.stop().await;
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_refuses_the_server() {
    let running = start().await;
    // The admin's own certificate is fine, but it trusts a CA that did not sign the node.
    let other = tempfile::tempdir().unwrap();
    pms_crypto::create_ca(other.path()).unwrap();
    for file in ["client.admin.crt", "client.admin.key"] {
        std::fs::copy(running.certs_dir.join(file), other.path().join(file)).unwrap();
    }
    let connected = AdminClient::connect(&running.address, other.path()).await;
    assert!(
        connected.is_err(),
        "connected to a server signed by an untrusted CA"
    );
    assert_eq!(running.backend.calls.load(Ordering::SeqCst), 0);

    running.stop().await;
}
