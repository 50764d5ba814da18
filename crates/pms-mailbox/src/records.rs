//! Records stored in the state machine, the commands that change them, and the responses.
//!
//! Invariant: no record here holds a message body, content type or sender in plaintext; those
//! travel only inside `sealed` (sealed by `pms-crypto` before the command is proposed).

use pms_types::{FlowId, GroupId, MessageId, UnixMillis, UserId};
use serde::{Deserialize, Serialize};

/// Digest HA1 values (`H(user:realm:password)`) of the algorithms the account's policy
/// allows; the password itself is never stored. HA1 values are password equivalents: they are
/// stored only sealed under the master key ([`UserRecord::sealed_credentials`], sealed by
/// `pms-crypto` before the command is proposed) and opened in memory to verify a digest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub realm: String,
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

impl Credentials {
    /// The HA1 for `algorithm`, when the account has one.
    pub fn ha1(&self, algorithm: DigestAlgorithm) -> Option<&str> {
        match algorithm {
            DigestAlgorithm::Md5 => self.ha1_md5.as_deref(),
            DigestAlgorithm::Sha256 => self.ha1_sha256.as_deref(),
        }
    }

    /// Keeps only the HA1 values of `algorithms`.
    pub fn retain(&mut self, algorithms: &[DigestAlgorithm]) {
        if !algorithms.contains(&DigestAlgorithm::Md5) {
            self.ha1_md5 = None;
        }
        if !algorithms.contains(&DigestAlgorithm::Sha256) {
            self.ha1_sha256 = None;
        }
    }
}

/// A digest algorithm an account may authenticate with (RFC 8760).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DigestAlgorithm {
    Sha256,
    Md5,
}

impl DigestAlgorithm {
    /// The name operators write (`--digest-algorithms md5,sha256`).
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Md5 => "md5",
        }
    }

    /// Parses a comma-separated list of names (`sha256`, `md5`; `sha-256` also accepted), in
    /// order, without repeats. The error says what is wrong in words for an operator.
    pub fn parse_list(text: &str) -> Result<Vec<DigestAlgorithm>, String> {
        let mut algorithms = Vec::new();
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            let algorithm = match name.to_ascii_lowercase().as_str() {
                "sha256" | "sha-256" => DigestAlgorithm::Sha256,
                "md5" => DigestAlgorithm::Md5,
                _ => return Err(format!("unknown algorithm {name:?} (known: sha256, md5)")),
            };
            if algorithms.contains(&algorithm) {
                return Err(format!("{name:?} is listed twice"));
            }
            algorithms.push(algorithm);
        }
        if algorithms.is_empty() {
            return Err("at least one algorithm is required (sha256, md5)".into());
        }
        Ok(algorithms)
    }
}

impl std::fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user: UserId,
    /// [`Credentials`] encoded and sealed under the master key. Empty in the copy a mailbox
    /// group keeps (only the directory authenticates).
    pub sealed_credentials: Vec<u8>,
    /// The digest algorithms this account may use, in the order the registrar challenges
    /// with them; empty means the node's policy (`pmsd --digest-algorithms`).
    pub digest_algorithms: Vec<DigestAlgorithm>,
    /// Secure messaging is a per-account service the operator enables.
    pub messaging_enabled: bool,
    /// The user's data key wrapped by the cluster master key. Empty in the copy a mailbox
    /// group keeps: only the directory holds it, so shredding has one place to clean.
    pub wrapped_data_key: Vec<u8>,
    pub created_at: UnixMillis,
}

/// One registration of one device (RFC 3261 §10 + RFC 5626 flows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub user: UserId,
    /// What identifies this binding among the user's: `+sip.instance` + `reg-id` when given,
    /// else the Contact URI.
    pub key: String,
    /// The Contact URI as registered.
    pub contact: String,
    pub flow: FlowId,
    /// The flow is SIP over TLS: only such a binding may carry a message that arrived over
    /// TLS (RFC 3261 §26.2 `sips` semantics), unless the node allows plaintext delivery.
    pub over_tls: bool,
    pub registered_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// A message about to be queued (the payload of `Enqueue` and of IMDN notifications).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub message_id: MessageId,
    pub recipient: UserId,
    /// Sealed `pms_crypto` record: body, content type, sender, date, IMDN fields.
    pub sealed: Vec<u8>,
    pub expires_at: UnixMillis,
    /// Hash of the request's identity (From tag + Call-ID + CSeq, or sender + imdn.Message-ID).
    pub dedup_keys: Vec<DedupKey>,
}

/// A hashed retransmission/retry identity. Hashed so that no sender identity is stored in clear.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DedupKey(pub [u8; 32]);

/// Who sent a message, as far as one recipient's mailbox needs to know: a keyed hash of the
/// recipient and the sender's AoR under a secret derived from the master key. It lets `apply`
/// count what one sender has queued for one recipient without storing the sender in clear
/// (guarantee 6), and differs per recipient, so mailboxes cannot be linked by sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SenderKey(pub [u8; 32]);

/// The per-sender quota an `Enqueue` of a user's message is checked against. The cap travels
/// in the command (stamped by the edge from `--mailbox-messages-per-sender-max`), so every
/// replica applies the same one whatever its own configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderQuota {
    pub key: SenderKey,
    /// Most messages of this sender queued in this recipient's mailbox at once.
    pub queued_max: u64,
}

/// A message in a recipient's queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Position in the recipient's queue; delivery follows ascending `seq`.
    pub seq: u64,
    pub message_id: MessageId,
    pub recipient: UserId,
    pub sealed: Vec<u8>,
    pub enqueued_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub dedup_keys: Vec<DedupKey>,
    /// The sender's key when the message counts against a sender quota (a user's message);
    /// `None` for IMDNs PMS generates. The count goes down when the message leaves the queue.
    #[serde(default)]
    pub sender: Option<SenderKey>,
}

/// Where a message is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    Queued,
    Delivered,
    Expired,
    /// The device refused it with this SIP status.
    Failed {
        code: u16,
    },
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "enqueued",
            MessageState::Delivered => "delivered",
            MessageState::Expired => "expired",
            MessageState::Failed { .. } => "failed",
        }
    }
}

/// The status of a message by id, kept after it leaves the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageStatus {
    pub message_id: MessageId,
    pub recipient: UserId,
    pub state: MessageState,
    pub enqueued_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// What a dedup key points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    pub message_id: MessageId,
    pub recipient: UserId,
    pub seq: u64,
    /// The message's expiry: the entry is kept for the dedup retention after it (`Prune`),
    /// so a client retry within that window is still recognised.
    pub expires_at: UnixMillis,
}

/// Per-user counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxMeta {
    pub next_seq: u64,
    pub queued: u64,
}

/// A command proposed through Raft. Imperative names; time only as carried values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    ProvisionUser {
        record: UserRecord,
    },
    SetMessagingEnabled {
        user: UserId,
        enabled: bool,
    },
    /// Replaces the account's digest policy (empty: the node's policy) and its sealed
    /// credentials, which hold the HA1 values of exactly the algorithms the policy allows.
    SetDigestAlgorithms {
        user: UserId,
        algorithms: Vec<DigestAlgorithm>,
        sealed_credentials: Vec<u8>,
    },
    /// Deletes the wrapped data key first (crypto-shredding), then everything else of the user.
    RemoveUser {
        user: UserId,
    },
    /// One REGISTER, applied whole or not at all (RFC 3261 §10.3): `changes` in order, then
    /// the user's expired bindings dropped. Refused with `TooManyBindings` (nothing changed)
    /// when the result would hold more than the per-user maximum.
    Register {
        user: UserId,
        changes: Vec<BindingChange>,
        now: UnixMillis,
    },
    /// Adds or replaces the binding with the same `key`; drops the user's expired bindings.
    Bind {
        binding: Binding,
        now: UnixMillis,
    },
    Unbind {
        user: UserId,
        key: String,
    },
    /// Drops the binding `key` of `user` if it is still on `flow` (the flow closed without an
    /// unREGISTER, RFC 5626 §5.2 / §6: its binding is no longer usable).
    UnbindFlow {
        user: UserId,
        key: String,
        flow: FlowId,
    },
    UnbindAll {
        user: UserId,
    },
    /// Records the master key's fingerprint when the group has none (the first node to start
    /// a cluster), else compares: a node whose key differs is told so and refuses to serve.
    CheckMasterKey {
        fingerprint: String,
    },
    /// Drops every binding whose flow is on this node but not of this incarnation.
    UnbindStaleFlows {
        flow_node: pms_types::NodeId,
        live_incarnation: u64,
    },
    /// Queues `message`; when it is new (not a duplicate), also queues `notification` (the
    /// sender's IMDN `stored`, RFC 5438 `processing`) in the same entry.
    Enqueue {
        message: NewMessage,
        accepted_at: UnixMillis,
        notification: Option<NewMessage>,
        /// A user's message counts against its sender's quota in the recipient's mailbox:
        /// refused with `SenderQueueFull` (nothing changed) when the sender already has
        /// `queued_max` messages queued there. `None`: not counted (IMDNs PMS generates).
        #[serde(default)]
        sender: Option<SenderQuota>,
    },
    MarkDelivered {
        recipient: UserId,
        seq: u64,
        message_id: MessageId,
        at: UnixMillis,
        notification: Option<NewMessage>,
    },
    MarkFailed {
        recipient: UserId,
        seq: u64,
        message_id: MessageId,
        code: u16,
        at: UnixMillis,
        notification: Option<NewMessage>,
    },
    Expire {
        recipient: UserId,
        seq: u64,
        message_id: MessageId,
        at: UnixMillis,
        notification: Option<NewMessage>,
    },
    /// Forgets dedup entries whose message expired more than `dedup_retention_ms` before
    /// `now`, and final statuses (delivered, expired, failed) older than
    /// `status_retention_ms`; at most `APPLY_BATCH_MAX` of each per command (the answer says
    /// whether more remain). Proposed on a schedule by each mailbox group's leader.
    Prune {
        now: UnixMillis,
        dedup_retention_ms: u64,
        status_retention_ms: u64,
    },
    /// Forgets an outboxed IMDN that is now queued in its recipient's group.
    ClearOutbox {
        message_id: MessageId,
    },
    /// Records `cluster_id` as the cluster's identity when the directory has none (the first
    /// node of a new cluster to get here wins), and answers with the recorded one either way:
    /// every node adopts the answer (issue 9 item 2). Appended last: bincode numbers variants.
    RecordClusterId {
        cluster_id: String,
    },
    /// Master-key rotation, step 1 (issue 9 item 8): the cluster's key becomes `to` when it is
    /// `from` (or already is `to`: a rotation run again); else `MasterKeyMismatch`. From then
    /// on every node wraps and seals with `to`. Directory only.
    ChangeMasterKey {
        from: String,
        to: String,
    },
    /// Master-key rotation, step 2: replaces an account's wrapped data key and sealed
    /// credentials with the same key and credentials under the new master key, when the record
    /// still holds `expected_wrapped_data_key` (else `RecordChanged`, nothing changed: the
    /// account was removed and added again, or rewrapped already).
    RewrapUser {
        user: UserId,
        expected_wrapped_data_key: Vec<u8>,
        wrapped_data_key: Vec<u8>,
        sealed_credentials: Vec<u8>,
    },
}

/// One change a REGISTER makes to a user's bindings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BindingChange {
    /// Adds or replaces the binding with the same key.
    Bind(Binding),
    /// Removes the binding with this key (Expires 0).
    Unbind { key: String },
    /// Removes every binding (`Contact: *`).
    UnbindAll,
}

/// An IMDN waiting to be queued in another group (its recipient's mailbox is there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub message: NewMessage,
    pub accepted_at: UnixMillis,
}

/// What applying a command produced. Replicated identically on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    Done,
    UserExists {
        user: UserId,
    },
    UnknownUser {
        user: UserId,
    },
    /// The message was queued (or was already: `duplicate`), with its id and queue position.
    Enqueued {
        message_id: MessageId,
        seq: u64,
        duplicate: bool,
    },
    MailboxFull {
        user: UserId,
    },
    /// The sender already has `queued_max` messages queued for `user`: nothing changed.
    SenderQueueFull {
        user: UserId,
        queued_max: u64,
    },
    TooManyBindings {
        user: UserId,
    },
    /// The message was no longer queued (already delivered, failed or expired): nothing changed,
    /// and any notification in the command was dropped.
    NotQueued {
        message_id: MessageId,
    },
    /// `Expire` arrived before the message's `expires_at`: refused, nothing changed.
    NotYetExpired {
        message_id: MessageId,
        expires_at: UnixMillis,
    },
    /// What a `Prune` removed; `more` when it stopped at its batch bound.
    Pruned {
        dedup_entries: u64,
        statuses: u64,
        more: bool,
    },
    /// `CheckMasterKey` with a fingerprint other than the one the cluster recorded.
    MasterKeyMismatch {
        recorded: String,
    },
    /// The cluster's identity, as recorded in the directory (`RecordClusterId`).
    ClusterId {
        cluster_id: String,
    },
    /// `RewrapUser` found another wrapped key than it expected: nothing changed.
    RecordChanged {
        user: UserId,
    },
}

/// A command with the group it is proposed to. Every entry in the Raft log carries its group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCommand {
    pub group: GroupId,
    pub command: Command,
}

/// What a message's `sealed` bytes hold once opened: everything about a message that must never
/// touch disk in clear (guarantee 6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePayload {
    /// The sender's AoR, e.g. `sip:alice@example.com`.
    pub from: String,
    /// The recipient's AoR as the sender addressed it.
    pub to: String,
    /// The full Content-Type header value, parameters included (charset survives).
    pub content_type: String,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// The Date header of the original request, or the time PMS accepted it (RFC 1123).
    pub date: String,
    /// `imdn.Message-ID` of the original request, when present.
    pub imdn_message_id: Option<String>,
    /// What the original request asked to be notified of (`Disposition-Notification`, as a
    /// SIP header or inside its CPIM body), when anything. Never set on an IMDN.
    pub disposition_notification: Option<String>,
    /// The request asked inside its CPIM body (RFC 5438 §6): the request is delivered without
    /// a `Disposition-Notification` SIP header, and the IMDNs PMS sends back are CPIM too.
    pub notification_in_cpim: bool,
    /// The `Content-Encoding` of the body as sent (the body is stored and delivered encoded,
    /// byte for byte, with this header).
    pub content_encoding: Option<String>,
    /// The request arrived over TLS, so the whole path must stay encrypted: it (and any IMDN
    /// about it) is delivered only through a TLS flow, unless the node allows plaintext
    /// delivery (`pmsd --allow-plaintext-delivery`).
    pub received_over_tls: bool,
}
