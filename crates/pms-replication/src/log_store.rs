//! [`LogStore`]: openraft's `RaftLogStorage` for ONE group over a shared [`Store`].
//!
//! Entries live in `Keyspace::RaftLog` under `group ++ index`; vote, committed and purged ids in
//! `Keyspace::RaftMeta` under `group ++ name` (see `keys`).
//!
//! Invariant: `append` and `save_vote` return (and `append` reports IO flushed) only after a
//! synced write, so an acknowledged entry or vote survives a crash.
//! Invariant: every key this store reads or writes starts with its group's prefix.
//! Invariant: reads are bounded: at most [`LOG_READ_BATCH_MAX`] entries per store scan; longer
//! ranges page through the log.

use crate::ReplicationError;
use crate::format::RaftValue;
use crate::keys::{self, META_COMMITTED, META_PURGED, META_VOTE};
use crate::types::TypeConfig;
use openraft::OptionalSend;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use pms_storage::{Store, WriteOp};
use pms_types::{GroupId, Keyspace};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// Most log entries read from the store in one scan.
pub const LOG_READ_BATCH_MAX: usize = 1_024;

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// The Raft log of one group. Cheap to clone: clones share the store.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    store: Arc<dyn Store>,
    /// Dropped with the last clone: lets `Group::shutdown` wait until openraft let go of it.
    _alive: Option<tokio::sync::mpsc::Sender<()>>,
}

impl LogStore {
    pub fn new(group: GroupId, store: Arc<dyn Store>) -> Self {
        LogStore {
            group,
            store,
            _alive: None,
        }
    }

    pub(crate) fn with_liveness(mut self, alive: tokio::sync::mpsc::Sender<()>) -> Self {
        self._alive = Some(alive);
        self
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    fn storage_error(&self, detail: impl ToString) -> ReplicationError {
        ReplicationError::Storage {
            group: self.group,
            detail: detail.to_string(),
        }
    }

    fn get_meta<T: RaftValue>(&self, name: &[u8]) -> Result<Option<T>, ReplicationError> {
        keys::read_meta(self.store.as_ref(), self.group, name)
    }

    fn meta_op<T: RaftValue>(&self, name: &[u8], value: &T) -> Result<WriteOp, ReplicationError> {
        Ok(WriteOp::Put {
            keyspace: Keyspace::RaftMeta,
            key: keys::meta_key(self.group, name),
            value: keys::encode(self.group, value)?,
        })
    }

    /// Writes `ops` on a blocking thread, so an fsync never stalls the async runtime.
    async fn write_blocking(&self, ops: Vec<WriteOp>, sync: bool) -> Result<(), ReplicationError> {
        let store = Arc::clone(&self.store);
        let group = self.group;
        tokio::task::spawn_blocking(move || store.write_ops(&ops, sync))
            .await
            .map_err(|join| ReplicationError::Storage {
                group,
                detail: format!("write task failed: {join}"),
            })?
            .map_err(|error| ReplicationError::Storage {
                group,
                detail: error.to_string(),
            })
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<Entry, ReplicationError> {
        let index = keys::index_of_log_key(self.group, key)?;
        let entry: Entry = keys::decode(self.group, value)?;
        if entry.index() != index {
            return Err(ReplicationError::CorruptRaftData {
                group: self.group,
                detail: format!("log key index {index} holds entry {}", entry.log_id()),
            });
        }
        Ok(entry)
    }

    /// Entries with index in `[start, end)` (`end: None` = to the end of the log), in order.
    pub(crate) fn read_entries(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Vec<Entry>, ReplicationError> {
        let prefix = self.group.key_prefix();
        let mut entries = Vec::new();
        let mut next = start;
        loop {
            if end.is_some_and(|end| next >= end) {
                return Ok(entries);
            }
            let wanted = end.map_or(LOG_READ_BATCH_MAX, |end| {
                usize::try_from(end - next)
                    .unwrap_or(usize::MAX)
                    .min(LOG_READ_BATCH_MAX)
            });
            let page = self
                .store
                .scan_prefix(
                    Keyspace::RaftLog,
                    &prefix,
                    &keys::log_key(self.group, next),
                    wanted,
                )
                .map_err(|fault| self.storage_error(fault))?;
            let page_len = page.len();
            for (key, value) in page {
                let entry = self.decode_entry(&key, &value)?;
                if end.is_some_and(|end| entry.index() >= end) {
                    return Ok(entries);
                }
                next = entry.index().saturating_add(1);
                entries.push(entry);
            }
            if page_len < wanted || next == u64::MAX {
                return Ok(entries);
            }
        }
    }

    fn last_entry(&self) -> Result<Option<Entry>, ReplicationError> {
        let last = self
            .store
            .scan_prefix_reverse(Keyspace::RaftLog, &self.group.key_prefix(), 1)
            .map_err(|error| self.storage_error(error))?;
        last.first()
            .map(|(key, value)| self.decode_entry(key, value))
            .transpose()
    }
}

fn range_to_start_end<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(start) => *start,
        Bound::Excluded(start) => start.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(end) => end.checked_add(1),
        Bound::Excluded(end) => Some(*end),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_to_start_end(&range);
        self.read_entries(start, end)
            .map_err(ReplicationError::into_io)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(META_VOTE).map_err(ReplicationError::into_io)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last = self
            .last_entry()
            .map_err(ReplicationError::into_io)?
            .map(|entry| entry.log_id());
        let last_purged_log_id: Option<LogId> = self
            .get_meta(META_PURGED)
            .map_err(ReplicationError::into_io)?;
        let last_log_id = last.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let op = self
            .meta_op(META_VOTE, vote)
            .map_err(ReplicationError::into_io)?;
        self.write_blocking(vec![op], true)
            .await
            .map_err(ReplicationError::into_io)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // A hint that lets a restarted node re-apply up to it before a leader is elected; it may
        // lag, so it needs no sync of its own (the next synced write carries it).
        let op = self
            .meta_op(META_COMMITTED, &committed)
            .map_err(ReplicationError::into_io)?;
        self.store
            .write_ops(&[op], false)
            .map_err(|error| self.storage_error(error).into_io())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let committed: Option<Option<LogId>> = self
            .get_meta(META_COMMITTED)
            .map_err(ReplicationError::into_io)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        for entry in entries {
            ops.push(WriteOp::Put {
                keyspace: Keyspace::RaftLog,
                key: keys::log_key(self.group, entry.index()),
                value: keys::encode(self.group, &entry).map_err(ReplicationError::into_io)?,
            });
        }
        // Invariant: durable before openraft hears the IO is flushed.
        self.write_blocking(ops, true)
            .await
            .map_err(ReplicationError::into_io)?;
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |log_id| log_id.index().saturating_add(1));
        let op = WriteOp::DeleteRange {
            keyspace: Keyspace::RaftLog,
            start: keys::log_key(self.group, start),
            end: keys::log_key_end(self.group),
        };
        // Not synced: the WAL is ordered, so the synced append that follows a truncation makes
        // the truncation durable first.
        self.store
            .write_ops(&[op], false)
            .map_err(|error| self.storage_error(error).into_io())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let purged = self
            .meta_op(META_PURGED, &log_id)
            .map_err(ReplicationError::into_io)?;
        let delete = WriteOp::DeleteRange {
            keyspace: Keyspace::RaftLog,
            start: keys::log_key(self.group, 0),
            end: keys::log_key(self.group, log_id.index().saturating_add(1)),
        };
        // One batch: the purged id and the deletion are never seen apart.
        self.store
            .write_ops(&[purged, delete], false)
            .map_err(|error| self.storage_error(error).into_io())
    }
}
