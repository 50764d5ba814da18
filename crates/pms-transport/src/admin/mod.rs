//! The admin API in plain Rust types: what `pmsd` implements ([`AdminBackend`]) and what
//! `pmsctl` gets back from [`AdminClient`](client::AdminClient).
//!
//! Invariant: every [`AdminError`] variant is exactly one gRPC status code, in both directions
//! (see `convert`), so a client can tell "no such user" from "try again" from "not allowed".
//! [`AdminError::Unavailable`] means the outcome of a write is unknown: the caller may retry, and
//! a repeated write answers `AlreadyExists`/`NotFound` rather than doing the work twice.

pub mod client;
mod convert;
pub mod server;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub use pms_mailbox::DigestAlgorithm;
use pms_types::{GroupId, MessageId, NodeId, UnixMillis, UserId};

/// Longest password the admin API accepts (it is hashed into digest HA1 values on the server).
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Users per [`AdminBackend::list_users`] page when the caller asks for none in particular.
pub const USERS_PAGE_SIZE_DEFAULT: usize = 500;
/// Most users per page; larger requests are capped.
pub const USERS_PAGE_SIZE_MAX: usize = 5_000;

/// Why an admin call failed. One variant per gRPC status code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// `NOT_FOUND`: the user or message does not exist.
    #[error("not found: {what}")]
    NotFound { what: String },
    /// `ALREADY_EXISTS`: the user exists.
    #[error("already exists: {what}")]
    AlreadyExists { what: String },
    /// `INVALID_ARGUMENT`: a malformed user name, message id, password or page token.
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },
    /// `UNAVAILABLE`: no leader, leader unreachable, timeout or connection lost. A write's
    /// outcome is unknown; retrying is safe.
    #[error("unavailable (a write may or may not have happened; retry): {reason}")]
    Unavailable { reason: String },
    /// `PERMISSION_DENIED`: the caller is not the admin.
    #[error("permission denied: {reason}")]
    PermissionDenied { reason: String },
    /// `FAILED_PRECONDITION`: a membership change the cluster refuses (it would lose quorum,
    /// or the node is not a member).
    #[error("refused: {reason}")]
    FailedPrecondition { reason: String },
    /// `INTERNAL`: a bug or a storage failure on the node, or a malformed answer from it.
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

/// A password on its way to being hashed. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Accepts 1..=[`PASSWORD_BYTES_MAX`] bytes without control characters.
    pub fn new(password: impl Into<String>) -> Result<Self, AdminError> {
        let password = password.into();
        let invalid = |reason: &str| AdminError::InvalidArgument {
            reason: reason.to_owned(),
        };
        if password.is_empty() {
            return Err(invalid("password is empty"));
        }
        if password.len() > PASSWORD_BYTES_MAX {
            return Err(invalid("password is longer than 1024 bytes"));
        }
        if password.chars().any(char::is_control) {
            return Err(invalid("password contains a control character"));
        }
        Ok(Password(password))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// An account to provision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    pub user: UserId,
    pub password: Password,
    /// Whether secure messaging is enabled from the start (the API's default is `true`).
    pub messaging_enabled: bool,
    /// The account's digest policy in challenge order; empty: the node's policy.
    pub digest_algorithms: Vec<DigestAlgorithm>,
}

/// One account as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    pub user: UserId,
    pub messaging_enabled: bool,
    /// Empty when the account follows the node's policy.
    pub digest_algorithms: Vec<DigestAlgorithm>,
}

/// One page of [`UserSummary`] in user-name order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPage {
    pub users: Vec<UserSummary>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<UserId>,
}

/// Where a message is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageState {
    Enqueued,
    Delivered,
    Expired,
    /// A recipient device refused it permanently with this SIP status.
    Failed {
        sip_code: u16,
    },
}

impl MessageState {
    /// The name `pmsctl` prints and scripts match on.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Enqueued => "enqueued",
            MessageState::Delivered => "delivered",
            MessageState::Expired => "expired",
            MessageState::Failed { .. } => "failed",
        }
    }
}

/// The status of one message by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageStatusReport {
    pub message_id: MessageId,
    pub state: MessageState,
    pub recipient: UserId,
    pub enqueued_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// A node's role in one Raft group, as the answering node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    /// The answering node does not know (it is another node's role).
    Unknown,
}

impl GroupRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRole::Leader => "leader",
            GroupRole::Follower => "follower",
            GroupRole::Candidate => "candidate",
            GroupRole::Learner => "learner",
            GroupRole::Unknown => "unknown",
        }
    }
}

/// One node's membership in one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMemberStatus {
    pub group: GroupId,
    pub role: GroupRole,
    /// `None` when the answering node does not know it.
    pub last_applied_index: Option<u64>,
    /// The leader this view names, if any.
    pub leader: Option<NodeId>,
    /// Entries this node has yet to apply, behind the leader's last log index.
    pub lag: Option<u64>,
    /// The Raft term this node's replica is in; `None` when unknown.
    pub term: Option<u64>,
}

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: NodeId,
    /// The node's gRPC address (`HOST:PORT`).
    pub address: String,
    pub groups: Vec<GroupMemberStatus>,
    /// Why the node did not answer the status call; `None` when it answered.
    pub unreachable: Option<String>,
    /// The PMS version the node runs; `None` when it did not answer.
    pub version: Option<String>,
}

/// The cluster as the reporting node sees it, with every member's own view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub reporting_node: NodeId,
    pub nodes: Vec<NodeStatus>,
}

/// What [`AdminBackend`] methods return: a boxed future, so that the trait is object safe and
/// `pmsd` can hand the server an `Arc<dyn AdminBackend>`.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AdminError>> + Send + 'a>>;

/// What the admin gRPC service delegates to (implemented by `pmsd` over the replicated
/// directory). Arguments are already validated: user names by [`UserId::parse`], message ids by
/// [`MessageId::parse`], passwords by [`Password::new`], `limit` within
/// 1..=[`USERS_PAGE_SIZE_MAX`].
pub trait AdminBackend: Send + Sync + 'static {
    /// Provisions an account; [`AdminError::AlreadyExists`] if it exists.
    fn add_user(&self, user: NewUser) -> BackendFuture<'_, ()>;
    /// Removes an account and shreds its data key; [`AdminError::NotFound`] if absent.
    fn remove_user(&self, user: UserId) -> BackendFuture<'_, ()>;
    /// Enables or disables secure messaging; [`AdminError::NotFound`] if absent.
    fn set_messaging_enabled(&self, user: UserId, enabled: bool) -> BackendFuture<'_, ()>;
    /// Replaces the account's digest policy (empty: the node's); [`AdminError::NotFound`] if
    /// absent.
    /// With `password`, the HA1 values are computed anew for the allowed algorithms; without
    /// it, a policy allowing an algorithm the account has no HA1 for is
    /// [`AdminError::InvalidArgument`].
    fn set_digest_algorithms(
        &self,
        user: UserId,
        algorithms: Vec<DigestAlgorithm>,
        password: Option<Password>,
    ) -> BackendFuture<'_, ()>;
    /// At most `limit` accounts whose names sort after `after` (from the start when `None`), in
    /// order.
    fn list_users(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> BackendFuture<'_, Vec<UserSummary>>;
    /// The status of a message; [`AdminError::NotFound`] if unknown.
    fn message_status(&self, message_id: MessageId) -> BackendFuture<'_, MessageStatusReport>;
    /// What this node knows about the cluster.
    fn cluster_status(&self) -> BackendFuture<'_, ClusterStatus>;
    /// Adds `node` at `address` to every group (learner, then voter).
    fn add_node(&self, node: NodeId, address: String) -> BackendFuture<'_, ()>;
    /// Removes `node` from every group.
    fn remove_node(&self, node: NodeId) -> BackendFuture<'_, ()>;
    /// Makes a consistent backup of this node's replicas in a new directory and lists its
    /// files; the server streams them and then removes the directory.
    fn backup(&self) -> BackendFuture<'_, BackupFiles> {
        Box::pin(async {
            Err(AdminError::FailedPrecondition {
                reason: "this server makes no backups".into(),
            })
        })
    }
    /// Moves the cluster to this node's `--master-key-file` key and rewraps every account.
    fn rotate_master_key(&self) -> BackendFuture<'_, MasterKeyRotation> {
        Box::pin(async {
            Err(AdminError::FailedPrecondition {
                reason: "this server does not rotate master keys".into(),
            })
        })
    }
}

/// What a master-key rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyRotation {
    /// The fingerprint of the cluster's key before and after.
    pub from: String,
    pub to: String,
    /// Accounts rewrapped by this call (0 when a rerun found nothing left).
    pub accounts_rewrapped: u64,
}

/// A backup made on the node, ready to be streamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFiles {
    /// The directory holding the backup; removed once streamed.
    pub dir: std::path::PathBuf,
    /// Every file, relative to `dir`.
    pub files: Vec<std::path::PathBuf>,
}
