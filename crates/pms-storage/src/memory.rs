//! [`MemoryStore`]: the in-memory [`Store`], one ordered map per keyspace behind one lock.
//!
//! Invariant: a batch is applied under the write lock, so readers see all of it or none of it.
//! Invariant: nothing here is durable; `sync` and `flush` are accepted and do nothing.

use crate::{
    KeyValues, SCAN_ENTRIES_MAX, StorageError, Store, WriteOp, check_batch, check_scan_start,
    prefix_successor,
};
use pms_types::{Keyspace, StateRead, StorageFault};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory [`Store`] for tests and simulation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    keyspaces: RwLock<BTreeMap<Keyspace, Map>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn read_guard(&self) -> Result<RwLockReadGuard<'_, BTreeMap<Keyspace, Map>>, StorageError> {
        self.keyspaces.read().map_err(|_| StorageError::Poisoned)
    }

    fn write_guard(&self) -> Result<RwLockWriteGuard<'_, BTreeMap<Keyspace, Map>>, StorageError> {
        self.keyspaces.write().map_err(|_| StorageError::Poisoned)
    }
}

/// Entries of `map` whose key starts with `prefix` and is `>= start`, in the requested order.
fn range_under_prefix<'a>(
    map: &'a Map,
    prefix: &[u8],
    start: &[u8],
) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
    let lower = if start.is_empty() {
        prefix.to_vec()
    } else {
        start.to_vec()
    };
    let upper = match prefix_successor(prefix) {
        Some(successor) => Bound::Excluded(successor),
        None => Bound::Unbounded,
    };
    map.range((Bound::Included(lower), upper))
}

impl StateRead for MemoryStore {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault> {
        let guard = self.read_guard()?;
        Ok(guard.get(&keyspace).and_then(|map| map.get(key)).cloned())
    }

    fn scan_prefix(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageFault> {
        check_scan_start(keyspace, prefix, start)?;
        let guard = self.read_guard()?;
        let Some(map) = guard.get(&keyspace) else {
            return Ok(Vec::new());
        };
        Ok(range_under_prefix(map, prefix, start)
            .take(limit.min(SCAN_ENTRIES_MAX))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }
}

impl Store for MemoryStore {
    fn write_ops(&self, ops: &[WriteOp], _sync: bool) -> Result<(), StorageError> {
        check_batch(ops)?;
        let mut guard = self.write_guard()?;
        for op in ops {
            match op {
                WriteOp::Put {
                    keyspace,
                    key,
                    value,
                } => {
                    guard
                        .entry(*keyspace)
                        .or_default()
                        .insert(key.clone(), value.clone());
                }
                WriteOp::Delete { keyspace, key } => {
                    if let Some(map) = guard.get_mut(keyspace) {
                        map.remove(key);
                    }
                }
                WriteOp::DeleteRange {
                    keyspace,
                    start,
                    end,
                } => {
                    if let Some(map) = guard.get_mut(keyspace) {
                        let doomed: Vec<Vec<u8>> = map
                            .range(start.clone()..end.clone())
                            .map(|(key, _)| key.clone())
                            .collect();
                        for key in doomed {
                            map.remove(&key);
                        }
                    }
                }
                WriteOp::DeletePrefix { keyspace, prefix } => {
                    if let Some(map) = guard.get_mut(keyspace) {
                        let doomed: Vec<Vec<u8>> = range_under_prefix(map, prefix, &[])
                            .map(|(key, _)| key.clone())
                            .collect();
                        for key in doomed {
                            map.remove(&key);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn scan_prefix_reverse(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        let guard = self.read_guard()?;
        let Some(map) = guard.get(&keyspace) else {
            return Ok(Vec::new());
        };
        Ok(range_under_prefix(map, prefix, &[])
            .rev()
            .take(limit.min(SCAN_ENTRIES_MAX))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
