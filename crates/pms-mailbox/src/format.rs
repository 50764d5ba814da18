//! Versioned encodings of everything PMS stores or sends to another node.
//!
//! Every such byte string starts with a three-byte header and then the body:
//!
//! ```text
//! byte 0   'P' (0x50)         FORMAT_MAGIC: bytes without it predate versioning or are corrupt
//! byte 1   kind               what the body is ('Q' a queued message, 'l' a Raft log entry, ...)
//! byte 2   version            the layout of the body, per kind, starting at 1
//! byte 3.. body               bincode 1 (fixed-width little-endian integers) of that layout
//! ```
//!
//! This module holds the header (pms-replication uses it for log entries, Raft metadata,
//! snapshots and RPC payloads) and the [`Record`] trait of the state machine's records. Version
//! 1 of every kind is the bincode layout the structs had before versioning existed.
//!
//! How a later release changes a record (say `QueuedMessage` gains a field): keep today's
//! struct as a frozen `QueuedMessageV1` (never edited again), raise
//! [`Record::VERSION`] to 2, and make [`Record::decode_body`] decode version 1 bodies as
//! `QueuedMessageV1` and convert them; write a golden file for version 2 and keep the version 1
//! one (`tests/golden/README.md`). A new `Command` variant is a new version of the log entry and
//! RPC kinds in pms-replication, for the same reason: an older node must refuse it by its
//! version, not misread it. The order in which a cluster may start writing a new version is in
//! `docs/operations.md` ("Rolling upgrade and data formats").
//!
//! Invariant: a decoder never guesses: bytes without the header, of another kind, or of a
//! version this build does not read are refused with a [`FormatError`] that names what was
//! found; a version newer than this build's is never read as an older one.
//! Invariant: a version's decoder, once released, stays; its golden files keep decoding to the
//! same value in every later release.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every versioned encoding.
pub const FORMAT_MAGIC: u8 = b'P';

/// Bytes before the body: magic, kind, version.
pub const HEADER_LEN: usize = 3;

/// Why versioned bytes could not be decoded. Each variant names the kind (`what`) and, once the
/// header was read, the version found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "{what}: no PMS format header (the bytes are corrupt, or were written by a build from before format versioning)"
    )]
    NoHeader { what: &'static str },
    #[error("{what}: found a value of kind {found:?} where kind {expected:?} belongs")]
    WrongKind {
        what: &'static str,
        expected: char,
        found: char,
    },
    #[error(
        "{what} format version {version} is newer than this build reads (up to {newest}): it was written by a newer PMS release; upgrade this node"
    )]
    NewerVersion {
        what: &'static str,
        version: u8,
        newest: u8,
    },
    #[error("{what} format version {version} is not one this build reads (it reads 1 to {newest})")]
    UnknownVersion {
        what: &'static str,
        version: u8,
        newest: u8,
    },
    #[error("{what} format version {version}: malformed body: {detail}")]
    Body {
        what: &'static str,
        version: u8,
        detail: String,
    },
}

impl FormatError {
    /// The error for a `version` the decoder of `what` (which reads 1 to `newest`) has no arm for.
    pub fn unreadable_version(what: &'static str, version: u8, newest: u8) -> FormatError {
        if version > newest {
            FormatError::NewerVersion {
                what,
                version,
                newest,
            }
        } else {
            FormatError::UnknownVersion {
                what,
                version,
                newest,
            }
        }
    }
}

/// The header of a value of `kind` in `version`.
pub fn header(kind: u8, version: u8) -> [u8; HEADER_LEN] {
    [FORMAT_MAGIC, kind, version]
}

/// Checks the magic and the kind of `bytes`; returns the version and the body.
pub fn split_header<'a>(
    what: &'static str,
    kind: u8,
    bytes: &'a [u8],
) -> Result<(u8, &'a [u8]), FormatError> {
    match bytes {
        [FORMAT_MAGIC, found, version, body @ ..] => {
            if *found == kind {
                Ok((*version, body))
            } else {
                Err(FormatError::WrongKind {
                    what,
                    expected: char::from(kind),
                    found: char::from(*found),
                })
            }
        }
        _ => Err(FormatError::NoHeader { what }),
    }
}

/// Header + bincode 1 body (fixed-width integers, as `bincode::serialize`). Fails only for
/// values serde cannot represent, which no PMS type is.
pub fn encode_with_header<T: Serialize + ?Sized>(
    kind: u8,
    version: u8,
    value: &T,
) -> Result<Vec<u8>, bincode::Error> {
    let size = usize::try_from(bincode::serialized_size(value)?).unwrap_or(0);
    let mut bytes = Vec::with_capacity(HEADER_LEN + size);
    bytes.extend_from_slice(&header(kind, version));
    bincode::serialize_into(&mut bytes, value)?;
    Ok(bytes)
}

/// Decodes a version's body laid out as `T` is today (bincode 1, fixed-width integers, as
/// `bincode::deserialize`).
pub fn decode_body_as<T: DeserializeOwned>(
    what: &'static str,
    version: u8,
    body: &[u8],
) -> Result<T, FormatError> {
    bincode::deserialize(body).map_err(|error| FormatError::Body {
        what,
        version,
        detail: error.to_string(),
    })
}

/// A record of the state machine (a value in one of the state keyspaces) or a sealed plaintext
/// (`Credentials`, `MessagePayload`): what [`crate::encode`] writes and [`crate::decode`] reads.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a versioned PMS record",
    note = "implement `pms_mailbox::format::Record` for it in crates/pms-mailbox/src/format.rs (a kind byte of its own, version 1) and add its golden file (crates/pms-mailbox/tests/golden/README.md)"
)]
pub trait Record: Serialize + DeserializeOwned {
    /// The kind byte of the header; unique among records.
    const KIND: u8;
    /// What the record is, in errors.
    const NAME: &'static str;
    /// The version this build writes, and the newest it reads.
    const VERSION: u8 = 1;

    /// Decodes a body of `version` (any version this build reads: older ones are converted).
    /// The default reads version 1 as the struct's layout today; a type that changed overrides
    /// it with one arm per version.
    fn decode_body(version: u8, body: &[u8]) -> Result<Self, FormatError> {
        match version {
            1 => decode_body_as(Self::NAME, version, body),
            _ => Err(FormatError::unreadable_version(
                Self::NAME,
                version,
                Self::VERSION,
            )),
        }
    }
}

/// Encodes `value` in the version this build writes.
pub fn encode_record<T: Record>(value: &T) -> Vec<u8> {
    // Invariant: serialising our own plain-data records cannot fail.
    encode_with_header(T::KIND, T::VERSION, value).expect("bincode serialisation of a PMS record")
}

/// Decodes a record of any version this build reads.
pub fn decode_record<T: Record>(bytes: &[u8]) -> Result<T, FormatError> {
    let (version, body) = split_header(T::NAME, T::KIND, bytes)?;
    T::decode_body(version, body)
}

macro_rules! records {
    ($($type:ty => $kind:literal, $name:literal;)*) => {
        $(impl Record for $type {
            const KIND: u8 = $kind;
            const NAME: &'static str = $name;
        })*

        /// Every record kind as (kind byte, name): kept unique by a test.
        pub const RECORD_KINDS: &[(u8, &str)] = &[$(($kind, $name)),*];
    };
}

records! {
    crate::UserRecord => b'U', "user record";
    crate::Binding => b'B', "binding";
    crate::QueuedMessage => b'Q', "queued message";
    crate::MessageStatus => b'S', "message status";
    crate::DedupEntry => b'D', "dedup entry";
    crate::MailboxMeta => b'M', "mailbox meta";
    crate::OutboxEntry => b'O', "outbox entry";
    // `Keyspace::SenderCounts`: messages one sender has queued for one recipient.
    u64 => b'N', "sender count";
    // `Keyspace::Expiry`: the key is the index; the value is empty.
    () => b'E', "expiry marker";
    // `Keyspace::Cluster`: facts about the cluster (the master key's fingerprint).
    String => b'F', "cluster fact";
    crate::Credentials => b'C', "credentials";
    crate::MessagePayload => b'P', "message payload";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MailboxMeta;

    #[test]
    fn kinds_are_unique() {
        let mut kinds: Vec<u8> = RECORD_KINDS.iter().map(|(kind, _)| *kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), RECORD_KINDS.len());
    }

    #[test]
    fn header_then_the_unversioned_layout() {
        let meta = MailboxMeta {
            next_seq: 7,
            queued: 2,
        };
        let bytes = encode_record(&meta);
        assert_eq!(&bytes[..HEADER_LEN], b"PM\x01");
        assert_eq!(&bytes[HEADER_LEN..], bincode::serialize(&meta).unwrap());
        assert_eq!(decode_record::<MailboxMeta>(&bytes), Ok(meta));
    }

    #[test]
    fn a_newer_version_is_refused_by_number() {
        let mut bytes = encode_record(&MailboxMeta::default());
        bytes[2] = 2;
        let error = decode_record::<MailboxMeta>(&bytes).unwrap_err();
        assert_eq!(
            error,
            FormatError::NewerVersion {
                what: "mailbox meta",
                version: 2,
                newest: 1
            }
        );
        assert!(error.to_string().contains("format version 2 is newer"));
        bytes[2] = 0;
        assert!(matches!(
            decode_record::<MailboxMeta>(&bytes),
            Err(FormatError::UnknownVersion { version: 0, .. })
        ));
    }

    #[test]
    fn unversioned_or_foreign_bytes_are_refused() {
        // What a record looked like before versioning: no header.
        let legacy = bincode::serialize(&MailboxMeta::default()).unwrap();
        assert!(matches!(
            decode_record::<MailboxMeta>(&legacy),
            Err(FormatError::NoHeader { .. })
        ));
        assert!(matches!(
            decode_record::<MailboxMeta>(b"P"),
            Err(FormatError::NoHeader { .. })
        ));
        let binding_kind = b"PB\x01";
        assert!(matches!(
            decode_record::<MailboxMeta>(binding_kind),
            Err(FormatError::WrongKind {
                expected: 'M',
                found: 'B',
                ..
            })
        ));
        assert!(matches!(
            decode_record::<MailboxMeta>(b"PM\x01\x01"),
            Err(FormatError::Body { version: 1, .. })
        ));
    }
}
