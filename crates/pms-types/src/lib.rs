//! Identifiers, newtypes, limits and the `Clock` trait shared by every PMS crate.
//!
//! This crate knows nothing external (only `serde` for the wire/disk encodings and
//! `thiserror`). It also defines the shape of the replicated key-value state
//! (`Keyspace`, `Mutation`, `StateRead`) so that the pure state machine in `pms-mailbox`
//! and the stores in `pms-storage` can agree on it without knowing each other.
//!
//! Invariant: every key written to a `Keyspace` starts with the big-endian `GroupId`
//! of the Raft group that owns it (see [`group_key`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod limits;
pub mod metrics;
pub mod time;

/// A PMS node (one `pmsd` process). Raft node ids are these.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0.to_string())
    }
}

/// A Raft group. Group 0 is the directory; groups 1..N hold mailboxes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct GroupId(pub u32);

impl GroupId {
    /// The directory group: accounts and the node/group map.
    pub const DIRECTORY: GroupId = GroupId(0);

    /// The big-endian prefix that starts every key owned by this group.
    pub fn key_prefix(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0.to_string())
    }
}

/// A user name within the SIP domain (the user part of the AoR), lower-cased.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(String);

/// Why a string is not a valid user name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("user name is empty")]
    Empty,
    #[error("user name is longer than {max} bytes", max = limits::USER_NAME_BYTES_MAX)]
    TooLong,
    #[error("user name contains {character:?}, allowed are a-z 0-9 . _ - +")]
    InvalidCharacter { character: char },
}

impl UserId {
    /// Validates and lower-cases a user name. Allowed: ASCII letters, digits, `.`, `_`, `-`, `+`.
    pub fn parse(name: &str) -> Result<Self, UserIdError> {
        if name.is_empty() {
            return Err(UserIdError::Empty);
        }
        if name.len() > limits::USER_NAME_BYTES_MAX {
            return Err(UserIdError::TooLong);
        }
        if let Some(character) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')))
        {
            return Err(UserIdError::InvalidCharacter { character });
        }
        Ok(UserId(name.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment (`{:<32}` in tables).
        f.pad(&self.0)
    }
}

/// A message identifier assigned by PMS when a MESSAGE is accepted (32 lower-case hex digits).
/// Stable across retries and redeliveries: devices use it (with `imdn.Message-ID`) to discard repeats.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(String);

impl MessageId {
    /// Builds an id from 16 random bytes supplied by the caller (the leader; never `apply`).
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        let mut text = String::with_capacity(32);
        for byte in bytes {
            text.push_str(&format!("{byte:02x}"));
        }
        MessageId(text)
    }

    /// Accepts an id typed by a user or read from the wire: 1..=64 ASCII graphic characters.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = !text.is_empty()
            && text.len() <= limits::MESSAGE_ID_BYTES_MAX
            && text.bytes().all(|b| b.is_ascii_graphic());
        valid.then(|| MessageId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Identifies one connection (flow) on one node incarnation. A binding whose flow is not
/// live on its node is unusable for delivery.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct FlowId {
    pub node: NodeId,
    /// Random per process start, so flows of an earlier incarnation never match.
    pub incarnation: u64,
    pub connection: u64,
}

/// Milliseconds since the Unix epoch. Time enters the state machine only as values of this type
/// carried inside commands.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    pub fn saturating_add_ms(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_add(ms))
    }
}

/// The only way PMS code reads time. Tests use [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixMillis;
}

/// Wall-clock time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixMillis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new(start: UnixMillis) -> Self {
        ManualClock {
            now_ms: Arc::new(AtomicU64::new(start.0)),
        }
    }

    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.now_ms.load(Ordering::SeqCst))
    }
}

/// The column families of the replicated state. Each concern has its own so that scans and
/// compaction stay local to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Keyspace {
    /// Raft log entries: `group ++ index(be u64)`.
    RaftLog,
    /// Raft vote, committed id, purged id, last applied, membership: `group ++ name`.
    RaftMeta,
    /// Accounts: `group ++ user`.
    Users,
    /// Registrations: `group ++ user ++ 0 ++ binding key`.
    Bindings,
    /// Queued sealed messages: `group ++ user ++ 0 ++ seq(be u64)`.
    Messages,
    /// Per-user counters (next sequence number): `group ++ user`.
    MailboxMeta,
    /// Retransmission/retry dedup: `group ++ dedup hash`.
    Dedup,
    /// Expiry index: `group ++ expires_at(be u64) ++ user ++ 0 ++ seq(be u64)`.
    Expiry,
    /// Final or current status of a message by id: `group ++ message id`.
    Status,
    /// IMDNs for senders whose mailbox is in another group, waiting to be queued there:
    /// `group ++ notification message id`.
    Outbox,
    /// Messages queued per recipient and sender: `group ++ user ++ 0 ++ sender key(32)` → count.
    /// The sender key is a keyed hash (guarantee 6: no sender in clear at rest).
    SenderCounts,
    /// Facts about the whole cluster, in the directory: `group ++ name` (the master key's
    /// fingerprint, recorded at bootstrap).
    Cluster,
}

impl Keyspace {
    pub const ALL: [Keyspace; 12] = [
        Keyspace::RaftLog,
        Keyspace::RaftMeta,
        Keyspace::Users,
        Keyspace::Bindings,
        Keyspace::Messages,
        Keyspace::MailboxMeta,
        Keyspace::Dedup,
        Keyspace::Expiry,
        Keyspace::Status,
        Keyspace::Outbox,
        Keyspace::SenderCounts,
        Keyspace::Cluster,
    ];

    /// The keyspaces that make up a group's state machine (what a snapshot carries).
    pub const STATE: [Keyspace; 10] = [
        Keyspace::Users,
        Keyspace::Bindings,
        Keyspace::Messages,
        Keyspace::MailboxMeta,
        Keyspace::Dedup,
        Keyspace::Expiry,
        Keyspace::Status,
        Keyspace::Outbox,
        Keyspace::SenderCounts,
        Keyspace::Cluster,
    ];

    /// Stable name, used as the RocksDB column family name.
    pub fn name(self) -> &'static str {
        match self {
            Keyspace::RaftLog => "raft_log",
            Keyspace::RaftMeta => "raft_meta",
            Keyspace::Users => "users",
            Keyspace::Bindings => "bindings",
            Keyspace::Messages => "messages",
            Keyspace::MailboxMeta => "mailbox_meta",
            Keyspace::Dedup => "dedup",
            Keyspace::Expiry => "expiry",
            Keyspace::Status => "status",
            Keyspace::Outbox => "outbox",
            Keyspace::SenderCounts => "sender_counts",
            Keyspace::Cluster => "cluster",
        }
    }
}

/// FNV-1a, 64 bit: stable across versions and platforms (unlike `std`'s hasher).
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// The mailbox group of `user` among `mailbox_group_count` groups: `fnv1a(user) mod N + 1`.
/// Invariant: a pure function of the user name and the count fixed at bootstrap, so every node
/// computes the same answer; the result is in `1..=mailbox_group_count` (0 is the directory).
pub fn mailbox_group_for(user: &UserId, mailbox_group_count: u32) -> GroupId {
    let count = u64::from(mailbox_group_count.max(1));
    let slot = fnv1a_64(user.as_str().as_bytes()) % count;
    // Invariant: slot < count <= u32::MAX, so it fits.
    GroupId(u32::try_from(slot).unwrap_or(0) + 1)
}

/// Builds a key: the group prefix followed by the given parts, in order.
pub fn group_key(group: GroupId, parts: &[&[u8]]) -> Vec<u8> {
    let len = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut key = Vec::with_capacity(len);
    key.extend_from_slice(&group.key_prefix());
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

/// One change to the stored state. A list of these is applied atomically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    Put {
        keyspace: Keyspace,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        keyspace: Keyspace,
        key: Vec<u8>,
    },
}

/// A storage read failed: the node cannot continue applying and must stop (fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage fault: {0}")]
pub struct StorageFault(pub String);

/// One stored entry: key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Read access to the stored state, as the state machine sees it.
pub trait StateRead {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault>;

    /// Key-ordered entries whose key starts with `prefix` and is `>= start` (`start` must itself
    /// start with `prefix`, or be empty to mean "from the prefix"), at most `limit` of them.
    fn scan_prefix(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageFault>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_lower_cased_and_validated() {
        assert_eq!(UserId::parse("Alice").unwrap().as_str(), "alice");
        assert_eq!(format!("{:<6}|", UserId::parse("bob").unwrap()), "bob   |");
        assert_eq!(UserId::parse(""), Err(UserIdError::Empty));
        assert_eq!(
            UserId::parse("al ice"),
            Err(UserIdError::InvalidCharacter { character: ' ' })
        );
        assert_eq!(UserId::parse(&"a".repeat(65)), Err(UserIdError::TooLong));
    }

    #[test]
    fn message_ids_from_random_bytes_are_hex() {
        let id = MessageId::from_random_bytes([0xab; 16]);
        assert_eq!(id.as_str(), "ab".repeat(16));
        assert!(MessageId::parse("").is_none());
        assert!(MessageId::parse("has space").is_none());
    }

    #[test]
    fn group_keys_start_with_the_group() {
        let key = group_key(GroupId(7), &[b"bob", &[0], &5u64.to_be_bytes()]);
        assert_eq!(&key[..4], &[0, 0, 0, 7]);
        assert_eq!(&key[4..7], b"bob");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(UnixMillis(1_000));
        assert_eq!(clock.now(), UnixMillis(1_000));
        clock.advance_ms(500);
        assert_eq!(clock.now(), UnixMillis(1_500));
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
