//! Key layout of a group's Raft data, and the codec for values stored under it.
//!
//! `Keyspace::RaftLog`: `group(be u32) ++ index(be u64)` → the openraft entry (format kind `l`).
//! `Keyspace::RaftMeta`: `group(be u32) ++ name` → the named value, with its format header
//! (see [`crate::format`]).
//!
//! Invariant: every key starts with the group prefix, so groups sharing one store never mix,
//! and big-endian indexes make key order equal log order.

use crate::ReplicationError;
use crate::format::{self, RaftValue};
use pms_types::{GroupId, group_key};

/// The vote (term + voted-for), synced before openraft is told it is saved.
pub(crate) const META_VOTE: &[u8] = b"vote";
/// The last committed log id this node knows of (a hint; may lag).
pub(crate) const META_COMMITTED: &[u8] = b"committed";
/// The last purged log id: logs up to it are gone.
pub(crate) const META_PURGED: &[u8] = b"purged";
/// The last log id applied to the state machine, written with that entry's mutations.
pub(crate) const META_LAST_APPLIED: &[u8] = b"last_applied";
/// The last membership applied to the state machine.
pub(crate) const META_MEMBERSHIP: &[u8] = b"membership";
/// The current snapshot: its meta and its blob.
pub(crate) const META_SNAPSHOT: &[u8] = b"snapshot";

pub(crate) fn log_key(group: GroupId, index: u64) -> Vec<u8> {
    group_key(group, &[&index.to_be_bytes()])
}

/// An exclusive upper bound above every log key of `group`: log keys are 12 bytes, this key is
/// the group prefix followed by 9 bytes of 0xff.
pub(crate) fn log_key_end(group: GroupId) -> Vec<u8> {
    group_key(group, &[&[0xff; 9]])
}

/// The index in a log key, checked to belong to `group`.
pub(crate) fn index_of_log_key(group: GroupId, key: &[u8]) -> Result<u64, ReplicationError> {
    let prefix = group.key_prefix();
    let index_bytes: Option<[u8; 8]> = key
        .strip_prefix(prefix.as_slice())
        .and_then(|rest| rest.try_into().ok());
    index_bytes
        .map(u64::from_be_bytes)
        .ok_or_else(|| ReplicationError::CorruptRaftData {
            group,
            detail: format!("malformed log key {key:?}"),
        })
}

pub(crate) fn meta_key(group: GroupId, name: &[u8]) -> Vec<u8> {
    group_key(group, &[name])
}

pub(crate) fn encode<T: RaftValue>(group: GroupId, value: &T) -> Result<Vec<u8>, ReplicationError> {
    format::encode(value).map_err(|error| ReplicationError::CorruptRaftData {
        group,
        detail: format!("encode: {error}"),
    })
}

pub(crate) fn decode<T: RaftValue>(group: GroupId, bytes: &[u8]) -> Result<T, ReplicationError> {
    format::decode(bytes).map_err(|error| ReplicationError::CorruptRaftData {
        group,
        detail: error.to_string(),
    })
}

/// Reads and decodes the `name` meta record of `group` (vote, committed, last applied, ...).
pub fn read_meta<T: RaftValue>(
    store: &dyn pms_storage::Store,
    group: GroupId,
    name: &[u8],
) -> Result<Option<T>, ReplicationError> {
    let bytes = store
        .get(pms_types::Keyspace::RaftMeta, &meta_key(group, name))
        .map_err(|fault| ReplicationError::Storage {
            group,
            detail: fault.to_string(),
        })?;
    bytes.map(|bytes| decode(group, &bytes)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index_and_stay_under_the_group() {
        let group = GroupId(7);
        assert!(log_key(group, 1) < log_key(group, 2));
        assert!(log_key(group, 255) < log_key(group, 256));
        assert!(log_key(group, u64::MAX) < log_key_end(group));
        assert!(log_key_end(group) < log_key(GroupId(8), 0));
        assert_eq!(index_of_log_key(group, &log_key(group, 42)).ok(), Some(42));
        assert!(index_of_log_key(GroupId(8), &log_key(group, 42)).is_err());
    }
}
