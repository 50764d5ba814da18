//! Settings of the edge, filled by `pmsd` from its configuration.

use pms_mailbox::DigestAlgorithm;
use pms_sip::digest::Algorithm;

/// The SIP digest algorithm of a stored policy entry (accounts and the node's
/// `--digest-algorithms` share the stored type).
pub fn sip_digest_algorithm(algorithm: DigestAlgorithm) -> Algorithm {
    match algorithm {
        DigestAlgorithm::Sha256 => Algorithm::Sha256,
        DigestAlgorithm::Md5 => Algorithm::Md5,
    }
}

/// The stored form of a SIP digest algorithm (the inverse of [`sip_digest_algorithm`]).
pub fn stored_digest_algorithm(algorithm: Algorithm) -> DigestAlgorithm {
    match algorithm {
        Algorithm::Sha256 => DigestAlgorithm::Sha256,
        Algorithm::Md5 => DigestAlgorithm::Md5,
    }
}
use pms_types::{GroupId, NodeId, UserId};

#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// The SIP domain PMS serves (`sip:user@domain`); also the digest realm.
    pub domain: String,
    pub node: NodeId,
    /// Random per process start; flows of earlier incarnations are dead.
    pub incarnation: u64,
    /// Mailbox groups (`1..=mailbox_groups`), fixed at bootstrap; accounts are in the
    /// directory group (`GroupId::DIRECTORY`).
    pub mailbox_groups: u32,
    /// Digest algorithms offered, in order (SHA-256 first; MD5 only where policy allows).
    pub digest_algorithms: Vec<Algorithm>,
    pub header_bytes_max: usize,
    pub body_bytes_max: usize,
    pub message_expires_default_secs: u64,
    pub message_expires_max_secs: u64,
    /// A device 2xx within this window turns the sender's 202 into 200.
    pub sync_window_ms: u64,
    pub register_expires_min_secs: u64,
    pub register_expires_max_secs: u64,
    pub register_expires_default_secs: u64,
    /// How long to wait for a device's final response to a delivered MESSAGE.
    pub delivery_timeout_ms: u64,
    pub delivery_backoff_min_ms: u64,
    pub delivery_backoff_max_ms: u64,
    /// How often the expiry sweep looks at the head of the expiry index.
    pub expiry_tick_ms: u64,
    /// `Flow-Timer` in the 2xx of an RFC 5626 REGISTER (seconds between keep-alives).
    pub flow_timer_secs: u64,
    /// The key that MACs digest nonces (and makes `opaque`); `pmsd` derives it from the master
    /// key so every node and every restart verifies the same nonces. `None`: random.
    pub digest_secret: Option<[u8; 32]>,
    /// Policy: a message that arrived over TLS may be delivered through a TCP or UDP flow.
    /// Off by default: such a message (and any IMDN about it) waits for a TLS flow, so a path
    /// that started encrypted stays encrypted (RFC 3261 §26.2).
    pub allow_plaintext_delivery: bool,
    /// How long a connection (TLS handshake included) or UDP peer may go without a request
    /// that passed digest authentication before it is closed.
    pub unauthenticated_timeout_secs: u64,
    /// Most unauthenticated connections per stream listener, and unauthenticated UDP peers;
    /// when full the oldest is closed.
    pub unauthenticated_max: usize,
    /// Most unauthenticated connections from one source (IPv4 address, IPv6 /64) per stream
    /// listener.
    pub unauthenticated_per_source_max: usize,
    /// Brute-force throttle of digest authentication (per node).
    pub auth_throttle: crate::auth_throttle::AuthThrottleLimits,
    /// Most messages one sender may have queued for one recipient; stamped into each
    /// `Enqueue`, so the group applies the proposing node's value.
    pub mailbox_messages_per_sender_max: u64,
    /// Rate of MESSAGEs from one sender to one recipient through this node.
    pub sender_rate: crate::sender_rate::SenderRateLimits,
}

impl EdgeConfig {
    /// Defaults from `pms_types::limits` for the given domain and node.
    pub fn new(domain: impl Into<String>, node: NodeId, incarnation: u64) -> Self {
        use pms_types::limits::*;
        EdgeConfig {
            domain: domain.into(),
            node,
            incarnation,
            mailbox_groups: 1,
            digest_algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            header_bytes_max: SIP_HEADER_BYTES_MAX_DEFAULT,
            body_bytes_max: SIP_BODY_BYTES_MAX_DEFAULT,
            message_expires_default_secs: MESSAGE_EXPIRES_DEFAULT_SECS,
            message_expires_max_secs: MESSAGE_EXPIRES_MAX_DEFAULT_SECS,
            sync_window_ms: SYNC_WINDOW_MS_DEFAULT,
            register_expires_min_secs: REGISTER_EXPIRES_MIN_SECS,
            register_expires_max_secs: REGISTER_EXPIRES_MAX_SECS,
            register_expires_default_secs: REGISTER_EXPIRES_DEFAULT_SECS,
            delivery_timeout_ms: DELIVERY_TIMEOUT_MS,
            delivery_backoff_min_ms: DELIVERY_BACKOFF_MIN_MS,
            delivery_backoff_max_ms: DELIVERY_BACKOFF_MAX_MS,
            expiry_tick_ms: 200,
            flow_timer_secs: FLOW_TIMER_SECS_DEFAULT,
            digest_secret: None,
            allow_plaintext_delivery: false,
            unauthenticated_timeout_secs: SIP_UNAUTHENTICATED_TIMEOUT_SECS_DEFAULT,
            unauthenticated_max: SIP_UNAUTHENTICATED_MAX_DEFAULT,
            unauthenticated_per_source_max: SIP_UNAUTHENTICATED_PER_SOURCE_MAX_DEFAULT,
            auth_throttle: crate::auth_throttle::AuthThrottleLimits::default(),
            mailbox_messages_per_sender_max: MAILBOX_MESSAGES_PER_SENDER_MAX_DEFAULT,
            sender_rate: crate::sender_rate::SenderRateLimits::default(),
        }
    }

    /// The group holding `user`'s mailbox (bindings, queue, statuses).
    pub fn mailbox_group(&self, user: &UserId) -> GroupId {
        pms_types::mailbox_group_for(user, self.mailbox_groups)
    }

    /// Every mailbox group.
    pub fn mailbox_group_ids(&self) -> impl Iterator<Item = GroupId> + use<> {
        (1..=self.mailbox_groups.max(1)).map(GroupId)
    }
}
