//! Runs the storage conformance suite against both stores, plus the RocksDB-only checks:
//! data survives close and reopen, and synced writes are readable after reopen.

use pms_storage::{MemoryStore, RocksStore, Store, WriteOp, conformance};
use pms_types::{GroupId, Keyspace, StateRead, group_key};

#[test]
fn memory_store_conforms() {
    conformance::run_all(MemoryStore::new);
}

#[test]
fn rocks_store_conforms() {
    let mut dirs = Vec::new();
    conformance::run_all(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path()).expect("open");
        dirs.push(dir);
        store
    });
}

#[test]
fn rocks_store_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user_key = group_key(GroupId(1), &[b"alice"]);
    let log_key = |index: u64| group_key(GroupId(1), &[&index.to_be_bytes()]);
    {
        let store = RocksStore::open(dir.path()).expect("open");
        let mut ops = vec![WriteOp::Put {
            keyspace: Keyspace::Users,
            key: user_key.clone(),
            value: b"record".to_vec(),
        }];
        for index in 1..=100u64 {
            ops.push(WriteOp::Put {
                keyspace: Keyspace::RaftLog,
                key: log_key(index),
                value: index.to_be_bytes().to_vec(),
            });
        }
        store.write_ops(&ops, true).expect("write");
        // Unsynced writes survive a clean close as well (the WAL is written, just not fsynced).
        store
            .write_ops(
                &[WriteOp::DeleteRange {
                    keyspace: Keyspace::RaftLog,
                    start: log_key(1),
                    end: log_key(51),
                }],
                false,
            )
            .expect("purge");
        store.flush().expect("flush");
    }
    let store = RocksStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.get(Keyspace::Users, &user_key).expect("get"),
        Some(b"record".to_vec())
    );
    let log = store
        .scan_prefix_all(Keyspace::RaftLog, &GroupId(1).key_prefix())
        .expect("scan");
    assert_eq!(log.len(), 50);
    assert_eq!(log.first().map(|(k, _)| k.clone()), Some(log_key(51)));
    let last = store
        .scan_prefix_reverse(Keyspace::RaftLog, &GroupId(1).key_prefix(), 1)
        .expect("scan");
    assert_eq!(last.first().map(|(k, _)| k.clone()), Some(log_key(100)));
    // And the reopened store still conforms to the single-instance checks on fresh keys.
    conformance::groups_never_mix(&store);
}

#[test]
fn rocks_store_creates_every_column_family() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path()).expect("open");
    for keyspace in Keyspace::ALL {
        assert_eq!(
            store.get(keyspace, b"\0\0\0\x01missing").expect("get"),
            None
        );
    }
    assert_eq!(store.path(), dir.path());
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                pending.push(entry.expect("dir entry").path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|window| window == needle)
        {
            found.push(path);
        }
    }
    found
}

/// Blocks are stored uncompressed: a value flushed to an SST file is found there by a plain
/// byte scan (an LZ4 block would hide a repetitive string like this one).
#[test]
fn rocks_store_files_are_uncompressed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let value = b"AUDITABLE-".repeat(64);
    let store = RocksStore::open(dir.path()).expect("open");
    for index in 0..50u32 {
        store
            .write_ops(
                &[WriteOp::Put {
                    keyspace: Keyspace::Messages,
                    key: group_key(GroupId(1), &[&index.to_be_bytes()]),
                    value: value.clone(),
                }],
                false,
            )
            .expect("write");
    }
    store.persist_memory().expect("flush");
    let holders = files_containing(dir.path(), &value);
    assert!(
        holders
            .iter()
            .any(|path| path.extension().is_some_and(|ext| ext == "sst")),
        "the value is not readable in any SST file: {holders:?}"
    );
}

/// A deleted (or overwritten) value stays in SST files and the WAL under its tombstone until
/// `purge_deleted`; after it, no file of the store holds the value.
#[test]
fn purge_deleted_leaves_no_deleted_value_in_any_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = b"WRAPPED-KEY-0123456789abcdef-SHRED-ME".to_vec();
    let key = group_key(GroupId(0), &[b"dave"]);
    let store = RocksStore::open(dir.path()).expect("open");
    store
        .write_ops(
            &[WriteOp::Put {
                keyspace: Keyspace::Users,
                key: key.clone(),
                value: secret.clone(),
            }],
            true,
        )
        .expect("put");
    store.persist_memory().expect("flush");
    store
        .write_ops(
            &[WriteOp::Delete {
                keyspace: Keyspace::Users,
                key: key.clone(),
            }],
            true,
        )
        .expect("delete");
    store.persist_memory().expect("flush");
    assert!(
        !files_containing(dir.path(), &secret).is_empty(),
        "control: before the purge the deleted value is still in the files"
    );
    store.purge_deleted(&[Keyspace::Users]).expect("purge");
    assert_eq!(store.get(Keyspace::Users, &key).expect("get"), None);
    assert_eq!(
        files_containing(dir.path(), &secret),
        Vec::<std::path::PathBuf>::new(),
        "a deleted value survived purge_deleted"
    );
}

/// A read-only (secondary) open beside a live store sees its writes and deletes so far.
#[test]
fn a_read_only_open_sees_the_live_store_writes_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secondary = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path()).expect("open");
    let key = |n: u8| group_key(GroupId(1), &[&[n]]);
    for n in 0..10u8 {
        store
            .write_ops(
                &[WriteOp::Put {
                    keyspace: Keyspace::Status,
                    key: key(n),
                    value: vec![n],
                }],
                false,
            )
            .expect("put");
    }
    store.persist_memory().expect("flush");
    for n in 0..5u8 {
        store
            .write_ops(
                &[WriteOp::Delete {
                    keyspace: Keyspace::Status,
                    key: key(n),
                }],
                false,
            )
            .expect("delete");
    }
    let reader = RocksStore::open_read_only(dir.path(), secondary.path()).expect("read-only");
    assert_eq!(
        reader
            .scan_prefix_all(Keyspace::Status, &[])
            .expect("scan")
            .len(),
        5
    );
}

/// A checkpoint is a store of its own holding everything written before it, and nothing after.
#[test]
fn a_checkpoint_opens_as_a_store_with_what_was_written_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path().join("live")).expect("open");
    let put = |n: u8| WriteOp::Put {
        keyspace: Keyspace::Messages,
        key: group_key(GroupId(2), &[&[n]]),
        value: vec![n; 8],
    };
    store.write_ops(&[put(1), put(2)], false).expect("write");
    let copy = dir.path().join("copy");
    store.checkpoint(&copy).expect("checkpoint");
    store.write_ops(&[put(3)], false).expect("write after");
    drop(store);
    let copy = RocksStore::open(&copy).expect("open the checkpoint");
    let keys: Vec<Vec<u8>> = copy
        .scan_prefix_all(Keyspace::Messages, &[])
        .expect("scan")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        keys,
        vec![
            group_key(GroupId(2), &[&[1]]),
            group_key(GroupId(2), &[&[2]])
        ]
    );
}
