//! [`RocksStore`]: the RocksDB [`Store`]. One database per node, one column family per
//! [`Keyspace`] (named by [`Keyspace::name`]), all sharing one write-ahead log.
//!
//! Invariant: the WAL is always on; a batch written with `sync: true` fsyncs it before `write`
//! returns. Because all column families share the WAL and recovery replays a prefix of it, a
//! durable batch implies every batch written before it is durable too.
//! Invariant: blocks are stored uncompressed. Values are sealed (ciphertext does not compress),
//! and an uncompressed store can be audited for plaintext and for shredded keys by reading
//! its files byte for byte (LZ4 blocks hide strings from such a scan).
//! Invariant: RocksDB is opened with every column family of [`Keyspace::ALL`]; a missing one is
//! created, and a handle lookup that fails afterwards is reported, never unwrapped.

use crate::{
    KeyValues, SCAN_ENTRIES_MAX, StorageError, Store, WriteOp, check_batch, check_scan_start,
    prefix_successor,
};
use pms_types::{Keyspace, StateRead, StorageFault};
use rocksdb::{
    BottommostLevelCompaction, ColumnFamily, ColumnFamilyDescriptor, CompactOptions, DB,
    DBCompressionType, Options, ReadOptions, WriteBatch, WriteOptions,
};
use std::path::{Path, PathBuf};

/// Most bytes all column families' memtables hold together before RocksDB flushes.
pub const MEMTABLES_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most bytes of live WAL before RocksDB flushes the column families holding it back.
pub const WAL_BYTES_MAX: u64 = 128 * 1024 * 1024;

/// A RocksDB-backed [`Store`].
pub struct RocksStore {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksStore {
    /// Opens (creating if missing) the store at `path` with a column family per keyspace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let mut options = Self::uncompressed_options();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // One memory budget for every column family's memtables, and a WAL that forces a
        // flush when it grows past its bound: without them each keyspace buffers 64 MiB on its
        // own and the WAL grows until one of them is full.
        options.set_db_write_buffer_size(MEMTABLES_BYTES_MAX);
        options.set_max_total_wal_size(WAL_BYTES_MAX);
        let descriptors = Keyspace::ALL.iter().map(|keyspace| {
            ColumnFamilyDescriptor::new(keyspace.name(), Self::uncompressed_options())
        });
        let db = DB::open_cf_descriptors(&options, &path, descriptors).map_err(|error| {
            StorageError::Open {
                path: path.display().to_string(),
                detail: error.to_string(),
            }
        })?;
        let store = RocksStore { db, path };
        for keyspace in Keyspace::ALL {
            store.cf(keyspace)?;
        }
        Ok(store)
    }

    /// Opens an existing store read-only, also beside the node that has it open (audits and
    /// tests): a RocksDB secondary instance caught up with the primary's files and WAL when
    /// opened (writes made after that are not seen). It never writes to `path`; its own
    /// info log goes to `secondary_dir`, which the caller provides and removes.
    pub fn open_read_only(
        path: impl AsRef<Path>,
        secondary_dir: impl AsRef<Path>,
    ) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let open_error = |error: rocksdb::Error| StorageError::Open {
            path: path.display().to_string(),
            detail: error.to_string(),
        };
        let mut options = Self::uncompressed_options();
        // A secondary instance keeps every file it may read open.
        options.set_max_open_files(-1);
        let names = Keyspace::ALL.iter().map(|keyspace| keyspace.name());
        let secondary_dir = secondary_dir.as_ref().to_path_buf();
        let db =
            DB::open_cf_as_secondary(&options, &path, &secondary_dir, names).map_err(open_error)?;
        db.try_catch_up_with_primary().map_err(open_error)?;
        Ok(RocksStore { db, path })
    }

    fn uncompressed_options() -> Options {
        let mut options = Options::default();
        options.set_compression_type(DBCompressionType::None);
        options.set_bottommost_compression_type(DBCompressionType::None);
        options
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, keyspace: Keyspace) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(keyspace.name())
            .ok_or(StorageError::MissingColumnFamily {
                name: keyspace.name(),
            })
    }

    fn read_error(keyspace: Keyspace, error: rocksdb::Error) -> StorageError {
        StorageError::Read {
            keyspace: keyspace.name(),
            detail: error.to_string(),
        }
    }

    /// Read options bounding iteration to keys under `prefix`.
    fn prefix_read_options(prefix: &[u8]) -> ReadOptions {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(prefix.to_vec());
        if let Some(successor) = prefix_successor(prefix) {
            read_options.set_iterate_upper_bound(successor);
        }
        read_options
    }
}

impl StateRead for RocksStore {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault> {
        let cf = self.cf(keyspace)?;
        Ok(self
            .db
            .get_cf(cf, key)
            .map_err(|error| Self::read_error(keyspace, error))?)
    }

    fn scan_prefix(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageFault> {
        check_scan_start(keyspace, prefix, start)?;
        let cf = self.cf(keyspace)?;
        let limit = limit.min(SCAN_ENTRIES_MAX);
        let mut entries = Vec::new();
        if limit == 0 {
            return Ok(entries);
        }
        let mut iterator = self
            .db
            .raw_iterator_cf_opt(cf, Self::prefix_read_options(prefix));
        iterator.seek(if start.is_empty() { prefix } else { start });
        while iterator.valid() && entries.len() < limit {
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else {
                break;
            };
            // Invariant: the upper bound keeps keys under the prefix; re-checked because an
            // all-0xff prefix has no upper bound.
            if !key.starts_with(prefix) {
                break;
            }
            entries.push((key.to_vec(), value.to_vec()));
            iterator.next();
        }
        iterator
            .status()
            .map_err(|error| Self::read_error(keyspace, error))?;
        Ok(entries)
    }
}

impl Store for RocksStore {
    fn write_ops(&self, ops: &[WriteOp], sync: bool) -> Result<(), StorageError> {
        check_batch(ops)?;
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                WriteOp::Put {
                    keyspace,
                    key,
                    value,
                } => batch.put_cf(self.cf(*keyspace)?, key, value),
                WriteOp::Delete { keyspace, key } => batch.delete_cf(self.cf(*keyspace)?, key),
                WriteOp::DeleteRange {
                    keyspace,
                    start,
                    end,
                } => {
                    batch.delete_range_cf(self.cf(*keyspace)?, start, end);
                }
                WriteOp::DeletePrefix { keyspace, prefix } => {
                    let cf = self.cf(*keyspace)?;
                    match prefix_successor(prefix) {
                        Some(successor) => batch.delete_range_cf(cf, prefix.as_slice(), &successor),
                        None => {
                            // An all-0xff prefix has no successor to bound a range delete, so
                            // its keys are listed and deleted one by one. Only group u32::MAX
                            // hits this; a concurrent writer to that prefix could slip a key
                            // past the listing, which the replication layer rules out by
                            // writing each group from one task.
                            for (key, _) in
                                self.scan_prefix_all(*keyspace, prefix).map_err(|fault| {
                                    StorageError::Write {
                                        ops: ops.len(),
                                        detail: fault.0,
                                    }
                                })?
                            {
                                batch.delete_cf(cf, key);
                            }
                        }
                    }
                }
            }
        }
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        self.db
            .write_opt(batch, &write_options)
            .map_err(|error| StorageError::Write {
                ops: ops.len(),
                detail: error.to_string(),
            })
    }

    fn scan_prefix_reverse(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        let cf = self.cf(keyspace)?;
        let limit = limit.min(SCAN_ENTRIES_MAX);
        let mut entries = Vec::new();
        if limit == 0 {
            return Ok(entries);
        }
        let mut iterator = self
            .db
            .raw_iterator_cf_opt(cf, Self::prefix_read_options(prefix));
        iterator.seek_to_last();
        while iterator.valid() && entries.len() < limit {
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else {
                break;
            };
            if !key.starts_with(prefix) {
                break;
            }
            entries.push((key.to_vec(), value.to_vec()));
            iterator.prev();
        }
        iterator
            .status()
            .map_err(|error| Self::read_error(keyspace, error))?;
        Ok(entries)
    }

    fn persist_memory(&self) -> Result<(), StorageError> {
        self.flush()?;
        for keyspace in Keyspace::ALL {
            self.db
                .flush_cf(self.cf(keyspace)?)
                .map_err(|error| StorageError::Flush {
                    detail: format!("{}: {error}", keyspace.name()),
                })?;
        }
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        let error = |error: rocksdb::Error| StorageError::Flush {
            detail: format!("checkpoint into {}: {error}", dir.display()),
        };
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(error)?
            .create_checkpoint(dir)
            .map_err(error)
    }

    fn estimated_entries(&self, keyspace: Keyspace) -> Result<u64, StorageError> {
        self.db
            .property_int_value_cf(self.cf(keyspace)?, "rocksdb.estimate-num-keys")
            .map(Option::unwrap_or_default)
            .map_err(|error| Self::read_error(keyspace, error))
    }

    fn purge_deleted(&self, keyspaces: &[Keyspace]) -> Result<(), StorageError> {
        self.persist_memory()?;
        let mut compact = CompactOptions::default();
        // Also rewrite the bottommost level: that is where an old value under a tombstone lives.
        compact.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        compact.set_exclusive_manual_compaction(true);
        for keyspace in keyspaces {
            self.db.compact_range_cf_opt(
                self.cf(*keyspace)?,
                None::<&[u8]>,
                None::<&[u8]>,
                &compact,
            );
        }
        // The WAL written since the flush holds no deleted value; the older WAL files became
        // obsolete with the flush and RocksDB deletes them (no WAL archive is configured).
        self.persist_memory()
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db
            .flush_wal(true)
            .map_err(|error| StorageError::Flush {
                detail: error.to_string(),
            })
    }
}
