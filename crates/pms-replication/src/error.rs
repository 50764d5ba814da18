//! [`ReplicationError`]: the one error type of this crate, split into *retryable* (the caller
//! may try again, here or at another node) and *fatal* (this group on this node has stopped).
//!
//! Invariant: no openraft error type crosses this crate's public API; they are mapped here,
//! keeping the group id and the known leader.
//! Invariant: a timeout means the outcome is unknown — the command may still commit — so
//! callers retry only commands that are idempotent or deduplicated (guarantee 3).

use pms_types::GroupId;

/// Why a replication operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// Retryable: this node is not the group's leader; `leader` is the one it knows of.
    #[error("group {group}: this node is not the leader (leader: {leader:?})")]
    NotLeader { group: GroupId, leader: Option<u64> },
    /// Retryable, outcome unknown: no answer within the deadline; the command may commit.
    #[error("group {group}: no answer within {timeout_ms} ms; the command may or may not commit")]
    Timeout { group: GroupId, timeout_ms: u64 },
    /// Retryable, outcome unknown: leadership changed after the entry was appended.
    #[error(
        "group {group}: leadership changed while the command was in flight (new leader: {leader:?}); it may or may not commit"
    )]
    LeaderChanged { group: GroupId, leader: Option<u64> },
    /// Retryable elsewhere: this group is shutting down on this node.
    #[error("group {group}: shutting down")]
    ShuttingDown { group: GroupId },
    /// Retryable: no leader was elected within the deadline.
    #[error("group {group}: no leader within {timeout_ms} ms")]
    NoLeader { group: GroupId, timeout_ms: u64 },
    /// Fatal: this group has stopped on this node (storage failure, apply failure, panic).
    #[error("group {group}: stopped by a fatal error: {detail}")]
    Fatal { group: GroupId, detail: String },
    /// Fatal: reading or writing the store failed.
    #[error("group {group}: storage failed: {detail}")]
    Storage { group: GroupId, detail: String },
    /// Fatal: stored Raft data cannot be decoded or breaks an invariant.
    #[error("group {group}: corrupt raft data: {detail}")]
    CorruptRaftData { group: GroupId, detail: String },
    /// Fatal: the command cannot be applied (`pms_mailbox::apply` failed).
    #[error("group {group}: applying log index {index} failed: {detail}")]
    Apply {
        group: GroupId,
        index: u64,
        detail: String,
    },
    /// Not retryable: the request was refused (bad configuration or membership request).
    #[error("group {group}: refused: {detail}")]
    Refused { group: GroupId, detail: String },
    /// Not retryable: the group is not hosted on this node.
    #[error("group {group} is not hosted on this node")]
    UnknownGroup { group: GroupId },
    /// Not retryable: the configuration is invalid.
    #[error("invalid replication configuration: {detail}")]
    Config { detail: String },
}

/// What `Group::propose` returns on failure.
pub type ProposeError = ReplicationError;

impl ReplicationError {
    /// Whether trying again (here later, or at the named leader) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ReplicationError::NotLeader { .. }
                | ReplicationError::Timeout { .. }
                | ReplicationError::LeaderChanged { .. }
                | ReplicationError::ShuttingDown { .. }
                | ReplicationError::NoLeader { .. }
        )
    }

    /// Whether the command may have committed although an error was returned. Callers must not
    /// report such a command as failed to a user; they retry it (deduplicated) or report unknown.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ReplicationError::Timeout { .. } | ReplicationError::LeaderChanged { .. }
        )
    }

    /// Whether this group has stopped on this node and must be reported and restarted.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ReplicationError::Fatal { .. }
                | ReplicationError::Storage { .. }
                | ReplicationError::CorruptRaftData { .. }
                | ReplicationError::Apply { .. }
        )
    }

    /// Converts to the error openraft's storage traits return, keeping our message.
    pub(crate) fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
}
