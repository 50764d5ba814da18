//! Versioned encodings of a group's Raft data: log entries, the Raft metadata (vote, committed
//! and purged ids, last applied, membership, the current snapshot), snapshot blobs, and the kind
//! byte of RPC payloads ([`crate::wire`]).
//!
//! Each value starts with the header of `pms_mailbox::format` — `'P'`, a kind byte, the format
//! version — and then the bincode 1 body (fixed-width little-endian integers) of that version's
//! layout. Kind bytes here are lower case; the state machine's records use upper case, so a
//! value of one family is never read as the other. Version 1 of every kind is the layout of
//! openraft `=0.10.0-alpha.37`'s serde types (with [`crate::LogCommand`] = `GroupCommand`) as it
//! was before versioning existed.
//!
//! A change of layout — a field added, or an openraft upgrade that moves its serde layout — is
//! a new version of every kind it reaches (a log entry holds a command; an append-entries RPC
//! holds entries): keep the old layout's types frozen, add an arm to
//! [`RaftValue::decode_body`] that converts them, and add golden files
//! (`tests/golden/README.md`). Golden tests fail when a layout moves without that. A `Command`
//! variant appended last keeps the version when it is only proposed once every member reads
//! it (the README says how that is checked).
//!
//! Invariant: bytes without the header, of another kind, or of a version this build does not
//! read are refused with an error naming what was found, never read as another version.
//! Invariant: a version's decoder, once released, stays.

use crate::snapshot::{SnapshotBlob, StoredSnapshot};
use crate::types::TypeConfig;
use openraft::alias::{EntryOf, LogIdOf, StoredMembershipOf, VoteOf};
use pms_mailbox::format::{self, FormatError};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use pms_mailbox::format::{FORMAT_MAGIC, HEADER_LEN};

/// A Raft log entry as openraft hands it over.
pub type Entry = EntryOf<TypeConfig>;
/// A log id (term, leader node, index).
pub type LogId = LogIdOf<TypeConfig>;
/// A vote (term, candidate, committed).
pub type Vote = VoteOf<TypeConfig>;
/// A membership with the log id that introduced it.
pub type StoredMembership = StoredMembershipOf<TypeConfig>;

/// The kind byte of RPC payloads between nodes ([`crate::wire`]).
pub const RPC_KIND: u8 = b'w';
/// The RPC payload version this build writes, and the newest it reads.
pub const RPC_VERSION: u8 = 1;

/// A value of a group's Raft data in `Keyspace::RaftLog` or `Keyspace::RaftMeta`, or a
/// snapshot blob.
pub trait RaftValue: Serialize + DeserializeOwned {
    /// The kind byte of the header; unique among Raft values and records.
    const KIND: u8;
    /// What the value is, in errors.
    const NAME: &'static str;
    /// The version this build writes, and the newest it reads.
    const VERSION: u8 = 1;

    /// Decodes a body of `version` (older ones are converted). The default reads version 1 as
    /// the type's layout today.
    fn decode_body(version: u8, body: &[u8]) -> Result<Self, FormatError> {
        match version {
            1 => format::decode_body_as(Self::NAME, version, body),
            _ => Err(FormatError::unreadable_version(
                Self::NAME,
                version,
                Self::VERSION,
            )),
        }
    }
}

macro_rules! raft_values {
    ($($type:ty => $kind:literal, $name:literal;)*) => {
        $(impl RaftValue for $type {
            const KIND: u8 = $kind;
            const NAME: &'static str = $name;
        })*

        /// Every kind byte of this crate as (kind byte, name), RPC payloads included.
        pub const RAFT_KINDS: &[(u8, &str)] = &[$(($kind, $name),)* (RPC_KIND, "RPC payload")];
    };
}

raft_values! {
    // `Keyspace::RaftLog`: one entry per index.
    Entry => b'l', "log entry";
    // `Keyspace::RaftMeta`.
    Vote => b'v', "vote";
    LogId => b'i', "log id";
    Option<LogId> => b'o', "optional log id";
    StoredMembership => b'm', "membership";
    StoredSnapshot => b's', "stored snapshot";
    // The data of a snapshot, stored inside `StoredSnapshot` and streamed to followers.
    SnapshotBlob => b'b', "snapshot blob";
}

/// Encodes `value` in the version this build writes.
pub fn encode<T: RaftValue>(value: &T) -> Result<Vec<u8>, FormatError> {
    format::encode_with_header(T::KIND, T::VERSION, value).map_err(|error| FormatError::Body {
        what: T::NAME,
        version: T::VERSION,
        detail: error.to_string(),
    })
}

/// Decodes a value of any version this build reads.
pub fn decode<T: RaftValue>(bytes: &[u8]) -> Result<T, FormatError> {
    let (version, body) = format::split_header(T::NAME, T::KIND, bytes)?;
    T::decode_body(version, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_unique_and_apart_from_records() {
        let mut kinds: Vec<u8> = RAFT_KINDS.iter().map(|(kind, _)| *kind).collect();
        kinds.extend(
            pms_mailbox::format::RECORD_KINDS
                .iter()
                .map(|(kind, _)| *kind),
        );
        let all = kinds.len();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), all, "a kind byte is used twice");
    }

    #[test]
    fn a_newer_log_id_is_refused_by_number() {
        let log_id = openraft::testing::log_id::<TypeConfig>(3, 1, 7);
        let mut bytes = encode(&log_id).expect("encodes");
        assert_eq!(&bytes[..HEADER_LEN], b"Pi\x01");
        assert_eq!(decode::<LogId>(&bytes), Ok(log_id));
        bytes[2] = 9;
        let error = decode::<LogId>(&bytes).expect_err("version 9 is unknown");
        assert!(
            error
                .to_string()
                .starts_with("log id format version 9 is newer than this build reads (up to 1)"),
            "{error}"
        );
        assert!(matches!(
            decode::<Option<LogId>>(&encode(&log_id).expect("encodes")),
            Err(FormatError::WrongKind {
                expected: 'o',
                found: 'i',
                ..
            })
        ));
    }
}
