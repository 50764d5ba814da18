//! The byte encoding of Raft RPCs between nodes (append entries, vote, snapshot meta, votes)
//! and of forwarded commands and their responses: bincode of the serde form, the same codec the
//! log store uses for entries, so an entry crosses the network exactly as it is stored.
//!
//! Invariant: decoding bytes from the network never panics; a malformed payload is a
//! [`WireError`] that the transport answers as an invalid request.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Most bytes one encoded RPC may have (an append-entries batch of `append_entries_max` full
/// messages fits many times over).
pub const RPC_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// A payload that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {operation} {what}: {detail}")]
pub struct WireError {
    pub operation: &'static str,
    pub what: &'static str,
    pub detail: String,
}

fn options() -> impl bincode::Options {
    use bincode::Options as _;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(RPC_BYTES_MAX)
}

/// Encodes `value` (`what` names it in errors).
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, WireError> {
    use bincode::Options as _;
    options().serialize(value).map_err(|error| WireError {
        operation: "encode",
        what,
        detail: error.to_string(),
    })
}

/// Decodes a `T` from `bytes` received from another node.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, WireError> {
    use bincode::Options as _;
    options().deserialize(bytes).map_err(|error| WireError {
        operation: "decode",
        what,
        detail: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogCommand, TypeConfig};
    use openraft::entry::RaftEntry as _;
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use pms_mailbox::{Command, GroupCommand};
    use pms_types::{GroupId, UnixMillis};

    #[test]
    fn append_entries_round_trip() {
        let log_id = openraft::testing::log_id::<TypeConfig>(3, 1, 7);
        let entry = openraft::alias::EntryOf::<TypeConfig>::new_normal(
            log_id,
            LogCommand(GroupCommand {
                group: GroupId(1),
                command: Command::Prune {
                    now: UnixMillis(5),
                    dedup_retention_ms: 1,
                    status_retention_ms: 2,
                },
            }),
        );
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::alias::VoteOf::<TypeConfig>::new(3, 1),
            prev_log_id: Some(log_id),
            entries: vec![entry],
            leader_commit: Some(log_id),
        };
        let bytes = encode("append entries", &request).expect("encodes");
        let back: AppendEntriesRequest<TypeConfig> =
            decode("append entries", &bytes).expect("decodes");
        assert_eq!(back.entries, request.entries);
        assert_eq!(back.prev_log_id, request.prev_log_id);
        assert_eq!(back.vote, request.vote);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"abc"] {
            assert!(decode::<VoteRequest<TypeConfig>>("vote", bytes).is_err());
        }
        // A length prefix claiming more than the limit is refused before allocating.
        let mut huge = vec![0u8; 16];
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u8>>("bytes", &huge).is_err());
    }
}
