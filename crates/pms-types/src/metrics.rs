//! The metrics of one PMS node: a `prometheus-client` registry behind one struct.
//!
//! [`Metrics`] holds every metric the node exports as a public field; code that counts holds an
//! `Arc<Metrics>` and calls `inc`/`inc_by`/`set`/`observe` without locks (labeled metrics take a
//! read lock to find their series, and a write lock only the first time a label set is seen).
//! [`Metrics::render`] writes the OpenMetrics text format 1.0.0 through `prometheus-client`
//! (serve it as [`OPENMETRICS_CONTENT_TYPE`]); every PMS metric's name starts with
//! [`METRIC_NAME_PREFIX`]. Collectors registered with [`Metrics::register_collector`] (pmsd's
//! `process_*` metrics) are encoded on each scrape.
//!
//! Invariant: a labeled metric never holds more series than its bound ([`LABEL_VALUES_MAX`] for
//! labels whose values come from the network or from files, [`GROUP_SERIES_MAX`] for the
//! per-Raft-group ones); once full, new label sets are counted under [`OVERFLOW_LABEL_VALUE`]
//! (that series counts toward the bound).
//! Invariant: label values are at most [`LABEL_VALUE_BYTES_MAX`] bytes (longer ones are cut at a
//! character boundary); `prometheus-client` escapes them, so network input cannot break the
//! output.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A monotonically increasing count.
pub type Counter = prometheus_client::metrics::counter::Counter<u64>;
/// A value that goes up and down.
pub type Gauge = prometheus_client::metrics::gauge::Gauge<i64>;
/// Observations counted into cumulative buckets.
pub type Histogram = prometheus_client::metrics::histogram::Histogram;

/// Prefix of every metric name PMS exports.
pub const METRIC_NAME_PREFIX: &str = "pms_";
/// The OpenMetrics text format's content type (what [`Metrics::render`] writes).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Most series one labeled metric keeps when its label values come from outside (transports,
/// methods, status codes, file names).
pub const LABEL_VALUES_MAX: usize = 32;
/// Most series of a per-group metric: groups are at most 1 + 256, followers per group a
/// handful; a bound, not a target.
pub const GROUP_SERIES_MAX: usize = 1024;
/// Longest label value kept; longer values are truncated.
pub const LABEL_VALUE_BYTES_MAX: usize = 64;
/// The label value that counts everything beyond a labeled metric's bound.
pub const OVERFLOW_LABEL_VALUE: &str = "other";
/// Upper bounds (seconds) of the Raft commit latency histogram buckets; `+Inf` is implicit.
pub const RAFT_COMMIT_LATENCY_BUCKETS_SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Upper bounds (seconds) of the delivery latency histogram buckets: from a device online at
/// once (tens of milliseconds) to one that comes back a day later.
pub const DELIVERY_LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
    86400.0,
];
/// Upper bounds (seconds) of the snapshot duration histogram buckets.
pub const SNAPSHOT_DURATION_BUCKETS_SECONDS: [f64; 10] =
    [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

type LabelSet = Vec<(&'static str, String)>;

/// A metric family with `N` labels whose number of series is bounded.
#[derive(Debug)]
pub struct Labeled<M, const N: usize> {
    names: [&'static str; N],
    max_series: usize,
    family: Family<LabelSet, M, fn() -> M>,
    known: RwLock<HashSet<[String; N]>>,
}

impl<M, const N: usize> Labeled<M, N>
where
    M: Clone + prometheus_client::registry::Metric + prometheus_client::metrics::TypedMetric,
{
    fn with_constructor(
        names: [&'static str; N],
        max_series: usize,
        constructor: fn() -> M,
        presets: &[[&str; N]],
    ) -> Self {
        let labeled = Labeled {
            names,
            max_series,
            family: Family::new_with_constructor(constructor),
            known: RwLock::new(HashSet::new()),
        };
        for preset in presets {
            labeled.with(*preset);
        }
        labeled
    }

    /// The series for `values` (created if there is room, else the overflow series).
    pub fn with(&self, values: [&str; N]) -> M {
        let values = values.map(|value| truncate_label_value(value).to_owned());
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        let values = if known.contains(&values) {
            drop(known);
            values
        } else {
            drop(known);
            let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
            let overflow: [String; N] = [(); N].map(|()| OVERFLOW_LABEL_VALUE.to_owned());
            // Leave room for the overflow series so the total never exceeds the bound.
            let room = known.len() + usize::from(!known.contains(&overflow)) < self.max_series;
            if known.contains(&values) || room || values == overflow {
                known.insert(values.clone());
                values
            } else {
                known.insert(overflow.clone());
                overflow
            }
        };
        self.family.get_or_create_owned(&self.label_set(values))
    }

    /// Removes the series of `values` (e.g. a follower's lag once this node no longer leads).
    pub fn remove(&self, values: [&str; N]) {
        let values = values.map(|value| truncate_label_value(value).to_owned());
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        if known.remove(&values) {
            self.family.remove(&self.label_set(values));
        }
    }

    /// How many series exist.
    pub fn series_count(&self) -> usize {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn label_set(&self, values: [String; N]) -> LabelSet {
        self.names.iter().copied().zip(values).collect()
    }

    fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.family.clone());
    }
}

impl<const N: usize> Labeled<Counter, N> {
    pub fn new(names: [&'static str; N], max_series: usize, presets: &[[&str; N]]) -> Self {
        Self::with_constructor(names, max_series, Counter::default, presets)
    }
}

impl<const N: usize> Labeled<Gauge, N> {
    pub fn new(names: [&'static str; N], max_series: usize, presets: &[[&str; N]]) -> Self {
        Self::with_constructor(names, max_series, Gauge::default, presets)
    }
}

/// A counter with one label (e.g. `transport`).
pub type LabeledCounter = Labeled<Counter, 1>;
/// A gauge with one label (e.g. `group`).
pub type LabeledGauge = Labeled<Gauge, 1>;

impl LabeledCounter {
    pub fn inc(&self, label_value: &str) {
        self.with([label_value]).inc();
    }

    pub fn get(&self, label_value: &str) -> u64 {
        self.with([label_value]).get()
    }
}

impl LabeledGauge {
    pub fn inc(&self, label_value: &str) {
        self.with([label_value]).inc();
    }

    pub fn dec(&self, label_value: &str) {
        self.with([label_value]).dec();
    }

    pub fn set(&self, label_value: &str, value: i64) {
        self.with([label_value]).set(value);
    }

    pub fn get(&self, label_value: &str) -> i64 {
        self.with([label_value]).get()
    }
}

/// Every metric a PMS node exports. Share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    /// MESSAGE requests accepted (committed to a queue).
    pub messages_accepted_total: Counter,
    /// Messages a recipient device acknowledged with 2xx (committed as delivered).
    pub messages_delivered_total: Counter,
    /// Messages that expired before delivery (committed as expired).
    pub messages_expired_total: Counter,
    /// Messages refused permanently (admission errors after authentication, permanent rejections).
    pub messages_failed_total: Counter,
    /// Retransmitted or retried MESSAGEs recognised as duplicates and not queued again.
    pub messages_duplicate_total: Counter,
    /// Messages queued, by mailbox `group`, as this node's replica of the group holds them
    /// (refreshed every few seconds): every replica reports the same number once caught up.
    pub queue_depth: LabeledGauge,
    /// Active registration bindings.
    pub registrations: Gauge,
    /// Unwrapped data keys held in this node's memory (the keyring).
    pub keyring_keys: Gauge,
    /// Entries stored on this node, all groups, by `keyspace` (RocksDB's estimate, refreshed
    /// every few seconds): shows that state stays bounded under constant load.
    pub state_entries: LabeledGauge,
    /// Bytes of the data dir's files (RocksDB, identity), refreshed every few seconds.
    pub storage_bytes: Gauge,
    /// Bytes the data dir's file system has left for the pms user, refreshed every few seconds.
    pub storage_available_bytes: Gauge,
    /// Account removals this node's directory replica applied whose wrapped keys may still
    /// be in its data dir (0 once the shred pass finished).
    pub shred_pending: Gauge,
    /// Shred passes finished (snapshot, log purge, files rewritten without deleted values).
    pub shred_passes_total: Counter,
    /// Open SIP connections, by `transport` ("tls", "tcp", "udp" flows).
    pub connections_open: LabeledGauge,
    /// SIP connections (TLS handshakes included) and UDP peers that no request has
    /// authenticated yet, by `transport`; bounded per listener by `--sip-unauthenticated-max`.
    pub connections_unauthenticated: LabeledGauge,
    /// SIP connections and UDP peers closed or refused by a limit, by `reason`:
    /// "per_source" (too many unauthenticated from one address), "unauthenticated_max" (oldest
    /// unauthenticated evicted), "unauthenticated_timeout" (no authenticated request in time),
    /// "connections_max" (authenticated connections full).
    pub connections_refused_total: LabeledCounter,
    /// TLS handshakes, by `port` ("sip", "grpc") and `result` ("ok", "failed", "timeout").
    pub tls_handshakes_total: Labeled<Counter, 2>,
    /// RFC 5626 keep-alive pings (double CRLF) received, by `transport` ("tls", "tcp").
    pub sip_keepalives_total: LabeledCounter,
    /// Failed digest authentications, by `method` ("REGISTER", "MESSAGE").
    pub auth_failures_total: LabeledCounter,
    /// Authentications refused unchecked by the brute-force throttle (too many recent failures
    /// from the source, or from it on the account), by `method`.
    pub auth_throttled_total: LabeledCounter,
    /// MESSAGEs refused to their sender alone, by `limit`: "queued" (the sender's quota in the
    /// recipient's mailbox is used up), "rate" (the sender sends to the recipient too fast).
    pub messages_sender_limited_total: LabeledCounter,
    /// SIP requests answered, by `method` (the request's, "unknown" when it could not be
    /// parsed) and `status` (the final status code sent, e.g. "202").
    pub sip_requests_total: Labeled<Counter, 2>,
    /// Lookups waiting now for this node's replica of the directory to catch up with its
    /// leader (an account or password this replica does not know may be newer than it).
    pub replica_catch_ups_waiting: Gauge,
    /// Such catch-ups, by `result`: "caught_up", "failed" (the leader could not be asked or
    /// this replica did not apply in time), "leading" (this node leads: nothing to wait for).
    pub replica_catch_ups_total: LabeledCounter,
    /// Time from proposing a command to its commit, in seconds.
    pub raft_commit_latency_seconds: Histogram,
    /// The Raft term this node's replica of each `group` is in.
    pub raft_term: LabeledGauge,
    /// The node id of the leader this node knows for each `group` (0: none known).
    pub raft_leader: LabeledGauge,
    /// 1 for each `group` this node leads, 0 for the others.
    pub raft_is_leader: LabeledGauge,
    /// Changes of the leader this node knows, by `group` (losing a leader counts too).
    pub raft_leader_changes_total: LabeledCounter,
    /// Index of the last entry in this node's log of each `group`.
    pub raft_last_log_index: LabeledGauge,
    /// Index of the last entry this node applied, by `group`.
    pub raft_applied_index: LabeledGauge,
    /// On a group's leader: entries each `follower` is behind the leader's log, by `group`.
    pub raft_follower_lag_entries: Labeled<Gauge, 2>,
    /// Snapshots this node built or installed, by `kind` ("built", "installed").
    pub raft_snapshots_total: LabeledCounter,
    /// How long building or installing a snapshot took, by `kind`.
    pub raft_snapshot_duration_seconds: Labeled<Histogram, 1>,
    /// Attempts to deliver a message to a device (each MESSAGE sent out).
    pub delivery_attempts_total: Counter,
    /// Time from a message's acceptance to its delivery being committed (the device's 2xx),
    /// in seconds, observed by the leader of the recipient's group.
    pub delivery_latency_seconds: Histogram,
    /// When each certificate the node presents or trusts expires (its not-after, Unix
    /// seconds), by `file` ("ca.crt", "node.crt", "sip.crt"); set at start and on every
    /// reload, so it always shows the certificate in use.
    pub certificate_expiry_timestamp_seconds: LabeledGauge,
    /// Always 1, labelled with the running binary's `version` and `commit`.
    pub build_info: Labeled<Gauge, 2>,
    registry: RwLock<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn commit_latency_histogram() -> Histogram {
    Histogram::new(RAFT_COMMIT_LATENCY_BUCKETS_SECONDS)
}

fn snapshot_duration_histogram() -> Histogram {
    Histogram::new(SNAPSHOT_DURATION_BUCKETS_SECONDS)
}

impl Metrics {
    pub fn new() -> Self {
        let transports = [["tls"], ["tcp"], ["udp"]];
        let auth_methods = [["REGISTER"], ["MESSAGE"]];
        let keyspaces = crate::Keyspace::ALL.map(|keyspace| [keyspace.name()]);
        let metrics = Metrics {
            messages_accepted_total: Counter::default(),
            messages_delivered_total: Counter::default(),
            messages_expired_total: Counter::default(),
            messages_failed_total: Counter::default(),
            messages_duplicate_total: Counter::default(),
            queue_depth: LabeledGauge::new(["group"], GROUP_SERIES_MAX, &[]),
            registrations: Gauge::default(),
            keyring_keys: Gauge::default(),
            state_entries: LabeledGauge::new(["keyspace"], LABEL_VALUES_MAX, &keyspaces),
            storage_bytes: Gauge::default(),
            storage_available_bytes: Gauge::default(),
            shred_pending: Gauge::default(),
            shred_passes_total: Counter::default(),
            connections_open: LabeledGauge::new(["transport"], LABEL_VALUES_MAX, &transports),
            connections_unauthenticated: LabeledGauge::new(
                ["transport"],
                LABEL_VALUES_MAX,
                &transports,
            ),
            connections_refused_total: LabeledCounter::new(
                ["reason"],
                LABEL_VALUES_MAX,
                &[
                    ["per_source"],
                    ["unauthenticated_max"],
                    ["unauthenticated_timeout"],
                    ["connections_max"],
                ],
            ),
            tls_handshakes_total: Labeled::<Counter, 2>::new(
                ["port", "result"],
                LABEL_VALUES_MAX,
                &[
                    ["sip", "ok"],
                    ["sip", "failed"],
                    ["grpc", "ok"],
                    ["grpc", "failed"],
                ],
            ),
            sip_keepalives_total: LabeledCounter::new(
                ["transport"],
                LABEL_VALUES_MAX,
                &[["tls"], ["tcp"]],
            ),
            auth_failures_total: LabeledCounter::new(["method"], LABEL_VALUES_MAX, &auth_methods),
            auth_throttled_total: LabeledCounter::new(["method"], LABEL_VALUES_MAX, &auth_methods),
            messages_sender_limited_total: LabeledCounter::new(
                ["limit"],
                LABEL_VALUES_MAX,
                &[["queued"], ["rate"]],
            ),
            sip_requests_total: Labeled::<Counter, 2>::new(
                ["method", "status"],
                LABEL_VALUES_MAX * 4,
                &[],
            ),
            replica_catch_ups_waiting: Gauge::default(),
            replica_catch_ups_total: LabeledCounter::new(
                ["result"],
                LABEL_VALUES_MAX,
                &[["caught_up"], ["failed"], ["leading"]],
            ),
            raft_commit_latency_seconds: commit_latency_histogram(),
            raft_term: LabeledGauge::new(["group"], GROUP_SERIES_MAX, &[]),
            raft_leader: LabeledGauge::new(["group"], GROUP_SERIES_MAX, &[]),
            raft_is_leader: LabeledGauge::new(["group"], GROUP_SERIES_MAX, &[]),
            raft_leader_changes_total: LabeledCounter::new(["group"], GROUP_SERIES_MAX, &[]),
            raft_last_log_index: LabeledGauge::new(["group"], GROUP_SERIES_MAX, &[]),
            raft_applied_index: LabeledGauge::new(["group"], GROUP_SERIES_MAX, &[]),
            raft_follower_lag_entries: Labeled::<Gauge, 2>::new(
                ["group", "follower"],
                GROUP_SERIES_MAX,
                &[],
            ),
            raft_snapshots_total: LabeledCounter::new(
                ["kind"],
                LABEL_VALUES_MAX,
                &[["built"], ["installed"]],
            ),
            raft_snapshot_duration_seconds: Labeled::with_constructor(
                ["kind"],
                LABEL_VALUES_MAX,
                snapshot_duration_histogram,
                &[["built"], ["installed"]],
            ),
            delivery_attempts_total: Counter::default(),
            delivery_latency_seconds: Histogram::new(DELIVERY_LATENCY_BUCKETS_SECONDS),
            // No preset series: a 0 would read as "expired in 1970" until the node loads them.
            certificate_expiry_timestamp_seconds: LabeledGauge::new(
                ["file"],
                LABEL_VALUES_MAX,
                &[],
            ),
            build_info: Labeled::<Gauge, 2>::new(["version", "commit"], 2, &[]),
            registry: RwLock::new(Registry::default()),
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let mut registry = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let registry = &mut *registry;
        // Counter names lose their `_total`: the encoder appends it to every counter sample.
        let counters = [
            (
                "messages_accepted",
                "MESSAGE requests accepted into a queue",
                &self.messages_accepted_total,
            ),
            (
                "messages_delivered",
                "Messages acknowledged by a recipient device",
                &self.messages_delivered_total,
            ),
            (
                "messages_expired",
                "Messages that expired before delivery",
                &self.messages_expired_total,
            ),
            (
                "messages_failed",
                "Messages refused or rejected permanently",
                &self.messages_failed_total,
            ),
            (
                "messages_duplicate",
                "Retransmitted or retried messages recognised as duplicates",
                &self.messages_duplicate_total,
            ),
            (
                "delivery_attempts",
                "Attempts to deliver a message to a device",
                &self.delivery_attempts_total,
            ),
            (
                "shred_passes",
                "Shred passes finished: removed accounts' wrapped keys purged from the data dir",
                &self.shred_passes_total,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(prefixed(name), help, counter.clone());
        }
        let gauges = [
            (
                "registrations",
                "Active registration bindings",
                &self.registrations,
            ),
            (
                "keyring_keys",
                "Unwrapped data keys held in memory",
                &self.keyring_keys,
            ),
            (
                "storage_bytes",
                "Bytes of the files in this node's data dir",
                &self.storage_bytes,
            ),
            (
                "storage_available_bytes",
                "Bytes left for pmsd on the data dir's file system",
                &self.storage_available_bytes,
            ),
            (
                "shred_pending",
                "Applied account removals not yet shredded from this node's data dir",
                &self.shred_pending,
            ),
            (
                "replica_catch_ups_waiting",
                "Lookups waiting for this node's directory replica to catch up with its leader",
                &self.replica_catch_ups_waiting,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(prefixed(name), help, gauge.clone());
        }
        let one_label_gauges = [
            (
                "queue_depth",
                "Messages queued, by mailbox group, in this node's replica of the group",
                &self.queue_depth,
            ),
            (
                "state_entries",
                "Stored entries on this node by keyspace (estimate)",
                &self.state_entries,
            ),
            (
                "connections_open",
                "Open SIP connections by transport",
                &self.connections_open,
            ),
            (
                "connections_unauthenticated",
                "SIP connections and UDP peers not authenticated yet, by transport",
                &self.connections_unauthenticated,
            ),
            (
                "raft_term",
                "Raft term of this node's replica, by group",
                &self.raft_term,
            ),
            (
                "raft_leader",
                "Node id of the leader this node knows, by group (0: none)",
                &self.raft_leader,
            ),
            (
                "raft_is_leader",
                "1 for each group this node leads",
                &self.raft_is_leader,
            ),
            (
                "raft_last_log_index",
                "Index of the last entry in this node's log, by group",
                &self.raft_last_log_index,
            ),
            (
                "raft_applied_index",
                "Index of the last entry this node applied, by group",
                &self.raft_applied_index,
            ),
            (
                "certificate_expiry_timestamp_seconds",
                "When each certificate in use expires (not-after), Unix seconds, by file",
                &self.certificate_expiry_timestamp_seconds,
            ),
        ];
        for (name, help, gauge) in one_label_gauges {
            gauge.register(registry, &prefixed(name), help);
        }
        let one_label_counters = [
            (
                "connections_refused",
                "SIP connections and UDP peers closed or refused by a limit, by reason",
                &self.connections_refused_total,
            ),
            (
                "sip_keepalives",
                "RFC 5626 keep-alive pings (double CRLF) received by transport",
                &self.sip_keepalives_total,
            ),
            (
                "auth_failures",
                "Failed digest authentications by SIP method",
                &self.auth_failures_total,
            ),
            (
                "auth_throttled",
                "Authentications refused unchecked after too many failures, by SIP method",
                &self.auth_throttled_total,
            ),
            (
                "messages_sender_limited",
                "MESSAGEs refused to their sender by a per-sender limit, by limit",
                &self.messages_sender_limited_total,
            ),
            (
                "replica_catch_ups",
                "Directory lookups that asked the leader first (an account unknown here), by result",
                &self.replica_catch_ups_total,
            ),
            (
                "raft_leader_changes",
                "Changes of the leader this node knows, by group",
                &self.raft_leader_changes_total,
            ),
            (
                "raft_snapshots",
                "Raft snapshots this node built or installed, by kind",
                &self.raft_snapshots_total,
            ),
        ];
        for (name, help, counter) in one_label_counters {
            counter.register(registry, &prefixed(name), help);
        }
        self.tls_handshakes_total.register(
            registry,
            &prefixed("tls_handshakes"),
            "TLS handshakes by port (sip, grpc) and result (ok, failed, timeout)",
        );
        self.sip_requests_total.register(
            registry,
            &prefixed("sip_requests"),
            "SIP requests answered, by method and final status code",
        );
        self.raft_follower_lag_entries.register(
            registry,
            &prefixed("raft_follower_lag_entries"),
            "On the leader: entries each follower is behind, by group and follower",
        );
        registry.register(
            prefixed("delivery_latency_seconds"),
            "Time from a message's acceptance to its committed delivery",
            self.delivery_latency_seconds.clone(),
        );
        registry.register(
            prefixed("raft_commit_latency_seconds"),
            "Time from proposing a Raft command to its commit",
            self.raft_commit_latency_seconds.clone(),
        );
        self.raft_snapshot_duration_seconds.register(
            registry,
            &prefixed("raft_snapshot_duration_seconds"),
            "Time to build or install a Raft snapshot, by kind",
        );
        self.build_info.register(
            registry,
            &prefixed("build_info"),
            "Always 1: the running binary's version and commit",
        );
    }

    /// Sets `pms_build_info{version, commit}` (once, at start).
    pub fn set_build_info(&self, version: &str, commit: &str) {
        self.build_info.with([version, commit]).set(1);
    }

    /// Adds metrics computed on each scrape (e.g. pmsd's `process_*`).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register_collector(collector);
    }

    /// The OpenMetrics text exposition (serve as [`OPENMETRICS_CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            // Writing to a String cannot fail; a collector's error ends the exposition early.
            out.push_str("# EOF\n");
        }
        out
    }

    /// The same samples in the Prometheus text format 0.0.4 (serve as
    /// [`PROMETHEUS_TEXT_CONTENT_TYPE`]), for scrapers and tools that do not accept
    /// OpenMetrics (`promtool check metrics`, curl): see [`openmetrics_to_prometheus_text`].
    pub fn render_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.render())
    }
}

/// The Prometheus text format's content type (what [`Metrics::render_prometheus_text`] writes).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites an OpenMetrics exposition as Prometheus text 0.0.4. The two differ, for what
/// `prometheus-client` writes, in three things only: a counter family's HELP and TYPE name its
/// samples' name (with `_total`) in 0.0.4, `# UNIT` lines do not exist there, and neither does
/// the closing `# EOF`. Samples and label escaping are the same.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match descriptor {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{tag}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn prefixed(name: &str) -> String {
    format!("{METRIC_NAME_PREFIX}{name}")
}

/// Cuts a label value to at most [`LABEL_VALUE_BYTES_MAX`] bytes at a character boundary.
fn truncate_label_value(value: &str) -> &str {
    if value.len() <= LABEL_VALUE_BYTES_MAX {
        return value;
    }
    let mut end = LABEL_VALUE_BYTES_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn counters_and_gauges_count() {
        let metrics = Metrics::new();
        metrics.messages_accepted_total.inc();
        metrics.messages_accepted_total.inc_by(4);
        assert_eq!(metrics.messages_accepted_total.get(), 5);
        metrics.queue_depth.set("3", 2);
        metrics.queue_depth.set("3", 1);
        assert_eq!(metrics.queue_depth.get("3"), 1);
        metrics.registrations.set(-3);
        assert_eq!(metrics.registrations.get(), -3);
    }

    #[test]
    fn counters_are_exact_under_concurrency() {
        let metrics = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let metrics = Arc::clone(&metrics);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        metrics.delivery_attempts_total.inc();
                        metrics.sip_requests_total.with(["MESSAGE", "202"]).inc();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("counting thread panicked");
        }
        assert_eq!(metrics.delivery_attempts_total.get(), 40_000);
        assert_eq!(
            metrics.sip_requests_total.with(["MESSAGE", "202"]).get(),
            40_000
        );
    }

    #[test]
    fn labeled_metrics_are_bounded_and_overflow_into_other() {
        let counter = LabeledCounter::new(["kind"], LABEL_VALUES_MAX, &[["a"]]);
        for i in 0..100 {
            counter.inc(&format!("value-{i}"));
        }
        assert_eq!(counter.series_count(), LABEL_VALUES_MAX);
        // "a" plus LABEL_VALUES_MAX - 2 new values got their own series; the rest overflowed.
        let own = LABEL_VALUES_MAX as u64 - 2;
        assert_eq!(counter.get(OVERFLOW_LABEL_VALUE), 100 - own);
        assert_eq!(counter.get("value-0"), 1);
        assert_eq!(counter.get("a"), 0);
        assert_eq!(counter.series_count(), LABEL_VALUES_MAX);

        let two = Labeled::<Counter, 2>::new(["method", "status"], 3, &[]);
        two.with(["MESSAGE", "202"]).inc();
        two.with(["MESSAGE", "200"]).inc();
        two.with(["REGISTER", "200"]).inc();
        assert_eq!(two.with(["other", "other"]).get(), 1);
        assert_eq!(two.series_count(), 3);

        let long = "x".repeat(200);
        let gauge = LabeledGauge::new(["transport"], LABEL_VALUES_MAX, &[]);
        gauge.set(&long, 1);
        assert_eq!(gauge.get(&long[..LABEL_VALUE_BYTES_MAX]), 1);
        assert_eq!(
            truncate_label_value(&"é".repeat(40)).len(),
            LABEL_VALUE_BYTES_MAX
        );
        gauge.remove([&long]);
        assert_eq!(gauge.series_count(), 0);
    }

    #[test]
    fn render_has_help_type_prefix_and_escaped_labels() {
        let metrics = Metrics::new();
        metrics.messages_delivered_total.inc_by(7);
        metrics.connections_open.with(["tls"]).inc();
        metrics.auth_failures_total.inc("REGISTER");
        metrics.sip_requests_total.with(["MESSAGE", "202"]).inc();
        metrics
            .sip_requests_total
            .with(["we\"ird\\\nvalue", "400"])
            .inc();
        metrics.raft_commit_latency_seconds.observe(0.003);
        metrics
            .certificate_expiry_timestamp_seconds
            .set("node.crt", 1_800_000_000);
        metrics.set_build_info("1.2.3", "abc123");
        let text = metrics.render();
        let lines: Vec<&str> = text.lines().collect();
        let has = |line: &str| lines.contains(&line);
        assert!(
            has("# HELP pms_messages_delivered Messages acknowledged by a recipient device."),
            "{text}"
        );
        assert!(has("# TYPE pms_messages_delivered counter"));
        assert!(has("pms_messages_delivered_total 7"));
        assert!(has("# TYPE pms_registrations gauge"));
        assert!(has("pms_connections_open{transport=\"tls\"} 1"));
        assert!(has("pms_connections_open{transport=\"udp\"} 0"));
        assert!(has("pms_auth_failures_total{method=\"REGISTER\"} 1"));
        assert!(has("pms_auth_failures_total{method=\"MESSAGE\"} 0"));
        assert!(has(
            "pms_sip_requests_total{method=\"MESSAGE\",status=\"202\"} 1"
        ));
        assert!(has(
            r#"pms_sip_requests_total{method="we\"ird\\\nvalue",status="400"} 1"#
        ));
        assert!(has("# TYPE pms_raft_commit_latency_seconds histogram"));
        assert!(has(
            "pms_raft_commit_latency_seconds_bucket{le=\"0.0025\"} 0"
        ));
        assert!(has(
            "pms_raft_commit_latency_seconds_bucket{le=\"0.005\"} 1"
        ));
        assert!(has("pms_raft_commit_latency_seconds_bucket{le=\"+Inf\"} 1"));
        assert!(has("pms_raft_commit_latency_seconds_count 1"));
        assert!(has(
            "pms_certificate_expiry_timestamp_seconds{file=\"node.crt\"} 1800000000"
        ));
        assert!(has("pms_build_info{version=\"1.2.3\",commit=\"abc123\"} 1"));
        // No series for a certificate never loaded (a 0 would read as expired).
        assert!(!text.contains("file=\"sip.crt\""));
        assert!(text.ends_with("# EOF\n"));
        for line in lines.iter().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with(METRIC_NAME_PREFIX),
                "unprefixed sample: {line}"
            );
        }
    }

    #[test]
    fn promtool_accepts_the_rendered_text() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        let metrics = Metrics::new();
        metrics.messages_accepted_total.inc();
        metrics.connections_open.with(["udp"]).inc();
        metrics.sip_requests_total.with(["MESSAGE", "202"]).inc();
        metrics
            .sip_requests_total
            .with(["quote\"and\\slash\nnewline", "400"])
            .inc();
        metrics.raft_commit_latency_seconds.observe(0.02);
        metrics.raft_commit_latency_seconds.observe(11.0);
        metrics.raft_term.set("1", 3);
        metrics.raft_follower_lag_entries.with(["1", "2"]).set(5);
        metrics
            .raft_snapshot_duration_seconds
            .with(["built"])
            .observe(0.2);
        metrics
            .certificate_expiry_timestamp_seconds
            .set("ca.crt", 2_000_000_000);
        metrics.set_build_info("0.1.0", "unknown");
        let text = metrics.render_prometheus_text();
        assert!(
            text.contains("# TYPE pms_sip_requests_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));

        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus) runs: run scripts/install-packages test");
        child
            .stdin
            .take()
            .expect("promtool stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let output = child.wait_with_output().expect("wait for promtool");
        assert!(
            output.status.success(),
            "promtool rejected the output:\n{}{}\n---\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
}
