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

mod apply;
pub mod keys;
pub mod query;
mod records;
pub mod service;

pub use apply::{Applied, apply};
pub use records::*;
pub use service::{BoxFuture, MailboxService, ProposeError};

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
}

/// Encodes a record for storage or the Raft log.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Invariant: serialising our own plain-data records cannot fail.
    bincode::serialize(value).expect("bincode serialisation of a PMS record")
}

/// Decodes a stored record.
pub fn decode<T: serde::de::DeserializeOwned>(
    keyspace: pms_types::Keyspace,
    bytes: &[u8],
) -> Result<T, ApplyError> {
    bincode::deserialize(bytes).map_err(|error| ApplyError::CorruptRecord {
        keyspace: keyspace.name(),
        detail: error.to_string(),
    })
}

#[cfg(test)]
mod tests;
