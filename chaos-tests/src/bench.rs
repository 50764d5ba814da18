//! The throughput and latency benchmark behind `pms-bench` (targets P1, P2 and P6 of
//! `targets.md`; how to run it and the numbers measured are in `docs/benchmarks.md`).
//!
//! A run launches a real `pmsd` cluster with [`crate::cluster`] (loopback, shared certificates
//! and master key), provisions the accounts through the admin API, then measures steps: one per
//! scenario × load. Each step opens `connections` persistent SIP connections (TLS by default,
//! spread over the nodes), one sending account each, and sends MESSAGEs with ≈200-byte UTF-8
//! bodies to random recipients, either closed-loop (`window` requests outstanding per
//! connection) or open-loop (a total `rate` per second, spread evenly over the connections).
//! - `offline`: the recipients never register; the server stores and answers 202.
//! - `online`: every recipient has one registered device connection that answers 200 at once;
//!   the server delivers and answers 200 when the device acknowledged within the synchronous
//!   window. The body carries the send time, so the device side measures send → delivered.
//! - `mixed`: each MESSAGE goes to a random recipient of both sets (offline and online), in
//!   proportion to their sizes: the constant mixed load of the state-size soak
//!   (`scripts/state-soak`).
//!
//! A load test of the data path, not of the abuse limits: every connection comes from one
//! address (127.0.0.1) and the steps send many MESSAGEs per (sender, recipient), so the nodes
//! start with the abuse limits of issue 8 opened up to what a load generator needs
//! ([`load_generator_node_args`]: per-source and total unauthenticated connections, their
//! deadline, the (sender, recipient) rate and the per-sender quota). Without that a one-node
//! run with the default 64 connections lost 32 of them to the per-source cap of 32. The
//! per-recipient quota, the digest checks and every other bound stay at `pmsd`'s defaults.
//!
//! Digest authentication is answered once per connection; later requests reuse the nonce with
//! an incrementing `nc` (RFC 7616 §3.4, which `pms-sip`'s server accepts: per nonce each `nc`
//! must exceed the last). A challenge that still arrives (stale or evicted nonce) is answered
//! and the round trip counts inside that message's latency.
//!
//! Invariants:
//! - Invariant: a final response, a delivery or a rate counts in a step only when it happens
//!   inside the step's measured interval (after the warm-up, before the end); timeouts and lost
//!   connections count for requests first written inside that interval.
//! - Invariant: latency runs from the first write of a request to reading its final response
//!   (challenge round trips included); provisional responses are ignored.
//! - Invariant: every queue and loop is bounded: outstanding requests per connection
//!   ([`OUTSTANDING_PER_CONNECTION_MAX`]), challenges per message, connections, steps, users,
//!   bytes read from `/metrics`; histograms have a fixed number of buckets; every wait has a
//!   deadline.
//! - Invariant: only processes this run started are signalled: the [`Cluster`] kills its nodes
//!   when dropped (also when the run future is dropped on Ctrl-C).
//! - Invariant: no step can reach an abuse limit: the per-source cap admits every connection
//!   the run can open at once (senders and devices), and the (sender, recipient) rate and
//!   per-sender quota are at their maxima, where the per-recipient quota binds first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use pms_sip::digest::{self, Challenge};
use pms_sip::{Frame, Method, Request, Response, SipMessage, StreamFramer, response_to};
use pms_transport::{AdminClient, AdminError, NewUser, Password};
use pms_types::UserId;
use pms_types::limits::{SIP_BODY_BYTES_MAX_DEFAULT, SIP_HEADER_BYTES_MAX_DEFAULT};
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::cluster::{Cluster, ClusterConfig, NodeEndpoints};
use crate::user_agent::{Account, Registration, random_hex};

/// Most requests one connection keeps outstanding (open loop: further sends are skipped and
/// counted; closed loop: the largest window).
pub const OUTSTANDING_PER_CONNECTION_MAX: usize = 4_096;
/// Most sending connections in one step.
pub const CONNECTIONS_MAX: usize = 4_096;
/// Most offline recipients (accounts provisioned before the run).
pub const OFFLINE_RECIPIENTS_MAX: usize = 200_000;
/// Most online recipients (one registered TLS connection each).
pub const ONLINE_RECIPIENTS_MAX: usize = 10_000;
/// Highest open-loop rate accepted, requests per second (keeps the send period above zero).
pub const RATE_MAX_PER_SEC: f64 = 1_000_000.0;
/// Most steps (scenarios × loads) in one run.
pub const STEPS_MAX: usize = 64;
/// Challenges answered for one message before it counts as failed with the challenge status.
pub const CHALLENGES_PER_MESSAGE_MAX: u32 = 3;
/// Bytes read from a socket at once.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Unparsable messages tolerated on one connection before it is dropped.
pub const MALFORMED_MESSAGES_MAX: u32 = 16;
/// Deadline of a TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one REGISTER transaction (challenge included).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Admin calls (`add_user`) in flight at once while provisioning.
pub const PROVISION_CONCURRENCY: usize = 16;
/// Deadline of one admin call made while provisioning.
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before retrying an admin call whose outcome is unknown.
pub const PROVISION_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// Deadline of provisioning all accounts.
pub const PROVISION_TIMEOUT: Duration = Duration::from_secs(1_800);
/// Devices registering at once.
pub const REGISTER_CONCURRENCY: usize = 16;
/// How long a fresh cluster may take to become healthy.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Pace of the sweep that turns overdue requests into timeouts.
pub const TIMEOUT_SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Extra time a sender waits for its last answers after the step's timeout (then it gives up).
pub const DRAIN_SLACK: Duration = Duration::from_secs(2);
/// Quiet time between steps (queues drain, delayed 202s arrive).
pub const BETWEEN_STEPS_PAUSE: Duration = Duration::from_secs(2);
/// Length of one probe of how busy the rest of the machine is.
pub const QUIET_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Before a step the nodes must have settled: their CPU use over one probe at most this share
/// of the machine (%), so that the backlog of an overloaded step does not spill into the next.
pub const SETTLE_NODES_BUSY_PERCENT: f64 = 25.0;
/// Longest wait for the nodes to settle before a step.
pub const SETTLE_WAIT_MAX: Duration = Duration::from_secs(120);
/// Group leaders must stay the same this long before the first step (`pmsd` moves each group
/// to its preferred leader every 5 s after start; steps measured meanwhile see handovers).
pub const LEADERS_STABLE_FOR: Duration = Duration::from_secs(6);
/// Longest wait for stable leaders.
pub const LEADERS_STABLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pace of the leader probes while waiting for stable leaders.
pub const LEADERS_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Connection errors quoted per step (the rest are only counted).
pub const ERRORS_QUOTED_MAX: usize = 8;
/// Password of every benchmark account.
pub const ACCOUNT_PASSWORD: &str = "pms-bench-password";
/// Registration lifetime asked for by recipient devices (the server's maximum).
pub const REGISTER_EXPIRES_SECS: u64 = pms_types::limits::REGISTER_EXPIRES_MAX_SECS;
/// Size of every MESSAGE body in bytes (the Kamailio baseline's scenario uses 208).
pub const BODY_BYTES: usize = 208;
/// The body text (the Kamailio baseline's, multi-byte characters and an emoji included),
/// cut to [`BODY_BYTES`] after the send-time marker.
pub const BODY_TEXT: &str = "Benchmark MESSAGE — Grüße aus Köln, привет из Москвы, 東京からこんにちは 👋. Store-and-forward test payload: the quick brown fox jumps over the lazy dog; ÆØÅ æøå ½ € ✓";
/// Start of the send-time marker at the head of every body: `[pms-bench t=MICROS] `.
const BODY_MARKER_PREFIX: &str = "[pms-bench t=";
/// Clock ticks per second used by `/proc/<pid>/stat` when `getconf CLK_TCK` is unavailable.
const CLOCK_TICKS_PER_SEC_DEFAULT: u64 = 100;

/// Unauthenticated connections the nodes accept, in total and from one source, per listener:
/// every connection a run opens (at most [`CONNECTIONS_MAX`] senders and
/// [`ONLINE_RECIPIENTS_MAX`] devices) comes from 127.0.0.1 and a step's warm-up opens all its
/// senders at once (`pmsd` default: 32 per source, 1,024 in total).
pub const NODE_UNAUTHENTICATED_MAX: usize = pms_types::limits::CONNECTIONS_MAX;
const _: () = assert!(CONNECTIONS_MAX + ONLINE_RECIPIENTS_MAX <= NODE_UNAUTHENTICATED_MAX);
/// Seconds a benchmark connection may take to authenticate: an overloaded node can take longer
/// than `pmsd`'s default 32 s to finish a warm-up's handshakes and first challenges.
pub const NODE_UNAUTHENTICATED_TIMEOUT_SECS: u64 =
    pms_types::limits::SIP_UNAUTHENTICATED_TIMEOUT_SECS_MAX;
/// Burst and refill interval of the (sender, recipient) rate limit: the largest burst and
/// 1,000 messages per second per pair, far beyond a step's `rate / (senders × recipients)`
/// (`pmsd` default: 200, then 50 per second).
pub const NODE_SENDER_RECIPIENT_BURST: u32 = pms_types::limits::SENDER_RECIPIENT_BURST_MAX;
pub const NODE_SENDER_RECIPIENT_INTERVAL_MS: u64 = 1;
/// Messages one sender may have queued for one recipient: the per-recipient maximum, so that
/// the per-recipient quota (not an abuse limit) is what a long offline run meets first
/// (`pmsd` default: 1,000).
pub const NODE_MESSAGES_PER_SENDER_MAX: usize = pms_types::limits::MAILBOX_MESSAGES_MAX;

/// The `pmsd` arguments every benchmark node gets on top of the harness's: the abuse limits
/// sized for a load generator on one address (see the module doc). Command-line arguments win
/// over `PMS_*` variables, so these cannot be changed through the environment; run `pmsd`
/// yourself to measure the limits.
pub fn load_generator_node_args() -> Vec<String> {
    [
        (
            "--sip-unauthenticated-max",
            NODE_UNAUTHENTICATED_MAX.to_string(),
        ),
        (
            "--sip-unauthenticated-per-source-max",
            NODE_UNAUTHENTICATED_MAX.to_string(),
        ),
        (
            "--sip-unauthenticated-timeout-secs",
            NODE_UNAUTHENTICATED_TIMEOUT_SECS.to_string(),
        ),
        (
            "--sender-recipient-burst",
            NODE_SENDER_RECIPIENT_BURST.to_string(),
        ),
        (
            "--sender-recipient-interval-ms",
            NODE_SENDER_RECIPIENT_INTERVAL_MS.to_string(),
        ),
        (
            "--mailbox-messages-per-sender-max",
            NODE_MESSAGES_PER_SENDER_MAX.to_string(),
        ),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

/// What the recipients of a step are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Recipients never register: store → 202.
    Offline,
    /// Recipients are registered and answer 200: store → deliver → 200.
    Online,
    /// Both sets of recipients, each MESSAGE to a random one of either.
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Offline => "offline",
            Scenario::Online => "online",
            Scenario::Mixed => "mixed",
        }
    }

    fn needs_offline(self) -> bool {
        matches!(self, Scenario::Offline | Scenario::Mixed)
    }

    fn needs_online(self) -> bool {
        matches!(self, Scenario::Online | Scenario::Mixed)
    }
}

/// The SIP transport of every benchmark connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    Tls,
    Tcp,
}

impl SipTransport {
    fn via_token(self) -> &'static str {
        match self {
            SipTransport::Tls => "TLS",
            SipTransport::Tcp => "TCP",
        }
    }

    fn uri_param(self) -> &'static str {
        match self {
            SipTransport::Tls => "tls",
            SipTransport::Tcp => "tcp",
        }
    }
}

/// How hard a step pushes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Load {
    /// Each connection keeps `window` requests outstanding.
    ClosedLoop { window: usize },
    /// All connections together send `rate_per_sec` requests per second, whatever the answers.
    OpenLoop { rate_per_sec: f64 },
}

impl Load {
    fn label(self) -> String {
        match self {
            Load::ClosedLoop { window } => format!("window {window}"),
            Load::OpenLoop { rate_per_sec } => format!("{rate_per_sec}/s"),
        }
    }
}

/// Everything a run is told.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub nodes: usize,
    pub connections: usize,
    pub loads: Vec<Load>,
    pub scenarios: Vec<Scenario>,
    pub warmup: Duration,
    pub duration: Duration,
    /// A request without a final answer after this long is a timeout.
    pub timeout: Duration,
    pub offline_recipients: usize,
    pub online_recipients: usize,
    pub transport: SipTransport,
    pub pmsd: PathBuf,
    pub pmsctl: PathBuf,
    pub run_dir: PathBuf,
    /// `--log` of every node.
    pub log_filter: String,
    pub domain: String,
    /// The benchmark's own command line, recorded in the report.
    pub command_line: Vec<String>,
    /// Before each step, wait until processes outside this run use at most this share of the
    /// machine (%) …
    pub quiet_below_percent: f64,
    /// … but no longer than this (zero: do not wait).
    pub quiet_wait: Duration,
}

impl BenchOptions {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=crate::cluster::NODES_MAX).contains(&self.nodes),
            "--nodes must be within 1..={}",
            crate::cluster::NODES_MAX
        );
        anyhow::ensure!(
            (1..=CONNECTIONS_MAX).contains(&self.connections),
            "--connections must be within 1..={CONNECTIONS_MAX}"
        );
        anyhow::ensure!(!self.loads.is_empty(), "no load given");
        anyhow::ensure!(!self.scenarios.is_empty(), "no scenario given");
        anyhow::ensure!(
            self.loads.len() * self.scenarios.len() <= STEPS_MAX,
            "at most {STEPS_MAX} steps (scenarios × loads)"
        );
        for load in &self.loads {
            match *load {
                Load::ClosedLoop { window } => anyhow::ensure!(
                    (1..=OUTSTANDING_PER_CONNECTION_MAX).contains(&window),
                    "--window must be within 1..={OUTSTANDING_PER_CONNECTION_MAX}"
                ),
                Load::OpenLoop { rate_per_sec } => anyhow::ensure!(
                    rate_per_sec.is_finite()
                        && rate_per_sec > 0.0
                        && rate_per_sec <= RATE_MAX_PER_SEC,
                    "--rate must be within (0, {RATE_MAX_PER_SEC}]"
                ),
            }
        }
        anyhow::ensure!(
            !self.duration.is_zero() && !self.timeout.is_zero(),
            "--duration and --timeout must be positive"
        );
        if self
            .scenarios
            .iter()
            .any(|scenario| scenario.needs_offline())
        {
            anyhow::ensure!(
                (1..=OFFLINE_RECIPIENTS_MAX).contains(&self.offline_recipients),
                "--recipients must be within 1..={OFFLINE_RECIPIENTS_MAX}"
            );
        }
        if self
            .scenarios
            .iter()
            .any(|scenario| scenario.needs_online())
        {
            anyhow::ensure!(
                (1..=ONLINE_RECIPIENTS_MAX).contains(&self.online_recipients),
                "--online-recipients must be within 1..={ONLINE_RECIPIENTS_MAX}"
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Report

/// The JSON result file.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub tool: &'static str,
    pub date_utc: String,
    pub command_line: String,
    pub machine: MachineInfo,
    pub pmsd: BinaryInfo,
    pub pmsctl: BinaryInfo,
    /// `git rev-parse` of the working directory the benchmark ran in (`+dirty` when it has
    /// uncommitted changes); the binaries may have been built from another commit (see
    /// their `modified_utc`).
    pub git_commit: Option<String>,
    /// `PMS_*` variables of the benchmark's environment (the nodes inherit them).
    pub pmsd_environment: BTreeMap<String, String>,
    pub settings: Settings,
    pub setup: SetupReport,
    pub steps: Vec<StepReport>,
    pub total_duration_secs: f64,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_total_kib: Option<u64>,
    /// Filesystem type holding the nodes' data (fsync cost depends on it).
    pub run_dir_filesystem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BinaryInfo {
    pub path: String,
    /// `release` or `debug` from the path (`target/release/…`, `target/debug/…`), else `unknown`.
    pub profile: &'static str,
    /// When the file was last written (it tells which build it is when the tree moved on).
    pub modified_utc: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub nodes: usize,
    pub network: &'static str,
    pub transport: SipTransport,
    pub connections: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub timeout_secs: f64,
    pub offline_recipients: usize,
    pub online_recipients: usize,
    pub body_bytes: usize,
    pub node_log_filter: String,
    /// Arguments every node got on top of the harness's ([`load_generator_node_args`]).
    pub node_args: Vec<String>,
    pub run_dir: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SetupReport {
    pub cluster_ready_secs: f64,
    /// Time spent waiting for every group's leader to stay unchanged for
    /// [`LEADERS_STABLE_FOR`] (at most [`LEADERS_STABLE_TIMEOUT`]).
    pub leaders_wait_secs: f64,
    /// Whether they did.
    pub leaders_stable: bool,
    /// Group id → leader node when the steps began (`None`: some group had no known leader).
    pub leaders: Option<BTreeMap<u64, u64>>,
    pub accounts_provisioned: usize,
    pub provision_secs: f64,
    pub devices_registered: usize,
    pub register_secs: f64,
}

/// Latency summary in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub scenario: Scenario,
    pub load: Load,
    pub connections: usize,
    /// How long the step waited for the nodes to settle (see [`SETTLE_NODES_BUSY_PERCENT`])
    /// and how busy they were on the last probe (% of all cores).
    pub settle_secs: f64,
    pub nodes_busy_before_percent: Option<f64>,
    /// How long the step waited for the rest of the machine to quieten down, and how busy the
    /// other processes were on the last probe before it started (% of all cores).
    pub quiet_wait_secs: f64,
    pub other_busy_before_percent: Option<f64>,
    pub measured_secs: f64,
    /// Requests first written inside the measured interval.
    pub sent: u64,
    /// Final 202 answers read inside the interval.
    pub accepted_202: u64,
    /// Final 200 answers read inside the interval.
    pub delivered_200: u64,
    pub accepted_202_per_sec: f64,
    pub delivered_200_per_sec: f64,
    /// All 2xx final answers per second (202 + 200): messages the server took.
    pub success_per_sec: f64,
    /// Time to any 2xx final answer.
    pub latency_2xx: Option<Percentiles>,
    pub latency_202: Option<Percentiles>,
    pub latency_200: Option<Percentiles>,
    /// Non-2xx final answers read inside the interval, by status code.
    pub failures_by_status: BTreeMap<u16, u64>,
    /// Requests first written inside the interval without a final answer within the timeout.
    pub timeouts: u64,
    /// Requests first written inside the interval whose connection failed before the answer.
    pub lost_with_connection: u64,
    /// Final answers to requests already counted as timed out.
    pub late_answers: u64,
    /// Digest challenges answered inside the interval (each costs a round trip).
    pub challenges_answered: u64,
    /// Open loop: sends skipped because the connection already had the maximum outstanding
    /// (or was not yet authenticated), inside the interval.
    pub sends_skipped: u64,
    pub connections_failed: u64,
    pub errors: Vec<String>,
    /// Groups whose leader at the end of the step differed from the start (an election or a
    /// handover happened inside the step); `None` when the leaders could not be read.
    pub groups_with_new_leader: Option<usize>,
    pub online: Option<OnlineReport>,
    pub cpu: CpuReport,
    pub nodes: Vec<NodeMetricsDelta>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OnlineReport {
    pub recipients: usize,
    /// MESSAGEs the devices received inside the interval.
    pub received: u64,
    pub received_per_sec: f64,
    /// Send (first write) → received at the device.
    pub end_to_end: Option<Percentiles>,
    /// Received MESSAGEs without the benchmark's send-time marker.
    pub unmarked: u64,
    /// Device connections that failed during the step.
    pub devices_lost: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    /// utime + stime of each node's process during the interval, by node id.
    pub pmsd_secs_by_node: BTreeMap<u64, f64>,
    pub pmsd_secs_total: f64,
    /// CPU time of all nodes per 2xx answer (µs); P6.
    pub pmsd_us_per_message: Option<f64>,
    /// The load generator's own CPU time (this process).
    pub bench_secs: f64,
    /// Busy share of all cores (user+nice+system+irq+softirq+steal) during the interval, %.
    pub system_busy_percent: Option<f64>,
    /// The busy share not charged to the nodes or the load generator: other processes, and
    /// interrupt work such as loopback packet processing, %.
    pub other_busy_percent: Option<f64>,
}

/// What a node's `/metrics` counted during the interval.
#[derive(Clone, Debug, Serialize)]
pub struct NodeMetricsDelta {
    pub node: u64,
    pub messages_accepted: Option<f64>,
    pub messages_delivered: Option<f64>,
    pub raft_proposals: Option<f64>,
    /// Mean time from propose to commit+apply of this node's proposals, ms.
    pub raft_commit_mean_ms: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// Histogram

/// Sub-buckets per power of two: 2^7 (values within 1/64 ≈ 1.6 % of the truth).
const HISTOGRAM_SUB_BUCKET_BITS: u32 = 7;
const HISTOGRAM_SUB_BUCKETS: u64 = 1 << HISTOGRAM_SUB_BUCKET_BITS;
const HISTOGRAM_HALF: u64 = HISTOGRAM_SUB_BUCKETS / 2;
/// Largest value recorded exactly bucketed, in µs (≈ 12.7 days; larger values are clamped).
const HISTOGRAM_VALUE_BITS: u32 = 40;
const HISTOGRAM_VALUE_MAX_US: u64 = (1 << HISTOGRAM_VALUE_BITS) - 1;
const HISTOGRAM_BUCKETS: usize = (HISTOGRAM_SUB_BUCKETS
    + (HISTOGRAM_VALUE_BITS - HISTOGRAM_SUB_BUCKET_BITS) as u64 * HISTOGRAM_HALF)
    as usize;

/// A log-linear histogram of microsecond values with a fixed number of buckets.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_us: u128,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; HISTOGRAM_BUCKETS],
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }

    fn index(value_us: u64) -> usize {
        let value = value_us.min(HISTOGRAM_VALUE_MAX_US);
        if value < HISTOGRAM_SUB_BUCKETS {
            return value as usize;
        }
        let most_significant_bit = 63 - value.leading_zeros();
        let shift = most_significant_bit + 1 - HISTOGRAM_SUB_BUCKET_BITS;
        let mantissa = value >> shift;
        (HISTOGRAM_SUB_BUCKETS
            + u64::from(shift - 1) * HISTOGRAM_HALF
            + (mantissa - HISTOGRAM_HALF)) as usize
    }

    /// `[low, high)` of bucket `index`, in µs.
    fn bounds(index: usize) -> (u64, u64) {
        let index = index as u64;
        if index < HISTOGRAM_SUB_BUCKETS {
            return (index, index + 1);
        }
        let offset = index - HISTOGRAM_SUB_BUCKETS;
        let shift = offset / HISTOGRAM_HALF + 1;
        let mantissa = offset % HISTOGRAM_HALF + HISTOGRAM_HALF;
        (mantissa << shift, (mantissa + 1) << shift)
    }

    pub fn record(&mut self, value: Duration) {
        let value_us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        if let Some(slot) = self.counts.get_mut(Histogram::index(value_us)) {
            *slot += 1;
        }
        self.count += 1;
        self.sum_us += u128::from(value_us);
        self.max_us = self.max_us.max(value_us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at `quantile` (0..=1) in µs: the middle of its bucket, never above the max.
    pub fn quantile_us(&self, quantile: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, high) = Histogram::bounds(index);
                return (low + (high - low - 1) / 2).min(self.max_us);
            }
        }
        self.max_us
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.count == 0 {
            return None;
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Some(Percentiles {
            count: self.count,
            mean_ms: self.sum_us as f64 / self.count as f64 / 1_000.0,
            p50_ms: ms(self.quantile_us(0.50)),
            p90_ms: ms(self.quantile_us(0.90)),
            p99_ms: ms(self.quantile_us(0.99)),
            max_ms: ms(self.max_us),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Connection

trait BenchStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> BenchStream for T {}

/// What arrived on a connection.
#[derive(Debug)]
enum Event {
    Request(Request),
    Response(Response),
    Ping,
}

/// One SIP connection over TLS or TCP. Unlike `user_agent::SipConnection` it also speaks plain
/// TCP (to compare with the Kamailio baseline, whose SIPp has no TLS) and lets the sender batch
/// several requests into one write.
struct Connection {
    stream: Box<dyn BenchStream>,
    framer: StreamFramer,
    read_chunk: Box<[u8]>,
    local_addr: SocketAddr,
    transport: SipTransport,
    malformed: u32,
}

impl Connection {
    async fn connect(
        server: SocketAddr,
        transport: SipTransport,
        tls: &Arc<ClientConfig>,
    ) -> Result<Connection, String> {
        let connecting = async {
            let tcp = TcpStream::connect(server)
                .await
                .map_err(|error| format!("connect {server}: {error}"))?;
            let local_addr = tcp
                .local_addr()
                .map_err(|error| format!("local address: {error}"))?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn BenchStream> = match transport {
                SipTransport::Tcp => Box::new(tcp),
                SipTransport::Tls => Box::new(
                    TlsConnector::from(tls.clone())
                        .connect(ServerName::from(server.ip()), tcp)
                        .await
                        .map_err(|error| format!("TLS with {server}: {error}"))?,
                ),
            };
            Ok::<_, String>(Connection {
                stream,
                framer: StreamFramer::new(SIP_HEADER_BYTES_MAX_DEFAULT, SIP_BODY_BYTES_MAX_DEFAULT),
                read_chunk: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
                local_addr,
                transport,
                malformed: 0,
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("{server}: not connected within {CONNECT_TIMEOUT:?}"))?
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|error| format!("write: {error}"))?;
        self.stream
            .flush()
            .await
            .map_err(|error| format!("flush: {error}"))
    }

    /// The next message or ping. Cancel-safe: state changes only after a read returned.
    async fn next_event(&mut self) -> Result<Event, String> {
        loop {
            match self.framer.next_frame() {
                Some(Ok(Frame::Message(bytes))) => match pms_sip::parse(&bytes) {
                    Ok(SipMessage::Request(request)) => return Ok(Event::Request(request)),
                    Ok(SipMessage::Response(response)) => return Ok(Event::Response(response)),
                    Err(error) => {
                        self.malformed += 1;
                        if self.malformed > MALFORMED_MESSAGES_MAX {
                            return Err(format!(
                                "more than {MALFORMED_MESSAGES_MAX} unparsable messages, last: {error}"
                            ));
                        }
                        continue;
                    }
                },
                Some(Ok(Frame::KeepAlivePing)) => return Ok(Event::Ping),
                Some(Ok(Frame::KeepAlivePong | Frame::Oversized { .. })) => continue,
                Some(Err(error)) => return Err(format!("framing: {error}")),
                None => {}
            }
            let read = self
                .stream
                .read(&mut self.read_chunk)
                .await
                .map_err(|error| format!("read: {error}"))?;
            if read == 0 {
                return Err("connection closed by the server".to_owned());
            }
            self.framer
                .push(self.read_chunk.get(..read).unwrap_or_default());
        }
    }

    /// Appends the device's answer to `request` (200 to MESSAGE and OPTIONS, 405 otherwise,
    /// nothing to ACK) to `out`.
    fn answer(request: &Request, to_tag: &str, out: &mut Vec<u8>) {
        let (status, reason) = match request.method {
            Method::Ack => return,
            Method::Message | Method::Options => (200, "OK"),
            _ => (405, "Method Not Allowed"),
        };
        let mut response = response_to(request, status, reason, to_tag);
        if status != 200 {
            response.headers.push("Allow", "MESSAGE, OPTIONS");
        }
        out.extend_from_slice(&response.to_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// The body of a message first written `since_base` after the run's base instant.
fn message_body(since_base: Duration) -> String {
    let mut body = format!("{BODY_MARKER_PREFIX}{}] ", since_base.as_micros());
    for character in BODY_TEXT.chars() {
        if body.len() + character.len_utf8() > BODY_BYTES {
            break;
        }
        body.push(character);
    }
    while body.len() < BODY_BYTES {
        body.push('.');
    }
    body
}

/// The send time carried by a body made by [`message_body`].
fn body_send_time(body: &[u8]) -> Option<Duration> {
    let rest = body.strip_prefix(BODY_MARKER_PREFIX.as_bytes())?;
    let end = rest.iter().position(|byte| *byte == b']')?;
    let digits = std::str::from_utf8(rest.get(..end)?).ok()?;
    Some(Duration::from_micros(digits.parse().ok()?))
}

/// The fields of one outgoing MESSAGE that stay the same across its challenge resends.
struct MessageFields<'a> {
    local_addr: SocketAddr,
    transport: SipTransport,
    from_aor: &'a str,
    from_tag: &'a str,
    to_uri: &'a str,
    call_id: &'a str,
    body: &'a str,
}

fn write_message_request(
    out: &mut Vec<u8>,
    fields: &MessageFields<'_>,
    cseq: u32,
    authorization: Option<&str>,
) {
    let mut head = String::with_capacity(640);
    let _ = write!(
        head,
        "MESSAGE {to} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK{call_id}.{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <{from}>;tag={from_tag}\r\n\
         To: <{to}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} MESSAGE\r\n",
        to = fields.to_uri,
        transport = fields.transport.via_token(),
        local = fields.local_addr,
        call_id = fields.call_id,
        from = fields.from_aor,
        from_tag = fields.from_tag,
    );
    if let Some(value) = authorization {
        let _ = write!(head, "Proxy-Authorization: {value}\r\n");
    }
    let _ = write!(
        head,
        "User-Agent: pms-bench\r\n\
         Content-Type: text/plain;charset=UTF-8\r\n\
         Content-Length: {}\r\n\r\n",
        fields.body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(fields.body.as_bytes());
}

fn register_request(
    connection: &Connection,
    account: &Account,
    registration: &Registration,
    cseq: u32,
    authorization: Option<&str>,
) -> Vec<u8> {
    let aor = account.aor();
    let mut head = String::with_capacity(768);
    let _ = write!(
        head,
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK{call_id}.{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <{aor}>;tag={from_tag}\r\n\
         To: <{aor}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n",
        domain = account.domain,
        transport = connection.transport.via_token(),
        local = connection.local_addr,
        call_id = registration.call_id,
        from_tag = registration.from_tag,
    );
    if let Some(value) = authorization {
        let _ = write!(head, "Authorization: {value}\r\n");
    }
    let _ = write!(
        head,
        "Contact: <sip:{user}@{local};transport={param}>;+sip.instance=\"<{instance}>\";reg-id=1\r\n\
         Expires: {REGISTER_EXPIRES_SECS}\r\n\
         Supported: outbound, path\r\n\
         Allow: MESSAGE, OPTIONS\r\n\
         User-Agent: pms-bench\r\n\
         Content-Length: 0\r\n\r\n",
        user = account.user,
        local = connection.local_addr,
        param = connection.transport.uri_param(),
        instance = registration.instance_urn,
    );
    head.into_bytes()
}

/// The challenge of a 401/407, if it carries a usable digest challenge.
fn challenge_of(response: &Response) -> Option<Challenge> {
    let header = match response.status {
        401 => "WWW-Authenticate",
        407 => "Proxy-Authenticate",
        _ => return None,
    };
    digest::select_challenge(response.headers.get_all(header))
}

/// Registers `connection` as `account`'s device (answering one challenge). MESSAGEs arriving
/// meanwhile are answered and dropped.
async fn register(connection: &mut Connection, account: &Account) -> Result<(), String> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    let mut registration = Registration::new();
    let to_tag = random_hex(6);
    let mut authorization: Option<String> = None;
    for _ in 0..=CHALLENGES_PER_MESSAGE_MAX {
        let cseq = registration.next_cseq;
        registration.next_cseq += 1;
        let bytes = register_request(
            connection,
            account,
            &registration,
            cseq,
            authorization.as_deref(),
        );
        connection.write(&bytes).await?;
        let response = loop {
            let event = tokio::time::timeout_at(deadline, connection.next_event())
                .await
                .map_err(|_| format!("REGISTER not answered within {REGISTER_TIMEOUT:?}"))??;
            match event {
                Event::Ping => connection.write(b"\r\n").await?,
                Event::Request(request) => {
                    let mut out = Vec::new();
                    Connection::answer(&request, &to_tag, &mut out);
                    connection.write(&out).await?;
                }
                Event::Response(response) => {
                    let ours = response
                        .call_id()
                        .is_ok_and(|call_id| call_id == registration.call_id)
                        && response.cseq().is_ok_and(|(number, method)| {
                            number == cseq && method == Method::Register
                        });
                    if ours && response.status >= 200 {
                        break response;
                    }
                }
            }
        };
        match response.status {
            200..=299 => return Ok(()),
            401 | 407 => {
                let challenge =
                    challenge_of(&response).ok_or("REGISTER challenge without a usable digest")?;
                let uri = format!("sip:{}", account.domain);
                authorization = Some(digest::authorization(
                    &challenge,
                    &account.user,
                    &account.password,
                    "REGISTER",
                    &uri,
                    &random_hex(8),
                    1,
                ));
            }
            status => return Err(format!("REGISTER answered {status} {}", response.reason)),
        }
    }
    Err(format!(
        "REGISTER challenged more than {CHALLENGES_PER_MESSAGE_MAX} times"
    ))
}

// ---------------------------------------------------------------------------------------------
// Senders

/// The instants of one step.
#[derive(Clone, Copy, Debug)]
struct StepTimes {
    measure_start: Instant,
    measure_end: Instant,
}

impl StepTimes {
    fn measured(&self, at: Instant) -> bool {
        at >= self.measure_start && at < self.measure_end
    }
}

/// What one sender connection is told.
struct SenderPlan {
    server: SocketAddr,
    transport: SipTransport,
    tls: Arc<ClientConfig>,
    account: Account,
    recipients: Arc<Vec<String>>,
    load: Load,
    /// Open loop: time between this connection's sends, and its first send.
    interval: Option<(Duration, Instant)>,
    times: StepTimes,
    timeout: Duration,
    /// Zero of the send-time marker in bodies.
    base: Instant,
}

/// What one sender connection counted.
#[derive(Debug, Default)]
struct SenderStats {
    sent: u64,
    by_status: BTreeMap<u16, u64>,
    latency_202: Histogram,
    latency_200: Histogram,
    timeouts: u64,
    lost_with_connection: u64,
    late_answers: u64,
    challenges_answered: u64,
    sends_skipped: u64,
    connection_failed: bool,
    error: Option<String>,
}

impl SenderStats {
    fn merge(&mut self, other: &SenderStats) {
        self.sent += other.sent;
        for (status, count) in &other.by_status {
            *self.by_status.entry(*status).or_default() += count;
        }
        self.latency_202.merge(&other.latency_202);
        self.latency_200.merge(&other.latency_200);
        self.timeouts += other.timeouts;
        self.lost_with_connection += other.lost_with_connection;
        self.late_answers += other.late_answers;
        self.challenges_answered += other.challenges_answered;
        self.sends_skipped += other.sends_skipped;
    }
}

/// One request waiting for its final answer.
struct Pending {
    first_write: Instant,
    /// CSeq of the latest attempt (raised by each challenge resend).
    cseq: u32,
    to_uri: String,
    from_tag: String,
    body: String,
    challenges: u32,
}

/// The digest state of a connection: one nonce, reused with an incrementing count.
struct DigestState {
    challenge: Option<Challenge>,
    nonce_count: u32,
    cnonce: String,
}

struct Sender {
    plan: SenderPlan,
    from_aor: String,
    call_id_prefix: String,
    next_message: u64,
    pending: HashMap<String, Pending>,
    /// Call-IDs of requests given up as timed out, to recognise late answers (cleared when it
    /// reaches [`OUTSTANDING_PER_CONNECTION_MAX`]).
    timed_out: HashSet<String>,
    digest: DigestState,
    rng: rand::rngs::StdRng,
    stats: SenderStats,
    to_tag: String,
}

impl Sender {
    fn new(plan: SenderPlan) -> Sender {
        Sender {
            from_aor: plan.account.aor(),
            call_id_prefix: random_hex(8),
            next_message: 0,
            pending: HashMap::new(),
            timed_out: HashSet::new(),
            digest: DigestState {
                challenge: None,
                nonce_count: 0,
                cnonce: random_hex(8),
            },
            rng: rand::rngs::StdRng::from_entropy(),
            stats: SenderStats::default(),
            to_tag: random_hex(6),
            plan,
        }
    }

    /// Before the first challenge is known only one request goes out (it fetches the nonce).
    fn may_send(&self) -> bool {
        self.pending.len() < OUTSTANDING_PER_CONNECTION_MAX
            && (self.digest.challenge.is_some() || self.pending.is_empty())
    }

    fn authorization(&mut self, to_uri: &str) -> Option<String> {
        let challenge = self.digest.challenge.as_ref()?;
        self.digest.nonce_count += 1;
        Some(digest::authorization(
            challenge,
            &self.plan.account.user,
            &self.plan.account.password,
            "MESSAGE",
            to_uri,
            &self.digest.cnonce,
            self.digest.nonce_count,
        ))
    }

    /// Appends a new MESSAGE to `out` (written right after by the caller).
    fn queue_new(&mut self, out: &mut Vec<u8>, connection: &Connection) {
        let now = Instant::now();
        let recipients = self.plan.recipients.len();
        let recipient = self
            .plan
            .recipients
            .get(self.rng.gen_range(0..recipients))
            .cloned()
            .unwrap_or_default();
        let to_uri = format!("sip:{recipient}@{}", self.plan.account.domain);
        let call_id = format!("{}-{}", self.call_id_prefix, self.next_message);
        self.next_message += 1;
        let pending = Pending {
            first_write: now,
            cseq: 1,
            from_tag: random_hex(4),
            body: message_body(now.saturating_duration_since(self.plan.base)),
            to_uri,
            challenges: 0,
        };
        let authorization = self.authorization(&pending.to_uri);
        write_message_request(
            out,
            &MessageFields {
                local_addr: connection.local_addr,
                transport: connection.transport,
                from_aor: &self.from_aor,
                from_tag: &pending.from_tag,
                to_uri: &pending.to_uri,
                call_id: &call_id,
                body: &pending.body,
            },
            pending.cseq,
            authorization.as_deref(),
        );
        if self.plan.times.measured(now) {
            self.stats.sent += 1;
        }
        self.pending.insert(call_id, pending);
    }

    fn on_response(&mut self, response: &Response, out: &mut Vec<u8>, connection: &Connection) {
        if response.status < 200 {
            return;
        }
        let now = Instant::now();
        let Ok(call_id) = response.call_id() else {
            return;
        };
        let Some(pending) = self.pending.get(call_id) else {
            if self.timed_out.remove(call_id) {
                self.stats.late_answers += 1;
            }
            return;
        };
        if !response
            .cseq()
            .is_ok_and(|(cseq, method)| cseq == pending.cseq && method == Method::Message)
        {
            return;
        }
        if matches!(response.status, 401 | 407)
            && pending.challenges < CHALLENGES_PER_MESSAGE_MAX
            && let Some(challenge) = challenge_of(response)
        {
            self.digest.challenge = Some(challenge);
            self.digest.nonce_count = 0;
            self.digest.cnonce = random_hex(8);
            if self.plan.times.measured(now) {
                self.stats.challenges_answered += 1;
            }
            let call_id = call_id.to_owned();
            let Some(to_uri) = self.pending.get(&call_id).map(|p| p.to_uri.clone()) else {
                return;
            };
            let authorization = self.authorization(&to_uri);
            let Some(pending) = self.pending.get_mut(&call_id) else {
                return;
            };
            pending.cseq += 1;
            pending.challenges += 1;
            write_message_request(
                out,
                &MessageFields {
                    local_addr: connection.local_addr,
                    transport: connection.transport,
                    from_aor: &self.from_aor,
                    from_tag: &pending.from_tag,
                    to_uri: &pending.to_uri,
                    call_id: &call_id,
                    body: &pending.body,
                },
                pending.cseq,
                authorization.as_deref(),
            );
            return;
        }
        let Some(pending) = self.pending.remove(call_id) else {
            return;
        };
        if !self.plan.times.measured(now) {
            return;
        }
        *self.stats.by_status.entry(response.status).or_default() += 1;
        let latency = now.saturating_duration_since(pending.first_write);
        match response.status {
            202 => self.stats.latency_202.record(latency),
            200 => self.stats.latency_200.record(latency),
            _ => {}
        }
    }

    /// Gives up on requests older than the timeout.
    fn sweep_timeouts(&mut self) {
        let now = Instant::now();
        let timeout = self.plan.timeout;
        let expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, pending)| now.saturating_duration_since(pending.first_write) >= timeout)
            .map(|(call_id, _)| call_id.clone())
            .collect();
        for call_id in expired {
            if let Some(pending) = self.pending.remove(&call_id) {
                if self.plan.times.measured(pending.first_write) {
                    self.stats.timeouts += 1;
                }
                if self.timed_out.len() >= OUTSTANDING_PER_CONNECTION_MAX {
                    self.timed_out.clear();
                }
                self.timed_out.insert(call_id);
            }
        }
    }

    fn connection_lost(&mut self, error: String) {
        let times = self.plan.times;
        let lost = self
            .pending
            .values()
            .filter(|pending| times.measured(pending.first_write))
            .count();
        self.stats.lost_with_connection += lost as u64;
        self.pending.clear();
        self.stats.error = Some(error);
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One sending connection for one step: sends until the measured interval ends, then waits
/// for its outstanding answers (at most the timeout plus [`DRAIN_SLACK`]).
async fn run_sender(plan: SenderPlan) -> SenderStats {
    let mut connection = match Connection::connect(plan.server, plan.transport, &plan.tls).await {
        Ok(connection) => connection,
        Err(error) => {
            return SenderStats {
                connection_failed: true,
                error: Some(error),
                ..SenderStats::default()
            };
        }
    };
    let give_up_at = plan.times.measure_end + plan.timeout + DRAIN_SLACK;
    let mut ticker = plan.interval.map(|(period, first)| {
        let mut interval = tokio::time::interval_at(first, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        interval
    });
    let window = match plan.load {
        Load::ClosedLoop { window } => Some(window),
        Load::OpenLoop { .. } => None,
    };
    let mut sender = Sender::new(plan);
    let mut next_sweep = Instant::now() + TIMEOUT_SWEEP_INTERVAL;
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        let now = Instant::now();
        let sending = now < sender.plan.times.measure_end;
        if (!sending && sender.pending.is_empty()) || now >= give_up_at {
            break;
        }
        if sending && let Some(window) = window {
            while sender.pending.len() < window && sender.may_send() {
                sender.queue_new(&mut out, &connection);
            }
        }
        if !out.is_empty() {
            if let Err(error) = connection.write(&out).await {
                sender.connection_lost(error);
                break;
            }
            out.clear();
        }
        tokio::select! {
            biased;
            event = connection.next_event() => match event {
                Ok(Event::Response(response)) => sender.on_response(&response, &mut out, &connection),
                Ok(Event::Request(request)) => Connection::answer(&request, &sender.to_tag, &mut out),
                Ok(Event::Ping) => out.extend_from_slice(b"\r\n"),
                Err(error) => {
                    sender.connection_lost(error);
                    break;
                }
            },
            () = tick(&mut ticker), if sending => {
                if sender.may_send() {
                    sender.queue_new(&mut out, &connection);
                } else if sender.plan.times.measured(Instant::now()) {
                    sender.stats.sends_skipped += 1;
                }
            }
            () = tokio::time::sleep_until(next_sweep) => {
                sender.sweep_timeouts();
                next_sweep = Instant::now() + TIMEOUT_SWEEP_INTERVAL;
            }
        }
    }
    sender.sweep_timeouts();
    let times = sender.plan.times;
    let unanswered = sender
        .pending
        .values()
        .filter(|pending| times.measured(pending.first_write))
        .count();
    sender.stats.timeouts += unanswered as u64;
    sender.stats
}

// ---------------------------------------------------------------------------------------------
// Recipients (online scenario)

/// What the devices saw, for the step being measured.
#[derive(Debug, Default)]
struct DeviceStats {
    times: Option<StepTimes>,
    received: u64,
    unmarked: u64,
    devices_lost: u64,
    end_to_end: Histogram,
}

/// Shared by all device tasks (a short lock per delivered MESSAGE).
#[derive(Debug, Default)]
struct DeviceRecorder {
    stats: Mutex<DeviceStats>,
}

impl DeviceRecorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, DeviceStats> {
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin(&self, times: StepTimes) {
        *self.lock() = DeviceStats {
            times: Some(times),
            ..DeviceStats::default()
        };
    }

    fn take(&self) -> DeviceStats {
        std::mem::take(&mut *self.lock())
    }

    fn received(&self, at: Instant, end_to_end: Option<Duration>) {
        let mut stats = self.lock();
        if !stats.times.is_some_and(|times| times.measured(at)) {
            return;
        }
        stats.received += 1;
        match end_to_end {
            Some(latency) => stats.end_to_end.record(latency),
            None => stats.unmarked += 1,
        }
    }

    fn device_lost(&self) {
        self.lock().devices_lost += 1;
    }
}

/// A registered device: answers every request at once and records each MESSAGE's delay.
async fn run_device(
    mut connection: Connection,
    recorder: Arc<DeviceRecorder>,
    base: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let to_tag = random_hex(6);
    let mut out = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            event = connection.next_event() => {
                match event {
                    Ok(Event::Request(request)) => {
                        let now = Instant::now();
                        Connection::answer(&request, &to_tag, &mut out);
                        if request.method == Method::Message {
                            let end_to_end = body_send_time(&request.body)
                                .map(|sent| now.saturating_duration_since(base + sent));
                            recorder.received(now, end_to_end);
                        }
                    }
                    Ok(Event::Ping) => out.extend_from_slice(b"\r\n"),
                    Ok(Event::Response(_)) => {}
                    Err(_) => {
                        recorder.device_lost();
                        return;
                    }
                }
                if !out.is_empty() {
                    if connection.write(&out).await.is_err() {
                        recorder.device_lost();
                        return;
                    }
                    out.clear();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Provisioning

async fn add_user(client: AdminClient, user: String, deadline: Instant) -> anyhow::Result<()> {
    let user_id = UserId::parse(&user).map_err(|error| anyhow::anyhow!("user {user}: {error}"))?;
    let password = Password::new(ACCOUNT_PASSWORD)?;
    loop {
        let new_user = NewUser {
            user: user_id.clone(),
            password: password.clone(),
            messaging_enabled: true,
            digest_algorithms: Vec::new(),
        };
        let last_error =
            match tokio::time::timeout(ADMIN_CALL_TIMEOUT, client.add_user(new_user)).await {
                Ok(Ok(()) | Err(AdminError::AlreadyExists { .. })) => return Ok(()),
                Ok(Err(AdminError::Unavailable { reason })) => format!("unavailable: {reason}"),
                Ok(Err(error)) => bail!("adding user {user}: {error}"),
                Err(_) => format!("no answer within {ADMIN_CALL_TIMEOUT:?}"),
            };
        if Instant::now() >= deadline {
            bail!("adding user {user}: {last_error}");
        }
        tokio::time::sleep(PROVISION_RETRY_INTERVAL).await;
    }
}

/// Adds every user, [`PROVISION_CONCURRENCY`] at a time, through all nodes in turn.
async fn provision(cluster: &Cluster, users: &[String]) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for node in cluster.node_ids() {
        clients.push(cluster.admin_client(node).await?);
    }
    anyhow::ensure!(!clients.is_empty(), "the cluster has no nodes");
    let deadline = Instant::now() + PROVISION_TIMEOUT;
    let mut tasks = JoinSet::new();
    let mut next = 0;
    while next < users.len() || !tasks.is_empty() {
        while tasks.len() < PROVISION_CONCURRENCY
            && let Some(user) = users.get(next)
        {
            let client = clients
                .get(next % clients.len())
                .cloned()
                .context("no admin client")?;
            tasks.spawn(add_user(client, user.clone(), deadline));
            next += 1;
        }
        if let Some(joined) = tasks.join_next().await {
            joined.context("provisioning task panicked")??;
        }
    }
    Ok(())
}

/// Group id → leader, as the first node that answers sees it; `None` when no node answers or
/// some group has no known leader.
async fn leader_map(admin: &[AdminClient]) -> Option<BTreeMap<u64, u64>> {
    for client in admin {
        let Ok(Ok(status)) =
            tokio::time::timeout(ADMIN_CALL_TIMEOUT, client.cluster_status()).await
        else {
            continue;
        };
        let Some(own) = status
            .nodes
            .iter()
            .find(|node| node.node == status.reporting_node)
        else {
            continue;
        };
        let mut leaders = BTreeMap::new();
        for group in &own.groups {
            leaders.insert(u64::from(group.group.0), group.leader?.0);
        }
        return (!leaders.is_empty()).then_some(leaders);
    }
    None
}

/// Waits until every group has a leader and none changed for [`LEADERS_STABLE_FOR`], at most
/// [`LEADERS_STABLE_TIMEOUT`]; the last map seen (`None` when never complete) and whether it was
/// stable.
async fn wait_for_stable_leaders(admin: &[AdminClient]) -> (Option<BTreeMap<u64, u64>>, bool) {
    let deadline = Instant::now() + LEADERS_STABLE_TIMEOUT;
    let mut stable: Option<(BTreeMap<u64, u64>, Instant)> = None;
    loop {
        let now = Instant::now();
        let current = leader_map(admin).await;
        stable = match (current, stable) {
            (Some(current), Some((previous, since))) if current == previous => {
                if now.saturating_duration_since(since) >= LEADERS_STABLE_FOR {
                    return (Some(current), true);
                }
                Some((previous, since))
            }
            (Some(current), _) => Some((current, now)),
            (None, _) => None,
        };
        if now >= deadline {
            return (stable.map(|(leaders, _)| leaders), false);
        }
        tokio::time::sleep(LEADERS_POLL_INTERVAL).await;
    }
}

/// Connects and registers one device per online recipient, [`REGISTER_CONCURRENCY`] at a time,
/// spread over the nodes; returns the registered connections.
async fn register_devices(
    users: &[String],
    endpoints: &[NodeEndpoints],
    transport: SipTransport,
    tls: &Arc<ClientConfig>,
    domain: &str,
) -> anyhow::Result<Vec<Connection>> {
    let mut tasks = JoinSet::new();
    let mut next = 0;
    let mut devices = Vec::with_capacity(users.len());
    while next < users.len() || !tasks.is_empty() {
        while tasks.len() < REGISTER_CONCURRENCY
            && let Some(user) = users.get(next)
        {
            let server = sip_address(endpoints, next, transport)?;
            let account = Account {
                user: user.clone(),
                password: ACCOUNT_PASSWORD.to_owned(),
                domain: domain.to_owned(),
            };
            let tls = tls.clone();
            tasks.spawn(async move {
                let mut connection = Connection::connect(server, transport, &tls).await?;
                register(&mut connection, &account)
                    .await
                    .map_err(|error| format!("{}: {error}", account.user))?;
                Ok::<_, String>(connection)
            });
            next += 1;
        }
        if let Some(joined) = tasks.join_next().await {
            let connection = joined
                .context("registration task panicked")?
                .map_err(|error| anyhow::anyhow!("registering a device: {error}"))?;
            devices.push(connection);
        }
    }
    Ok(devices)
}

fn sip_address(
    endpoints: &[NodeEndpoints],
    index: usize,
    transport: SipTransport,
) -> anyhow::Result<SocketAddr> {
    let node = endpoints
        .get(index % endpoints.len().max(1))
        .context("the cluster has no nodes")?;
    Ok(match transport {
        SipTransport::Tls => node.sip_tls,
        SipTransport::Tcp => node.sip,
    })
}

// ---------------------------------------------------------------------------------------------
// Machine, processes, metrics

fn clock_ticks_per_sec() -> u64 {
    crate::command::run(&["getconf", "CLK_TCK"])
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(CLOCK_TICKS_PER_SEC_DEFAULT)
}

/// `(ppid, comm, utime + stime)` of a process, from `/proc/<pid>/stat`.
fn process_stat(pid: &str) -> Option<(u32, String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, comm, utime + stime))
}

/// The `--node-id` of a `pmsd` process, from its command line.
fn node_id_of(pid: u32) -> Option<u64> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut arguments = cmdline.split(|byte| *byte == 0);
    while let Some(argument) = arguments.next() {
        if argument == b"--node-id" {
            return std::str::from_utf8(arguments.next()?).ok()?.parse().ok();
        }
    }
    None
}

/// `node id → pid` of the `pmsd` processes this process started.
fn node_pids() -> BTreeMap<u64, u32> {
    let own = std::process::id();
    let mut pids = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if let Some((ppid, comm, _)) = process_stat(name)
            && ppid == own
            && comm == "pmsd"
            && let Some(node) = node_id_of(pid)
        {
            pids.insert(node, pid);
        }
    }
    pids
}

/// `(busy, total)` jiffies of all CPUs from `/proc/stat`.
fn system_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Counters of one node's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
struct NodeCounters {
    accepted: Option<f64>,
    delivered: Option<f64>,
    commit_count: Option<f64>,
    commit_sum_secs: Option<f64>,
}

async fn scrape_metrics(address: SocketAddr) -> NodeCounters {
    let Some(text) = crate::cluster::metrics_text(address).await else {
        return NodeCounters::default();
    };
    let value = |name: &str| crate::cluster::sample_value(&text, name);
    NodeCounters {
        accepted: value("pms_messages_accepted_total"),
        delivered: value("pms_messages_delivered_total"),
        commit_count: value("pms_raft_commit_latency_seconds_count"),
        commit_sum_secs: value("pms_raft_commit_latency_seconds_sum"),
    }
}

/// What is sampled at both ends of the measured interval.
#[derive(Clone, Debug, Default)]
struct Sample {
    node_ticks: BTreeMap<u64, u64>,
    own_ticks: u64,
    system: Option<(u64, u64)>,
    counters: BTreeMap<u64, NodeCounters>,
}

async fn sample(pids: &BTreeMap<u64, u32>, endpoints: &[NodeEndpoints]) -> Sample {
    let node_ticks = pids
        .iter()
        .filter_map(|(node, pid)| Some((*node, process_stat(&pid.to_string())?.2)))
        .collect();
    let own_ticks = process_stat("self").map_or(0, |(_, _, ticks)| ticks);
    let system = system_ticks();
    let mut counters = BTreeMap::new();
    for endpoint in endpoints {
        counters.insert(endpoint.id, scrape_metrics(endpoint.http).await);
    }
    Sample {
        node_ticks,
        own_ticks,
        system,
        counters,
    }
}

/// CPU ticks of the nodes and of this process together.
fn own_ticks(pids: &BTreeMap<u64, u32>) -> u64 {
    let nodes: u64 = pids
        .values()
        .filter_map(|pid| Some(process_stat(&pid.to_string())?.2))
        .sum();
    nodes + process_stat("self").map_or(0, |(_, _, ticks)| ticks)
}

/// The share of all cores (%) busy with something else than this run between two samples.
fn other_busy_percent(
    before: (Option<(u64, u64)>, u64),
    after: (Option<(u64, u64)>, u64),
) -> Option<f64> {
    let ((busy_before, total_before), ours_before) = (before.0?, before.1);
    let ((busy_after, total_after), ours_after) = (after.0?, after.1);
    let total = total_after
        .checked_sub(total_before)
        .filter(|total| *total > 0)?;
    let busy = busy_after.saturating_sub(busy_before);
    let ours = ours_after.saturating_sub(ours_before);
    Some(100.0 * busy.saturating_sub(ours) as f64 / total as f64)
}

/// Waits until the nodes use at most [`SETTLE_NODES_BUSY_PERCENT`] of the machine over one
/// [`QUIET_PROBE_INTERVAL`], or [`SETTLE_WAIT_MAX`] passed. Returns the time waited and the
/// last share.
async fn settle(pids: &BTreeMap<u64, u32>) -> (Duration, Option<f64>) {
    let started = Instant::now();
    let nodes_ticks = || -> u64 {
        pids.values()
            .filter_map(|pid| Some(process_stat(&pid.to_string())?.2))
            .sum()
    };
    let mut last = None;
    loop {
        let before = (system_ticks(), nodes_ticks());
        tokio::time::sleep(QUIET_PROBE_INTERVAL).await;
        let after = (system_ticks(), nodes_ticks());
        if let ((Some((_, total_before)), nodes_before), (Some((_, total_after)), nodes_after)) =
            (before, after)
            && total_after > total_before
        {
            last = Some(
                100.0 * nodes_after.saturating_sub(nodes_before) as f64
                    / (total_after - total_before) as f64,
            );
        }
        let settled = last.is_none_or(|share| share <= SETTLE_NODES_BUSY_PERCENT);
        if settled || started.elapsed() >= SETTLE_WAIT_MAX {
            return (started.elapsed(), last);
        }
    }
}

/// Waits until other processes use at most `below_percent` of the machine over one
/// [`QUIET_PROBE_INTERVAL`], or `max_wait` passed. Returns the time waited and the last share.
async fn wait_for_quiet(
    pids: &BTreeMap<u64, u32>,
    below_percent: f64,
    max_wait: Duration,
) -> (Duration, Option<f64>) {
    let started = Instant::now();
    let mut last = None;
    loop {
        let before = (system_ticks(), own_ticks(pids));
        tokio::time::sleep(QUIET_PROBE_INTERVAL).await;
        last = other_busy_percent(before, (system_ticks(), own_ticks(pids))).or(last);
        let quiet = last.is_none_or(|share| share <= below_percent);
        if quiet || started.elapsed() >= max_wait {
            return (started.elapsed(), last);
        }
    }
}

fn machine_info(run_dir: &Path) -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let memory_total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        });
    MachineInfo {
        nproc: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        cpu_model,
        kernel,
        memory_total_kib,
        run_dir_filesystem: filesystem_of(run_dir),
    }
}

/// The type of the filesystem mounted at the longest mount point that prefixes `path`.
fn filesystem_of(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?;
            let kind = fields.next()?;
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), kind.to_owned()))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, kind)| kind)
}

pub fn binary_info(path: &Path) -> BinaryInfo {
    let text = path.to_string_lossy().into_owned();
    let absolute = std::fs::canonicalize(path)
        .map(|path| path.to_string_lossy().into_owned())
        .unwrap_or_else(|_| text.clone());
    let profile = if absolute.contains("/release/") {
        "release"
    } else if absolute.contains("/debug/") {
        "debug"
    } else {
        "unknown"
    };
    BinaryInfo {
        modified_utc: std::fs::metadata(path)
            .and_then(|metadata| metadata.modified())
            .ok()
            .map(iso8601_utc),
        path: absolute,
        profile,
    }
}

fn git_commit() -> Option<String> {
    let commit = crate::command::run(&["git", "rev-parse", "--short=12", "HEAD"]).ok()?;
    let dirty = crate::command::run(&["git", "status", "--porcelain", "--untracked-files=no"])
        .map(|text| !text.trim().is_empty())
        .unwrap_or(false);
    Some(format!(
        "{}{}",
        commit.trim(),
        if dirty { "+dirty" } else { "" }
    ))
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time since the Unix epoch (the project's one date formatter).
pub fn iso8601_utc(time: SystemTime) -> String {
    let millis = time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    });
    pms_types::time::rfc3339(pms_types::UnixMillis(millis))
}

// ---------------------------------------------------------------------------------------------
// The run

/// What every step needs.
struct RunContext {
    options: BenchOptions,
    endpoints: Vec<NodeEndpoints>,
    tls: Arc<ClientConfig>,
    senders: Vec<String>,
    offline_recipients: Arc<Vec<String>>,
    online_recipients: Arc<Vec<String>>,
    pids: BTreeMap<u64, u32>,
    /// One admin client per node (leader probes).
    admin: Vec<AdminClient>,
    clock_ticks_per_sec: u64,
    base: Instant,
    devices: Arc<DeviceRecorder>,
}

fn user_names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|index| format!("{prefix}{index}")).collect()
}

/// Launches the cluster, provisions, runs every step and returns the report. `progress`
/// receives one human line per phase.
pub async fn run(
    options: BenchOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<BenchReport> {
    options.validate()?;
    let started = Instant::now();
    let date_utc = iso8601_utc(SystemTime::now());
    let machine = machine_info(&options.run_dir);
    progress(&format!(
        "launching {} pmsd node(s) from {} in {}",
        options.nodes,
        options.pmsd.display(),
        options.run_dir.display()
    ));
    let node_args = load_generator_node_args();
    let mut cluster = Cluster::launch_with_node_args(
        ClusterConfig {
            nodes: options.nodes,
            run_dir: options.run_dir.clone(),
            pmsd: options.pmsd.clone(),
            pmsctl: options.pmsctl.clone(),
            prefer_namespaces: false,
            run_pid: std::process::id(),
            domain: options.domain.clone(),
            log_filter: options.log_filter.clone(),
        },
        node_args.clone(),
    )
    .await?;
    let ready_started = Instant::now();
    cluster
        .wait_healthy(Instant::now() + CLUSTER_READY_TIMEOUT)
        .await
        .map_err(|reason| anyhow::anyhow!("the cluster did not become healthy: {reason}"))?;
    let cluster_ready_secs = ready_started.elapsed().as_secs_f64();
    progress(&format!("cluster healthy after {cluster_ready_secs:.1} s"));

    let senders = user_names("bench-s", options.connections);
    let needs_offline = options
        .scenarios
        .iter()
        .any(|scenario| scenario.needs_offline());
    let needs_online = options
        .scenarios
        .iter()
        .any(|scenario| scenario.needs_online());
    let offline_recipients = if needs_offline {
        user_names("bench-off", options.offline_recipients)
    } else {
        Vec::new()
    };
    let online_recipients = if needs_online {
        user_names("bench-on", options.online_recipients)
    } else {
        Vec::new()
    };
    let mut everyone = senders.clone();
    everyone.extend(offline_recipients.iter().cloned());
    everyone.extend(online_recipients.iter().cloned());
    progress(&format!("provisioning {} accounts", everyone.len()));
    let provision_started = Instant::now();
    provision(&cluster, &everyone).await?;
    let provision_secs = provision_started.elapsed().as_secs_f64();
    progress(&format!("provisioned in {provision_secs:.1} s"));

    let tls = pms_crypto::client_config(&cluster.ca_file())
        .map_err(|error| anyhow::anyhow!("TLS client configuration: {error}"))?;
    let pids = node_pids();
    let mut notes = cluster.notes().to_vec();
    notes.push(format!(
        "abuse limits opened for a load generator on one address (a test of the data path, not of the limits): {}",
        node_args.join(" ")
    ));
    if pids.len() != options.nodes {
        notes.push(format!(
            "found {} of {} pmsd processes in /proc; CPU figures cover only those",
            pids.len(),
            options.nodes
        ));
    }
    let mut admin = Vec::new();
    for node in cluster.node_ids() {
        admin.push(cluster.admin_client(node).await?);
    }
    let stable_started = Instant::now();
    let (leaders, leaders_stable) = wait_for_stable_leaders(&admin).await;
    let leaders_wait_secs = stable_started.elapsed().as_secs_f64();
    if leaders_stable {
        progress(&format!(
            "group leaders stable after {leaders_wait_secs:.1} s: {leaders:?}"
        ));
    } else {
        let note = format!(
            "group leaders still changing after {leaders_wait_secs:.0} s (last seen {leaders:?}); steps may see handovers and elections"
        );
        progress(&note);
        notes.push(note);
    }
    let context = RunContext {
        admin,
        endpoints: cluster.endpoints(),
        tls,
        senders,
        offline_recipients: Arc::new(offline_recipients),
        online_recipients: Arc::new(online_recipients),
        pids,
        clock_ticks_per_sec: clock_ticks_per_sec(),
        base: Instant::now(),
        devices: Arc::new(DeviceRecorder::default()),
        options,
    };

    let (stop_devices, stop_receiver) = watch::channel(false);
    let mut device_tasks = JoinSet::new();
    let mut register_secs = 0.0;
    if needs_online {
        progress(&format!(
            "registering {} devices",
            context.online_recipients.len()
        ));
        let register_started = Instant::now();
        let devices = register_devices(
            &context.online_recipients,
            &context.endpoints,
            context.options.transport,
            &context.tls,
            &context.options.domain,
        )
        .await?;
        register_secs = register_started.elapsed().as_secs_f64();
        progress(&format!("registered in {register_secs:.1} s"));
        for connection in devices {
            device_tasks.spawn(run_device(
                connection,
                context.devices.clone(),
                context.base,
                stop_receiver.clone(),
            ));
        }
    }

    let mut steps = Vec::new();
    for scenario in context.options.scenarios.clone() {
        for load in context.options.loads.clone() {
            progress(&format!(
                "step: {} at {} ({} connections, {:?} warm-up + {:?})",
                scenario.name(),
                load.label(),
                context.options.connections,
                context.options.warmup,
                context.options.duration
            ));
            let step = run_step(&context, scenario, load).await?;
            progress(&step_line(&step));
            steps.push(step);
            tokio::time::sleep(BETWEEN_STEPS_PAUSE).await;
        }
    }

    let _ = stop_devices.send(true);
    while tokio::time::timeout(CONNECT_TIMEOUT, device_tasks.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    device_tasks.abort_all();
    for outcome in cluster.shutdown().await {
        if !outcome.contains("exited: exit status: 0") {
            notes.push(format!("shutdown: {outcome}"));
        }
    }

    let options = &context.options;
    Ok(BenchReport {
        tool: "pms-bench",
        date_utc,
        command_line: options.command_line.join(" "),
        machine,
        pmsd: binary_info(&options.pmsd),
        pmsctl: binary_info(&options.pmsctl),
        git_commit: git_commit(),
        pmsd_environment: std::env::vars()
            .filter(|(key, _)| key.starts_with("PMS_"))
            .collect(),
        settings: Settings {
            nodes: options.nodes,
            network: cluster.mode().name(),
            transport: options.transport,
            connections: options.connections,
            warmup_secs: options.warmup.as_secs_f64(),
            duration_secs: options.duration.as_secs_f64(),
            timeout_secs: options.timeout.as_secs_f64(),
            offline_recipients: context.offline_recipients.len(),
            online_recipients: context.online_recipients.len(),
            body_bytes: BODY_BYTES,
            node_log_filter: options.log_filter.clone(),
            node_args,
            run_dir: options.run_dir.display().to_string(),
        },
        setup: SetupReport {
            cluster_ready_secs,
            leaders_wait_secs,
            leaders_stable,
            leaders,
            accounts_provisioned: everyone.len(),
            provision_secs,
            devices_registered: context.online_recipients.len(),
            register_secs,
        },
        steps,
        total_duration_secs: started.elapsed().as_secs_f64(),
        notes,
    })
}

async fn run_step(
    context: &RunContext,
    scenario: Scenario,
    load: Load,
) -> anyhow::Result<StepReport> {
    let options = &context.options;
    let recipients = match scenario {
        Scenario::Offline => context.offline_recipients.clone(),
        Scenario::Online => context.online_recipients.clone(),
        Scenario::Mixed => Arc::new(
            context
                .offline_recipients
                .iter()
                .chain(context.online_recipients.iter())
                .cloned()
                .collect(),
        ),
    };
    let (settle_wait, nodes_busy_before_percent) = settle(&context.pids).await;
    let (quiet_wait, other_busy_before_percent) = if options.quiet_wait.is_zero() {
        (Duration::ZERO, None)
    } else {
        wait_for_quiet(
            &context.pids,
            options.quiet_below_percent,
            options.quiet_wait,
        )
        .await
    };
    let leaders_before = leader_map(&context.admin).await;
    let start = Instant::now();
    let times = StepTimes {
        measure_start: start + options.warmup,
        measure_end: start + options.warmup + options.duration,
    };
    context.devices.begin(times);
    let connections = options.connections;
    let period = match load {
        Load::OpenLoop { rate_per_sec } => {
            Some(Duration::from_secs_f64(connections as f64 / rate_per_sec))
        }
        Load::ClosedLoop { .. } => None,
    };
    let mut tasks = JoinSet::new();
    for (index, user) in context.senders.iter().enumerate() {
        let interval = period.map(|period| {
            // Spread the connections' sends evenly over one period.
            let offset = period.mul_f64(index as f64 / connections as f64);
            (period, start + offset)
        });
        tasks.spawn(run_sender(SenderPlan {
            server: sip_address(&context.endpoints, index, options.transport)?,
            transport: options.transport,
            tls: context.tls.clone(),
            account: Account {
                user: user.clone(),
                password: ACCOUNT_PASSWORD.to_owned(),
                domain: options.domain.clone(),
            },
            recipients: recipients.clone(),
            load,
            interval,
            times,
            timeout: options.timeout,
            base: context.base,
        }));
    }
    tokio::time::sleep_until(times.measure_start).await;
    let before = sample(&context.pids, &context.endpoints).await;
    tokio::time::sleep_until(times.measure_end).await;
    let after = sample(&context.pids, &context.endpoints).await;
    let measured_secs = options.duration.as_secs_f64();

    let mut total = SenderStats::default();
    let mut errors = Vec::new();
    let mut connections_failed = 0u64;
    while let Some(joined) = tasks.join_next().await {
        let stats = joined.context("sender task panicked")?;
        if stats.connection_failed {
            connections_failed += 1;
        }
        if let Some(error) = &stats.error
            && errors.len() < ERRORS_QUOTED_MAX
        {
            errors.push(error.clone());
        }
        total.merge(&stats);
    }
    let devices = context.devices.take();
    let leaders_after = leader_map(&context.admin).await;
    let groups_with_new_leader = match (&leaders_before, &leaders_after) {
        (Some(before), Some(after)) => Some(
            after
                .iter()
                .filter(|(group, leader)| before.get(group) != Some(leader))
                .count(),
        ),
        _ => None,
    };

    let accepted_202 = total.by_status.get(&202).copied().unwrap_or(0);
    let delivered_200 = total.by_status.get(&200).copied().unwrap_or(0);
    let successes: u64 = total
        .by_status
        .iter()
        .filter(|(status, _)| (200..300).contains(*status))
        .map(|(_, count)| count)
        .sum();
    let failures_by_status = total
        .by_status
        .iter()
        .filter(|(status, _)| !(200..300).contains(*status))
        .map(|(status, count)| (*status, *count))
        .collect();
    let mut latency_2xx = total.latency_202.clone();
    latency_2xx.merge(&total.latency_200);

    let ticks = context.clock_ticks_per_sec as f64;
    let pmsd_secs_by_node: BTreeMap<u64, f64> = after
        .node_ticks
        .iter()
        .filter_map(|(node, ticks_after)| {
            let ticks_before = before.node_ticks.get(node)?;
            Some((
                *node,
                ticks_after.saturating_sub(*ticks_before) as f64 / ticks,
            ))
        })
        .collect();
    let pmsd_secs_total: f64 = pmsd_secs_by_node.values().sum();
    let system_busy_percent = match (before.system, after.system) {
        (Some((busy_before, total_before)), Some((busy_after, total_after)))
            if total_after > total_before =>
        {
            Some(
                100.0 * busy_after.saturating_sub(busy_before) as f64
                    / (total_after - total_before) as f64,
            )
        }
        _ => None,
    };
    let nodes = context
        .endpoints
        .iter()
        .map(|endpoint| {
            let before = before
                .counters
                .get(&endpoint.id)
                .copied()
                .unwrap_or_default();
            let after = after
                .counters
                .get(&endpoint.id)
                .copied()
                .unwrap_or_default();
            let delta =
                |pick: fn(&NodeCounters) -> Option<f64>| Some(pick(&after)? - pick(&before)?);
            let proposals = delta(|counters| counters.commit_count);
            let commit_secs = delta(|counters| counters.commit_sum_secs);
            NodeMetricsDelta {
                node: endpoint.id,
                messages_accepted: delta(|counters| counters.accepted),
                messages_delivered: delta(|counters| counters.delivered),
                raft_proposals: proposals,
                raft_commit_mean_ms: match (proposals, commit_secs) {
                    (Some(count), Some(secs)) if count > 0.0 => Some(secs / count * 1_000.0),
                    _ => None,
                },
            }
        })
        .collect();
    let node_ticks = |sample: &Sample| sample.node_ticks.values().sum::<u64>() + sample.own_ticks;
    let other_busy_percent = other_busy_percent(
        (before.system, node_ticks(&before)),
        (after.system, node_ticks(&after)),
    );
    let online = scenario.needs_online().then(|| OnlineReport {
        recipients: context.online_recipients.len(),
        received: devices.received,
        received_per_sec: devices.received as f64 / measured_secs,
        end_to_end: devices.end_to_end.percentiles(),
        unmarked: devices.unmarked,
        devices_lost: devices.devices_lost,
    });
    Ok(StepReport {
        scenario,
        load,
        connections,
        settle_secs: settle_wait.as_secs_f64(),
        nodes_busy_before_percent,
        quiet_wait_secs: quiet_wait.as_secs_f64(),
        other_busy_before_percent,
        measured_secs,
        sent: total.sent,
        accepted_202,
        delivered_200,
        accepted_202_per_sec: accepted_202 as f64 / measured_secs,
        delivered_200_per_sec: delivered_200 as f64 / measured_secs,
        success_per_sec: successes as f64 / measured_secs,
        latency_2xx: latency_2xx.percentiles(),
        latency_202: total.latency_202.percentiles(),
        latency_200: total.latency_200.percentiles(),
        failures_by_status,
        timeouts: total.timeouts,
        lost_with_connection: total.lost_with_connection,
        late_answers: total.late_answers,
        challenges_answered: total.challenges_answered,
        sends_skipped: total.sends_skipped,
        connections_failed,
        errors,
        groups_with_new_leader,
        online,
        cpu: CpuReport {
            pmsd_us_per_message: (successes > 0)
                .then(|| pmsd_secs_total * 1_000_000.0 / successes as f64),
            pmsd_secs_by_node,
            pmsd_secs_total,
            bench_secs: after.own_ticks.saturating_sub(before.own_ticks) as f64 / ticks,
            system_busy_percent,
            other_busy_percent,
        },
        nodes,
    })
}

// ---------------------------------------------------------------------------------------------
// Human output

fn step_line(step: &StepReport) -> String {
    let latency = step.latency_2xx.as_ref().map_or_else(
        || "no answers".to_owned(),
        |p| format!("p50 {:.1} ms, p99 {:.1} ms", p.p50_ms, p.p99_ms),
    );
    format!(
        "  → {:.0} 2xx/s ({:.0} × 202/s, {:.0} × 200/s), {latency}, {} failed, {} timeouts",
        step.success_per_sec,
        step.accepted_202_per_sec,
        step.delivered_200_per_sec,
        step.failures_by_status.values().sum::<u64>() + step.lost_with_connection,
        step.timeouts
    )
}

fn milliseconds(percentiles: Option<&Percentiles>, pick: fn(&Percentiles) -> f64) -> String {
    percentiles.map_or_else(|| "-".to_owned(), |p| format!("{:.1}", pick(p)))
}

/// The summary table printed at the end of a run.
pub fn render_summary(report: &BenchReport) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "pms-bench {} — {} node(s), {} over {}, pmsd {} build ({}), {} × {}, kernel {}",
        report.date_utc,
        report.settings.nodes,
        report.settings.transport.via_token(),
        report.settings.network,
        report.pmsd.profile,
        report.git_commit.as_deref().unwrap_or("unknown commit"),
        report.machine.nproc,
        report.machine.cpu_model,
        report.machine.kernel
    );
    let _ = writeln!(text, "command: {}", report.command_line);
    let _ = writeln!(
        text,
        "{:<8} {:>12} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9}",
        "scenario",
        "load",
        "2xx/s",
        "202/s",
        "200/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
        "timeouts",
        "cpu s",
        "µs/msg",
        "e2e p99"
    );
    for step in &report.steps {
        let latency = step.latency_2xx.as_ref();
        let errors = step.failures_by_status.values().sum::<u64>() + step.lost_with_connection;
        let end_to_end = step
            .online
            .as_ref()
            .and_then(|online| online.end_to_end.as_ref());
        let _ = writeln!(
            text,
            "{:<8} {:>12} {:>9.0} {:>9.0} {:>9.0} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8.1} {:>9} {:>9}",
            step.scenario.name(),
            step.load.label(),
            step.success_per_sec,
            step.accepted_202_per_sec,
            step.delivered_200_per_sec,
            milliseconds(latency, |p| p.p50_ms),
            milliseconds(latency, |p| p.p90_ms),
            milliseconds(latency, |p| p.p99_ms),
            milliseconds(latency, |p| p.max_ms),
            errors,
            step.timeouts,
            step.cpu.pmsd_secs_total,
            step.cpu
                .pmsd_us_per_message
                .map_or_else(|| "-".to_owned(), |us| format!("{us:.0}")),
            milliseconds(end_to_end, |p| p.p99_ms),
        );
    }
    for step in &report.steps {
        let mut details = Vec::new();
        if !step.failures_by_status.is_empty() {
            details.push(format!("non-2xx {:?}", step.failures_by_status));
        }
        if step.lost_with_connection > 0 {
            details.push(format!(
                "{} lost with their connection",
                step.lost_with_connection
            ));
        }
        if step.connections_failed > 0 {
            details.push(format!("{} connections failed", step.connections_failed));
        }
        if step.sends_skipped > 0 {
            details.push(format!("{} sends skipped (backlog)", step.sends_skipped));
        }
        if let Some(changed) = step.groups_with_new_leader.filter(|changed| *changed > 0) {
            details.push(format!("{changed} group(s) changed leader during the step"));
        }
        if step.late_answers > 0 {
            details.push(format!("{} late answers", step.late_answers));
        }
        if let Some(online) = &step.online {
            details.push(format!(
                "devices received {:.0}/s, e2e p50 {} ms p99 {} ms",
                online.received_per_sec,
                milliseconds(online.end_to_end.as_ref(), |p| p.p50_ms),
                milliseconds(online.end_to_end.as_ref(), |p| p.p99_ms)
            ));
        }
        if let Some(busy) = step.cpu.system_busy_percent {
            details.push(format!(
                "machine busy {busy:.0} % (other processes and irq {} %), load generator {:.1} cpu s",
                step.cpu
                    .other_busy_percent
                    .map_or_else(|| "?".to_owned(), |other| format!("{other:.0}")),
                step.cpu.bench_secs
            ));
        }
        if step.settle_secs >= 2.0 {
            details.push(format!(
                "waited {:.0} s for the nodes to settle (at {} % when the step started)",
                step.settle_secs,
                step.nodes_busy_before_percent
                    .map_or_else(|| "?".to_owned(), |busy| format!("{busy:.0}"))
            ));
        }
        if step.quiet_wait_secs >= 2.0 {
            details.push(format!(
                "waited {:.0} s for a quiet machine (others at {} % when the step started)",
                step.quiet_wait_secs,
                step.other_busy_before_percent
                    .map_or_else(|| "?".to_owned(), |other| format!("{other:.0}"))
            ));
        }
        let commits: Vec<String> = step
            .nodes
            .iter()
            .filter_map(|node| {
                Some(format!(
                    "n{} {:.1} ms",
                    node.node, node.raft_commit_mean_ms?
                ))
            })
            .collect();
        if !commits.is_empty() {
            details.push(format!("mean propose→commit {}", commits.join(", ")));
        }
        for error in &step.errors {
            details.push(format!("error: {error}"));
        }
        if !details.is_empty() {
            let _ = writeln!(
                text,
                "{} {}: {}",
                step.scenario.name(),
                step.load.label(),
                details.join("; ")
            );
        }
    }
    for note in &report.notes {
        let _ = writeln!(text, "note: {note}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_quantiles_are_close() {
        for index in 0..HISTOGRAM_BUCKETS - 1 {
            let (_, high) = Histogram::bounds(index);
            let (next_low, _) = Histogram::bounds(index + 1);
            assert_eq!(high, next_low, "bucket {index}");
        }
        for value in [
            0,
            1,
            127,
            128,
            129,
            255,
            256,
            1_000,
            123_456,
            HISTOGRAM_VALUE_MAX_US,
        ] {
            let (low, high) = Histogram::bounds(Histogram::index(value));
            assert!(low <= value && value < high, "{value} in [{low}, {high})");
        }
        let mut histogram = Histogram::new();
        for millis in 1..=1_000u64 {
            histogram.record(Duration::from_millis(millis));
        }
        let p50 = histogram.quantile_us(0.5) as f64;
        let p99 = histogram.quantile_us(0.99) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.02, "{p99}");
        assert_eq!(histogram.quantile_us(1.0), 1_000_000);
    }

    #[test]
    fn bodies_are_the_baseline_size_and_carry_their_send_time() {
        let body = message_body(Duration::from_micros(1_234_567));
        assert_eq!(body.len(), BODY_BYTES);
        assert!(body.contains('👋'));
        assert_eq!(
            body_send_time(body.as_bytes()),
            Some(Duration::from_micros(1_234_567))
        );
        assert_eq!(body_send_time(b"hello"), None);
    }

    #[test]
    fn dates_are_iso8601() {
        assert_eq!(iso8601_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let time = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(iso8601_utc(time), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn profiles_come_from_the_path() {
        assert_eq!(
            binary_info(Path::new("/x/target/release/pmsd")).profile,
            "release"
        );
        assert_eq!(
            binary_info(Path::new("/x/target/debug/pmsd")).profile,
            "debug"
        );
        assert_eq!(binary_info(Path::new("/usr/bin/pmsd")).profile, "unknown");
    }

    #[test]
    fn requests_carry_a_correct_content_length() {
        let body = message_body(Duration::ZERO);
        let mut out = Vec::new();
        write_message_request(
            &mut out,
            &MessageFields {
                local_addr: "127.0.0.1:5000".parse().expect("address"),
                transport: SipTransport::Tls,
                from_aor: "sip:a@localhost",
                from_tag: "t1",
                to_uri: "sip:b@localhost",
                call_id: "c1",
                body: &body,
            },
            1,
            None,
        );
        let Ok(SipMessage::Request(request)) = pms_sip::parse(&out) else {
            panic!("the request does not parse");
        };
        assert_eq!(request.method, Method::Message);
        assert_eq!(request.body, body.as_bytes());
        assert_eq!(request.cseq().expect("cseq"), (1, Method::Message));
    }

    #[test]
    fn node_args_open_the_abuse_limits_within_what_pmsd_accepts() {
        use pms_types::limits;
        let args = load_generator_node_args();
        assert_eq!(args.len() % 2, 0, "flag/value pairs: {args:?}");
        let value = |flag: &str| -> u64 {
            let at = args.iter().position(|arg| arg == flag).expect(flag);
            args[at + 1].parse().expect("a number")
        };
        let total = value("--sip-unauthenticated-max");
        let per_source = value("--sip-unauthenticated-per-source-max");
        // Every connection a run can open at once, all from 127.0.0.1, and within what
        // `pmsd` accepts (per source ≤ total ≤ CONNECTIONS_MAX).
        assert!(per_source >= (CONNECTIONS_MAX + ONLINE_RECIPIENTS_MAX) as u64);
        assert!(per_source <= total && total <= limits::CONNECTIONS_MAX as u64);
        assert!(
            value("--sip-unauthenticated-timeout-secs")
                <= limits::SIP_UNAUTHENTICATED_TIMEOUT_SECS_MAX
        );
        assert!(
            value("--sip-unauthenticated-timeout-secs")
                > limits::SIP_UNAUTHENTICATED_TIMEOUT_SECS_DEFAULT
        );
        let burst = value("--sender-recipient-burst");
        assert!(burst > u64::from(limits::SENDER_RECIPIENT_BURST_DEFAULT));
        assert!(burst <= u64::from(limits::SENDER_RECIPIENT_BURST_MAX));
        assert!(
            (1..limits::SENDER_RECIPIENT_INTERVAL_MS_DEFAULT)
                .contains(&value("--sender-recipient-interval-ms"))
        );
        assert_eq!(
            value("--mailbox-messages-per-sender-max"),
            limits::MAILBOX_MESSAGES_MAX as u64
        );
    }
}
