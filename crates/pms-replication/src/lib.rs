//! Replication of PMS groups with openraft: the type configuration, the Raft log store and
//! state machine adapters over `pms_storage::Store`, [`Group`] (one running group) and
//! [`Replication`] (the groups of this node and the user → group map).
//!
//! This is the only crate that knows openraft (pinned `=0.10.0-alpha.37`). Its public API uses
//! PMS types and [`ReplicationError`]; the few openraft types a network implementation needs
//! are re-exported in [`raft_api`], so `pms-transport` depends on them through this crate.
//!
//! Invariant: each group's log and state machine read and write only keys with that group's
//! prefix, so any number of groups share one store.
//! Invariant: an entry is acknowledged to a proposer only after a majority has it durably and
//! this node has applied it.

mod error;
pub mod format;
mod group;
mod keys;
mod log_store;
mod network;
pub mod recovery;
mod router;
pub mod snapshot;
mod state_machine;
mod types;
pub mod wire;

pub use error::{ProposeError, ReplicationError};
pub use group::{
    CommitLatencyObserver, Group, GroupConfig, GroupMember, GroupRole, GroupStatus,
    SHUTDOWN_RELEASE_WAIT,
};
pub use log_store::{LOG_READ_BATCH_MAX, LogStore};
pub use network::{UnreachableNetwork, UnreachableNetworkFactory};
pub use router::{MAILBOX_GROUPS_MAX, Replication, mailbox_group_for};
pub use state_machine::{
    AppliedEvent, SnapshotBuilder, SnapshotKind, SnapshotObserver, StateMachine,
};
pub use types::{LogCommand, SnapshotData, TypeConfig, command_name, raft_api};
