//! What an on-call engineer reads off `/metrics` of a three-node cluster: the queue depth of a
//! group is the same on every node (it was a per-node counter that read 2 / 1 / -1 after every
//! mailbox drained), each group has one leader that every node names, the build is
//! identified, every committed delivery's latency is observed once, the `process_*` metrics
//! are there, and `promtool check metrics` accepts each node's exposition.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, http_get, wait_until};

const METRICS_TIMEOUT: Duration = Duration::from_secs(30);

fn scrape(http_port: u16) -> String {
    http_get(http_port, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Every sample of `name` in `text`, by its label text (`group="3"`), or "" for none.
fn samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => {
                    let (labels, value) = labelled.split_once("} ")?;
                    (labels.to_owned(), value)
                }
                None => (String::new(), rest.strip_prefix(' ')?),
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// Queue depth of every mailbox group as each node reports it.
fn queue_depths(cluster: &Cluster) -> Vec<BTreeMap<String, f64>> {
    cluster
        .nodes
        .iter()
        .map(|node| samples(&scrape(node.ports.http), "pms_queue_depth"))
        .collect()
}

/// Waits until every node counts `queued` messages in `user`'s group (of 4) and none in the
/// others.
fn wait_for_queued(cluster: &Cluster, user: &str, queued: f64) {
    let user_id = pms_types::UserId::parse(user).expect("user");
    let group = format!("group=\"{}\"", pms_types::mailbox_group_for(&user_id, 4).0);
    let what = format!("every node counts {queued} queued in {user}'s group, none elsewhere");
    wait_until(&what, METRICS_TIMEOUT, || {
        queue_depths(cluster).iter().all(|depths| {
            depths.get(&group) == Some(&queued) && depths.values().sum::<f64>() == queued
        })
    });
}

#[test]
fn queue_depth_leaders_and_build_are_reported_the_same_by_every_node() {
    let mut cluster = Cluster::start(3, &["--mailbox-groups", "4"]);
    let alice = &cluster.nodes[0];
    alice.add_user("alice");
    alice.add_user("bob");
    cluster.wait_caught_up(METRICS_TIMEOUT);

    // Three messages for bob, who is offline: his group holds 3, whichever node is asked
    // (alice's holds nothing yet: her delivery reports come once bob has the messages).
    for text in ["one", "two", "three"] {
        let (code, lines) = alice.send("alice", "bob", text, &[]);
        assert_eq!(code, 0, "send {text}: {lines:?}");
    }
    wait_for_queued(&cluster, "bob", 3.0);
    // A restarted node counts its replica's queue afresh when its groups open.
    let status = cluster.nodes[2].terminate();
    assert!(status.success(), "node 3 stopped with {status}");
    cluster.nodes[2].spawn();
    wait_for_queued(&cluster, "bob", 3.0);

    let (alice, bob) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (code, received) = bob.receive("bob", 3, 30);
    assert_eq!(code, 0, "bob's listen: {received:?}");
    assert_eq!(received.len(), 3, "{received:?}");
    // pmsctl send asks for positive-delivery reports: three now wait for alice, in her group.
    wait_for_queued(&cluster, "alice", 3.0);
    let (code, reports) = alice.receive("alice", 3, 30);
    assert_eq!(code, 0, "alice's listen: {reports:?}");
    assert_eq!(reports.len(), 3, "{reports:?}");
    // Six deliveries committed (bob's three messages, alice's three reports), each observed
    // once, by the leader that committed it.
    wait_until("six delivery latencies observed", METRICS_TIMEOUT, || {
        let observed: f64 = cluster
            .nodes
            .iter()
            .filter_map(|node| {
                samples(
                    &scrape(node.ports.http),
                    "pms_delivery_latency_seconds_count",
                )
                .get("")
                .copied()
            })
            .sum();
        observed == 6.0
    });
    wait_until("every node counts an empty queue", METRICS_TIMEOUT, || {
        queue_depths(&cluster)
            .iter()
            .all(|depths| depths.len() == 4 && depths.values().all(|depth| *depth == 0.0))
    });

    // Each group (the directory and 4 mailbox groups) has exactly one leader, named alike by
    // every node, and in one term across nodes.
    wait_until(
        "one leader per group, known everywhere",
        METRICS_TIMEOUT,
        || {
            let texts: Vec<String> = cluster.nodes.iter().map(|n| scrape(n.ports.http)).collect();
            (0..=4).all(|group| {
                let label = format!("group=\"{group}\"");
                let leaders: Vec<f64> = texts
                    .iter()
                    .filter_map(|text| samples(text, "pms_raft_leader").get(&label).copied())
                    .collect();
                let leading: f64 = texts
                    .iter()
                    .filter_map(|text| samples(text, "pms_raft_is_leader").get(&label).copied())
                    .sum();
                let terms: Vec<f64> = texts
                    .iter()
                    .filter_map(|text| samples(text, "pms_raft_term").get(&label).copied())
                    .collect();
                leaders.len() == 3
                    && leaders
                        .iter()
                        .all(|leader| *leader == leaders[0] && *leader > 0.0)
                    && leading == 1.0
                    && terms.len() == 3
                    && terms.iter().all(|term| *term == terms[0] && *term >= 1.0)
            })
        },
    );

    for node in &cluster.nodes {
        let text = scrape(node.ports.http);
        let build = samples(&text, "pms_build_info");
        let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            build.len() == 1 && build.keys().all(|labels| labels.contains(&version)),
            "pms_build_info: {build:?}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "pms_storage_bytes",
            "pms_storage_available_bytes",
        ] {
            assert!(
                samples(&text, name).values().all(|value| *value > 0.0)
                    && !samples(&text, name).is_empty(),
                "{name} missing or zero on node {}:\n{text}",
                node.ports.http
            );
        }
        // A leader of a group has one lag series per follower; the others none.
        let lag = samples(&text, "pms_raft_follower_lag_entries");
        let led = samples(&text, "pms_raft_is_leader")
            .values()
            .filter(|leading| **leading == 1.0)
            .count();
        assert_eq!(lag.len(), led * 2, "follower lag series: {lag:?}");
        common::promtool_check_metrics(&text);
    }
    // Every node's gRPC port saw mutual-TLS handshakes from its peers.
    let handshakes = samples(
        &scrape(cluster.nodes[2].ports.http),
        "pms_tls_handshakes_total",
    );
    assert!(
        handshakes
            .get("port=\"grpc\",result=\"ok\"")
            .is_some_and(|count| *count >= 1.0),
        "{handshakes:?}"
    );
}
