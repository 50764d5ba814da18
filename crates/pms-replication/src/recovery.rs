//! Disaster recovery: make this node's replica of a group the whole group again, for a cluster
//! that lost a majority for good (etcd's `--force-new-cluster`) and for a restore from backup.
//!
//! [`force_single_member`] rewrites, in one write batch and before the group is opened, what
//! openraft reads at start: the membership becomes this node alone (as of the last applied
//! entry), the log is emptied and marked purged up to the last applied entry, and the stored
//! snapshot (if any) names the new membership, or is dropped when it ends before the last
//! applied entry (it would end before the purged log). openraft then elects this node at once, and
//! other nodes are added with the usual `add-node` (learner, then voter).
//!
//! Invariant: the state machine (everything applied) is kept exactly; entries this replica
//! had received but not applied are dropped. That is what may be lost, and the operator is
//! told so: entries the old majority had committed but this node had not applied.

use std::collections::{BTreeMap, BTreeSet};

use openraft::alias::{LogIdOf, StoredMembershipOf};
use openraft::{BasicNode, Membership};
use pms_storage::{Store, WriteOp};
use pms_types::{GroupId, Keyspace};

use crate::ReplicationError;
use crate::keys::{
    self, META_COMMITTED, META_LAST_APPLIED, META_MEMBERSHIP, META_PURGED, META_SNAPSHOT,
};
use crate::state_machine::StoredSnapshot;
use crate::types::TypeConfig;

type LogId = LogIdOf<TypeConfig>;
type StoredMembership = StoredMembershipOf<TypeConfig>;

/// What [`force_single_member`] did to one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForcedGroup {
    pub group: GroupId,
    /// The last applied index kept (`None`: the replica had applied nothing).
    pub last_applied_index: Option<u64>,
    /// Log entries after it that were dropped.
    pub dropped_entries: u64,
    /// The members before.
    pub previous_members: Vec<u64>,
}

/// Makes `node` (reachable at `address`) the only member of its replica of `group`. The
/// group must not be open.
pub fn force_single_member(
    store: &dyn Store,
    group: GroupId,
    node: u64,
    address: &str,
) -> Result<ForcedGroup, ReplicationError> {
    let last_applied: Option<LogId> =
        keys::read_meta::<Option<LogId>>(store, group, META_LAST_APPLIED)?.flatten();
    let previous: Option<StoredMembership> = keys::read_meta(store, group, META_MEMBERSHIP)?;
    let previous_members: Vec<u64> = previous
        .as_ref()
        .map(|stored| stored.membership().voter_ids().collect())
        .unwrap_or_default();
    let last_log_index = store
        .scan_prefix_reverse(Keyspace::RaftLog, &group.key_prefix(), 1)
        .map_err(|error| ReplicationError::Storage {
            group,
            detail: error.to_string(),
        })?
        .first()
        .and_then(|(key, _)| keys::index_of_log_key(group, key).ok());
    let applied_index = last_applied.as_ref().map(|id| id.index());
    let dropped_entries = match (last_log_index, applied_index) {
        (Some(last), Some(applied)) => last.saturating_sub(applied),
        (Some(last), None) => last + 1,
        (None, _) => 0,
    };

    let membership = Membership::<u64, BasicNode>::new(
        vec![BTreeSet::from([node])],
        BTreeMap::from([(
            node,
            BasicNode {
                addr: address.to_owned(),
            },
        )]),
    )
    .map_err(|error| ReplicationError::Config {
        detail: format!("membership of node {node} alone: {error}"),
    })?;
    let stored = StoredMembership::new(last_applied, membership);
    let meta = |name: &[u8], value: Vec<u8>| WriteOp::Put {
        keyspace: Keyspace::RaftMeta,
        key: keys::meta_key(group, name),
        value,
    };
    let mut ops = vec![
        WriteOp::DeleteRange {
            keyspace: Keyspace::RaftLog,
            start: keys::log_key(group, 0),
            end: keys::log_key_end(group),
        },
        meta(META_MEMBERSHIP, keys::encode(group, &stored)?),
        meta(META_COMMITTED, keys::encode(group, &last_applied)?),
    ];
    if let Some(last_applied) = &last_applied {
        ops.push(meta(META_PURGED, keys::encode(group, last_applied)?));
    }
    match keys::read_meta::<StoredSnapshot>(store, group, META_SNAPSHOT)? {
        // A snapshot older than the last applied entry would end before the purged log
        // (openraft refuses to start: purged must not pass the snapshot). The state machine
        // holds everything it had, and `pmsd` builds a fresh snapshot once the group runs.
        Some(snapshot) if snapshot.meta.last_log_id < last_applied => {
            ops.push(WriteOp::Delete {
                keyspace: Keyspace::RaftMeta,
                key: keys::meta_key(group, META_SNAPSHOT),
            });
        }
        Some(mut snapshot) => {
            snapshot.meta.last_membership =
                StoredMembership::new(snapshot.meta.last_log_id, stored.membership().clone());
            ops.push(meta(META_SNAPSHOT, keys::encode(group, &snapshot)?));
        }
        None => {}
    }
    store
        .write_ops(&ops, true)
        .map_err(|error| ReplicationError::Storage {
            group,
            detail: error.to_string(),
        })?;
    Ok(ForcedGroup {
        group,
        last_applied_index: applied_index,
        dropped_entries,
        previous_members,
    })
}
