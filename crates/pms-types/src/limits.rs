//! Named maxima and defaults. Every queue, header, body, batch and retry loop in PMS is bounded
//! by one of these (or by a configuration value whose default is one of these).

/// Longest user name (user part of an AoR).
pub const USER_NAME_BYTES_MAX: usize = 64;
/// Longest message id accepted from the wire or a command line.
pub const MESSAGE_ID_BYTES_MAX: usize = 64;

/// Default maximum size of a SIP header block (request line + headers + CRLFCRLF).
pub const SIP_HEADER_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// Default maximum SIP body size accepted on a MESSAGE (larger: 413).
pub const SIP_BODY_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Most headers in one SIP message.
pub const SIP_HEADERS_MAX: usize = 128;
/// Largest UDP datagram PMS reads.
pub const SIP_UDP_DATAGRAM_BYTES_MAX: usize = 65_535;

/// Default message validity when the MESSAGE carries no `Expires` (3 days).
pub const MESSAGE_EXPIRES_DEFAULT_SECS: u64 = 3 * 24 * 3600;
/// Default cap on a MESSAGE's `Expires` (7 days).
pub const MESSAGE_EXPIRES_MAX_DEFAULT_SECS: u64 = 7 * 24 * 3600;

/// Most messages queued for one user; beyond it new messages are refused (486 would be
/// misleading, PMS answers 480 with a reason).
pub const MAILBOX_MESSAGES_MAX: usize = 10_000;
/// Default most messages one sender may have queued in one recipient's mailbox
/// (`--mailbox-messages-per-sender-max`, at most `MAILBOX_MESSAGES_MAX`), so that one sender
/// cannot fill a mailbox for everyone. IMDNs PMS generates are not counted.
pub const MAILBOX_MESSAGES_PER_SENDER_MAX_DEFAULT: u64 = 1_000;
/// `Retry-After` (seconds) of the answer to a sender over its per-recipient quota: the quota
/// frees as the recipient's devices take the messages, which PMS cannot predict.
pub const SENDER_QUEUE_FULL_RETRY_AFTER_SECS: u32 = 600;
/// Default burst of MESSAGEs one sender may send to one recipient through one node
/// (`--sender-recipient-burst`); the bucket refills one message per
/// `SENDER_RECIPIENT_INTERVAL_MS_DEFAULT` (50 per second): enough for a script or a
/// catching-up device, far below what would fill a mailbox before the per-sender quota does.
pub const SENDER_RECIPIENT_BURST_DEFAULT: u32 = 200;
/// Default refill interval of that bucket, milliseconds per message
/// (`--sender-recipient-interval-ms`).
pub const SENDER_RECIPIENT_INTERVAL_MS_DEFAULT: u64 = 20;
/// Bounds of `--sender-recipient-burst` and `--sender-recipient-interval-ms`.
pub const SENDER_RECIPIENT_BURST_MAX: u32 = 100_000;
pub const SENDER_RECIPIENT_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Most (sender, recipient) rate buckets a node keeps; full buckets are dropped first, then
/// the one closest to full.
pub const SENDER_RECIPIENT_BUCKETS_MAX: usize = 100_000;
/// Most bindings (devices) per user.
pub const BINDINGS_PER_USER_MAX: usize = 16;

/// Registration expiry bounds and default (seconds).
pub const REGISTER_EXPIRES_MIN_SECS: u64 = 60;
pub const REGISTER_EXPIRES_MAX_SECS: u64 = 3600;
pub const REGISTER_EXPIRES_DEFAULT_SECS: u64 = 600;

/// How long a digest nonce stays valid.
pub const DIGEST_NONCE_LIFETIME_SECS: u64 = 300;
/// Most outstanding nonces the server remembers (oldest evicted first).
pub const DIGEST_NONCES_MAX: usize = 100_000;

/// Brute-force throttle (in memory, per node). A failed authentication (credentials whose
/// response does not match, or that name no account) counts against its source (IPv4 address,
/// IPv6 /64) and its account for a window that starts at the first failure.
pub const AUTH_FAILURE_WINDOW_MS: u64 = 60_000;
/// Failures one source may make in a window; after them every authentication from it is
/// refused (403, `Retry-After`) until the window ends.
pub const AUTH_FAILURES_PER_SOURCE_MAX: u32 = 20;
/// Failures one account may take in a window, from any sources; after them each source that
/// failed on the account in its window is refused for that account, while a source with no
/// recent failure on it (the real user elsewhere) still gets in.
pub const AUTH_FAILURES_PER_ACCOUNT_MAX: u32 = 10;
/// Most entries in each throttle table (sources, accounts, account-source pairs); when full
/// the oldest window is forgotten.
pub const AUTH_THROTTLE_ENTRIES_MAX: usize = 65_536;

/// How long PMS waits for a device's final response to a delivered MESSAGE.
pub const DELIVERY_TIMEOUT_MS: u64 = 8_000;
/// Delivery retry backoff bounds.
pub const DELIVERY_BACKOFF_MIN_MS: u64 = 1_000;
pub const DELIVERY_BACKOFF_MAX_MS: u64 = 60_000;

/// `Flow-Timer` (RFC 5626 §4.4.1) sent to outbound devices: they send a keep-alive about
/// this often. Default, and the bounds `--flow-timer-secs` accepts.
pub const FLOW_TIMER_SECS_DEFAULT: u64 = 120;
pub const FLOW_TIMER_SECS_MIN: u64 = 5;
pub const FLOW_TIMER_SECS_MAX: u64 = 3_600;

/// Default synchronous window: a device 2xx within it turns the sender's 202 into 200.
pub const SYNC_WINDOW_MS_DEFAULT: u64 = 1_000;

/// Most commands applied per storage write batch, and most entries per log scan.
pub const APPLY_BATCH_MAX: usize = 1_024;
/// Most authenticated connections per stream listener, and long-lived (authenticated) UDP
/// peers; unauthenticated ones are bounded apart (`SIP_UNAUTHENTICATED_MAX_DEFAULT`).
pub const CONNECTIONS_MAX: usize = 20_000;
/// Most outbound SIP messages buffered per connection before it is considered dead.
pub const SESSION_OUTBOUND_QUEUE_MAX: usize = 256;
/// Most active mailbox actors; idle ones stop first.
pub const MAILBOX_ACTORS_MAX: usize = 100_000;

/// Default deadline (seconds) for a SIP connection (TLS handshake included) or UDP peer to send
/// a request that passes digest authentication; past it an unauthenticated flow is closed
/// (`--sip-unauthenticated-timeout-secs`). Long enough for a phone's 401 round trip on a slow
/// link; short enough that idle sockets cannot pile up.
pub const SIP_UNAUTHENTICATED_TIMEOUT_SECS_DEFAULT: u64 = 32;
/// Bounds `--sip-unauthenticated-timeout-secs` accepts.
pub const SIP_UNAUTHENTICATED_TIMEOUT_SECS_MIN: u64 = 1;
pub const SIP_UNAUTHENTICATED_TIMEOUT_SECS_MAX: u64 = 600;
/// Default most unauthenticated connections per stream listener, and unauthenticated UDP peers;
/// when full, the oldest is closed to make room (`--sip-unauthenticated-max`).
pub const SIP_UNAUTHENTICATED_MAX_DEFAULT: usize = 1_024;
/// Default most unauthenticated connections from one source (an IPv4 address, an IPv6 /64) per
/// stream listener; a connection beyond it is closed at once
/// (`--sip-unauthenticated-per-source-max`). Not applied to UDP, whose sources are spoofable.
pub const SIP_UNAUTHENTICATED_PER_SOURCE_MAX_DEFAULT: usize = 32;

/// Operations HTTP endpoint (`/livez`, `/readyz`, `/metrics`): largest request head (request
/// line plus header fields); a larger one gets 431. At least 8 KiB, hyper's smallest buffer.
pub const HTTP_REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Most header fields in one HTTP request; more get 431.
pub const HTTP_REQUEST_HEADERS_MAX: usize = 64;
/// Deadline for an HTTP connection's complete request head; past it the connection is closed.
pub const HTTP_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// Longest life of one HTTP connection, answer and lingering included.
pub const HTTP_CONNECTION_DEADLINE_MS: u64 = 15_000;
/// Most open HTTP connections; when that many are open, the oldest one not being answered is
/// closed to make room for a new one.
pub const HTTP_CONNECTIONS_MAX: usize = 4_096;
/// After an HTTP answer, how long and how many unread request bytes are drained before closing.
pub const HTTP_LINGER_TIMEOUT_MS: u64 = 1_000;
pub const HTTP_LINGER_BYTES_MAX: usize = 64 * 1024;
/// Pause after a failed HTTP `accept` (e.g. out of file descriptors) so the loop does not spin.
pub const HTTP_ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// How long a dedup entry outlives its message's expiry, so late retransmissions and client
/// retries are still recognised (`pmsd --dedup-retention-secs`).
pub const DEDUP_RETENTION_SECS_DEFAULT: u64 = 24 * 3600;
/// How long a final message status (delivered, expired, failed) stays queryable with
/// `pmsctl message status` (`pmsd --status-retention-secs`).
pub const STATUS_RETENTION_SECS_DEFAULT: u64 = 7 * 24 * 3600;
/// How often each mailbox group's leader proposes `Prune` (`pmsd --prune-interval-secs`);
/// while a prune stops at its batch bound, the next follows at once.
pub const PRUNE_INTERVAL_SECS_DEFAULT: u64 = 60;
