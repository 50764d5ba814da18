//! [`Replication`]: the groups hosted on this node, and the map from users to groups.
//!
//! Invariant: a user's group is a pure function of the user name and the mailbox group count
//! fixed at bootstrap ([`mailbox_group_for`]); every node computes the same answer.
//! Invariant: group 0 is the directory; mailbox groups are `1..=mailbox_group_count`.

use crate::ReplicationError;
use crate::group::{Group, GroupConfig};
use crate::types::{SnapshotData, TypeConfig};
use openraft::network::{NetSnapshot, RaftNetworkFactory};
use pms_storage::Store;
pub use pms_types::mailbox_group_for;
use pms_types::{GroupId, UserId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most mailbox groups a cluster may have.
pub const MAILBOX_GROUPS_MAX: u32 = 4_096;

/// The groups of this node.
#[derive(Debug)]
pub struct Replication {
    node_id: u64,
    mailbox_group_count: u32,
    groups: BTreeMap<GroupId, Group>,
}

impl Replication {
    /// Opens each of `groups` on this node over `store`, each with the network `network(group)`
    /// makes for it. `mailbox_group_count` is fixed at bootstrap.
    pub async fn open<N>(
        node_id: u64,
        store: Arc<dyn Store>,
        groups: &[GroupId],
        mailbox_group_count: u32,
        network: impl Fn(GroupId) -> N,
        config: &GroupConfig,
    ) -> Result<Replication, ReplicationError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
    {
        if mailbox_group_count == 0 || mailbox_group_count > MAILBOX_GROUPS_MAX {
            return Err(ReplicationError::Config {
                detail: format!(
                    "mailbox group count {mailbox_group_count} outside 1..={MAILBOX_GROUPS_MAX}"
                ),
            });
        }
        let mut opened = BTreeMap::new();
        for group in groups {
            if opened.contains_key(group) {
                continue;
            }
            match Group::open(node_id, *group, Arc::clone(&store), network(*group), config).await {
                Ok(opened_group) => {
                    opened.insert(*group, opened_group);
                }
                Err(error) => {
                    for started in opened.values() {
                        Group::shutdown(started).await;
                    }
                    return Err(error);
                }
            }
        }
        Ok(Replication {
            node_id,
            mailbox_group_count,
            groups: opened,
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn group(&self, group: GroupId) -> Option<&Group> {
        self.groups.get(&group)
    }

    /// The group, or `UnknownGroup` if this node does not host it.
    pub fn require_group(&self, group: GroupId) -> Result<&Group, ReplicationError> {
        self.groups
            .get(&group)
            .ok_or(ReplicationError::UnknownGroup { group })
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// The directory group (accounts, node/group map).
    pub fn directory(&self) -> Option<&Group> {
        self.group(GroupId::DIRECTORY)
    }

    /// The mailbox group of `user`.
    pub fn group_for_user(&self, user: &UserId) -> GroupId {
        mailbox_group_for(user, self.mailbox_group_count)
    }

    /// Bootstraps every hosted group as a one-voter group of this node (idempotent).
    pub async fn initialize_single(&self, addr: &str) -> Result<(), ReplicationError> {
        for group in self.groups.values() {
            group.initialize_single(addr.to_owned()).await?;
        }
        Ok(())
    }

    /// Bootstraps every hosted group with `members` (node id → gRPC address) as its voters,
    /// unless it is initialized already (see [`Group::initialize`]).
    pub async fn initialize(
        &self,
        members: &BTreeMap<u64, String>,
    ) -> Result<(), ReplicationError> {
        for group in self.groups.values() {
            group.initialize(members.clone()).await?;
        }
        Ok(())
    }

    /// The mailbox group count fixed at bootstrap.
    pub fn mailbox_group_count(&self) -> u32 {
        self.mailbox_group_count
    }

    /// Stops every group.
    pub async fn shutdown(&self) {
        for group in self.groups.values() {
            group.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).expect("valid user")
    }

    #[test]
    fn one_mailbox_group_takes_everyone() {
        for name in ["alice", "bob", "carol.x", "z"] {
            assert_eq!(mailbox_group_for(&user(name), 1), GroupId(1));
        }
    }

    #[test]
    fn users_spread_over_every_group_in_range() {
        let count = 8;
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..1_000 {
            let group = mailbox_group_for(&user(&format!("user{n}")), count);
            assert!((1..=count).contains(&group.0), "{group} out of range");
            seen.insert(group);
        }
        assert_eq!(seen.len(), count as usize, "every group receives users");
        // Stable: the same user maps to the same group every time, case-folded by UserId.
        assert_eq!(
            mailbox_group_for(&user("Alice"), count),
            mailbox_group_for(&user("alice"), count)
        );
    }
}
