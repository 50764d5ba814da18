//! The node's configuration: command-line flags, `PMS_*` environment variables, a TOML file and
//! built-in defaults, merged into one validated [`Config`].
//!
//! Invariant: precedence is flag > `PMS_*` environment variable > TOML file (`--config`) > default,
//! per key. clap resolves flag-over-environment; this module then fills what clap left unset
//! from the file, then from the defaults.
//! Invariant: a [`Config`] that [`from_args`]/[`load`] returned is valid: expiry default <= max,
//! peers are well-formed with unique ids, limits are within their named bounds, the log filter
//! parses. Errors name the offending flag and value.
//! Invariant: the TOML file is read with a size cap ([`CONFIG_FILE_BYTES_MAX`]) and unknown keys
//! are refused, so a typo cannot silently fall back to a default.
//!
//! Invariant: the SIP TLS listener always runs; the TCP and UDP listeners run unless set to
//! `off` (`--sip-tcp off --sip-udp off` is a TLS-only node).
//!
//! Invariant: [`Config::certs_dir_given`] and [`Config::master_key_file_given`] say whether the
//! operator named those paths; `pmsd` generates development material only for the defaults.
//!
//! Relative paths (flags or file) are relative to the working directory, not the file.
//! `--master-key-file` defaults to `<data-dir>/master.key`: that is for development only; in
//! production keep the master key off the data volume (another mount, a secret store).

use std::collections::BTreeSet;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Parser;
use pms_types::NodeId;
use pms_types::limits;
use serde::Deserialize;

/// Largest configuration file read.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Entries between snapshots: generous, because of openraft#2116 (a panic when snapshots purge
/// logs under heavy write load on 2-core machines).
pub const RAFT_SNAPSHOT_LOGS_DEFAULT: u64 = 20_000;
/// Mailbox groups of a new cluster.
pub const MAILBOX_GROUPS_DEFAULT: u32 = 8;
/// Most mailbox groups (each is one Raft group on every node).
pub const MAILBOX_GROUPS_LIMIT: u32 = 256;
/// Entries kept behind a snapshot.
pub const RAFT_LOGS_KEPT_DEFAULT: u64 = 5_000;
/// Most peers accepted in `--peers`.
pub const PEERS_MAX: usize = 64;
/// Longest SIP domain accepted.
pub const DOMAIN_BYTES_MAX: usize = 253;
/// Upper bound on `--sync-window-ms`: past SIP's 32 s transaction timeout (Timer F) a final
/// response is useless to the sender, so a longer window only holds resources.
pub const SYNC_WINDOW_MS_MAX: u64 = 30_000;
/// Upper bound on `--sip-header-bytes-max`.
pub const SIP_HEADER_BYTES_MAX_LIMIT: usize = 256 * 1024;
/// Upper bound on `--sip-body-bytes-max`.
pub const SIP_BODY_BYTES_MAX_LIMIT: usize = 16 * 1024 * 1024;

const DEFAULT_DATA_DIR: &str = "./pms-data";
const DEFAULT_SIP_TLS: &str = "0.0.0.0:5061";
const DEFAULT_SIP_TCP: &str = "0.0.0.0:5060";
const DEFAULT_SIP_UDP: &str = "0.0.0.0:5060";
const DEFAULT_GRPC: &str = "0.0.0.0:50051";
const DEFAULT_HTTP: &str = "0.0.0.0:9090";
const DEFAULT_DOMAIN: &str = "localhost";
const DEFAULT_NODE_ID: u64 = 1;
const DEFAULT_DIGEST_ALGORITHMS: &str = "sha256,md5";
/// openraft's internals (state dumps of ~1.5 KB per line) only from `warn` unless asked for.
const DEFAULT_LOG: &str = "info,openraft=warn";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, the event's fields, the current span
    /// and the spans it is in.
    Json,
}

/// A digest algorithm the registrar offers, in the order of [`Config::digest_algorithms`]
/// (most preferred first); accounts may have their own list (`pmsctl user set-digest`).
pub use pms_mailbox::DigestAlgorithm;

/// Another node of the cluster, as given by `--peers 1=host:port,2=host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: NodeId,
    /// `host:port` of the peer's gRPC listener; the host may be a DNS name.
    pub grpc_address: String,
}

/// A plaintext SIP listener's setting: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ListenAddress {
    Off,
    At(SocketAddr),
}

impl ListenAddress {
    /// The address to listen on, `None` when off.
    pub fn address(self) -> Option<SocketAddr> {
        match self {
            ListenAddress::Off => None,
            ListenAddress::At(address) => Some(address),
        }
    }
}

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(ListenAddress::Off);
        }
        text.trim().parse().map(ListenAddress::At).map_err(|_| {
            format!("{text:?} is neither an address (IP:PORT, [IPv6]:PORT) nor \"off\"")
        })
    }
}

impl TryFrom<String> for ListenAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// `--sip-tls`: an address; `off` is refused with the reason (TLS is what phones must use).
fn parse_tls_address(text: &str) -> Result<SocketAddr, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Err(
            "the SIP TLS listener cannot be turned off (only --sip-tcp and --sip-udp can)".into(),
        );
    }
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an address (IP:PORT, [IPv6]:PORT)"))
}

/// The validated configuration of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub sip_tls: SocketAddr,
    /// `None`: no SIP TCP listener (`--sip-tcp off`).
    pub sip_tcp: Option<SocketAddr>,
    /// `None`: no SIP UDP listener (`--sip-udp off`).
    pub sip_udp: Option<SocketAddr>,
    /// A message that arrived over TLS may be delivered through a TCP or UDP flow (off by
    /// default: it waits for a TLS flow).
    pub allow_plaintext_delivery: bool,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub domain: String,
    pub node_id: NodeId,
    /// Empty: a single-node cluster (or, with `join`, a node that waits to be added).
    pub peers: Vec<Peer>,
    /// Join an existing cluster: never bootstrap; wait for `pmsctl cluster add-node`.
    pub join: bool,
    /// Disaster recovery: make this node's replicas the whole cluster (this node the only
    /// member of every group) before starting.
    pub force_new_cluster: bool,
    pub certs_dir: PathBuf,
    /// `certs_dir` was given (flag, environment or file): it must hold the cluster's CA; only
    /// the default `<data-dir>/certs` is filled with development certificates.
    pub certs_dir_given: bool,
    pub master_key_file: PathBuf,
    /// `master_key_file` was given: it must exist; only the default is generated.
    pub master_key_file_given: bool,
    /// During a master-key rotation: the cluster's old key, to open what it wrapped until
    /// `pmsctl cluster rotate-master-key` rewrapped everything (docs/operations.md).
    pub previous_master_key_file: Option<PathBuf>,
    /// The file the configuration was read from, if any.
    pub config_file: Option<PathBuf>,
    /// Non-empty, without duplicates, most preferred first.
    pub digest_algorithms: Vec<DigestAlgorithm>,
    pub message_expires_default_secs: u64,
    pub message_expires_max_secs: u64,
    pub sync_window_ms: u64,
    /// `Flow-Timer` of RFC 5626 registrations: how often (seconds) a device keeps its flow
    /// alive.
    pub flow_timer_secs: u64,
    /// How long a dedup entry outlives its message's expiry (seconds).
    pub dedup_retention_secs: u64,
    /// How long a final message status stays queryable (seconds).
    pub status_retention_secs: u64,
    /// How often each mailbox group's leader prunes (seconds).
    pub prune_interval_secs: u64,
    /// Seconds a SIP connection (TLS handshake included) or UDP peer may go without a request
    /// that passed digest authentication before it is closed.
    pub sip_unauthenticated_timeout_secs: u64,
    /// Most unauthenticated connections per SIP stream listener, and unauthenticated UDP
    /// peers; when full the oldest is closed.
    pub sip_unauthenticated_max: usize,
    /// Most unauthenticated connections from one source (IPv4 address, IPv6 /64) per SIP
    /// stream listener.
    pub sip_unauthenticated_per_source_max: usize,
    /// Mailbox groups users are hashed onto; fixed when the cluster is bootstrapped.
    pub mailbox_groups: u32,
    /// Entries applied between two Raft snapshots of a group.
    pub raft_snapshot_logs: u64,
    /// Entries kept in the Raft log behind a snapshot (lagging followers replay these; a
    /// follower further behind receives the snapshot).
    pub raft_logs_kept: u64,
    pub sip_header_bytes_max: usize,
    pub sip_body_bytes_max: usize,
    /// Most messages one sender may have queued for one recipient (issue 8 item 13).
    pub mailbox_messages_per_sender_max: u64,
    /// MESSAGEs one sender may send to one recipient at once through this node…
    pub sender_recipient_burst: u32,
    /// …and the milliseconds per message the allowance refills.
    pub sender_recipient_interval_ms: u64,
    /// A `tracing_subscriber::EnvFilter` directive string.
    pub log: String,
    pub log_format: LogFormat,
}

/// The command line. Every value is optional so that unset ones can come from the file.
#[derive(Debug, Parser)]
#[command(
    name = "pmsd",
    version,
    about = "PMS node: clustered SIP MESSAGE server"
)]
struct Args {
    /// TOML file with the same keys in snake_case (e.g. `data_dir = "/var/lib/pms"`).
    #[arg(long = "config", env = "PMS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the database and generated dev material [default: ./pms-data].
    #[arg(long, env = "PMS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// SIP over TLS listen address; always on [default: 0.0.0.0:5061].
    #[arg(long, env = "PMS_SIP_TLS", value_name = "ADDR", value_parser = parse_tls_address)]
    sip_tls: Option<SocketAddr>,
    /// SIP over TCP listen address, or `off` (plaintext) [default: 0.0.0.0:5060].
    #[arg(long, env = "PMS_SIP_TCP", value_name = "ADDR|off")]
    sip_tcp: Option<ListenAddress>,
    /// SIP over UDP listen address, or `off` (plaintext) [default: 0.0.0.0:5060].
    #[arg(long, env = "PMS_SIP_UDP", value_name = "ADDR|off")]
    sip_udp: Option<ListenAddress>,
    /// Let a message that arrived over TLS be delivered through a TCP or UDP flow. Without
    /// it such a message (and its IMDNs) waits until the recipient registers over TLS.
    #[arg(long, env = "PMS_ALLOW_PLAINTEXT_DELIVERY")]
    allow_plaintext_delivery: bool,
    /// gRPC (node-to-node and admin) listen address [default: 0.0.0.0:50051].
    #[arg(long, env = "PMS_GRPC", value_name = "ADDR")]
    grpc: Option<SocketAddr>,
    /// HTTP (/metrics, /livez, /readyz) listen address [default: 0.0.0.0:9090].
    #[arg(long, env = "PMS_HTTP", value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// SIP domain served [default: localhost].
    #[arg(long, env = "PMS_DOMAIN")]
    domain: Option<String>,
    /// This node's id [default: 1].
    #[arg(long, env = "PMS_NODE_ID", value_name = "ID")]
    node_id: Option<u64>,
    /// Initial cluster members' gRPC addresses: `1=host:port,2=host:port` (this node included).
    #[arg(long, env = "PMS_PEERS", value_name = "LIST")]
    peers: Option<String>,
    /// Start as a new member of an existing cluster: do not bootstrap, wait until
    /// `pmsctl cluster add-node` adds this node.
    #[arg(long, env = "PMS_JOIN")]
    join: bool,
    /// Disaster recovery (a majority lost for good, or a restored backup): make this node the
    /// only member of every group, keeping what it applied; others then join with add-node.
    /// Flag only (never in a file), for one start.
    #[arg(long)]
    force_new_cluster: bool,
    /// Directory of CA, node and client certificates [default: <data-dir>/certs].
    #[arg(long, env = "PMS_CERTS_DIR", value_name = "DIR")]
    certs_dir: Option<PathBuf>,
    /// Master key file [default: <data-dir>/master.key — development only].
    #[arg(long, env = "PMS_MASTER_KEY_FILE", value_name = "FILE")]
    master_key_file: Option<PathBuf>,
    /// During a master-key rotation only: the cluster's old key file (--master-key-file holds the new one).
    #[arg(long, env = "PMS_PREVIOUS_MASTER_KEY_FILE", value_name = "FILE")]
    previous_master_key_file: Option<PathBuf>,
    /// Digest algorithms offered, preferred first; "sha256" alone refuses MD5 [default: sha256,md5].
    #[arg(long, env = "PMS_DIGEST_ALGORITHMS", value_name = "LIST")]
    digest_algorithms: Option<String>,
    /// Validity of a MESSAGE without `Expires`, seconds [default: 259200].
    #[arg(long, env = "PMS_MESSAGE_EXPIRES_DEFAULT", value_name = "SECS")]
    message_expires_default: Option<u64>,
    /// Cap on a MESSAGE's `Expires`, seconds [default: 604800].
    #[arg(long, env = "PMS_MESSAGE_EXPIRES_MAX", value_name = "SECS")]
    message_expires_max: Option<u64>,
    /// A device 2xx within this window turns the sender's 202 into 200 [default: 1000].
    #[arg(long, env = "PMS_SYNC_WINDOW_MS", value_name = "MS")]
    sync_window_ms: Option<u64>,
    /// Keep-alive interval asked of RFC 5626 (outbound) devices in the REGISTER 2xx's
    /// `Flow-Timer`, seconds [default: 120].
    #[arg(long, env = "PMS_FLOW_TIMER_SECS", value_name = "SECS")]
    flow_timer_secs: Option<u64>,
    /// How long after a message's expiry its retries are still recognised as duplicates,
    /// seconds [default: 86400].
    #[arg(long, env = "PMS_DEDUP_RETENTION_SECS", value_name = "SECS")]
    dedup_retention_secs: Option<u64>,
    /// How long a delivered, expired or failed message's status stays queryable, seconds
    /// [default: 604800].
    #[arg(long, env = "PMS_STATUS_RETENTION_SECS", value_name = "SECS")]
    status_retention_secs: Option<u64>,
    /// How often each mailbox group's leader forgets dedup entries and statuses past their
    /// retention, seconds [default: 60].
    #[arg(long, env = "PMS_PRUNE_INTERVAL_SECS", value_name = "SECS")]
    prune_interval_secs: Option<u64>,
    /// Seconds a SIP connection (TLS handshake included) or UDP peer may stay without a
    /// request that passed digest authentication before it is closed [default: 32].
    #[arg(
        long,
        env = "PMS_SIP_UNAUTHENTICATED_TIMEOUT_SECS",
        value_name = "SECS"
    )]
    sip_unauthenticated_timeout_secs: Option<u64>,
    /// Most unauthenticated connections per SIP TLS/TCP listener, and unauthenticated UDP
    /// peers; when full the oldest is closed [default: 1024].
    #[arg(long, env = "PMS_SIP_UNAUTHENTICATED_MAX", value_name = "N")]
    sip_unauthenticated_max: Option<usize>,
    /// Most unauthenticated connections from one IPv4 address or IPv6 /64 per SIP TLS/TCP
    /// listener; more are closed at once [default: 32].
    #[arg(long, env = "PMS_SIP_UNAUTHENTICATED_PER_SOURCE_MAX", value_name = "N")]
    sip_unauthenticated_per_source_max: Option<usize>,
    /// Mailbox groups users are hashed onto; the same on every node and fixed at bootstrap
    /// [default: 8].
    #[arg(long, env = "PMS_MAILBOX_GROUPS", value_name = "N")]
    mailbox_groups: Option<u32>,
    /// Raft: entries applied between two snapshots of a group [default: 20000].
    #[arg(long, env = "PMS_RAFT_SNAPSHOT_LOGS", value_name = "ENTRIES")]
    raft_snapshot_logs: Option<u64>,
    /// Raft: entries kept behind a snapshot for lagging followers [default: 5000].
    #[arg(long, env = "PMS_RAFT_LOGS_KEPT", value_name = "ENTRIES")]
    raft_logs_kept: Option<u64>,
    /// Largest SIP header block accepted, bytes [default: 16384].
    #[arg(long, env = "PMS_SIP_HEADER_BYTES_MAX", value_name = "BYTES")]
    sip_header_bytes_max: Option<usize>,
    /// Largest SIP body accepted, bytes (larger: 413) [default: 65536].
    #[arg(long, env = "PMS_SIP_BODY_BYTES_MAX", value_name = "BYTES")]
    sip_body_bytes_max: Option<usize>,
    /// Most messages one sender may have queued in one recipient's mailbox; beyond it that
    /// sender alone gets 480 "Too Many Messages Queued From You" [default: 1000].
    #[arg(long, env = "PMS_MAILBOX_MESSAGES_PER_SENDER_MAX", value_name = "N")]
    mailbox_messages_per_sender_max: Option<u64>,
    /// MESSAGEs one sender may send to one recipient at once through this node; beyond it
    /// 480 "Sending Too Fast" with Retry-After [default: 200].
    #[arg(long, env = "PMS_SENDER_RECIPIENT_BURST", value_name = "N")]
    sender_recipient_burst: Option<u32>,
    /// Milliseconds per message that allowance refills (20: 50 messages per second)
    /// [default: 20].
    #[arg(long, env = "PMS_SENDER_RECIPIENT_INTERVAL_MS", value_name = "MS")]
    sender_recipient_interval_ms: Option<u64>,
    /// Log filter, `RUST_LOG` syntax (e.g. "info,pms_edge=debug") [default: info,openraft=warn].
    #[arg(long, env = "PMS_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Log line format [default: text].
    #[arg(long, env = "PMS_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

/// A list given either as one comma-separated string or as a TOML array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ListValue {
    Joined(String),
    Items(Vec<String>),
}

impl ListValue {
    fn joined(self) -> String {
        match self {
            ListValue::Joined(text) => text,
            ListValue::Items(items) => items.join(","),
        }
    }
}

/// The TOML file: the flags' keys in snake_case, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    sip_tls: Option<SocketAddr>,
    sip_tcp: Option<ListenAddress>,
    sip_udp: Option<ListenAddress>,
    allow_plaintext_delivery: Option<bool>,
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    domain: Option<String>,
    node_id: Option<u64>,
    peers: Option<ListValue>,
    join: Option<bool>,
    certs_dir: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    previous_master_key_file: Option<PathBuf>,
    digest_algorithms: Option<ListValue>,
    message_expires_default: Option<u64>,
    message_expires_max: Option<u64>,
    sync_window_ms: Option<u64>,
    flow_timer_secs: Option<u64>,
    dedup_retention_secs: Option<u64>,
    status_retention_secs: Option<u64>,
    prune_interval_secs: Option<u64>,
    sip_unauthenticated_timeout_secs: Option<u64>,
    sip_unauthenticated_max: Option<usize>,
    sip_unauthenticated_per_source_max: Option<usize>,
    mailbox_groups: Option<u32>,
    raft_snapshot_logs: Option<u64>,
    raft_logs_kept: Option<u64>,
    sip_header_bytes_max: Option<usize>,
    sip_body_bytes_max: Option<usize>,
    mailbox_messages_per_sender_max: Option<u64>,
    sender_recipient_burst: Option<u32>,
    sender_recipient_interval_ms: Option<u64>,
    log: Option<String>,
    log_format: Option<LogFormat>,
}

/// Reads the process's command line and environment. Usage errors and `--help` print and exit
/// as clap does; file and validation errors are returned.
pub fn load() -> anyhow::Result<Config> {
    resolve(Args::parse())
}

/// Like [`load`] for the given arguments (the first is the program name, as in `std::env::args`).
/// Environment variables are still read from the process. Usage errors are returned.
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "the binary parses std::env::args through load(); tests use this"
    )
)]
pub fn from_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Config> {
    let args = Args::try_parse_from(args).map_err(|error| anyhow::anyhow!("{error}"))?;
    resolve(args)
}

fn resolve(args: Args) -> anyhow::Result<Config> {
    let file = match &args.config {
        Some(path) => read_file_config(path)?,
        None => FileConfig::default(),
    };
    let file_list = |value: Option<ListValue>| value.map(ListValue::joined);

    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
    // Invariant: only the defaults may be generated; a path the operator gave must exist.
    let certs_dir_given = args.certs_dir.is_some() || file.certs_dir.is_some();
    let master_key_file_given = args.master_key_file.is_some() || file.master_key_file.is_some();
    let certs_dir = args
        .certs_dir
        .or(file.certs_dir)
        .unwrap_or_else(|| data_dir.join("certs"));
    let master_key_file = args
        .master_key_file
        .or(file.master_key_file)
        .unwrap_or_else(|| data_dir.join("master.key"));
    let address = |flag: Option<SocketAddr>, file: Option<SocketAddr>, default: &str| {
        flag.or(file).map_or_else(|| default_address(default), Ok)
    };
    let peers_text = args.peers.or(file_list(file.peers));
    let digest_text = args
        .digest_algorithms
        .or(file_list(file.digest_algorithms))
        .unwrap_or_else(|| DEFAULT_DIGEST_ALGORITHMS.to_owned());

    let config = Config {
        sip_tls: address(args.sip_tls, file.sip_tls, DEFAULT_SIP_TLS)?,
        sip_tcp: plaintext_listener(args.sip_tcp, file.sip_tcp, DEFAULT_SIP_TCP)?,
        sip_udp: plaintext_listener(args.sip_udp, file.sip_udp, DEFAULT_SIP_UDP)?,
        allow_plaintext_delivery: args.allow_plaintext_delivery
            || file.allow_plaintext_delivery.unwrap_or(false),
        grpc: address(args.grpc, file.grpc, DEFAULT_GRPC)?,
        http: address(args.http, file.http, DEFAULT_HTTP)?,
        domain: args
            .domain
            .or(file.domain)
            .unwrap_or_else(|| DEFAULT_DOMAIN.to_owned()),
        node_id: NodeId(args.node_id.or(file.node_id).unwrap_or(DEFAULT_NODE_ID)),
        peers: match peers_text {
            Some(text) => parse_peers(&text)?,
            None => Vec::new(),
        },
        join: args.join || file.join.unwrap_or(false),
        force_new_cluster: args.force_new_cluster,
        digest_algorithms: parse_digest_algorithms(&digest_text)?,
        message_expires_default_secs: args
            .message_expires_default
            .or(file.message_expires_default)
            .unwrap_or(limits::MESSAGE_EXPIRES_DEFAULT_SECS),
        message_expires_max_secs: args
            .message_expires_max
            .or(file.message_expires_max)
            .unwrap_or(limits::MESSAGE_EXPIRES_MAX_DEFAULT_SECS),
        mailbox_groups: args
            .mailbox_groups
            .or(file.mailbox_groups)
            .unwrap_or(MAILBOX_GROUPS_DEFAULT),
        raft_snapshot_logs: args
            .raft_snapshot_logs
            .or(file.raft_snapshot_logs)
            .unwrap_or(RAFT_SNAPSHOT_LOGS_DEFAULT),
        raft_logs_kept: args
            .raft_logs_kept
            .or(file.raft_logs_kept)
            .unwrap_or(RAFT_LOGS_KEPT_DEFAULT),
        sync_window_ms: args
            .sync_window_ms
            .or(file.sync_window_ms)
            .unwrap_or(limits::SYNC_WINDOW_MS_DEFAULT),
        flow_timer_secs: args
            .flow_timer_secs
            .or(file.flow_timer_secs)
            .unwrap_or(limits::FLOW_TIMER_SECS_DEFAULT),
        dedup_retention_secs: args
            .dedup_retention_secs
            .or(file.dedup_retention_secs)
            .unwrap_or(limits::DEDUP_RETENTION_SECS_DEFAULT),
        status_retention_secs: args
            .status_retention_secs
            .or(file.status_retention_secs)
            .unwrap_or(limits::STATUS_RETENTION_SECS_DEFAULT),
        prune_interval_secs: args
            .prune_interval_secs
            .or(file.prune_interval_secs)
            .unwrap_or(limits::PRUNE_INTERVAL_SECS_DEFAULT),
        sip_unauthenticated_timeout_secs: args
            .sip_unauthenticated_timeout_secs
            .or(file.sip_unauthenticated_timeout_secs)
            .unwrap_or(limits::SIP_UNAUTHENTICATED_TIMEOUT_SECS_DEFAULT),
        sip_unauthenticated_max: args
            .sip_unauthenticated_max
            .or(file.sip_unauthenticated_max)
            .unwrap_or(limits::SIP_UNAUTHENTICATED_MAX_DEFAULT),
        sip_unauthenticated_per_source_max: args
            .sip_unauthenticated_per_source_max
            .or(file.sip_unauthenticated_per_source_max)
            .unwrap_or(limits::SIP_UNAUTHENTICATED_PER_SOURCE_MAX_DEFAULT),
        sip_header_bytes_max: args
            .sip_header_bytes_max
            .or(file.sip_header_bytes_max)
            .unwrap_or(limits::SIP_HEADER_BYTES_MAX_DEFAULT),
        sip_body_bytes_max: args
            .sip_body_bytes_max
            .or(file.sip_body_bytes_max)
            .unwrap_or(limits::SIP_BODY_BYTES_MAX_DEFAULT),
        mailbox_messages_per_sender_max: args
            .mailbox_messages_per_sender_max
            .or(file.mailbox_messages_per_sender_max)
            .unwrap_or(limits::MAILBOX_MESSAGES_PER_SENDER_MAX_DEFAULT),
        sender_recipient_burst: args
            .sender_recipient_burst
            .or(file.sender_recipient_burst)
            .unwrap_or(limits::SENDER_RECIPIENT_BURST_DEFAULT),
        sender_recipient_interval_ms: args
            .sender_recipient_interval_ms
            .or(file.sender_recipient_interval_ms)
            .unwrap_or(limits::SENDER_RECIPIENT_INTERVAL_MS_DEFAULT),
        log: args
            .log
            .or(file.log)
            .unwrap_or_else(|| DEFAULT_LOG.to_owned()),
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        data_dir,
        certs_dir,
        certs_dir_given,
        master_key_file,
        master_key_file_given,
        previous_master_key_file: args
            .previous_master_key_file
            .or(file.previous_master_key_file),
        config_file: args.config,
    };
    config.validate()?;
    Ok(config)
}

/// A plaintext listener's address: flag, else file, else `default`; `None` when `off`.
fn plaintext_listener(
    flag: Option<ListenAddress>,
    file: Option<ListenAddress>,
    default: &str,
) -> anyhow::Result<Option<SocketAddr>> {
    match flag.or(file) {
        Some(setting) => Ok(setting.address()),
        None => default_address(default).map(Some),
    }
}

fn default_address(text: &str) -> anyhow::Result<SocketAddr> {
    text.parse()
        .with_context(|| format!("built-in default address {text:?} is invalid"))
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open config file {}", path.display()))?;
    let mut text = String::new();
    file.take(CONFIG_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read config file {} as UTF-8", path.display()))?;
    if text.len() as u64 > CONFIG_FILE_BYTES_MAX {
        bail!(
            "config file {} is larger than {CONFIG_FILE_BYTES_MAX} bytes",
            path.display()
        );
    }
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Parses `1=host:port,2=host:port` (whitespace around items is ignored; empty means none).
pub fn parse_peers(text: &str) -> anyhow::Result<Vec<Peer>> {
    let mut peers = Vec::new();
    let mut seen = BTreeSet::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let expected = "expected ID=HOST:PORT, e.g. --peers 1=10.0.0.1:50051,2=node2:50051";
        let Some((id_text, address)) = item.split_once('=') else {
            bail!("--peers: {item:?} has no '=': {expected}");
        };
        let id: u64 = id_text.trim().parse().map_err(|_| {
            anyhow::anyhow!("--peers: node id {id_text:?} is not a number: {expected}")
        })?;
        let address = address.trim();
        let Some((host, port)) = address.rsplit_once(':') else {
            bail!("--peers: address {address:?} of node {id} has no port: {expected}");
        };
        let host_is_valid = !host.is_empty()
            && !host
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | ',' | '='));
        if !host_is_valid {
            bail!("--peers: address {address:?} of node {id} has an invalid host: {expected}");
        }
        if !matches!(port.parse::<u16>(), Ok(port) if port != 0) {
            bail!("--peers: address {address:?} of node {id} has an invalid port: {expected}");
        }
        if !seen.insert(id) {
            bail!("--peers: node id {id} appears more than once");
        }
        if peers.len() == PEERS_MAX {
            bail!("--peers: more than {PEERS_MAX} peers");
        }
        peers.push(Peer {
            node_id: NodeId(id),
            grpc_address: address.to_owned(),
        });
    }
    Ok(peers)
}

/// Parses `sha256,md5` (case-insensitive, order kept as preference).
pub fn parse_digest_algorithms(text: &str) -> anyhow::Result<Vec<DigestAlgorithm>> {
    DigestAlgorithm::parse_list(text)
        .map_err(|reason| anyhow::anyhow!("--digest-algorithms: {reason}"))
}

impl Config {
    /// Checks the relations and bounds [`from_args`] promises.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.domain.is_empty()
            || self.domain.len() > DOMAIN_BYTES_MAX
            || !self
                .domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        {
            bail!(
                "--domain {:?}: expected a host name of at most {DOMAIN_BYTES_MAX} bytes \
                 (letters, digits, '.', '-')",
                self.domain
            );
        }
        if self.message_expires_default_secs == 0 {
            bail!("--message-expires-default must be at least 1 second");
        }
        if self.message_expires_max_secs < self.message_expires_default_secs {
            bail!(
                "--message-expires-max ({} s) is less than --message-expires-default ({} s)",
                self.message_expires_max_secs,
                self.message_expires_default_secs
            );
        }
        if !(1..=MAILBOX_GROUPS_LIMIT).contains(&self.mailbox_groups) {
            bail!(
                "--mailbox-groups {} must be between 1 and {MAILBOX_GROUPS_LIMIT}",
                self.mailbox_groups
            );
        }
        if self.raft_snapshot_logs == 0 {
            bail!("--raft-snapshot-logs must be at least 1");
        }
        if self.force_new_cluster && (self.join || self.peers.len() > 1) {
            bail!(
                "--force-new-cluster makes this node the only member: give it without --join and without other --peers, then add the other nodes with `pmsctl cluster add-node`"
            );
        }
        if self.prune_interval_secs == 0 {
            bail!("--prune-interval-secs must be at least 1");
        }
        if !(limits::FLOW_TIMER_SECS_MIN..=limits::FLOW_TIMER_SECS_MAX)
            .contains(&self.flow_timer_secs)
        {
            bail!(
                "--flow-timer-secs {} is outside {}..={}",
                self.flow_timer_secs,
                limits::FLOW_TIMER_SECS_MIN,
                limits::FLOW_TIMER_SECS_MAX
            );
        }
        if !(limits::SIP_UNAUTHENTICATED_TIMEOUT_SECS_MIN
            ..=limits::SIP_UNAUTHENTICATED_TIMEOUT_SECS_MAX)
            .contains(&self.sip_unauthenticated_timeout_secs)
        {
            bail!(
                "--sip-unauthenticated-timeout-secs {} is outside {}..={}",
                self.sip_unauthenticated_timeout_secs,
                limits::SIP_UNAUTHENTICATED_TIMEOUT_SECS_MIN,
                limits::SIP_UNAUTHENTICATED_TIMEOUT_SECS_MAX
            );
        }
        if !(1..=limits::CONNECTIONS_MAX).contains(&self.sip_unauthenticated_max) {
            bail!(
                "--sip-unauthenticated-max {} must be between 1 and {}",
                self.sip_unauthenticated_max,
                limits::CONNECTIONS_MAX
            );
        }
        if !(1..=self.sip_unauthenticated_max).contains(&self.sip_unauthenticated_per_source_max) {
            bail!(
                "--sip-unauthenticated-per-source-max {} must be between 1 and \
                 --sip-unauthenticated-max ({})",
                self.sip_unauthenticated_per_source_max,
                self.sip_unauthenticated_max
            );
        }
        if self.sync_window_ms > SYNC_WINDOW_MS_MAX {
            bail!(
                "--sync-window-ms {} is above the maximum {SYNC_WINDOW_MS_MAX}",
                self.sync_window_ms
            );
        }
        if !(1..=SIP_HEADER_BYTES_MAX_LIMIT).contains(&self.sip_header_bytes_max) {
            bail!(
                "--sip-header-bytes-max {} must be between 1 and {SIP_HEADER_BYTES_MAX_LIMIT}",
                self.sip_header_bytes_max
            );
        }
        if !(1..=SIP_BODY_BYTES_MAX_LIMIT).contains(&self.sip_body_bytes_max) {
            bail!(
                "--sip-body-bytes-max {} must be between 1 and {SIP_BODY_BYTES_MAX_LIMIT}",
                self.sip_body_bytes_max
            );
        }
        let mailbox_max = limits::MAILBOX_MESSAGES_MAX as u64;
        if !(1..=mailbox_max).contains(&self.mailbox_messages_per_sender_max) {
            bail!(
                "--mailbox-messages-per-sender-max {} must be between 1 and {mailbox_max} \
                 (the per-recipient maximum)",
                self.mailbox_messages_per_sender_max
            );
        }
        if !(1..=limits::SENDER_RECIPIENT_BURST_MAX).contains(&self.sender_recipient_burst) {
            bail!(
                "--sender-recipient-burst {} must be between 1 and {}",
                self.sender_recipient_burst,
                limits::SENDER_RECIPIENT_BURST_MAX
            );
        }
        if !(1..=limits::SENDER_RECIPIENT_INTERVAL_MS_MAX)
            .contains(&self.sender_recipient_interval_ms)
        {
            bail!(
                "--sender-recipient-interval-ms {} must be between 1 and {}",
                self.sender_recipient_interval_ms,
                limits::SENDER_RECIPIENT_INTERVAL_MS_MAX
            );
        }
        if self.digest_algorithms.is_empty() {
            bail!("--digest-algorithms: at least one algorithm is required");
        }
        tracing_subscriber::EnvFilter::try_new(&self.log).map_err(|error| {
            anyhow::anyhow!("--log {:?} is not a valid filter: {error}", self.log)
        })?;
        Ok(())
    }

    /// Whether MD5 digests are allowed by policy.
    pub fn allows_md5(&self) -> bool {
        self.digest_algorithms.contains(&DigestAlgorithm::Md5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        std::iter::once("pmsd")
            .chain(list.iter().copied())
            .map(str::to_owned)
            .collect()
    }

    /// A `PMS_*` variable in the test environment would beat the files and defaults under test.
    fn assert_no_pms_env() {
        let set: Vec<String> = std::env::vars()
            .map(|(key, _)| key)
            .filter(|key| key.starts_with("PMS_") && key != "PMS_TEST_CHILD")
            .collect();
        assert!(set.is_empty(), "unset {set:?} to run these tests");
    }

    fn write_toml(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write as _;
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file
    }

    #[test]
    fn only_default_certs_and_key_paths_count_as_not_given() {
        assert_no_pms_env();
        let config = from_args(args(&[])).expect("defaults");
        assert!(!config.certs_dir_given && !config.master_key_file_given);
        let config = from_args(args(&[
            "--certs-dir",
            "/etc/pms/certs",
            "--master-key-file",
            "/etc/pms/master.key",
        ]))
        .expect("given");
        assert!(config.certs_dir_given && config.master_key_file_given);
        let file = write_toml("master_key_file = \"/secrets/master.key\"\n");
        let config =
            from_args(args(&["--config", &file.path().display().to_string()])).expect("file");
        assert!(!config.certs_dir_given && config.master_key_file_given);
    }

    #[test]
    fn no_arguments_gives_the_documented_defaults() {
        assert_no_pms_env();
        let config = from_args(args(&[])).expect("defaults are valid");
        assert_eq!(config.data_dir, PathBuf::from("./pms-data"));
        assert_eq!(config.sip_tls, "0.0.0.0:5061".parse().expect("addr"));
        assert_eq!(config.sip_tcp, Some("0.0.0.0:5060".parse().expect("addr")));
        assert_eq!(config.sip_udp, Some("0.0.0.0:5060".parse().expect("addr")));
        assert!(!config.allow_plaintext_delivery);
        assert_eq!(config.grpc, "0.0.0.0:50051".parse().expect("addr"));
        assert_eq!(config.http, "0.0.0.0:9090".parse().expect("addr"));
        assert_eq!(config.domain, "localhost");
        assert_eq!(config.node_id, NodeId(1));
        assert!(config.peers.is_empty());
        assert_eq!(config.certs_dir, PathBuf::from("./pms-data/certs"));
        assert_eq!(
            config.master_key_file,
            PathBuf::from("./pms-data/master.key")
        );
        assert_eq!(config.config_file, None);
        assert_eq!(
            config.digest_algorithms,
            [DigestAlgorithm::Sha256, DigestAlgorithm::Md5]
        );
        assert!(config.allows_md5());
        assert_eq!(config.message_expires_default_secs, 259_200);
        assert_eq!(config.message_expires_max_secs, 604_800);
        assert_eq!(config.sync_window_ms, 1_000);
        assert_eq!(
            config.sip_header_bytes_max,
            limits::SIP_HEADER_BYTES_MAX_DEFAULT
        );
        assert_eq!(
            config.sip_body_bytes_max,
            limits::SIP_BODY_BYTES_MAX_DEFAULT
        );
        assert_eq!(config.log, "info,openraft=warn");
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn sender_limits_have_documented_defaults_and_bounds() {
        assert_no_pms_env();
        let config = from_args(args(&[])).expect("defaults are valid");
        assert_eq!(config.mailbox_messages_per_sender_max, 1_000);
        assert_eq!(config.sender_recipient_burst, 200);
        assert_eq!(config.sender_recipient_interval_ms, 20);
        let config = from_args(args(&[
            "--mailbox-messages-per-sender-max=3",
            "--sender-recipient-burst=2",
            "--sender-recipient-interval-ms=60000",
        ]))
        .expect("valid");
        assert_eq!(config.mailbox_messages_per_sender_max, 3);
        assert_eq!(config.sender_recipient_burst, 2);
        assert_eq!(config.sender_recipient_interval_ms, 60_000);
        for bad in [
            "--mailbox-messages-per-sender-max=0",
            "--mailbox-messages-per-sender-max=10001",
            "--sender-recipient-burst=0",
            "--sender-recipient-interval-ms=0",
        ] {
            let error = from_args(args(&[bad])).expect_err(bad).to_string();
            let flag = bad.split('=').next().unwrap_or_default();
            assert!(error.contains(flag), "{bad}: {error}");
        }
    }

    #[test]
    fn flags_set_every_field_and_derived_paths_follow_data_dir() {
        assert_no_pms_env();
        let config = from_args(args(&[
            "--data-dir=/srv/pms",
            "--sip-tls=127.0.0.1:15061",
            "--sip-tcp=127.0.0.1:15060",
            "--sip-udp=[::1]:15060",
            "--grpc=127.0.0.1:15051",
            "--http=127.0.0.1:19090",
            "--domain=example.org",
            "--node-id=3",
            "--peers=1=10.0.0.1:50051, 2=node2.example.org:50051,3=[::1]:50051",
            "--digest-algorithms=sha256",
            "--message-expires-default=60",
            "--message-expires-max=120",
            "--sync-window-ms=0",
            "--sip-header-bytes-max=4096",
            "--sip-body-bytes-max=1024",
            "--log=warn,pms_edge=debug",
        ]))
        .expect("valid flags");
        assert_eq!(config.data_dir, PathBuf::from("/srv/pms"));
        assert_eq!(config.certs_dir, PathBuf::from("/srv/pms/certs"));
        assert_eq!(config.master_key_file, PathBuf::from("/srv/pms/master.key"));
        assert_eq!(config.sip_udp, Some("[::1]:15060".parse().expect("addr")));
        assert_eq!(config.http.port(), 19090);
        assert_eq!(config.domain, "example.org");
        assert_eq!(config.node_id, NodeId(3));
        let peers: Vec<(u64, &str)> = config
            .peers
            .iter()
            .map(|p| (p.node_id.0, p.grpc_address.as_str()))
            .collect();
        assert_eq!(
            peers,
            [
                (1, "10.0.0.1:50051"),
                (2, "node2.example.org:50051"),
                (3, "[::1]:50051")
            ]
        );
        assert_eq!(config.digest_algorithms, [DigestAlgorithm::Sha256]);
        assert!(!config.allows_md5());
        assert_eq!(
            (
                config.message_expires_default_secs,
                config.message_expires_max_secs
            ),
            (60, 120)
        );
        assert_eq!(config.sync_window_ms, 0);
        assert_eq!(
            (config.sip_header_bytes_max, config.sip_body_bytes_max),
            (4096, 1024)
        );
        assert_eq!(config.log, "warn,pms_edge=debug");
    }

    #[test]
    fn toml_file_fills_unset_keys_and_flags_override_it() {
        assert_no_pms_env();
        let file = write_toml(
            r#"
            data_dir = "/from/file"
            domain = "file.example"
            http = "127.0.0.1:1000"
            node_id = 2
            peers = ["1=a:1", "2=b:2"]
            digest_algorithms = "md5,sha256"
            message_expires_max = 700000
            master_key_file = "/secrets/master.key"
            "#,
        );
        let path = file.path().to_str().expect("utf-8 temp path");
        let config =
            from_args(args(&["--config", path, "--domain", "flag.example"])).expect("valid file");
        assert_eq!(config.config_file.as_deref(), Some(file.path()));
        assert_eq!(config.domain, "flag.example", "flag beats file");
        assert_eq!(
            config.data_dir,
            PathBuf::from("/from/file"),
            "file beats default"
        );
        assert_eq!(config.certs_dir, PathBuf::from("/from/file/certs"));
        assert_eq!(config.master_key_file, PathBuf::from("/secrets/master.key"));
        assert_eq!(config.http, "127.0.0.1:1000".parse().expect("addr"));
        assert_eq!(config.node_id, NodeId(2));
        assert_eq!(config.peers.len(), 2);
        assert_eq!(
            config.digest_algorithms,
            [DigestAlgorithm::Md5, DigestAlgorithm::Sha256]
        );
        assert_eq!(config.message_expires_max_secs, 700_000);
        assert_eq!(config.sip_tls.port(), 5061, "default when neither sets it");
    }

    #[test]
    fn plaintext_listeners_can_be_turned_off_but_tls_cannot() {
        assert_no_pms_env();
        let config = from_args(args(&["--sip-tcp", "off", "--sip-udp=OFF"])).expect("valid");
        assert_eq!((config.sip_tcp, config.sip_udp), (None, None));
        assert_eq!(config.sip_tls.port(), 5061);

        let file = write_toml(
            "sip_tcp = \"off\"\nsip_udp = \"127.0.0.1:5070\"\nallow_plaintext_delivery = true\n",
        );
        let path = file.path().to_str().expect("utf-8 temp path");
        let config = from_args(args(&["--config", path])).expect("valid file");
        assert_eq!(config.sip_tcp, None);
        assert_eq!(
            config.sip_udp,
            Some("127.0.0.1:5070".parse().expect("addr"))
        );
        assert!(config.allow_plaintext_delivery);
        let config = from_args(args(&["--config", path, "--sip-tcp", "127.0.0.1:5071"]))
            .expect("flag beats file");
        assert_eq!(
            config.sip_tcp,
            Some("127.0.0.1:5071".parse().expect("addr"))
        );

        let error = format!(
            "{:#}",
            from_args(args(&["--sip-tls", "off"])).expect_err("off")
        );
        assert!(error.contains("cannot be turned off"), "{error}");
        let error = format!(
            "{:#}",
            from_args(args(&["--sip-tcp", "nowhere"])).expect_err("bad")
        );
        assert!(
            error.contains("--sip-tcp") && error.contains("off"),
            "{error}"
        );
        let bad = write_toml("sip_udp = \"of\"\n");
        let path = bad.path().to_str().expect("utf-8 temp path");
        let error = format!(
            "{:#}",
            from_args(args(&["--config", path])).expect_err("bad")
        );
        assert!(error.contains("sip_udp"), "{error}");
    }

    /// The production example is TLS-only and parses.
    #[test]
    fn the_production_example_config_is_tls_only() {
        assert_no_pms_env();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/pmsd.production.toml"
        );
        let config = from_args(args(&["--config", path])).expect("the example is valid");
        assert_eq!((config.sip_tcp, config.sip_udp), (None, None));
        assert!(!config.allow_plaintext_delivery);
        assert!(!config.allows_md5(), "the example refuses MD5");
    }

    #[test]
    fn unauthenticated_connection_limits_have_documented_defaults_and_bounds() {
        assert_no_pms_env();
        let config = from_args(args(&[])).expect("defaults are valid");
        assert_eq!(
            (
                config.sip_unauthenticated_timeout_secs,
                config.sip_unauthenticated_max,
                config.sip_unauthenticated_per_source_max
            ),
            (32, 1_024, 32)
        );
        let config = from_args(args(&[
            "--sip-unauthenticated-timeout-secs",
            "2",
            "--sip-unauthenticated-max",
            "8",
            "--sip-unauthenticated-per-source-max",
            "4",
        ]))
        .expect("valid");
        assert_eq!(
            (
                config.sip_unauthenticated_timeout_secs,
                config.sip_unauthenticated_max,
                config.sip_unauthenticated_per_source_max
            ),
            (2, 8, 4)
        );
        for bad in [
            &["--sip-unauthenticated-timeout-secs", "0"][..],
            &["--sip-unauthenticated-max", "0"],
            &[
                "--sip-unauthenticated-max",
                "8",
                "--sip-unauthenticated-per-source-max",
                "9",
            ],
        ] {
            let error = format!("{:#}", from_args(args(bad)).expect_err("out of bounds"));
            assert!(error.contains(bad[bad.len() - 2]), "{error}");
        }
    }

    #[test]
    fn toml_file_errors_are_clear() {
        assert_no_pms_env();
        let typo = write_toml("data_dirr = \"/x\"\n");
        let path = typo.path().to_str().expect("utf-8 temp path");
        let error = format!(
            "{:#}",
            from_args(args(&["--config", path])).expect_err("unknown key")
        );
        assert!(
            error.contains("invalid config file") && error.contains("data_dirr"),
            "{error}"
        );

        let bad_addr = write_toml("grpc = \"not-an-address\"\n");
        let path = bad_addr.path().to_str().expect("utf-8 temp path");
        let error = format!(
            "{:#}",
            from_args(args(&["--config", path])).expect_err("bad addr")
        );
        assert!(error.contains("grpc"), "{error}");

        let error = format!(
            "{:#}",
            from_args(args(&["--config", "/nonexistent/pms.toml"])).expect_err("missing file")
        );
        assert!(
            error.contains("cannot open config file /nonexistent/pms.toml"),
            "{error}"
        );
    }

    #[test]
    fn validation_errors_name_the_flag() {
        assert_no_pms_env();
        let error_of = |list: &[&str]| {
            format!(
                "{:#}",
                from_args(args(list)).expect_err("should be refused")
            )
        };
        let error = error_of(&["--message-expires-default=600", "--message-expires-max=60"]);
        assert!(
            error.contains("--message-expires-max (60 s) is less than"),
            "{error}"
        );
        assert!(error_of(&["--message-expires-default=0"]).contains("at least 1 second"));
        assert!(error_of(&["--peers=1:host:5"]).contains("has no '='"));
        assert!(error_of(&["--peers=x=host:5"]).contains("is not a number"));
        assert!(error_of(&["--peers=1=host"]).contains("has no port"));
        assert!(error_of(&["--peers=1=host:99999"]).contains("invalid port"));
        assert!(error_of(&["--peers=1=:5"]).contains("invalid host"));
        assert!(error_of(&["--peers=1=a:5,1=b:5"]).contains("appears more than once"));
        assert!(error_of(&["--digest-algorithms=sha1"]).contains("unknown algorithm \"sha1\""));
        assert!(error_of(&["--digest-algorithms=md5,md5"]).contains("listed twice"));
        assert!(error_of(&["--digest-algorithms=,"]).contains("at least one"));
        assert!(error_of(&["--sync-window-ms=60000"]).contains("above the maximum"));
        assert!(error_of(&["--sip-body-bytes-max=0"]).contains("--sip-body-bytes-max 0"));
        assert!(error_of(&["--sip-header-bytes-max=999999999"]).contains("--sip-header-bytes-max"));
        assert!(error_of(&["--domain=bad domain"]).contains("--domain"));
        assert!(error_of(&["--log=info,=[[["]).contains("--log"));
        assert!(error_of(&["--sip-tls=nonsense"]).contains("--sip-tls"));
        assert!(error_of(&["--no-such-flag"]).contains("--no-such-flag"));
    }

    /// Runs in a child process (see below) with `PMS_*` variables set by the parent.
    #[test]
    #[ignore = "run by environment_beats_file_and_flag_beats_environment in a child process"]
    fn child_environment_precedence() {
        let Ok(file) = std::env::var("PMS_TEST_CHILD") else {
            return;
        };
        let config =
            from_args(args(&["--config", &file, "--domain", "flag.example"])).expect("valid");
        assert_eq!(config.domain, "flag.example", "flag beats environment");
        assert_eq!(
            config.data_dir,
            PathBuf::from("/from/env"),
            "environment beats file"
        );
        assert_eq!(
            config.sip_tls,
            "127.0.0.1:7061".parse().expect("addr"),
            "env beats default"
        );
        assert_eq!(config.node_id, NodeId(9), "file beats default");
        assert_eq!(config.certs_dir, PathBuf::from("/from/env/certs"));
        assert_eq!(config.digest_algorithms, [DigestAlgorithm::Sha256]);
    }

    #[test]
    fn environment_beats_file_and_flag_beats_environment() {
        // Setting variables in this process is unsafe (and forbidden); a child gets its own.
        let file =
            write_toml("data_dir = \"/from/file\"\nnode_id = 9\ndomain = \"file.example\"\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "config::tests::child_environment_precedence",
            ])
            .env("PMS_TEST_CHILD", path)
            .env("PMS_DATA_DIR", "/from/env")
            .env("PMS_SIP_TLS", "127.0.0.1:7061")
            .env("PMS_DOMAIN", "env.example")
            .env("PMS_DIGEST_ALGORITHMS", "sha256")
            .output()
            .expect("run the child test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
