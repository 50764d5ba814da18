//! The storage conformance suite: behaviour every [`Store`] must show, run by the tests of
//! this crate against [`crate::MemoryStore`] and [`crate::RocksStore`].
//!
//! Each check takes a fresh, empty store and panics (via `assert!`) on the first deviation, so
//! it can be called from any test harness. [`run_all`] runs every check that needs only one
//! store instance; durability across reopen is specific to stores that persist and lives in
//! the RocksDB tests.
//!
//! Invariant: the checks only write keys that start with a group prefix, like real callers.

use crate::{Store, WriteOp};
use pms_types::{GroupId, Keyspace, Mutation, group_key};

fn put(keyspace: Keyspace, key: &[u8], value: &[u8]) -> WriteOp {
    WriteOp::Put {
        keyspace,
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn key(group: u32, rest: &[u8]) -> Vec<u8> {
    group_key(GroupId(group), &[rest])
}

/// Runs every single-instance check, each on a fresh store from `new_store`.
pub fn run_all<S: Store>(mut new_store: impl FnMut() -> S) {
    put_get_delete(&new_store());
    batches_apply_in_order(&new_store());
    mutations_write_through_the_state_machine_path(&new_store());
    prefix_scans_honour_start_and_limit(&new_store());
    reverse_scans_return_the_last_entries(&new_store());
    groups_never_mix(&new_store());
    range_deletes_are_half_open(&new_store());
    keyspaces_are_separate(&new_store());
    invalid_batches_change_nothing(&new_store());
}

/// A put is read back, overwritten, deleted; absent keys read as `None`.
pub fn put_get_delete(store: &dyn Store) {
    let k = key(1, b"alice");
    assert_eq!(store.get(Keyspace::Users, &k).expect("get"), None);
    store
        .write_ops(&[put(Keyspace::Users, &k, b"v1")], true)
        .expect("write");
    assert_eq!(
        store.get(Keyspace::Users, &k).expect("get"),
        Some(b"v1".to_vec())
    );
    store
        .write_ops(&[put(Keyspace::Users, &k, b"v2")], false)
        .expect("write");
    assert_eq!(
        store.get(Keyspace::Users, &k).expect("get"),
        Some(b"v2".to_vec())
    );
    store
        .write_ops(
            &[WriteOp::Delete {
                keyspace: Keyspace::Users,
                key: k.clone(),
            }],
            false,
        )
        .expect("write");
    assert_eq!(store.get(Keyspace::Users, &k).expect("get"), None);
    // Deleting an absent key is not an error.
    store
        .write_ops(
            &[WriteOp::Delete {
                keyspace: Keyspace::Users,
                key: k.clone(),
            }],
            false,
        )
        .expect("write");
    store.flush().expect("flush");
}

/// Operations in one batch take effect in order: a later put wins over an earlier delete of
/// the same key, and a prefix delete followed by puts leaves exactly those puts.
pub fn batches_apply_in_order(store: &dyn Store) {
    let a = key(1, b"a");
    let b = key(1, b"b");
    let c = key(1, b"c");
    store
        .write_ops(
            &[
                put(Keyspace::Messages, &a, b"old"),
                put(Keyspace::Messages, &b, b"old"),
                put(Keyspace::Messages, &c, b"old"),
            ],
            false,
        )
        .expect("write");
    store
        .write_ops(
            &[
                WriteOp::DeletePrefix {
                    keyspace: Keyspace::Messages,
                    prefix: GroupId(1).key_prefix().to_vec(),
                },
                put(Keyspace::Messages, &b, b"new"),
                WriteOp::Delete {
                    keyspace: Keyspace::Messages,
                    key: c.clone(),
                },
                put(Keyspace::Messages, &c, b"newer"),
            ],
            true,
        )
        .expect("write");
    let all = store
        .scan_prefix(Keyspace::Messages, &GroupId(1).key_prefix(), &[], 100)
        .expect("scan");
    assert_eq!(
        all,
        vec![(b.clone(), b"new".to_vec()), (c.clone(), b"newer".to_vec())]
    );
}

/// [`Store::write`] applies `pms_types::Mutation`s like the equivalent `WriteOp`s.
pub fn mutations_write_through_the_state_machine_path(store: &dyn Store) {
    let k = key(3, b"bob");
    store
        .write(
            &[
                Mutation::Put {
                    keyspace: Keyspace::MailboxMeta,
                    key: k.clone(),
                    value: b"1".to_vec(),
                },
                Mutation::Put {
                    keyspace: Keyspace::Status,
                    key: k.clone(),
                    value: b"2".to_vec(),
                },
                Mutation::Delete {
                    keyspace: Keyspace::Status,
                    key: k.clone(),
                },
            ],
            false,
        )
        .expect("write");
    assert_eq!(
        store.get(Keyspace::MailboxMeta, &k).expect("get"),
        Some(b"1".to_vec())
    );
    assert_eq!(store.get(Keyspace::Status, &k).expect("get"), None);
    store
        .delete_prefix(Keyspace::MailboxMeta, &GroupId(3).key_prefix(), false)
        .expect("delete prefix");
    assert_eq!(store.get(Keyspace::MailboxMeta, &k).expect("get"), None);
}

/// Prefix scans are key-ordered, start at `start` (inclusive), stop at `limit` and never
/// leave the prefix, even when a sibling prefix sorts right after it.
pub fn prefix_scans_honour_start_and_limit(store: &dyn Store) {
    let mut ops = Vec::new();
    for seq in 0u64..10 {
        ops.push(put(
            Keyspace::Messages,
            &group_key(GroupId(1), &[b"bob", &[0], &seq.to_be_bytes()]),
            &[seq as u8],
        ));
    }
    // "bob" ++ 1 sorts after every "bob" ++ 0 key: a sibling that must not leak into bob's scans.
    ops.push(put(
        Keyspace::Messages,
        &group_key(GroupId(1), &[b"bob", &[1]]),
        b"sibling",
    ));
    ops.push(put(
        Keyspace::Messages,
        &group_key(GroupId(1), &[b"bo"]),
        b"shorter",
    ));
    store.write_ops(&ops, false).expect("write");

    let prefix = group_key(GroupId(1), &[b"bob", &[0]]);
    let all = store
        .scan_prefix(Keyspace::Messages, &prefix, &[], 100)
        .expect("scan");
    assert_eq!(all.len(), 10);
    assert!(
        all.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "scan is key-ordered"
    );
    assert!(all.iter().all(|(k, _)| k.starts_with(&prefix)));

    let start = group_key(GroupId(1), &[b"bob", &[0], &4u64.to_be_bytes()]);
    let page = store
        .scan_prefix(Keyspace::Messages, &prefix, &start, 3)
        .expect("scan");
    let values: Vec<u8> = page.iter().map(|(_, v)| v[0]).collect();
    assert_eq!(values, vec![4, 5, 6]);

    let tail = store
        .scan_prefix(Keyspace::Messages, &prefix, &start, 100)
        .expect("scan");
    assert_eq!(tail.len(), 6);
    assert!(
        store
            .scan_prefix(Keyspace::Messages, &prefix, &[], 0)
            .expect("scan")
            .is_empty()
    );

    // A start outside the prefix is a caller bug, reported rather than silently scanned.
    assert!(
        store
            .scan_prefix(Keyspace::Messages, &prefix, &key(2, b"x"), 10)
            .is_err()
    );

    let everything = store
        .scan_prefix_all(Keyspace::Messages, &GroupId(1).key_prefix())
        .expect("scan all");
    assert_eq!(everything.len(), 12);
}

/// Reverse scans return the last entries of the prefix first.
pub fn reverse_scans_return_the_last_entries(store: &dyn Store) {
    assert!(
        store
            .scan_prefix_reverse(Keyspace::RaftLog, &GroupId(1).key_prefix(), 1)
            .expect("scan")
            .is_empty()
    );
    let mut ops = Vec::new();
    for group in [0u32, 1, 2] {
        for index in 1u64..=5 {
            ops.push(put(
                Keyspace::RaftLog,
                &group_key(GroupId(group), &[&index.to_be_bytes()]),
                &[group as u8, index as u8],
            ));
        }
    }
    store.write_ops(&ops, true).expect("write");
    let last = store
        .scan_prefix_reverse(Keyspace::RaftLog, &GroupId(1).key_prefix(), 1)
        .expect("scan");
    assert_eq!(
        last,
        vec![(group_key(GroupId(1), &[&5u64.to_be_bytes()]), vec![1, 5])]
    );
    let last_three = store
        .scan_prefix_reverse(Keyspace::RaftLog, &GroupId(2).key_prefix(), 3)
        .expect("scan");
    let indexes: Vec<u8> = last_three.iter().map(|(_, v)| v[1]).collect();
    assert_eq!(indexes, vec![5, 4, 3]);
    let group_zero = store
        .scan_prefix_reverse(Keyspace::RaftLog, &GroupId(0).key_prefix(), 100)
        .expect("scan");
    assert_eq!(group_zero.len(), 5);
    assert!(group_zero.iter().all(|(_, v)| v[0] == 0));
}

/// Keys of different groups never mix: scans and prefix deletes of one group leave the others
/// alone, including the last group, whose all-0xff prefix has no successor.
pub fn groups_never_mix(store: &dyn Store) {
    let groups = [
        GroupId(0),
        GroupId(1),
        GroupId(2),
        GroupId(256),
        GroupId(u32::MAX),
    ];
    let mut ops = Vec::new();
    for group in groups {
        for user in [b"alice".as_slice(), b"bob"] {
            ops.push(put(
                Keyspace::Users,
                &group_key(group, &[user]),
                &group.0.to_be_bytes(),
            ));
        }
    }
    store.write_ops(&ops, false).expect("write");
    for group in groups {
        let entries = store
            .scan_prefix(Keyspace::Users, &group.key_prefix(), &[], 100)
            .expect("scan");
        assert_eq!(entries.len(), 2, "group {group}");
        assert!(
            entries
                .iter()
                .all(|(k, v)| k.starts_with(&group.key_prefix()) && v == &group.0.to_be_bytes())
        );
        let reverse = store
            .scan_prefix_reverse(Keyspace::Users, &group.key_prefix(), 100)
            .expect("scan");
        assert_eq!(reverse.len(), 2, "group {group}");
    }
    store
        .delete_prefix(Keyspace::Users, &GroupId(1).key_prefix(), false)
        .expect("delete");
    store
        .delete_prefix(Keyspace::Users, &GroupId(u32::MAX).key_prefix(), false)
        .expect("delete");
    for group in groups {
        let entries = store
            .scan_prefix(Keyspace::Users, &group.key_prefix(), &[], 100)
            .expect("scan");
        let expected = if group == GroupId(1) || group == GroupId(u32::MAX) {
            0
        } else {
            2
        };
        assert_eq!(entries.len(), expected, "group {group}");
    }
}

/// `DeleteRange` removes `[start, end)`: the end key survives.
pub fn range_deletes_are_half_open(store: &dyn Store) {
    let index_key = |index: u64| group_key(GroupId(1), &[&index.to_be_bytes()]);
    let ops: Vec<WriteOp> = (1u64..=10)
        .map(|index| put(Keyspace::RaftLog, &index_key(index), b"e"))
        .collect();
    store.write_ops(&ops, false).expect("write");
    store
        .write_ops(
            &[WriteOp::DeleteRange {
                keyspace: Keyspace::RaftLog,
                start: index_key(3),
                end: index_key(6),
            }],
            false,
        )
        .expect("write");
    let left: Vec<Vec<u8>> = store
        .scan_prefix(Keyspace::RaftLog, &GroupId(1).key_prefix(), &[], 100)
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let expected: Vec<Vec<u8>> = [1u64, 2, 6, 7, 8, 9, 10]
        .into_iter()
        .map(index_key)
        .collect();
    assert_eq!(left, expected);
}

/// The same key in two keyspaces holds two values.
pub fn keyspaces_are_separate(store: &dyn Store) {
    let k = key(1, b"same");
    let ops: Vec<WriteOp> = Keyspace::ALL
        .iter()
        .map(|keyspace| put(*keyspace, &k, keyspace.name().as_bytes()))
        .collect();
    store.write_ops(&ops, false).expect("write");
    for keyspace in Keyspace::ALL {
        assert_eq!(
            store.get(keyspace, &k).expect("get"),
            Some(keyspace.name().as_bytes().to_vec())
        );
    }
    store
        .delete_prefix(Keyspace::Users, &GroupId(1).key_prefix(), false)
        .expect("delete");
    assert_eq!(store.get(Keyspace::Users, &k).expect("get"), None);
    assert!(store.get(Keyspace::Status, &k).expect("get").is_some());
}

/// A batch that fails validation applies none of its operations.
pub fn invalid_batches_change_nothing(store: &dyn Store) {
    let k = key(1, b"untouched");
    let result = store.write_ops(
        &[
            put(Keyspace::Users, &k, b"v"),
            WriteOp::DeleteRange {
                keyspace: Keyspace::Users,
                start: key(1, b"z"),
                end: key(1, b"a"),
            },
        ],
        false,
    );
    assert!(result.is_err(), "inverted range must be refused");
    assert_eq!(store.get(Keyspace::Users, &k).expect("get"), None);
}
