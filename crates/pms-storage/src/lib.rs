//! The storage trait of PMS and its two implementations: [`RocksStore`] (RocksDB, one column
//! family per [`Keyspace`]) and [`MemoryStore`] (ordered maps, for tests and simulation).
//!
//! This is the only crate that knows RocksDB. Everything above it (the Raft log store and the
//! state machine in `pms-replication`) is written against [`Store`], and one conformance suite
//! ([`conformance`]) holds both implementations to the same behaviour.
//!
//! Invariant: a [`Store::write`] batch is atomic — after a crash either every operation of the
//! batch is visible or none is — and operations inside one batch take effect in order (a `Put`
//! after a `DeletePrefix` of the same key survives).
//! Invariant: a batch written with `sync: true` is durable (the WAL is fsynced) when `write`
//! returns. A batch written with `sync: false` becomes durable with the next synced write or
//! [`Store::flush`]; recovery keeps a prefix of the write order (one WAL shared by all keyspaces),
//! so a later durable write implies every earlier one is durable too.
//! Invariant: scans never return a key outside the requested prefix, so groups never mix.

pub mod conformance;
mod memory;
mod rocks;

pub use memory::MemoryStore;
pub use rocks::RocksStore;

use pms_types::{Keyspace, Mutation, StateRead, StorageFault};

/// Key-value pairs as scans return them, in key order (or reverse key order).
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// Most entries one scan call returns, whatever limit the caller asks for. Callers that need
/// more page with `start`.
pub const SCAN_ENTRIES_MAX: usize = 65_536;

/// Most operations accepted in one [`Store::write`] batch.
pub const WRITE_BATCH_OPS_MAX: usize = 1_000_000;

/// Why a storage operation failed. Every variant is fatal for the caller's current operation;
/// the replication layer turns it into a node-level failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open store at {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("column family {name} is missing from the store")]
    MissingColumnFamily { name: &'static str },
    #[error("read from {keyspace} failed: {detail}")]
    Read {
        keyspace: &'static str,
        detail: String,
    },
    #[error("write batch of {ops} operations failed: {detail}")]
    Write { ops: usize, detail: String },
    #[error("flush failed: {detail}")]
    Flush { detail: String },
    #[error("write batch of {ops} operations exceeds the maximum of {max}")]
    BatchTooLarge { ops: usize, max: usize },
    #[error("scan start {start:?} in {keyspace} does not begin with prefix {prefix:?}")]
    StartOutsidePrefix {
        keyspace: &'static str,
        prefix: Vec<u8>,
        start: Vec<u8>,
    },
    #[error("delete range in {keyspace} has start {start:?} after end {end:?}")]
    InvertedRange {
        keyspace: &'static str,
        start: Vec<u8>,
        end: Vec<u8>,
    },
    #[error("in-memory store lock poisoned by an earlier panic")]
    Poisoned,
}

impl From<StorageError> for StorageFault {
    fn from(error: StorageError) -> Self {
        StorageFault(error.to_string())
    }
}

/// One operation of an atomic write batch. A superset of [`Mutation`] with range deletes, which
/// the Raft log (truncate, purge) and snapshot installation need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        keyspace: Keyspace,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        keyspace: Keyspace,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        keyspace: Keyspace,
        start: Vec<u8>,
        end: Vec<u8>,
    },
    /// Deletes every key that starts with `prefix`.
    DeletePrefix {
        keyspace: Keyspace,
        prefix: Vec<u8>,
    },
}

impl From<Mutation> for WriteOp {
    fn from(mutation: Mutation) -> Self {
        match mutation {
            Mutation::Put {
                keyspace,
                key,
                value,
            } => WriteOp::Put {
                keyspace,
                key,
                value,
            },
            Mutation::Delete { keyspace, key } => WriteOp::Delete { keyspace, key },
        }
    }
}

/// The key-value store under a PMS node: every keyspace of every group on this node.
///
/// Reads come from [`StateRead`] (point `get`, forward `scan_prefix`); this trait adds atomic
/// writes, reverse scans and durability control.
pub trait Store: StateRead + Send + Sync + 'static {
    /// Applies `ops` atomically and in order. With `sync`, returns only after they are durable.
    fn write_ops(&self, ops: &[WriteOp], sync: bool) -> Result<(), StorageError>;

    /// Key-ordered entries whose key starts with `prefix`, from the last one backwards, at most
    /// `limit` (capped at [`SCAN_ENTRIES_MAX`]). Used to find the last Raft log entry.
    fn scan_prefix_reverse(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageError>;

    /// Makes every write so far durable (fsync of the WAL).
    fn flush(&self) -> Result<(), StorageError>;

    /// Moves everything buffered in memory into the store's files (RocksDB: memtables to SST),
    /// so that a clean restart does not replay the WAL. Called on shutdown.
    fn persist_memory(&self) -> Result<(), StorageError> {
        self.flush()
    }

    /// Writes a consistent copy of the whole store (every keyspace, at one point in time) into
    /// the new directory `dir` (RocksDB: a checkpoint, hard links where it can).
    fn checkpoint(&self, dir: &std::path::Path) -> Result<(), StorageError> {
        Err(StorageError::Flush {
            detail: format!("this store cannot make a checkpoint in {}", dir.display()),
        })
    }

    /// About how many entries `keyspace` holds (all groups). RocksDB estimates from its files
    /// and memtables; cheap enough to call every few seconds.
    fn estimated_entries(&self, keyspace: Keyspace) -> Result<u64, StorageError> {
        Ok(self
            .scan_prefix_all(keyspace, &[])
            .map_err(|fault| StorageError::Read {
                keyspace: keyspace.name(),
                detail: fault.0,
            })?
            .len() as u64)
    }

    /// Rewrites the store's files so that no deleted or overwritten value of `keyspaces`
    /// survives in them: RocksDB keeps a deleted value in its SST files (under a tombstone)
    /// and in the WAL until compaction; this flushes every column family (so older WAL files
    /// become obsolete and are deleted) and compacts `keyspaces` down to the bottommost level.
    /// Crypto-shredding depends on it. Proportional to those keyspaces' size: call it rarely.
    fn purge_deleted(&self, _keyspaces: &[Keyspace]) -> Result<(), StorageError> {
        // A store without files (memory) keeps no deleted value anywhere.
        self.persist_memory()
    }

    /// Applies state-machine mutations atomically; see [`Store::write_ops`].
    fn write(&self, batch: &[Mutation], sync: bool) -> Result<(), StorageError> {
        let ops: Vec<WriteOp> = batch.iter().cloned().map(WriteOp::from).collect();
        self.write_ops(&ops, sync)
    }

    /// Deletes every key of `keyspace` that starts with `prefix`, atomically.
    fn delete_prefix(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
        sync: bool,
    ) -> Result<(), StorageError> {
        self.write_ops(
            &[WriteOp::DeletePrefix {
                keyspace,
                prefix: prefix.to_vec(),
            }],
            sync,
        )
    }

    /// Every entry under `prefix` in `keyspace`, paging through [`StateRead::scan_prefix`].
    /// Bounded by the data itself; use for snapshots and tests, not on request paths.
    fn scan_prefix_all(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
    ) -> Result<KeyValues, StorageFault> {
        let mut all: KeyValues = Vec::new();
        let mut start = prefix.to_vec();
        loop {
            let page = self.scan_prefix(keyspace, prefix, &start, SCAN_ENTRIES_MAX)?;
            let full = page.len() == SCAN_ENTRIES_MAX;
            if let Some((last, _)) = page.last() {
                // The next page starts just after the last key: the key with a 0 byte appended.
                start = last.clone();
                start.push(0);
            }
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when no such key
/// exists (the prefix is empty or all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut successor = prefix.to_vec();
    while let Some(last) = successor.pop() {
        if last != 0xff {
            successor.push(last + 1);
            return Some(successor);
        }
    }
    None
}

/// Validates the arguments shared by both stores' `scan_prefix`.
fn check_scan_start(keyspace: Keyspace, prefix: &[u8], start: &[u8]) -> Result<(), StorageError> {
    if start.is_empty() || start.starts_with(prefix) {
        Ok(())
    } else {
        Err(StorageError::StartOutsidePrefix {
            keyspace: keyspace.name(),
            prefix: prefix.to_vec(),
            start: start.to_vec(),
        })
    }
}

/// Validates a batch before either store touches its data.
fn check_batch(ops: &[WriteOp]) -> Result<(), StorageError> {
    if ops.len() > WRITE_BATCH_OPS_MAX {
        return Err(StorageError::BatchTooLarge {
            ops: ops.len(),
            max: WRITE_BATCH_OPS_MAX,
        });
    }
    for op in ops {
        if let WriteOp::DeleteRange {
            keyspace,
            start,
            end,
        } = op
            && start > end
        {
            return Err(StorageError::InvertedRange {
                keyspace: keyspace.name(),
                start: start.clone(),
                end: end.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_increments_the_last_non_ff_byte() {
        assert_eq!(prefix_successor(&[0, 0, 0, 1]), Some(vec![0, 0, 0, 2]));
        assert_eq!(prefix_successor(&[0, 1, 0xff]), Some(vec![0, 2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(&[]), None);
    }
}
