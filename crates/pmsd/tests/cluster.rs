//! A real 3-node cluster of `pmsd` processes on loopback, driven by the real `pmsctl`: any node
//! serves any user, deliveries cross nodes, a killed leader loses no acknowledged message, and
//! a restarted node rejoins by itself.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Cluster;

/// Sync window long enough that a device on another node answers inside it on a slow machine.
const CLUSTER_ARGS: &[&str] = &["--sync-window-ms", "5000"];

/// Bob's mailbox group among the default 8: the group whose leader the failover tests kill.
fn bob_group() -> u32 {
    let bob = pms_types::UserId::parse("bob").expect("valid user");
    pms_types::mailbox_group_for(&bob, 8).0
}

fn body_of(line: &serde_json::Value) -> String {
    line["body"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn any_node_serves_any_user_and_deliveries_cross_nodes() {
    let cluster = Cluster::start(3, CLUSTER_ARGS);
    let [one, two, three] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    // Accounts made through one node are known on every node.
    two.add_user("alice");
    three.add_user("bob");

    // Offline: sent through node 3, received by Bob on node 1.
    let (code, lines) = three.send("alice", "bob", "offline via three 😀", &[]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.last().unwrap()["code"], 202, "{lines:?}");
    let (code, received) = one.receive("bob", 1, 30);
    assert_eq!(code, 0, "{received:?}");
    assert_eq!(body_of(&received[0]), "offline via three 😀");

    // Online: Bob registered on node 1, Alice sends through node 2; the device's answer
    // reaches Alice's node within the synchronous window: 200, delivered.
    let mut listener = one.listen("bob", 1, 60);
    listener.wait_for_stderr(Duration::from_secs(30), "registered");
    let (code, lines) = two.send("alice", "bob", "online via two", &[]);
    assert_eq!(code, 0, "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["status"], "delivered", "{lines:?}");
    assert_eq!(last["code"], 200, "{lines:?}");
    let (code, received) = listener.finish();
    assert_eq!(code, 0);
    assert_eq!(body_of(&received[0]), "online via two");

    // Every node is in the status, answering; every group (the directory and 8 mailbox groups)
    // has exactly one leader.
    let status = cluster.status();
    let nodes = status["nodes"].as_array().expect("nodes").clone();
    assert_eq!(nodes.len(), 3, "{status}");
    assert!(
        nodes.iter().all(|node| node.get("unreachable").is_none()),
        "{status}"
    );
    let leaders_per_group = |status: &serde_json::Value| {
        let mut leaders: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        for node in status["nodes"].as_array().into_iter().flatten() {
            for group in node["groups"].as_array().into_iter().flatten() {
                if group["role"] == "leader" {
                    leaders
                        .entry(group["group"].as_u64().unwrap_or_default())
                        .or_default()
                        .push(node["node"].as_u64().unwrap_or_default());
                }
            }
        }
        leaders
    };
    let leaders = leaders_per_group(&status);
    assert_eq!(leaders.len(), 9, "{status}");
    assert!(leaders.values().all(|nodes| nodes.len() == 1), "{status}");
    // Leadership spreads: before long every node leads some group.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.status();
        let leading: BTreeSet<u64> = leaders_per_group(&status)
            .values()
            .flatten()
            .copied()
            .collect();
        if leading.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leaders did not spread: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn killing_the_leader_loses_no_acknowledged_message_and_it_rejoins() {
    let mut cluster = Cluster::start(3, CLUSTER_ARGS);
    let leader = cluster.leader_index(bob_group(), Duration::from_secs(30));
    let followers: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    cluster.nodes[followers[0]].add_user("alice");
    cluster.nodes[followers[0]].add_user("bob");

    // 20 acknowledged messages, sent alternately through both followers (forwarded to the
    // leader), then the leader dies with all of them queued.
    let mut sent = BTreeSet::new();
    for n in 0..20 {
        let node = &cluster.nodes[followers[n % 2]];
        let text = format!("queued {n}");
        let (code, lines) = node.send("alice", "bob", &text, &[]);
        assert_eq!(code, 0, "{lines:?}");
        assert_eq!(lines.last().unwrap()["code"], 202, "{lines:?}");
        sent.insert(text);
    }
    cluster.nodes[leader].kill();

    // A surviving node takes over; Bob, on a survivor, receives every message in order.
    let survivor = &cluster.nodes[followers[1]];
    let (code, received) = survivor.receive("bob", 20, 60);
    assert_eq!(code, 0, "{received:?}");
    let bodies: Vec<String> = received.iter().map(body_of).collect();
    let expected: Vec<String> = (0..20).map(|n| format!("queued {n}")).collect();
    assert_eq!(bodies, expected);

    // Writes are accepted again while the old leader is down.
    let (code, lines) = survivor.send("alice", "bob", "after failover", &[]);
    assert_eq!(code, 0, "{lines:?}");
    // ... and `cluster status` says the cluster is degraded, in its exit status too.
    let status = survivor.run_pmsctl(&["cluster", "status"]);
    assert_eq!(status.status.code(), Some(3), "{status:?}");
    let said = String::from_utf8_lossy(&status.stderr);
    // The dead node is named; a group still electing may be listed before it.
    assert!(
        said.contains("cluster degraded: ")
            && said.contains(&format!("node {} unreachable", leader + 1)),
        "{said}"
    );

    // The killed node restarts with its data dir and rejoins without any command: it becomes
    // ready and catches up to the others.
    cluster.nodes[leader].spawn();
    cluster.wait_caught_up(Duration::from_secs(60));
    assert_eq!(cluster.status()["nodes"].as_array().map(Vec::len), Some(3));
    let status = cluster.nodes[followers[1]].run_pmsctl(&["cluster", "status"]);
    assert_eq!(status.status.code(), Some(0), "whole again: {status:?}");
}

#[test]
fn a_majority_down_refuses_writes_and_recovers_without_repair() {
    let mut cluster = Cluster::start(3, CLUSTER_ARGS);
    cluster.nodes[0].add_user("alice");
    cluster.nodes[0].add_user("bob");
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    // Alone, node 1 cannot commit: the sender gets a SIP error, never a false 202.
    let (code, lines) = cluster.nodes[0].send("alice", "bob", "no quorum", &["--timeout", "40"]);
    assert_ne!(code, 0, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|line| line["code"] != 202 && line["code"] != 200),
        "{lines:?}"
    );
    // The others come back; the cluster serves again with no manual step.
    cluster.nodes[1].spawn();
    cluster.nodes[2].spawn();
    cluster.nodes[0].wait_ready(Duration::from_secs(60));
    let (code, lines) = cluster.nodes[2].send("alice", "bob", "quorum again", &[]);
    assert_eq!(code, 0, "{lines:?}");
    // The unacknowledged message may or may not have been stored (its outcome was unknown to
    // the sender, who got no 2xx); the acknowledged one is delivered, once.
    let (_, received) = cluster.nodes[1].receive("bob", 2, 15);
    // Only message lines: a listener that stops on its timeout prints a status line too.
    let bodies: Vec<String> = received
        .iter()
        .filter(|line| line.get("body").is_some())
        .map(body_of)
        .collect();
    assert_eq!(
        bodies.iter().filter(|body| *body == "quorum again").count(),
        1,
        "{bodies:?}"
    );
    assert!(
        bodies
            .iter()
            .all(|body| body == "quorum again" || body == "no quorum"),
        "{bodies:?}"
    );
}

#[test]
fn a_node_down_for_long_catches_up_from_a_snapshot() {
    // Snapshots every 20 entries, 5 kept behind: after 60 messages the log the down node
    // needs is gone, so only a snapshot can bring it back.
    let mut args = CLUSTER_ARGS.to_vec();
    args.extend(["--raft-snapshot-logs", "20", "--raft-logs-kept", "5"]);
    let mut cluster = Cluster::start(3, &args);
    let leader = cluster.leader_index(bob_group(), Duration::from_secs(30));
    let down = (leader + 1) % 3;
    let other = 3 - leader - down;
    cluster.nodes[leader].add_user("alice");
    cluster.nodes[leader].add_user("bob");
    cluster.nodes[down].kill();
    for n in 0..60 {
        let (code, lines) = cluster.nodes[other].send("alice", "bob", &format!("m{n}"), &[]);
        assert_eq!(code, 0, "{lines:?}");
    }
    cluster.nodes[down].spawn();
    cluster.wait_caught_up(Duration::from_secs(60));
    // The restarted node now holds the whole queue: with the node that stayed a follower gone,
    // it and the leader still deliver all 60, in order.
    cluster.nodes[other].kill();
    let (code, received) = cluster.nodes[down].receive("bob", 60, 60);
    assert_eq!(code, 0, "{received:?}");
    let bodies: Vec<String> = received.iter().map(body_of).collect();
    let expected: Vec<String> = (0..60).map(|n| format!("m{n}")).collect();
    assert_eq!(bodies, expected);
}

#[test]
fn a_node_is_added_as_learner_then_voter_and_removed_again() {
    let mut cluster = Cluster::start(3, CLUSTER_ARGS);
    cluster.nodes[0].add_user("alice");
    cluster.nodes[0].add_user("bob");
    let (code, _) = cluster.nodes[1].send("alice", "bob", "before the fourth node", &[]);
    assert_eq!(code, 0);
    let fourth = cluster.start_joining_node(CLUSTER_ARGS);
    // A joining node never bootstraps a cluster of its own: it is not ready until added.
    let deadline = Instant::now() + Duration::from_secs(30);
    let readiness = loop {
        if let Some((status, _)) = common::http_get(cluster.nodes[fourth].ports.http, "/readyz") {
            break status;
        }
        assert!(Instant::now() < deadline, "joining node serves no HTTP");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(readiness, 503);
    let address = cluster.nodes[fourth].grpc_address();
    let output = cluster.nodes[2].run_pmsctl(&["cluster", "add-node", "4", &address]);
    assert!(
        output.status.success(),
        "add-node: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.nodes[fourth].wait_ready(Duration::from_secs(60));
    let status = cluster.status();
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    // It holds the replicated state: Bob receives the earlier message through it.
    let (code, received) = cluster.nodes[fourth].receive("bob", 1, 30);
    assert_eq!(code, 0, "{received:?}");
    assert_eq!(body_of(&received[0]), "before the fourth node");

    // Bad requests are refused before anything changes.
    let output = cluster.nodes[0].run_pmsctl(&["cluster", "remove-node", "0"]);
    assert!(!output.status.success());
    let output = cluster.nodes[0].run_pmsctl(&["cluster", "add-node", "5", "no-port"]);
    assert!(!output.status.success());
    // A node that never was a member is not "removed": the id is a mistake.
    let output = cluster.nodes[0].run_pmsctl(&["cluster", "remove-node", "9"]);
    assert!(!output.status.success(), "remove-node 9 succeeded");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("node 9"), "{said}");

    let output = cluster.nodes[0].run_pmsctl(&["cluster", "remove-node", "4"]);
    assert!(
        output.status.success(),
        "remove-node: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = cluster.status();
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    // The removed node is no member any more, so it says it is not ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::http_get(cluster.nodes[fourth].ports.http, "/readyz").map(|(status, _)| status)
        != Some(503)
    {
        assert!(Instant::now() < deadline, "removed node still ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}
