//! A single-node group end to end: bootstrap, propose, applied events, restart on RocksDB
//! with the state and the log intact, and the errors a caller sees when it cannot propose.

mod common;

use common::{dump_state, provision, reference_state, sample_commands};
use openraft::EntryPayload;
use openraft::storage::RaftLogReader;
use pms_mailbox::{Command, CommandResponse};
use pms_replication::{Group, GroupConfig, LogStore, ReplicationError, UnreachableNetworkFactory};
use pms_storage::{MemoryStore, RocksStore, Store};
use pms_types::GroupId;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const GROUP: GroupId = GroupId(1);
const NODE: u64 = 1;
const DEADLINE: Duration = Duration::from_secs(10);

async fn open_group(store: Arc<dyn Store>) -> Group {
    Group::open(
        NODE,
        GROUP,
        store,
        UnreachableNetworkFactory,
        &GroupConfig::default(),
    )
    .await
    .expect("open group")
}

async fn open_leader(store: Arc<dyn Store>) -> Group {
    let group = open_group(store).await;
    group
        .initialize_single("127.0.0.1:50051".into())
        .await
        .expect("initialize");
    assert_eq!(group.wait_for_leader(DEADLINE).await.expect("leader"), NODE);
    group
}

/// The commands in the normal entries of the group's log, in log order.
async fn logged_commands(store: Arc<dyn Store>) -> (Vec<Command>, u64) {
    let mut reader = LogStore::new(GROUP, store);
    let entries = reader.try_get_log_entries(..).await.expect("read log");
    let last_index = entries
        .last()
        .map(|entry| entry.log_id.index())
        .unwrap_or(0);
    for pair in entries.windows(2) {
        assert_eq!(
            pair[0].log_id.index() + 1,
            pair[1].log_id.index(),
            "log is contiguous"
        );
    }
    let commands = entries
        .into_iter()
        .filter_map(|entry| match entry.payload {
            EntryPayload::Normal(command) => {
                assert_eq!(command.0.group, GROUP);
                Some(command.0.command)
            }
            _ => None,
        })
        .collect();
    (commands, last_index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_group_commits_survives_restart_and_continues_on_rocksdb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_round = sample_commands(1);

    let (state_before, last_index_before) = {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).expect("open store"));
        let group = open_leader(Arc::clone(&store)).await;
        assert!(group.is_leader());
        // Idempotent: a second bootstrap of an initialized group is a no-op.
        group
            .initialize_single("127.0.0.1:50051".into())
            .await
            .expect("initialize again");

        let mut events = group.subscribe_applied();
        let observed = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&observed);
        group.set_commit_latency_observer(Arc::new(move |group, latency| {
            assert_eq!(group, GROUP);
            assert!(latency < DEADLINE);
            counter.fetch_add(1, Ordering::SeqCst);
        }));

        let mut responses = Vec::new();
        for command in &first_round {
            responses.push(group.propose(command.clone()).await.expect("propose"));
        }
        assert_eq!(observed.load(Ordering::SeqCst), first_round.len());

        // One event per command, in order, carrying the command and its response.
        let mut last_event_index = 0;
        for (command, response) in first_round.iter().zip(&responses) {
            let event = tokio::time::timeout(DEADLINE, events.recv())
                .await
                .expect("event in time")
                .expect("event");
            assert_eq!(event.group, GROUP);
            assert_eq!(event.command.as_ref(), command);
            assert_eq!(&event.response, response);
            assert!(event.index > last_event_index, "events follow log order");
            last_event_index = event.index;
        }
        // Metrics trail the apply a little; they catch up without another proposal.
        group
            .wait_for_applied(last_event_index, DEADLINE)
            .await
            .expect("metrics catch up");
        assert_eq!(group.last_applied_index(), Some(last_event_index));

        // Reads right after propose see the effects: the state equals a sequential replay.
        let state = dump_state(store.as_ref(), GROUP);
        assert_eq!(state, reference_state(GROUP, &first_round));

        group.shutdown().await;
        // openraft's tasks released their handles: only this test and the Group hold the store.
        assert_eq!(Arc::strong_count(&store), 2);
        assert!(matches!(
            group.propose(provision("late")).await,
            Err(ReplicationError::ShuttingDown { group: GROUP })
        ));
        (state, last_event_index)
    };

    // Everything that held the store is gone: RocksDB can be opened again.
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).expect("reopen store"));
    assert_eq!(
        dump_state(store.as_ref(), GROUP),
        state_before,
        "state intact on disk"
    );
    let (logged, last_index) = logged_commands(Arc::clone(&store)).await;
    assert_eq!(logged, first_round, "log intact on disk");
    assert_eq!(last_index, last_index_before);

    let group = open_leader(Arc::clone(&store)).await;
    group
        .wait_for_applied(last_index_before, DEADLINE)
        .await
        .expect("re-applied");
    assert_eq!(
        dump_state(store.as_ref(), GROUP),
        state_before,
        "state intact after restart"
    );

    let second_round = sample_commands(2);
    for command in &second_round {
        group
            .propose(command.clone())
            .await
            .expect("propose after restart");
    }
    let all: Vec<Command> = first_round.iter().chain(&second_round).cloned().collect();
    assert_eq!(
        dump_state(store.as_ref(), GROUP),
        reference_state(GROUP, &all)
    );
    let (logged, last_index_after) = logged_commands(Arc::clone(&store)).await;
    assert_eq!(logged, all);
    assert!(last_index_after > last_index_before);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposing_to_an_uninitialized_group_is_retryable_not_leader() {
    let group = open_group(Arc::new(MemoryStore::new())).await;
    let error = group
        .propose(provision("alice"))
        .await
        .expect_err("no leader yet");
    assert_eq!(
        error,
        ReplicationError::NotLeader {
            group: GROUP,
            leader: None
        }
    );
    assert!(error.is_retryable());
    assert!(!error.outcome_unknown());
    assert!(!group.is_leader());
    assert!(matches!(
        group.wait_for_leader(Duration::from_millis(50)).await,
        Err(ReplicationError::NoLeader { group: GROUP, .. })
    ));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_event_receivers_miss_events_but_proposals_continue() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let config = GroupConfig {
        applied_events_capacity: 2,
        ..GroupConfig::default()
    };
    let group = Group::open(NODE, GROUP, store, UnreachableNetworkFactory, &config)
        .await
        .expect("open");
    group
        .initialize_single("node-1".into())
        .await
        .expect("initialize");
    group.wait_for_leader(DEADLINE).await.expect("leader");
    let mut events = group.subscribe_applied();
    for n in 0..5 {
        let response = group
            .propose(provision(&format!("user{n}")))
            .await
            .expect("propose");
        assert_eq!(
            response,
            CommandResponse::Done,
            "provisioning user{n} goes on while the event receiver lags"
        );
    }
    match events.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => assert_eq!(missed, 3),
        other => panic!("expected a lag report, got {other:?}"),
    }
    group.shutdown().await;
}

/// A store whose state reads fail once `failing` is set, as a broken disk would.
struct FaultyStateReads {
    inner: MemoryStore,
    failing: std::sync::atomic::AtomicBool,
}

impl FaultyStateReads {
    fn check(&self, keyspace: pms_types::Keyspace) -> Result<(), pms_types::StorageFault> {
        if self.failing.load(Ordering::SeqCst) && pms_types::Keyspace::STATE.contains(&keyspace) {
            return Err(pms_types::StorageFault("injected read fault".into()));
        }
        Ok(())
    }
}

impl pms_types::StateRead for FaultyStateReads {
    fn get(
        &self,
        keyspace: pms_types::Keyspace,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, pms_types::StorageFault> {
        self.check(keyspace)?;
        self.inner.get(keyspace, key)
    }

    fn scan_prefix(
        &self,
        keyspace: pms_types::Keyspace,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<pms_storage::KeyValues, pms_types::StorageFault> {
        self.check(keyspace)?;
        self.inner.scan_prefix(keyspace, prefix, start, limit)
    }
}

impl Store for FaultyStateReads {
    fn write_ops(
        &self,
        ops: &[pms_storage::WriteOp],
        sync: bool,
    ) -> Result<(), pms_storage::StorageError> {
        self.inner.write_ops(ops, sync)
    }

    fn scan_prefix_reverse(
        &self,
        keyspace: pms_types::Keyspace,
        prefix: &[u8],
        limit: usize,
    ) -> Result<pms_storage::KeyValues, pms_storage::StorageError> {
        self.inner.scan_prefix_reverse(keyspace, prefix, limit)
    }

    fn flush(&self) -> Result<(), pms_storage::StorageError> {
        self.inner.flush()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_failure_stops_the_group_instead_of_skipping_the_entry() {
    let faulty = Arc::new(FaultyStateReads {
        inner: MemoryStore::new(),
        failing: Default::default(),
    });
    let store: Arc<dyn Store> = Arc::clone(&faulty) as Arc<dyn Store>;
    let group = open_leader(Arc::clone(&store)).await;
    group
        .propose(provision("alice"))
        .await
        .expect("healthy propose");
    let state_before = dump_state(faulty.inner_store(), GROUP);

    faulty.failing.store(true, Ordering::SeqCst);
    let error = group
        .propose(provision("bob"))
        .await
        .expect_err("apply cannot read state");
    assert!(error.is_fatal(), "{error:?}");
    assert!(!error.is_retryable());
    faulty.failing.store(false, Ordering::SeqCst);

    // The group stopped: it reports a fatal error, applies nothing more, and bob was not skipped
    // past (no state change, no later entry applied).
    assert!(
        common::wait_until(DEADLINE, || group.fatal_error().is_some()).await,
        "fatal error reported"
    );
    let fatal = group.fatal_error().expect("group reports the fatal error");
    assert!(fatal.is_fatal(), "{fatal:?}");
    assert!(group.propose(provision("carol")).await.is_err());
    assert_eq!(dump_state(faulty.inner_store(), GROUP), state_before);
    group.shutdown().await;
}

impl FaultyStateReads {
    fn inner_store(&self) -> &dyn Store {
        &self.inner
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_and_mailbox_groups_share_one_store_without_mixing() {
    use pms_replication::Replication;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let replication = Replication::open(
        NODE,
        Arc::clone(&store),
        &[GroupId::DIRECTORY, GroupId(1), GroupId(1)],
        1,
        |_| UnreachableNetworkFactory,
        &GroupConfig::default(),
    )
    .await
    .expect("open replication");
    assert_eq!(
        replication.groups().count(),
        2,
        "duplicate group ids open once"
    );
    replication
        .initialize_single("node-1")
        .await
        .expect("initialize");
    replication
        .initialize_single("node-1")
        .await
        .expect("initialize is idempotent");

    let alice = common::user("alice");
    let mailbox_group = replication.group_for_user(&alice);
    assert_eq!(mailbox_group, GroupId(1));
    assert!(replication.group(GroupId(7)).is_none());
    assert!(matches!(
        replication.require_group(GroupId(7)),
        Err(ReplicationError::UnknownGroup { group: GroupId(7) })
    ));

    let directory = replication.directory().expect("directory hosted");
    let mailbox = replication
        .group(mailbox_group)
        .expect("mailbox group hosted");
    directory
        .wait_for_leader(DEADLINE)
        .await
        .expect("directory leader");
    mailbox
        .wait_for_leader(DEADLINE)
        .await
        .expect("mailbox leader");

    let directory_commands = vec![provision("alice"), provision("bob")];
    let mailbox_commands = vec![provision("alice"), common::enqueue("alice", 9)];
    for command in &directory_commands {
        directory
            .propose(command.clone())
            .await
            .expect("directory propose");
    }
    for command in &mailbox_commands {
        mailbox
            .propose(command.clone())
            .await
            .expect("mailbox propose");
    }
    assert_eq!(
        dump_state(store.as_ref(), GroupId::DIRECTORY),
        reference_state(GroupId::DIRECTORY, &directory_commands)
    );
    assert_eq!(
        dump_state(store.as_ref(), GroupId(1)),
        reference_state(GroupId(1), &mailbox_commands)
    );
    replication.shutdown().await;
}
