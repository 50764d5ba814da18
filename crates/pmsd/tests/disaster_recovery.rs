//! Day-2 procedures of issue 9 that start from a lost cluster:
//!
//! - backup and restore: `pmsctl backup` from a running three-node cluster, every data dir
//!   destroyed, `pmsctl restore` into a fresh data dir, `pmsd --force-new-cluster`, two fresh
//!   nodes added: every message queued before the backup is delivered afterwards, and the backup
//!   holds it sealed;
//! - quorum loss: two of three nodes gone for good; the survivor restarted with
//!   `--force-new-cluster` serves again, with what it had applied.

mod common;

use std::time::Duration;

use common::{Cluster, Node, files_containing, metric_value, wait_until};

fn bodies(messages: &[serde_json::Value]) -> Vec<String> {
    messages
        .iter()
        .map(|message| message["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Adds two fresh nodes (ids 2 and 3) to the one-node cluster `cluster.nodes[0]` leads.
fn add_two_fresh_nodes(cluster: &mut Cluster) {
    for id in [2u64, 3] {
        let index = cluster.start_joining_node(&[]);
        let address = cluster.nodes[index].grpc_address();
        let output =
            cluster.nodes[0].run_pmsctl(&["cluster", "add-node", &id.to_string(), &address]);
        assert!(
            output.status.success(),
            "add-node {id}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.nodes[index].wait_ready(Duration::from_secs(60));
    }
    cluster.wait_caught_up(Duration::from_secs(60));
}

/// Replaces the arguments of `node` (a member of `cluster`) so that it starts alone with
/// `--force-new-cluster` as node 1.
fn start_forced(cluster: &Cluster, node: &mut Node) {
    let certs = cluster.shared.path().join("certs");
    node.extra_args = vec![
        "--node-id".into(),
        "1".into(),
        "--certs-dir".into(),
        certs.display().to_string(),
        "--master-key-file".into(),
        cluster
            .shared
            .path()
            .join("master.key")
            .display()
            .to_string(),
        "--force-new-cluster".into(),
    ];
    node.spawn();
    // From now on it starts like any member.
    node.extra_args.retain(|arg| arg != "--force-new-cluster");
}

#[test]
fn a_backup_restored_into_a_fresh_cluster_delivers_every_message_queued_before_it() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.nodes[0].add_user("alice");
    cluster.nodes[0].add_user("bob");
    let sent: Vec<String> = (0..12)
        .map(|n| format!("kept in the backup {n} 🔐"))
        .collect();
    for (n, text) in sent.iter().enumerate() {
        let (code, lines) = cluster.nodes[n % 3].send("alice", "bob", text, &[]);
        assert_eq!(code, 0, "{lines:?}");
    }
    // A removal makes every node snapshot its directory (the shred pass); the account added
    // after it lies past that snapshot. The restored node must start from such a state (a
    // snapshot older than the last applied entry) and keep what came after the snapshot.
    cluster.nodes[0].add_user("carol");
    let output = cluster.nodes[0].run_pmsctl(&["user", "remove", "carol"]);
    assert!(output.status.success());
    let backed_up = cluster.nodes[1].ports.http;
    wait_until("node 2's shred pass", Duration::from_secs(60), || {
        metric_value(backed_up, "pms_shred_passes_total").is_some_and(|passes| passes >= 1.0)
            && metric_value(backed_up, "pms_shred_pending") == Some(0.0)
    });
    cluster.nodes[0].add_user("dave");
    let backup = cluster.shared.path().join("backup");
    let output = cluster.nodes[1].run_pmsctl(&["backup", &backup.display().to_string()]);
    assert!(
        output.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(backup.join("backup.json").exists());
    // Sealed: no body in any file of the backup (blocks are uncompressed, so a byte scan sees).
    assert!(files_containing(&backup, "kept in the backup".as_bytes()).is_empty());
    // Control: the backup holds the accounts, stored in clear by design.
    assert!(!files_containing(&backup, b"alice").is_empty());
    // After the backup: not in it.
    let (code, _) = cluster.nodes[0].send("alice", "bob", "after the backup", &[]);
    assert_eq!(code, 0);

    // Every node and data dir is gone.
    for node in &mut cluster.nodes {
        node.kill();
    }
    let mut fresh = Node::prepared(Vec::new(), cluster.shared.path().join("certs"));
    let output = fresh.run_pmsctl(&[
        "restore",
        &backup.display().to_string(),
        "--data-dir",
        &fresh.data_dir().display().to_string(),
    ]);
    assert!(
        output.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Nothing is restored over a data dir that holds something.
    let again = fresh.run_pmsctl(&[
        "restore",
        &backup.display().to_string(),
        "--data-dir",
        &fresh.data_dir().display().to_string(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    start_forced(&cluster, &mut fresh);
    let users = fresh.run_pmsctl(&["user", "list", "--json"]);
    let users = String::from_utf8_lossy(&users.stdout);
    assert!(
        users.contains("\"dave\"") && !users.contains("\"carol\""),
        "{users}"
    );
    cluster.nodes = vec![fresh];
    add_two_fresh_nodes(&mut cluster);
    // Bob, on a node that joined after the restore, receives exactly what was queued before
    // the backup, in order.
    let (code, received) = cluster.nodes[2].receive("bob", sent.len(), 60);
    assert_eq!(code, 0, "{received:?}");
    assert_eq!(bodies(&received), sent);
}

#[test]
fn a_survivor_of_a_lost_majority_serves_again_with_force_new_cluster() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.nodes[0].add_user("alice");
    cluster.nodes[0].add_user("bob");
    let sent: Vec<String> = (0..8).map(|n| format!("before the loss {n}")).collect();
    for text in &sent {
        let (code, lines) = cluster.nodes[0].send("alice", "bob", text, &[]);
        assert_eq!(code, 0, "{lines:?}");
    }
    cluster.wait_caught_up(Duration::from_secs(30));
    // Two nodes are gone for good; the survivor alone cannot commit.
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let mut survivor = cluster.nodes.remove(0);
    survivor.kill();
    // Restarted as node 1 alone: it elects itself and serves what it had applied.
    start_forced(&cluster, &mut survivor);
    let log = survivor.log();
    assert!(
        log.contains("this node is now the group's only member"),
        "says what it did: {log}"
    );
    let (code, lines) = survivor.send("alice", "bob", "after the loss", &[]);
    assert_eq!(code, 0, "{lines:?}");
    let (code, received) = survivor.receive("bob", sent.len() + 1, 60);
    assert_eq!(code, 0, "{received:?}");
    let mut expected = sent.clone();
    expected.push("after the loss".to_owned());
    assert_eq!(bodies(&received), expected);
    // A restart without the flag keeps the new membership.
    assert!(survivor.terminate().success());
    survivor.spawn();
    let (code, _) = survivor.send("alice", "bob", "restarted", &[]);
    assert_eq!(code, 0);
    cluster.nodes = vec![survivor];
    add_two_fresh_nodes(&mut cluster);
}
