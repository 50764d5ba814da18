//! Bounded state (issue 8 item 14): dedup entries and final statuses are pruned on a schedule,
//! so under constant load the state does not grow with the number of messages ever sent.
//! The node runs with retentions and a prune interval of one second; what it stores is counted
//! through RocksDB (read-only, beside the running node).

mod common;

use std::time::{Duration, Instant};

use common::Node;
use pms_types::Keyspace;

/// Dedup entries and statuses of messages to bob in the node's store, counted through
/// RocksDB. (The delivery reports alice asked for wait in her mailbox, which nobody reads:
/// they are queued messages, kept until they expire, and not counted here.)
fn entries_for_bob(node: &Node) -> (usize, usize) {
    use pms_storage::Store as _;
    let (store, _secondary) = common::open_store_read_only(&node.data_dir().join("db"));
    let bob = pms_types::UserId::parse("bob").expect("user");
    let dedup = store
        .scan_prefix_all(Keyspace::Dedup, &[])
        .expect("scan")
        .iter()
        .map(|(_, value)| pms_mailbox::decode::<pms_mailbox::DedupEntry>(Keyspace::Dedup, value))
        .filter(|entry| entry.as_ref().expect("dedup entry").recipient == bob)
        .count();
    let statuses = store
        .scan_prefix_all(Keyspace::Status, &[])
        .expect("scan")
        .iter()
        .map(|(_, value)| {
            pms_mailbox::decode::<pms_mailbox::MessageStatus>(Keyspace::Status, value)
        })
        .filter(|status| status.as_ref().expect("status").recipient == bob)
        .count();
    (dedup, statuses)
}

#[test]
fn dedup_entries_and_final_statuses_are_pruned_under_constant_load() {
    let node = Node::start_with(
        [
            "--dedup-retention-secs",
            "1",
            "--status-retention-secs",
            "1",
            "--prune-interval-secs",
            "1",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    node.add_user("alice");
    node.add_user("bob");
    let rounds = 5;
    let per_round = 8;
    let mut peak = 0;
    for round in 0..rounds {
        let listener = node.listen("bob", per_round, 60);
        for n in 0..per_round {
            let (code, lines) = node.send(
                "alice",
                "bob",
                &format!("round {round} #{n}"),
                &["--expires", "2"],
            );
            assert_eq!(code, 0, "{lines:?}");
        }
        let (code, received) = listener.finish();
        assert_eq!(code, 0);
        assert_eq!(received.len(), per_round);
        let (dedup, statuses) = entries_for_bob(&node);
        peak = peak.max(dedup + statuses);
    }
    assert!(
        peak > 0,
        "control: the load left dedup entries and statuses"
    );
    // Everything sent has expired and been delivered: within a few prune intervals nothing of
    // it is left, however many messages were sent before.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = entries_for_bob(&node);
        if left == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dedup entries and statuses left (peak {peak}): {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
