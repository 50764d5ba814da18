//! openraft's own storage test suite (`openraft::testing::log::Suite`) run over our log store
//! and state machine, on `MemoryStore` and on `RocksStore`.
//!
//! Every built store is first seeded with the Raft log, Raft metadata and state of the groups
//! just below and above the one under test, so the suite (which expects empty storage) also
//! checks that groups sharing a store never see each other's data.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use pms_replication::{LogStore, StateMachine, TypeConfig};
use pms_storage::{MemoryStore, RocksStore, Store, WriteOp};
use pms_types::{GroupId, Keyspace, group_key};
use std::sync::Arc;
use tokio::sync::broadcast;

const GROUP: GroupId = GroupId(3);

/// Writes undecodable Raft data and state for the neighbours of [`GROUP`]: if any of it leaked
/// into the group under test, decoding or the suite's emptiness checks would fail.
fn seed_neighbours(store: &dyn Store) {
    let mut ops = Vec::new();
    for neighbour in [GroupId(GROUP.0 - 1), GroupId(GROUP.0 + 1)] {
        for index in 0u64..20 {
            ops.push(WriteOp::Put {
                keyspace: Keyspace::RaftLog,
                key: group_key(neighbour, &[&index.to_be_bytes()]),
                value: b"not an entry".to_vec(),
            });
        }
        for name in [
            &b"vote"[..],
            b"committed",
            b"purged",
            b"last_applied",
            b"membership",
            b"snapshot",
        ] {
            ops.push(WriteOp::Put {
                keyspace: Keyspace::RaftMeta,
                key: group_key(neighbour, &[name]),
                value: vec![0xff; 3],
            });
        }
        ops.push(WriteOp::Put {
            keyspace: Keyspace::Users,
            key: group_key(neighbour, &[b"x"]),
            value: b"x".to_vec(),
        });
    }
    store.write_ops(&ops, true).expect("seed neighbours");
}

fn build_pair(store: Arc<dyn Store>) -> (LogStore, StateMachine) {
    seed_neighbours(store.as_ref());
    let (events, _) = broadcast::channel(16);
    (
        LogStore::new(GROUP, Arc::clone(&store)),
        StateMachine::new(GROUP, store, events),
    )
}

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let (log, sm) = build_pair(Arc::new(MemoryStore::new()));
        Ok(((), log, sm))
    }
}

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, sm) = build_pair(Arc::new(
            RocksStore::open(dir.path()).expect("open rocks store"),
        ));
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_on_memory_store() {
    Suite::test_all(MemoryBuilder)
        .await
        .expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_on_rocks_store() {
    Suite::test_all(RocksBuilder)
        .await
        .expect("openraft storage suite");
}
