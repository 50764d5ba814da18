//! An account added (or its messaging enabled) through one node can be used through any other
//! node at once, even one whose replica of the directory lags behind: before a node refuses
//! credentials it cannot check (403), a recipient it does not know (404) or an account whose
//! messaging it sees disabled (403), it asks the directory's leader for a read index and waits
//! until its own replica applied it.
//!
//! The lag is made, not hoped for: the lagging node's gRPC port resets every segment the
//! directory's leader sends it (iptables in its namespace), so the leader cannot replicate to
//! it, while the node's own calls to the leader (the read index) still work, and so does
//! everything between it and the third node (through which accounts are added). The block is lifted only
//! when the node reports a lookup waiting for its replica (`pms_replica_catch_ups_waiting 1`).
//! A node that does not catch up answers 403 or 404 before that, and the test fails.
//!
//! Needs root and `ip netns` (as the chaos harness's partitions do); it fails without them
//! rather than pass untested.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pms_chaos::cluster::{self, Cluster, ClusterConfig, NetworkMode};
use pms_chaos::user_agent::{self, Account, OutgoingMessage, Registration, SipConnection};
use pms_transport::{NewUser, Password};
use pms_types::UserId;
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;

const DOMAIN: &str = "localhost";
const PASSWORD: &str = "lagging-replica-password";
/// Longest wait for the cluster to be healthy.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for one SIP exchange (the node waits at most a few seconds for its replica).
const SIP_TIMEOUT: Duration = Duration::from_secs(20);
/// Pace of the metric polls while a SIP request is in flight.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_replica_asks_the_leader_before_it_refuses_a_new_account() {
    assert!(
        pms_chaos::netns::namespaces_available(),
        "this test needs root and `ip netns` (iproute2) to make one node lag"
    );
    let run_dir = tempfile::Builder::new()
        .prefix("pms-lagging-replica-")
        .tempdir()
        .expect("run dir");
    let config = ClusterConfig {
        nodes: 3,
        run_dir: run_dir.path().to_path_buf(),
        pmsd: cluster::locate_binary("pmsd", None, cluster::PMSD_ENV).expect("pmsd"),
        pmsctl: cluster::locate_binary("pmsctl", None, cluster::PMSCTL_ENV).expect("pmsctl"),
        prefer_namespaces: true,
        run_pid: std::process::id(),
        domain: DOMAIN.to_owned(),
        log_filter: "info".to_owned(),
    };
    let mut cluster = Cluster::launch(config).await.expect("cluster");
    assert_eq!(
        cluster.mode(),
        NetworkMode::Namespaces,
        "{:?}",
        cluster.notes()
    );
    if let Err(reason) = cluster.wait_healthy(Instant::now() + STARTUP_TIMEOUT).await {
        panic!("the cluster did not become healthy: {reason}");
    }
    // The first group a probe reports is the directory (group 0).
    let leader = cluster
        .probe()
        .await
        .agreed_leader
        .expect("every node names the directory's leader");
    let followers: Vec<u64> = cluster
        .node_ids()
        .into_iter()
        .filter(|node| *node != leader)
        .collect();
    let (lagging, admin) = (followers[0], followers[1]);
    let (sip_tls, http) = cluster
        .endpoints()
        .into_iter()
        .find(|endpoints| endpoints.id == lagging)
        .map(|endpoints| (endpoints.sip_tls, endpoints.http))
        .expect("the follower's endpoints");
    let tls = pms_crypto::client_config(&cluster.ca_file()).expect("client TLS config");
    add_user(&cluster, admin, "alice").await;
    let alice = account("alice");

    // 1. A new account registers through the lagging node (403 without the catch-up).
    cluster
        .deafen_grpc(lagging, leader)
        .expect("deafen the follower's gRPC port to the leader");
    add_user(&cluster, admin, "bob").await;
    let bob = account("bob");
    let register = {
        let tls = Arc::clone(&tls);
        tokio::spawn(async move {
            let mut connection = connect(sip_tls, tls).await;
            let deadline = Instant::now() + SIP_TIMEOUT;
            user_agent::register(&mut connection, &bob, &mut Registration::new(), deadline)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        })
    };
    let registered = heal_once_waiting(&mut cluster, lagging, http, register).await;
    assert_eq!(registered, Ok(()), "bob's REGISTER through node {lagging}");

    // 2. A message to an account added a moment ago (404 without the catch-up); alice is
    //    known to the lagging node since step 1 caught it up past her.
    cluster
        .deafen_grpc(lagging, leader)
        .expect("deafen the follower's gRPC port to the leader");
    add_user(&cluster, admin, "carol").await;
    let message = tokio::spawn(send(
        sip_tls,
        Arc::clone(&tls),
        alice.clone(),
        "sip:carol@localhost",
    ));
    let answer = heal_once_waiting(&mut cluster, lagging, http, message).await;
    assert!((200..300).contains(&answer), "MESSAGE to carol: {answer}");

    // 3. What does not exist is still refused, after asking the leader.
    let answer = send(
        sip_tls,
        Arc::clone(&tls),
        alice.clone(),
        "sip:nobody@localhost",
    )
    .await;
    assert_eq!(answer, 404, "MESSAGE to an account that does not exist");
    let impostor = Account {
        password: "not-alice-password".to_owned(),
        ..alice.clone()
    };
    let answer = send(sip_tls, Arc::clone(&tls), impostor, "sip:carol@localhost").await;
    assert_eq!(answer, 403, "MESSAGE with a wrong password");

    // 4. Messaging enabled a moment ago through another node (403 without the catch-up).
    //    Dave starts with messaging off; the lagging node refuses a MESSAGE to him, which also
    //    shows that it knows him so.
    add_account(&cluster, admin, "dave", false).await;
    let answer = send(
        sip_tls,
        Arc::clone(&tls),
        alice.clone(),
        "sip:dave@localhost",
    )
    .await;
    assert_eq!(answer, 403, "MESSAGE to dave, whose messaging is off");
    cluster
        .deafen_grpc(lagging, leader)
        .expect("deafen the follower's gRPC port to the leader");
    cluster
        .admin_client(admin)
        .await
        .expect("admin client")
        .set_messaging_enabled(&UserId::parse("dave").expect("user name"), true)
        .await
        .expect("enable messaging for dave");
    let message = tokio::spawn(send(
        sip_tls,
        Arc::clone(&tls),
        alice.clone(),
        "sip:dave@localhost",
    ));
    let answer = heal_once_waiting(&mut cluster, lagging, http, message).await;
    assert!((200..300).contains(&answer), "MESSAGE to dave: {answer}");

    let metrics = cluster::metrics_text(http)
        .await
        .expect("the follower's metrics");
    let caught_up = cluster::sample_value(
        &metrics,
        "pms_replica_catch_ups_total{result=\"caught_up\"}",
    );
    // bob's REGISTER, carol, nobody, the wrong password, dave off, dave on.
    assert_eq!(caught_up, Some(6.0), "catch-ups of node {lagging}");
    cluster.shutdown().await;
}

fn account(user: &str) -> Account {
    Account {
        user: user.to_owned(),
        password: PASSWORD.to_owned(),
        domain: DOMAIN.to_owned(),
    }
}

/// Adds `user` through `node`.
async fn add_user(cluster: &Cluster, node: u64, user: &str) {
    add_account(cluster, node, user, true).await;
}

/// Adds `user` through `node`, with messaging on or off.
async fn add_account(cluster: &Cluster, node: u64, user: &str, messaging_enabled: bool) {
    let client = cluster.admin_client(node).await.expect("admin client");
    client
        .add_user(NewUser {
            user: UserId::parse(user).expect("user name"),
            password: Password::new(PASSWORD).expect("password"),
            messaging_enabled,
            digest_algorithms: Vec::new(),
        })
        .await
        .unwrap_or_else(|error| panic!("adding {user}: {error}"));
}

async fn connect(server: SocketAddr, tls: Arc<ClientConfig>) -> SipConnection {
    SipConnection::connect(server, tls, SIP_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("SIP connection to {server}: {error}"))
}

/// Sends one MESSAGE as `from` to `to_uri`; the final status code.
async fn send(server: SocketAddr, tls: Arc<ClientConfig>, from: Account, to_uri: &str) -> u16 {
    let mut connection = connect(server, tls).await;
    let mut message = OutgoingMessage::new(to_uri.to_owned(), "hello".to_owned(), None);
    let deadline = Instant::now() + SIP_TIMEOUT;
    match user_agent::send_message(&mut connection, &from, &mut message, deadline).await {
        Ok(response) => response.code,
        Err(error) => panic!("MESSAGE to {to_uri}: {error}"),
    }
}

/// Waits until `node` reports a lookup waiting for its replica, then lifts the block on its
/// gRPC port; returns what `request` ended with. Fails when `request` ends first: the node
/// answered without asking the leader.
async fn heal_once_waiting<T: std::fmt::Debug>(
    cluster: &mut Cluster,
    node: u64,
    http: SocketAddr,
    mut request: tokio::task::JoinHandle<T>,
) -> T {
    let deadline = Instant::now() + SIP_TIMEOUT;
    loop {
        if request.is_finished() {
            let ended = (&mut request).await.expect("request task");
            panic!("node {node} answered before it asked the directory's leader: {ended:?}");
        }
        let waiting = match cluster::metrics_text(http).await {
            Some(metrics) => cluster::sample_value(&metrics, "pms_replica_catch_ups_waiting"),
            None => None,
        };
        if waiting.is_some_and(|waiting| waiting >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} never waited for its replica:\n{}",
            cluster.log_tail(node)
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    cluster.heal_partition(node).expect("lift the block");
    request.await.expect("request task")
}
