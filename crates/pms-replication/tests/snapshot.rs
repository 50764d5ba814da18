//! Snapshot round trips: a snapshot built from one store and installed into another carries
//! the group's state and applied state exactly, removes the target group's stale keys and
//! leaves every other group's keys alone. Also: the state machine refuses entries it must not
//! apply instead of skipping them.

mod common;

use common::{dump_state, membership_entry, normal_entry, provision};
use futures::stream;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use pms_replication::{Group, GroupConfig, StateMachine, UnreachableNetworkFactory};
use pms_storage::{MemoryStore, RocksStore, Store, WriteOp};
use pms_types::{GroupId, Keyspace, group_key};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

const GROUP: GroupId = GroupId(1);
const OTHER: GroupId = GroupId(2);

fn state_machine(group: GroupId, store: &Arc<dyn Store>) -> StateMachine {
    let (events, _) = broadcast::channel(16);
    StateMachine::new(group, Arc::clone(store), events)
}

fn put(keyspace: Keyspace, group: GroupId, key: &[u8], value: &[u8]) -> WriteOp {
    WriteOp::Put {
        keyspace,
        key: group_key(group, &[key]),
        value: value.to_vec(),
    }
}

async fn apply_entries(sm: &mut StateMachine, entries: Vec<common::Entry>) -> std::io::Result<()> {
    sm.apply(stream::iter(
        entries.into_iter().map(|entry| Ok((entry, None))),
    ))
    .await
}

async fn round_trip(source: Arc<dyn Store>, target: Arc<dyn Store>) {
    // Source: state in several keyspaces of GROUP, plus another group's keys.
    source
        .write_ops(
            &[
                put(Keyspace::Users, GROUP, b"alice", b"alice-record"),
                put(
                    Keyspace::Messages,
                    GROUP,
                    b"alice\0\0\0\0\0\0\0\0\x01",
                    b"sealed",
                ),
                put(Keyspace::Status, GROUP, b"msg-1", b"queued"),
                put(Keyspace::Users, OTHER, b"zed", b"source-other"),
            ],
            false,
        )
        .expect("seed source");
    let mut source_sm = state_machine(GROUP, &source);
    apply_entries(
        &mut source_sm,
        vec![
            membership_entry(1, 1, &[1, 2, 3]),
            normal_entry(1, 2, GROUP, provision("carol")),
        ],
    )
    .await
    .expect("apply on source");
    let expected_state = dump_state(source.as_ref(), GROUP);
    let expected_applied = source_sm.applied_state().await.expect("applied state");
    assert_eq!(expected_applied.0.as_ref().map(|id| id.index()), Some(2));

    let mut builder = source_sm
        .try_create_snapshot_builder(true)
        .await
        .expect("builder");
    let snapshot = builder.build_snapshot().await.expect("build");
    assert_eq!(snapshot.meta.last_log_id, expected_applied.0);
    assert_eq!(snapshot.meta.last_membership, expected_applied.1);
    let current = source_sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("a current snapshot");
    assert_eq!(current.meta, snapshot.meta);

    // Target: stale keys of GROUP that the snapshot must remove, and another group's keys.
    target
        .write_ops(
            &[
                put(Keyspace::Users, GROUP, b"stale", b"gone"),
                put(Keyspace::Dedup, GROUP, b"stale-dedup", b"gone"),
                put(Keyspace::Users, OTHER, b"zed", b"target-other"),
                put(Keyspace::Expiry, OTHER, b"e", b"target-other"),
            ],
            false,
        )
        .expect("seed target");
    let other_before = dump_state(target.as_ref(), OTHER);
    let mut target_sm = state_machine(GROUP, &target);
    target_sm
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");

    assert_eq!(
        dump_state(target.as_ref(), GROUP),
        expected_state,
        "group state carried exactly"
    );
    assert_eq!(
        dump_state(target.as_ref(), OTHER),
        other_before,
        "other groups untouched"
    );
    assert_eq!(
        target_sm.applied_state().await.expect("applied state"),
        expected_applied
    );
    let installed = target_sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("installed snapshot");
    assert_eq!(installed.meta, current.meta);
    assert_eq!(
        installed.snapshot.into_inner(),
        current.snapshot.into_inner()
    );

    // A snapshot of GROUP offered to OTHER's state machine is refused and changes nothing.
    let mut other_sm = state_machine(OTHER, &target);
    let replay = source_sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("snapshot");
    assert!(
        other_sm
            .install_snapshot(&replay.meta, replay.snapshot)
            .await
            .is_err()
    );
    assert_eq!(dump_state(target.as_ref(), OTHER), other_before);
}

#[tokio::test]
async fn snapshot_round_trip_on_memory_stores() {
    round_trip(Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_round_trip_on_rocks_stores() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let target_dir = tempfile::tempdir().expect("tempdir");
    round_trip(
        Arc::new(RocksStore::open(source_dir.path()).expect("open")),
        Arc::new(RocksStore::open(target_dir.path()).expect("open")),
    )
    .await;
}

#[tokio::test]
async fn entries_of_another_group_stop_the_state_machine() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut sm = state_machine(GROUP, &store);
    apply_entries(&mut sm, vec![membership_entry(1, 1, &[1])])
        .await
        .expect("membership");
    let result = apply_entries(
        &mut sm,
        vec![normal_entry(1, 2, OTHER, provision("mallory"))],
    )
    .await;
    let error = result.expect_err("a foreign entry must not be applied");
    assert!(error.to_string().contains("group 2"), "{error}");
    let (last_applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(
        last_applied.map(|id| id.index()),
        Some(1),
        "nothing applied, nothing skipped"
    );
    assert!(dump_state(store.as_ref(), OTHER).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_group_snapshots_on_demand_and_keeps_proposing() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let group = Group::open(
        1,
        GROUP,
        Arc::clone(&store),
        UnreachableNetworkFactory,
        &GroupConfig::default(),
    )
    .await
    .expect("open");
    group
        .initialize_single("node-1".into())
        .await
        .expect("initialize");
    group
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let mut events = group.subscribe_applied();
    for n in 0..3 {
        group
            .propose(provision(&format!("user{n}")))
            .await
            .expect("propose");
    }
    let mut last_index = 0;
    for _ in 0..3 {
        last_index = events.recv().await.expect("applied event").index;
    }
    group
        .snapshot_now(Duration::from_secs(10))
        .await
        .expect("snapshot");
    let mut sm = state_machine(GROUP, &store);
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("snapshot stored");
    assert!(
        current.meta.last_log_id.map(|id| id.index()) >= Some(last_index),
        "snapshot covers the proposals"
    );
    let blob: pms_replication::snapshot::SnapshotBlob =
        pms_replication::format::decode(current.snapshot.get_ref()).expect("decode snapshot");
    assert_eq!(blob.group, GROUP);
    let captured: Vec<_> = blob.entries.clone();
    assert_eq!(
        captured,
        dump_state(store.as_ref(), GROUP),
        "snapshot holds the group's state"
    );
    group
        .propose(provision("after-snapshot"))
        .await
        .expect("propose after snapshot");
    assert!(group.fatal_error().is_none());
    group.shutdown().await;
}
