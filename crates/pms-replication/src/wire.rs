//! The byte encoding of Raft RPCs between nodes (append entries, vote, snapshot meta, votes)
//! and of forwarded commands and their responses: the format header (`'P'`, kind
//! [`RPC_KIND`], version [`RPC_VERSION`]; see [`crate::format`]) and then bincode of the serde
//! form, the same body layout the log store uses for entries.
//!
//! Version 1 is the layout of today's types (openraft `=0.10.0-alpha.37`'s RPC types,
//! `Command`, `CommandResponse`). A release that changes any of them writes version 2 only when
//! every node reads it (`docs/operations.md`, "Rolling upgrade and data formats"), and decodes
//! version 1 payloads of the nodes not yet upgraded with frozen copies of today's types.
//!
//! Invariant: decoding bytes from the network never panics; a malformed payload is a
//! [`WireError`] that the transport answers as an invalid request.
//! Invariant: a payload of a version this build does not read is refused with an error naming
//! that version, never decoded as another one.

use crate::format::{HEADER_LEN, RPC_KIND, RPC_VERSION};
use pms_mailbox::format::{FormatError, header, split_header};
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

/// Encodes `value` (`what` names it in errors) in the version this build writes.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, WireError> {
    use bincode::Options as _;
    let error = |detail: String| WireError {
        operation: "encode",
        what,
        detail,
    };
    let size = options()
        .serialized_size(value)
        .map_err(|bincode| error(bincode.to_string()))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0) + HEADER_LEN);
    bytes.extend_from_slice(&header(RPC_KIND, RPC_VERSION));
    options()
        .serialize_into(&mut bytes, value)
        .map_err(|bincode| error(bincode.to_string()))?;
    Ok(bytes)
}

/// Decodes a `T` from `bytes` received from another node, of any version this build reads.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, WireError> {
    use bincode::Options as _;
    let error = |detail: String| WireError {
        operation: "decode",
        what,
        detail,
    };
    let (version, body) =
        split_header(what, RPC_KIND, bytes).map_err(|format| error(format.to_string()))?;
    match version {
        1 => options()
            .deserialize(body)
            .map_err(|bincode| error(bincode.to_string())),
        _ => Err(error(
            FormatError::unreadable_version(what, version, RPC_VERSION).to_string(),
        )),
    }
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
        for bytes in [
            &b""[..],
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"abc",
            b"Pw\x01",
            b"Pw\x01\xff\xff",
        ] {
            assert!(decode::<VoteRequest<TypeConfig>>("vote", bytes).is_err());
        }
        // A length prefix claiming more than the limit is refused before allocating.
        let mut huge = b"Pw\x01".to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 8]);
        assert!(decode::<Vec<u8>>("bytes", &huge).is_err());
    }

    #[test]
    fn a_newer_or_unversioned_payload_is_refused_with_its_version() {
        let vote = openraft::alias::VoteOf::<TypeConfig>::new(3, 1);
        let mut bytes = encode("vote", &vote).expect("encodes");
        assert_eq!(&bytes[..3], b"Pw\x01");
        bytes[2] = 2;
        let error = decode::<openraft::alias::VoteOf<TypeConfig>>("vote", &bytes)
            .expect_err("version 2 is not read");
        assert_eq!(
            error.detail,
            "vote format version 2 is newer than this build reads (up to 1): it was written by a newer PMS release; upgrade this node"
        );
        let unversioned = bincode::serialize(&vote).expect("encodes");
        let error = decode::<openraft::alias::VoteOf<TypeConfig>>("vote", &unversioned)
            .expect_err("no header");
        assert!(error.detail.contains("no PMS format header"), "{error}");
    }
}
