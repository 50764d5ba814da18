//! The snapshot format of a group's state machine and the two halves of a round trip:
//! [`capture`] (read every state key of the group) and [`install_ops`] (the atomic batch that
//! replaces the group's state with a snapshot's).
//!
//! For now a snapshot is one blob held in memory, encoded with its format header (kind `b`,
//! see [`crate::format`]); its entries are the stored values verbatim, each with its own
//! record header. Streaming RocksDB checkpoint files in chunks comes with the gRPC network.
//!
//! Invariant: a snapshot holds only keys of `Keyspace::STATE` that start with its group's
//! prefix; installing one deletes exactly that group's state keys and nothing else.

use crate::ReplicationError;
use crate::types::TypeConfig;
use pms_storage::{Store, WriteOp};
use pms_types::{GroupId, Keyspace};
use serde::{Deserialize, Serialize};

/// The state of one group at one log index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBlob {
    pub group: GroupId,
    /// Every state entry of the group, keyspace by keyspace, in key order.
    pub entries: Vec<(Keyspace, Vec<u8>, Vec<u8>)>,
}

/// The current snapshot of a group as stored under the `snapshot` Raft meta key: openraft's
/// meta and the encoded [`SnapshotBlob`] (format kind `s`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: openraft::alias::SnapshotMetaOf<TypeConfig>,
    pub data: Vec<u8>,
}

/// Reads every state key of `group`.
///
/// The caller must make sure no entry is applied meanwhile (the state machine calls this from
/// its own task, which is also the only one that applies).
pub fn capture(store: &dyn Store, group: GroupId) -> Result<SnapshotBlob, ReplicationError> {
    let prefix = group.key_prefix();
    let mut entries = Vec::new();
    for keyspace in Keyspace::STATE {
        let scanned = store.scan_prefix_all(keyspace, &prefix).map_err(|fault| {
            ReplicationError::Storage {
                group,
                detail: fault.to_string(),
            }
        })?;
        entries.extend(
            scanned
                .into_iter()
                .map(|(key, value)| (keyspace, key, value)),
        );
    }
    Ok(SnapshotBlob { group, entries })
}

/// The operations that replace `group`'s state with `blob`'s: delete every state key of the
/// group, then put the blob's entries. Checked: the blob must be of `group` and hold only its
/// state keys.
pub fn install_ops(group: GroupId, blob: SnapshotBlob) -> Result<Vec<WriteOp>, ReplicationError> {
    if blob.group != group {
        return Err(ReplicationError::CorruptRaftData {
            group,
            detail: format!("snapshot of group {} offered to group {group}", blob.group),
        });
    }
    let prefix = group.key_prefix();
    let mut ops: Vec<WriteOp> = Keyspace::STATE
        .iter()
        .map(|keyspace| WriteOp::DeletePrefix {
            keyspace: *keyspace,
            prefix: prefix.to_vec(),
        })
        .collect();
    ops.reserve(blob.entries.len());
    for (keyspace, key, value) in blob.entries {
        if !Keyspace::STATE.contains(&keyspace) || !key.starts_with(&prefix) {
            return Err(ReplicationError::CorruptRaftData {
                group,
                detail: format!(
                    "snapshot holds a key outside the group's state: {} {key:?}",
                    keyspace.name()
                ),
            });
        }
        ops.push(WriteOp::Put {
            keyspace,
            key,
            value,
        });
    }
    Ok(ops)
}
