//! The pure replicated state machine of a PMS group: records, commands, `apply`, and the
//! read-side queries over the applied state.
//!
//! `apply` reads the current state through [`StateRead`] and returns the [`Mutation`]s that the
//! command causes plus a [`CommandResponse`]; the storage layer writes those mutations in one
//! atomic batch together with the applied log index. This crate does no IO and never reads the
//! clock: time arrives only inside commands, stamped by the leader.
//!
//! Invariant: `apply` is deterministic — the same state and command give the same mutations
//! and response on every replica.
//! Invariant: a queued message leaves the queue only through `MarkDelivered`, `MarkFailed`,
//! `Expire` (at or after its `expires_at`) or `RemoveUser` (guarantee 2).
//! Invariant: one dedup key maps to at most one message, ever (guarantee 3).
//! Invariant: every record is stored through [`encode`] / [`decode`], so it carries its format
//! header and is read by the decoder of its version ([`format`]).

mod apply;
pub mod format;
pub mod keys;
pub mod query;
mod records;
pub mod service;

pub use apply::{Applied, apply};
pub use format::{FormatError, Record};
pub use records::*;
pub use service::{BoxFuture, CatchUp, MailboxService, ProposeError};

use pms_types::StorageFault;

/// Why a command could not be applied at all. Business refusals (unknown user, duplicate) are
/// not errors: they are [`CommandResponse`] values, because they must replicate identically.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Storage(#[from] StorageFault),
    #[error("stored record under {keyspace} is corrupt: {detail}")]
    CorruptRecord {
        keyspace: &'static str,
        detail: String,
    },
    /// The record's format header is missing, of another kind, or of a version this build does
    /// not read (a newer release wrote it).
    #[error("stored record under {keyspace} cannot be read: {error}")]
    Format {
        keyspace: &'static str,
        error: FormatError,
    },
}

/// Encodes a record for storage (or for sealing), with its format header (see [`format`]).
pub fn encode<T: Record>(value: &T) -> Vec<u8> {
    format::encode_record(value)
}

/// Decodes a stored record of any format version this build reads (see [`format`]).
pub fn decode<T: Record>(keyspace: pms_types::Keyspace, bytes: &[u8]) -> Result<T, ApplyError> {
    format::decode_record(bytes).map_err(|error| ApplyError::Format {
        keyspace: keyspace.name(),
        error,
    })
}

#[cfg(test)]
mod tests;
