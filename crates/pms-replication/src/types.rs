//! The openraft type configuration of a PMS group and the few openraft types other crates
//! need (to implement a network, in `pms-transport`).
//!
//! Invariant: every log entry carries the [`GroupId`] it belongs to ([`LogCommand`] wraps a
//! [`GroupCommand`]); a state machine refuses an entry of another group.

use pms_mailbox::{Command, CommandResponse, GroupCommand};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The payload of a normal Raft log entry: a [`GroupCommand`].
///
/// A newtype only because openraft requires `Display` of entry data and `GroupCommand` lives in
/// `pms-mailbox`. `#[serde(transparent)]`: it encodes exactly as the `GroupCommand` inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LogCommand(pub GroupCommand);

impl fmt::Display for LogCommand {
    /// Names the command without its contents, so logs never show user data or ciphertext.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group {} {}",
            self.0.group,
            command_name(&self.0.command)
        )
    }
}

/// A short, content-free name of a command, for logs and metrics.
pub fn command_name(command: &Command) -> &'static str {
    match command {
        Command::ProvisionUser { .. } => "ProvisionUser",
        Command::SetMessagingEnabled { .. } => "SetMessagingEnabled",
        Command::SetDigestAlgorithms { .. } => "SetDigestAlgorithms",
        Command::RemoveUser { .. } => "RemoveUser",
        Command::Bind { .. } => "Bind",
        Command::Register { .. } => "Register",
        Command::Unbind { .. } => "Unbind",
        Command::UnbindFlow { .. } => "UnbindFlow",
        Command::UnbindAll { .. } => "UnbindAll",
        Command::UnbindStaleFlows { .. } => "UnbindStaleFlows",
        Command::CheckMasterKey { .. } => "CheckMasterKey",
        Command::Enqueue { .. } => "Enqueue",
        Command::MarkDelivered { .. } => "MarkDelivered",
        Command::MarkFailed { .. } => "MarkFailed",
        Command::Expire { .. } => "Expire",
        Command::Prune { .. } => "Prune",
        Command::ClearOutbox { .. } => "ClearOutbox",
        Command::RecordClusterId { .. } => "RecordClusterId",
        Command::ChangeMasterKey { .. } => "ChangeMasterKey",
        Command::RewrapUser { .. } => "RewrapUser",
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of every PMS group.
    pub TypeConfig:
        D = LogCommand,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// What a snapshot carries over the network: the encoded [`crate::snapshot::SnapshotBlob`].
/// A whole blob in memory for now; chunked streaming of RocksDB checkpoints comes later.
pub type SnapshotData = std::io::Cursor<Vec<u8>>;

/// openraft types a network implementation needs, re-exported so that no other crate depends
/// on openraft directly (an upgrade of the pinned alpha touches this crate only).
pub mod raft_api {
    pub use openraft::error::{
        NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout, Unreachable,
    };
    pub use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
    pub use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
        TransferLeaderResponse, VoteRequest, VoteResponse,
    };
    pub use openraft::{BasicNode, OptionalSend};

    /// A whole snapshot as the network hands it over.
    pub type FullSnapshot = openraft::alias::SnapshotOf<super::TypeConfig, super::SnapshotData>;
    /// The meta of a snapshot (last log id, membership, id).
    pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<super::TypeConfig>;

    /// A Raft handle of a group, for the server side of a network (handing RPCs to the group).
    pub type Raft = openraft::Raft<super::TypeConfig, crate::state_machine::StateMachine>;
    pub type Vote = openraft::alias::VoteOf<super::TypeConfig>;
}
