//! A dependency-free Prometheus metrics registry for one PMS node, built on atomics.
//!
//! [`Metrics`] holds every metric the node exports as a public field; code that counts holds an
//! `Arc<Metrics>` and calls `inc`/`add`/`set`/`observe` without locks (labeled metrics take a
//! read lock to find their series, and a write lock only the first time a label value is seen).
//! [`Metrics::render`] writes the Prometheus text exposition format 0.0.4 (`# HELP`, `# TYPE`,
//! samples; histograms as cumulative `_bucket{le=…}` series ending in `+Inf`, then `_sum` and
//! `_count`), every name prefixed with [`METRIC_NAME_PREFIX`].
//!
//! Invariant: a labeled metric never holds more than [`LABEL_VALUES_MAX`] series; once full, new
//! label values are counted under [`OVERFLOW_LABEL_VALUE`] (that series counts toward the max).
//! Invariant: label values are at most [`LABEL_VALUE_BYTES_MAX`] bytes (longer ones are cut at a
//! character boundary) and are escaped when rendered, so network input cannot break the output.
//! Invariant: a rendered histogram's `+Inf` bucket always equals its `_count`, because `_count` is
//! computed from the bucket counters rather than read separately.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Prefix of every metric name PMS exports.
pub const METRIC_NAME_PREFIX: &str = "pms_";
/// Most distinct label values (series) one labeled metric keeps.
pub const LABEL_VALUES_MAX: usize = 32;
/// Longest label value kept; longer values are truncated.
pub const LABEL_VALUE_BYTES_MAX: usize = 64;
/// The label value that counts everything beyond [`LABEL_VALUES_MAX`].
pub const OVERFLOW_LABEL_VALUE: &str = "other";
/// Upper bounds (seconds) of the Raft commit latency histogram buckets; `+Inf` is implicit.
pub const RAFT_COMMIT_LATENCY_BUCKETS_SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A family of series of one metric, one per label value, bounded by [`LABEL_VALUES_MAX`].
#[derive(Debug)]
struct LabeledSeries<T> {
    label_name: &'static str,
    series: RwLock<BTreeMap<String, Arc<T>>>,
}

impl<T: Default> LabeledSeries<T> {
    fn new(label_name: &'static str, preset_values: &[&str]) -> Self {
        let series = preset_values
            .iter()
            .take(LABEL_VALUES_MAX)
            .map(|value| {
                (
                    truncate_label_value(value).to_owned(),
                    Arc::new(T::default()),
                )
            })
            .collect();
        LabeledSeries {
            label_name,
            series: RwLock::new(series),
        }
    }

    /// The series for `value`, created if there is room, else the overflow series.
    fn series(&self, value: &str) -> Arc<T> {
        let value = truncate_label_value(value);
        {
            let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(found) = series.get(value) {
                return Arc::clone(found);
            }
        }
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = series.get(value) {
            return Arc::clone(found);
        }
        let has_overflow = series.contains_key(OVERFLOW_LABEL_VALUE);
        // Leave room for the overflow series so the total never exceeds the max.
        let room_for_new = series.len() + usize::from(!has_overflow) < LABEL_VALUES_MAX;
        let key = if room_for_new {
            value
        } else {
            OVERFLOW_LABEL_VALUE
        };
        Arc::clone(series.entry(key.to_owned()).or_default())
    }

    fn read<R>(&self, value: &str, read: impl Fn(&T) -> R) -> Option<R> {
        let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
        series
            .get(truncate_label_value(value))
            .map(|item| read(item))
    }

    fn snapshot<R>(&self, read: impl Fn(&T) -> R) -> Vec<(String, R)> {
        let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
        series
            .iter()
            .map(|(value, item)| (value.clone(), read(item)))
            .collect()
    }

    fn len(&self) -> usize {
        self.series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A counter with one label (e.g. `method`), bounded by [`LABEL_VALUES_MAX`] values.
#[derive(Debug)]
pub struct LabeledCounter(LabeledSeries<Counter>);

impl LabeledCounter {
    /// `preset_values` are rendered (as 0) before they are first counted.
    pub fn new(label_name: &'static str, preset_values: &[&str]) -> Self {
        LabeledCounter(LabeledSeries::new(label_name, preset_values))
    }

    pub fn inc(&self, label_value: &str) {
        self.0.series(label_value).inc();
    }

    pub fn add(&self, label_value: &str, n: u64) {
        self.0.series(label_value).add(n);
    }

    /// The count for `label_value` (0 if it has no series of its own).
    pub fn get(&self, label_value: &str) -> u64 {
        self.0.read(label_value, Counter::get).unwrap_or(0)
    }

    /// How many series (label values) exist.
    pub fn series_count(&self) -> usize {
        self.0.len()
    }
}

/// A gauge with one label (e.g. `transport`), bounded by [`LABEL_VALUES_MAX`] values.
#[derive(Debug)]
pub struct LabeledGauge(LabeledSeries<Gauge>);

impl LabeledGauge {
    /// `preset_values` are rendered (as 0) before they are first set.
    pub fn new(label_name: &'static str, preset_values: &[&str]) -> Self {
        LabeledGauge(LabeledSeries::new(label_name, preset_values))
    }

    pub fn inc(&self, label_value: &str) {
        self.0.series(label_value).inc();
    }

    pub fn dec(&self, label_value: &str) {
        self.0.series(label_value).dec();
    }

    pub fn set(&self, label_value: &str, value: i64) {
        self.0.series(label_value).set(value);
    }

    /// The value for `label_value` (0 if it has no series of its own).
    pub fn get(&self, label_value: &str) -> i64 {
        self.0.read(label_value, Gauge::get).unwrap_or(0)
    }

    /// How many series (label values) exist.
    pub fn series_count(&self) -> usize {
        self.0.len()
    }
}

/// A histogram of durations with fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    upper_bounds_seconds: &'static [f64],
    /// Non-cumulative counts; index `upper_bounds_seconds.len()` is the `+Inf` overflow bucket.
    bucket_counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// `upper_bounds_seconds` must be strictly increasing and finite.
    pub fn new(upper_bounds_seconds: &'static [f64]) -> Self {
        assert!(
            upper_bounds_seconds
                .windows(2)
                .all(|pair| pair[0] < pair[1])
                && upper_bounds_seconds.iter().all(|bound| bound.is_finite()),
            "histogram bounds must be finite and strictly increasing"
        );
        let bucket_counts = (0..=upper_bounds_seconds.len())
            .map(|_| AtomicU64::new(0))
            .collect();
        Histogram {
            upper_bounds_seconds,
            bucket_counts,
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.record(duration.as_secs_f64(), nanos);
    }

    /// Negative or NaN values count as 0 s; infinite ones land in `+Inf` and saturate the sum.
    pub fn observe_seconds(&self, seconds: f64) {
        let seconds = if seconds.is_nan() || seconds < 0.0 {
            0.0
        } else {
            seconds
        };
        // `as` saturates for floats out of range, which is what the sum wants.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let nanos = (seconds * 1e9) as u64;
        self.record(seconds, nanos);
    }

    fn record(&self, seconds: f64, nanos: u64) {
        let index = self
            .upper_bounds_seconds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.upper_bounds_seconds.len());
        if let Some(bucket) = self.bucket_counts.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        // Saturating add: a CAS loop, since fetch_add would wrap.
        let _ = self
            .sum_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
                Some(sum.saturating_add(nanos))
            });
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.bucket_counts
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        nanos_to_seconds(self.sum_nanos.load(Ordering::Relaxed))
    }

    /// `(upper bound, cumulative count)` per bucket, the last one being `+Inf`.
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        let mut cumulative = 0u64;
        let bounds = self
            .upper_bounds_seconds
            .iter()
            .copied()
            .chain([f64::INFINITY]);
        bounds
            .zip(self.bucket_counts.iter())
            .map(|(bound, count)| {
                cumulative = cumulative.saturating_add(count.load(Ordering::Relaxed));
                (bound, cumulative)
            })
            .collect()
    }
}

#[allow(clippy::cast_precision_loss)]
fn nanos_to_seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
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
    /// Messages queued, all users.
    pub queue_depth: Gauge,
    /// Active registration bindings.
    pub registrations: Gauge,
    /// Unwrapped data keys held in this node's memory (the keyring).
    pub keyring_keys: Gauge,
    /// Entries stored on this node, all groups, by `keyspace` (RocksDB's estimate, refreshed
    /// every few seconds): shows that state stays bounded under constant load.
    pub state_entries: LabeledGauge,
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
    /// SIP traffic, by `kind`: a request method received (e.g. "MESSAGE") or a response status
    /// class sent (e.g. "2xx").
    pub sip_requests_total: LabeledCounter,
    /// Time from proposing a command to its commit, in seconds.
    pub raft_commit_latency_seconds: Histogram,
    /// Attempts to deliver a message to a device (each MESSAGE sent out).
    pub delivery_attempts_total: Counter,
    /// When each certificate the node presents or trusts expires (its not-after, Unix
    /// seconds), by `file` ("ca.crt", "node.crt", "sip.crt"); set at start and on every
    /// reload, so it always shows the certificate in use.
    pub certificate_expiry_timestamp_seconds: LabeledGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            messages_accepted_total: Counter::default(),
            messages_delivered_total: Counter::default(),
            messages_expired_total: Counter::default(),
            messages_failed_total: Counter::default(),
            messages_duplicate_total: Counter::default(),
            queue_depth: Gauge::default(),
            registrations: Gauge::default(),
            keyring_keys: Gauge::default(),
            state_entries: LabeledGauge::new(
                "keyspace",
                &crate::Keyspace::ALL.map(crate::Keyspace::name),
            ),
            shred_pending: Gauge::default(),
            shred_passes_total: Counter::default(),
            connections_open: LabeledGauge::new("transport", &["tls", "tcp", "udp"]),
            connections_unauthenticated: LabeledGauge::new("transport", &["tls", "tcp", "udp"]),
            connections_refused_total: LabeledCounter::new(
                "reason",
                &[
                    "per_source",
                    "unauthenticated_max",
                    "unauthenticated_timeout",
                    "connections_max",
                ],
            ),
            sip_keepalives_total: LabeledCounter::new("transport", &["tls", "tcp"]),
            auth_failures_total: LabeledCounter::new("method", &["REGISTER", "MESSAGE"]),
            auth_throttled_total: LabeledCounter::new("method", &["REGISTER", "MESSAGE"]),
            messages_sender_limited_total: LabeledCounter::new("limit", &["queued", "rate"]),
            sip_requests_total: LabeledCounter::new("kind", &[]),
            raft_commit_latency_seconds: Histogram::new(&RAFT_COMMIT_LATENCY_BUCKETS_SECONDS),
            delivery_attempts_total: Counter::default(),
            // No preset series: a 0 would read as "expired in 1970" until the node loads them.
            certificate_expiry_timestamp_seconds: LabeledGauge::new("file", &[]),
        }
    }

    /// The Prometheus text exposition format 0.0.4
    /// (serve with `Content-Type: text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counters = [
            (
                "messages_accepted_total",
                "MESSAGE requests accepted into a queue.",
                &self.messages_accepted_total,
            ),
            (
                "messages_delivered_total",
                "Messages acknowledged by a recipient device.",
                &self.messages_delivered_total,
            ),
            (
                "messages_expired_total",
                "Messages that expired before delivery.",
                &self.messages_expired_total,
            ),
            (
                "messages_failed_total",
                "Messages refused or rejected permanently.",
                &self.messages_failed_total,
            ),
            (
                "messages_duplicate_total",
                "Retransmitted or retried messages recognised as duplicates.",
                &self.messages_duplicate_total,
            ),
            (
                "delivery_attempts_total",
                "Attempts to deliver a message to a device.",
                &self.delivery_attempts_total,
            ),
            (
                "shred_passes_total",
                "Shred passes finished: removed accounts' wrapped keys purged from the data dir.",
                &self.shred_passes_total,
            ),
        ];
        for (name, help, counter) in counters {
            write_header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{METRIC_NAME_PREFIX}{name} {}", counter.get());
        }
        let gauges = [
            (
                "queue_depth",
                "Messages queued, all users.",
                &self.queue_depth,
            ),
            (
                "registrations",
                "Active registration bindings.",
                &self.registrations,
            ),
            (
                "keyring_keys",
                "Unwrapped data keys held in memory.",
                &self.keyring_keys,
            ),
            (
                "shred_pending",
                "Applied account removals not yet shredded from this node's data dir.",
                &self.shred_pending,
            ),
        ];
        for (name, help, gauge) in gauges {
            write_header(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{METRIC_NAME_PREFIX}{name} {}", gauge.get());
        }
        write_labeled(
            &mut out,
            "state_entries",
            "Stored entries on this node by keyspace (estimate).",
            "gauge",
            self.state_entries.0.label_name,
            self.state_entries.0.snapshot(Gauge::get),
        );
        write_labeled(
            &mut out,
            "connections_open",
            "Open SIP connections by transport.",
            "gauge",
            self.connections_open.0.label_name,
            self.connections_open.0.snapshot(Gauge::get),
        );
        write_labeled(
            &mut out,
            "connections_unauthenticated",
            "SIP connections and UDP peers not authenticated yet, by transport.",
            "gauge",
            self.connections_unauthenticated.0.label_name,
            self.connections_unauthenticated.0.snapshot(Gauge::get),
        );
        write_labeled(
            &mut out,
            "connections_refused_total",
            "SIP connections and UDP peers closed or refused by a limit, by reason.",
            "counter",
            self.connections_refused_total.0.label_name,
            self.connections_refused_total.0.snapshot(Counter::get),
        );
        write_labeled(
            &mut out,
            "sip_keepalives_total",
            "RFC 5626 keep-alive pings (double CRLF) received by transport.",
            "counter",
            self.sip_keepalives_total.0.label_name,
            self.sip_keepalives_total.0.snapshot(Counter::get),
        );
        write_labeled(
            &mut out,
            "auth_failures_total",
            "Failed digest authentications by SIP method.",
            "counter",
            self.auth_failures_total.0.label_name,
            self.auth_failures_total.0.snapshot(Counter::get),
        );
        write_labeled(
            &mut out,
            "auth_throttled_total",
            "Authentications refused unchecked after too many failures, by SIP method.",
            "counter",
            self.auth_throttled_total.0.label_name,
            self.auth_throttled_total.0.snapshot(Counter::get),
        );
        write_labeled(
            &mut out,
            "messages_sender_limited_total",
            "MESSAGEs refused to their sender by a per-sender limit, by limit.",
            "counter",
            self.messages_sender_limited_total.0.label_name,
            self.messages_sender_limited_total.0.snapshot(Counter::get),
        );
        write_labeled(
            &mut out,
            "sip_requests_total",
            "SIP requests received by method, and responses sent by status class.",
            "counter",
            self.sip_requests_total.0.label_name,
            self.sip_requests_total.0.snapshot(Counter::get),
        );
        write_labeled(
            &mut out,
            "certificate_expiry_timestamp_seconds",
            "When each certificate in use expires (not-after), Unix seconds, by file.",
            "gauge",
            self.certificate_expiry_timestamp_seconds.0.label_name,
            self.certificate_expiry_timestamp_seconds
                .0
                .snapshot(Gauge::get),
        );
        write_histogram(
            &mut out,
            "raft_commit_latency_seconds",
            "Time from proposing a Raft command to its commit.",
            &self.raft_commit_latency_seconds,
        );
        out
    }
}

fn write_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(
        out,
        "# HELP {METRIC_NAME_PREFIX}{name} {}",
        escape_help(help)
    );
    let _ = writeln!(out, "# TYPE {METRIC_NAME_PREFIX}{name} {kind}");
}

fn write_labeled<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    label_name: &str,
    series: Vec<(String, V)>,
) {
    write_header(out, name, help, kind);
    for (label_value, value) in series {
        let label_value = escape_label_value(&label_value);
        let _ = writeln!(
            out,
            "{METRIC_NAME_PREFIX}{name}{{{label_name}=\"{label_value}\"}} {value}"
        );
    }
}

fn write_histogram(out: &mut String, name: &str, help: &str, histogram: &Histogram) {
    write_header(out, name, help, "histogram");
    let buckets = histogram.cumulative_buckets();
    for (bound, cumulative) in &buckets {
        let le = if bound.is_infinite() {
            "+Inf".to_owned()
        } else {
            format!("{bound}")
        };
        let _ = writeln!(
            out,
            "{METRIC_NAME_PREFIX}{name}_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let count = buckets.last().map_or(0, |(_, cumulative)| *cumulative);
    let _ = writeln!(
        out,
        "{METRIC_NAME_PREFIX}{name}_sum {}",
        histogram.sum_seconds()
    );
    let _ = writeln!(out, "{METRIC_NAME_PREFIX}{name}_count {count}");
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

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// HELP text escapes backslash and line feed.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_count() {
        let metrics = Metrics::new();
        metrics.messages_accepted_total.inc();
        metrics.messages_accepted_total.add(4);
        assert_eq!(metrics.messages_accepted_total.get(), 5);
        metrics.queue_depth.inc();
        metrics.queue_depth.inc();
        metrics.queue_depth.dec();
        assert_eq!(metrics.queue_depth.get(), 1);
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
                        metrics.sip_requests_total.inc("MESSAGE");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("counting thread panicked");
        }
        assert_eq!(metrics.delivery_attempts_total.get(), 40_000);
        assert_eq!(metrics.sip_requests_total.get("MESSAGE"), 40_000);
    }

    #[test]
    fn labeled_metrics_are_bounded_and_overflow_into_other() {
        let counter = LabeledCounter::new("kind", &["a"]);
        for i in 0..100 {
            counter.inc(&format!("value-{i}"));
        }
        assert_eq!(counter.series_count(), LABEL_VALUES_MAX);
        // "a" plus LABEL_VALUES_MAX - 2 new values got their own series; the rest overflowed.
        let own = LABEL_VALUES_MAX as u64 - 2;
        assert_eq!(counter.get(OVERFLOW_LABEL_VALUE), 100 - own);
        assert_eq!(counter.get("value-0"), 1);
        assert_eq!(counter.get("a"), 0);

        let long = "x".repeat(200);
        let gauge = LabeledGauge::new("transport", &[]);
        gauge.inc(&long);
        assert_eq!(gauge.get(&long[..LABEL_VALUE_BYTES_MAX]), 1);
        assert_eq!(
            truncate_label_value(&"é".repeat(40)).len(),
            LABEL_VALUE_BYTES_MAX
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let histogram = Histogram::new(&RAFT_COMMIT_LATENCY_BUCKETS_SECONDS);
        histogram.observe(Duration::from_micros(300)); // <= 0.0005
        histogram.observe(Duration::from_millis(1)); // == 0.001, inclusive upper bound
        histogram.observe_seconds(0.2); // <= 0.25
        histogram.observe_seconds(60.0); // +Inf
        histogram.observe_seconds(f64::NAN); // counts as 0
        let buckets = histogram.cumulative_buckets();
        assert_eq!(buckets.len(), RAFT_COMMIT_LATENCY_BUCKETS_SECONDS.len() + 1);
        assert_eq!(buckets[0], (0.0005, 2));
        assert_eq!(buckets[1], (0.001, 3));
        let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).map(|(_, c)| *c);
        assert_eq!(at(0.1), Some(3));
        assert_eq!(at(0.25), Some(4));
        assert_eq!(at(10.0), Some(4));
        assert_eq!(at(f64::INFINITY), Some(5));
        assert_eq!(histogram.count(), 5);
        assert!((histogram.sum_seconds() - 60.2013).abs() < 1e-9);
    }

    #[test]
    fn render_has_help_type_prefix_and_escaped_labels() {
        let metrics = Metrics::new();
        metrics.messages_delivered_total.add(7);
        metrics.connections_open.inc("tls");
        metrics.auth_failures_total.inc("REGISTER");
        metrics.sip_requests_total.inc("2xx");
        metrics.sip_requests_total.inc("we\"ird\\\nvalue");
        metrics
            .raft_commit_latency_seconds
            .observe(Duration::from_millis(3));
        metrics
            .certificate_expiry_timestamp_seconds
            .set("node.crt", 1_800_000_000);
        let text = metrics.render();
        let lines: Vec<&str> = text.lines().collect();
        let has = |line: &str| lines.contains(&line);
        assert!(has(
            "# HELP pms_messages_delivered_total Messages acknowledged by a recipient device."
        ));
        assert!(has("# TYPE pms_messages_delivered_total counter"));
        assert!(has("pms_messages_delivered_total 7"));
        assert!(has("# TYPE pms_queue_depth gauge"));
        assert!(has("pms_connections_open{transport=\"tls\"} 1"));
        assert!(has("pms_connections_open{transport=\"udp\"} 0"));
        assert!(has("pms_auth_failures_total{method=\"REGISTER\"} 1"));
        assert!(has("pms_auth_failures_total{method=\"MESSAGE\"} 0"));
        assert!(has("pms_sip_requests_total{kind=\"2xx\"} 1"));
        assert!(has(r#"pms_sip_requests_total{kind="we\"ird\\\nvalue"} 1"#));
        assert!(has("# TYPE pms_raft_commit_latency_seconds histogram"));
        assert!(has(
            "pms_raft_commit_latency_seconds_bucket{le=\"0.0025\"} 0"
        ));
        assert!(has(
            "pms_raft_commit_latency_seconds_bucket{le=\"0.005\"} 1"
        ));
        assert!(has("pms_raft_commit_latency_seconds_bucket{le=\"+Inf\"} 1"));
        assert!(has("pms_raft_commit_latency_seconds_sum 0.003"));
        assert!(has("pms_raft_commit_latency_seconds_count 1"));
        assert!(has("# TYPE pms_certificate_expiry_timestamp_seconds gauge"));
        assert!(has(
            "pms_certificate_expiry_timestamp_seconds{file=\"node.crt\"} 1800000000"
        ));
        // No series for a certificate never loaded (a 0 would read as expired).
        assert!(!text.contains("file=\"sip.crt\""));
        assert!(text.ends_with('\n'));
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

        let promtool = std::path::Path::new("/usr/bin/promtool");
        if !promtool.exists() {
            println!("note: /usr/bin/promtool not installed; skipping the promtool check");
            return;
        }
        let metrics = Metrics::new();
        metrics.messages_accepted_total.inc();
        metrics.connections_open.inc("udp");
        metrics.sip_requests_total.inc("MESSAGE");
        metrics.sip_requests_total.inc("quote\"and\\slash\nnewline");
        metrics.raft_commit_latency_seconds.observe_seconds(0.02);
        metrics.raft_commit_latency_seconds.observe_seconds(11.0);
        metrics
            .certificate_expiry_timestamp_seconds
            .set("ca.crt", 2_000_000_000);
        let text = metrics.render();

        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn promtool");
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
