//! `MailboxService`: what the edge calls to change and read the replicated state, without
//! knowing how replication works. `pmsd` implements it over `pms-replication`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pms_types::{GroupId, StateRead};

use crate::{Command, CommandResponse};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a proposal did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The command may or may not have committed (timeout, leader change, shutdown). The caller
    /// may retry with the same command: commands carrying ids are idempotent.
    #[error("outcome unknown, retry: {reason}")]
    Retry { reason: String },
    /// This node cannot commit at all (storage fault, Raft fatal error).
    #[error("replication failed: {reason}")]
    Fatal { reason: String },
}

/// What [`MailboxService::catch_up`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// This node leads the group: its state already holds everything committed.
    Leading,
    /// The replica now holds everything the group committed before the call.
    CaughtUp,
    /// The leader could not be asked, or this replica did not apply in time (the caller goes
    /// on with the state it has).
    Failed,
}

impl CatchUp {
    /// The `result` label of `pms_replica_catch_ups_total`.
    pub fn name(self) -> &'static str {
        match self {
            CatchUp::Leading => "leading",
            CatchUp::CaughtUp => "caught_up",
            CatchUp::Failed => "failed",
        }
    }
}

/// Committed, applied state and the way to change it.
pub trait MailboxService: Send + Sync + 'static {
    /// Proposes `command` to `group`; resolves after a majority committed it and this node
    /// applied it, so that reads through `state` see its effects.
    fn propose(
        &self,
        group: GroupId,
        command: Command,
    ) -> BoxFuture<'_, Result<CommandResponse, ProposeError>>;

    /// The applied state of this node's replica of `group`.
    fn state(&self, group: GroupId) -> Arc<dyn StateRead + Send + Sync>;

    /// Whether this node leads `group` now (mailbox actors and expiry run only on the leader).
    fn is_leader(&self, group: GroupId) -> bool;

    /// Confirms with a quorum that this node still leads `group`, and that its state includes
    /// every command committed before the call. A deposed leader that has not heard of its
    /// successor yet answers `false` here (where `is_leader` would still say `true`).
    fn confirm_leadership(&self, group: GroupId) -> BoxFuture<'_, bool>;

    /// Waits (bounded) until this node's replica of `group` holds every command the group
    /// committed before the call, so that a read misses no recent write made through another
    /// node (an account added a moment ago).
    fn catch_up(&self, group: GroupId) -> BoxFuture<'_, CatchUp>;
}
