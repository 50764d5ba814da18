//! The metrics a node computes rather than counts where things happen: each group's Raft state
//! (watched: every change openraft reports), snapshot counts and durations (observed by the
//! state machine), queue depth per group (counted by each group's state machine as it applies
//! entries) and storage size (both refreshed every [`STORAGE_REPORT_INTERVAL`]), the
//! `process_*` metrics (read from `/proc/self` on each scrape) and `pms_build_info`.
//!
//! Invariant: the queue depth of a group is what this node's replica of the group holds, so
//! every caught-up replica reports the same number; the cluster's queue is
//! `sum(max by (group) (pms_queue_depth))`, never a sum over nodes.
//! Invariant: a follower-lag series exists only on the node that leads its group; it is
//! removed when leadership moves, so a former leader does not report stale lag.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pms_replication::{GroupRole, GroupStatus, Replication};
use pms_types::metrics::{Counter, Gauge, Metrics};
use pms_types::{GroupId, Keyspace};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tracing::debug;

/// How often queue depth, stored entries and storage size are refreshed.
pub const STORAGE_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// The commit `build.rs` recorded ("unknown" when built outside a git checkout).
pub const BUILD_COMMIT: &str = env!("PMSD_GIT_COMMIT");

/// Sets the build info, registers the process collector, and starts watching every group.
pub fn install(replication: &Arc<Replication>, metrics: &Arc<Metrics>) {
    metrics.set_build_info(env!("CARGO_PKG_VERSION"), BUILD_COMMIT);
    metrics.register_collector(Box::new(ProcessCollector));
    for group in replication.groups() {
        let observed = metrics.clone();
        group.set_commit_latency_observer(Arc::new(move |_, elapsed| {
            observed
                .raft_commit_latency_seconds
                .observe(elapsed.as_secs_f64());
        }));
        let observed = metrics.clone();
        group.set_snapshot_observer(Arc::new(move |_, kind, elapsed| {
            observed.raft_snapshots_total.inc(kind.as_str());
            observed
                .raft_snapshot_duration_seconds
                .with([kind.as_str()])
                .observe(elapsed.as_secs_f64());
        }));
        tokio::spawn(watch_group(
            replication.clone(),
            group.id(),
            metrics.clone(),
        ));
    }
}

async fn watch_group(replication: Arc<Replication>, group: GroupId, metrics: Arc<Metrics>) {
    let Some(watched) = replication.group(group) else {
        return;
    };
    let mut report = GroupReport::new(&metrics, group);
    watched
        .watch_status(|status| report.report(&metrics, &status))
        .await;
}

/// One group's Raft series, looked up once (a report runs on every change openraft reports,
/// i.e. on every applied entry), and what the previous report saw.
struct GroupReport {
    group: String,
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    leader_changes: Counter,
    /// The leader the previous report named (`None` before the first report).
    last_leader: Option<Option<u64>>,
    /// Followers whose lag series exist (this node led the group at the previous report).
    lagging: BTreeSet<u64>,
}

impl GroupReport {
    fn new(metrics: &Metrics, group: GroupId) -> Self {
        let label = group.0.to_string();
        GroupReport {
            term: metrics.raft_term.with([&label]),
            leader: metrics.raft_leader.with([&label]),
            is_leader: metrics.raft_is_leader.with([&label]),
            last_log_index: metrics.raft_last_log_index.with([&label]),
            applied_index: metrics.raft_applied_index.with([&label]),
            leader_changes: metrics.raft_leader_changes_total.with([&label]),
            group: label,
            last_leader: None,
            lagging: BTreeSet::new(),
        }
    }

    /// Sets the group's gauges from `status`; counts a leader change when the leader this node
    /// knows differs from the previous report's; keeps follower-lag series only while leading.
    fn report(&mut self, metrics: &Metrics, status: &GroupStatus) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.term.set(gauge(status.term));
        self.leader.set(gauge(status.leader.unwrap_or(0)));
        let leading = status.role == GroupRole::Leader;
        self.is_leader.set(i64::from(leading));
        let last_log = status.last_log_index.unwrap_or(0);
        self.last_log_index.set(gauge(last_log));
        self.applied_index
            .set(gauge(status.last_applied_index.unwrap_or(0)));
        if self.last_leader.is_some_and(|known| known != status.leader) {
            self.leader_changes.inc();
        }
        self.last_leader = Some(status.leader);

        let followers: BTreeSet<u64> = if leading {
            status
                .members
                .iter()
                .filter(|member| member.node != status.leader.unwrap_or(0))
                .map(|member| member.node)
                .collect()
        } else {
            BTreeSet::new()
        };
        for gone in self.lagging.difference(&followers) {
            metrics
                .raft_follower_lag_entries
                .remove([&self.group, &gone.to_string()]);
        }
        for member in status
            .members
            .iter()
            .filter(|m| followers.contains(&m.node))
        {
            let lag = last_log.saturating_sub(member.matched_index.unwrap_or(0));
            metrics
                .raft_follower_lag_entries
                .with([&self.group, &member.node.to_string()])
                .set(gauge(lag));
        }
        self.lagging = followers;
    }
}

/// Refreshes queue depth per group (read from each state machine's count), stored entries,
/// storage size and free space until the process ends.
pub async fn report_storage(
    store: Arc<dyn pms_storage::Store>,
    replication: Arc<Replication>,
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
) {
    let mut interval = tokio::time::interval(STORAGE_REPORT_INTERVAL);
    loop {
        interval.tick().await;
        for group in replication
            .groups()
            .filter(|group| group.id() != GroupId(0))
        {
            let queued = i64::try_from(group.queued_messages()).unwrap_or(i64::MAX);
            metrics.queue_depth.set(&group.id().0.to_string(), queued);
        }
        let (store, data_dir, metrics) = (store.clone(), data_dir.clone(), metrics.clone());
        let done = tokio::task::spawn_blocking(move || {
            refresh_storage(&*store, &data_dir, &metrics);
        })
        .await;
        if done.is_err() {
            return;
        }
    }
}

fn refresh_storage(store: &dyn pms_storage::Store, data_dir: &Path, metrics: &Metrics) {
    let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    for keyspace in Keyspace::ALL {
        match store.estimated_entries(keyspace) {
            Ok(count) => metrics.state_entries.set(keyspace.name(), gauge(count)),
            Err(error) => debug!(%error, "cannot estimate stored entries"),
        }
    }
    metrics.storage_bytes.set(gauge(directory_bytes(data_dir)));
    match rustix::fs::statvfs(data_dir) {
        Ok(stats) => {
            let available = stats.f_bavail.saturating_mul(stats.f_frsize);
            metrics.storage_available_bytes.set(gauge(available));
        }
        Err(error) => debug!(%error, "cannot read the data dir's file system"),
    }
}

/// Bytes of the regular files under `dir` (symbolic links not followed).
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |meta| meta.len()),
            _ => 0,
        })
        .sum()
}

/// The standard `process_*` metrics of the Prometheus client libraries, read from `/proc/self`
/// on each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(process) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(process.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                process.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                process.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                process.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                process.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                process.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: u64,
    start_time_seconds: u64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok()?;
        let boot_time = boot_time
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        Self::parse(
            &stat,
            boot_time,
            rustix::param::clock_ticks_per_second(),
            rustix::param::page_size() as u64,
            open_fds,
            max_fds,
        )
    }

    /// Parses `/proc/self/stat` (proc(5)): fields after the parenthesised command name,
    /// utime (14), stime (15), starttime (22), vsize (23), rss (24).
    fn parse(
        stat: &str,
        boot_time: u64,
        ticks_per_second: u64,
        page_size: u64,
        open_fds: u64,
        max_fds: u64,
    ) -> Option<ProcessStats> {
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // `fields[0]` is field 3 (state).
        let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
        let ticks = ticks_per_second.max(1);
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks as f64,
            resident_bytes: field(24)?.saturating_mul(page_size),
            virtual_bytes: field(23)?,
            open_fds,
            max_fds,
            start_time_seconds: boot_time + field(22)? / ticks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pms_replication::GroupMember;

    fn member(node: u64, matched: Option<u64>) -> GroupMember {
        GroupMember {
            node,
            address: format!("127.0.0.1:{node}"),
            voter: true,
            matched_index: matched,
        }
    }

    fn status(role: GroupRole, leader: Option<u64>, members: Vec<GroupMember>) -> GroupStatus {
        GroupStatus {
            group: GroupId(3),
            role,
            leader,
            term: 7,
            last_log_index: Some(100),
            last_applied_index: Some(99),
            members,
        }
    }

    #[test]
    fn group_gauges_leader_changes_and_follower_lag() {
        let metrics = Metrics::new();
        let mut report = GroupReport::new(&metrics, GroupId(3));
        let leading = status(
            GroupRole::Leader,
            Some(1),
            vec![member(1, Some(100)), member(2, Some(90)), member(3, None)],
        );
        report.report(&metrics, &leading);
        assert_eq!(metrics.raft_term.get("3"), 7);
        assert_eq!(metrics.raft_leader.get("3"), 1);
        assert_eq!(metrics.raft_is_leader.get("3"), 1);
        assert_eq!(metrics.raft_applied_index.get("3"), 99);
        assert_eq!(metrics.raft_follower_lag_entries.with(["3", "2"]).get(), 10);
        assert_eq!(
            metrics.raft_follower_lag_entries.with(["3", "3"]).get(),
            100
        );
        assert_eq!(metrics.raft_leader_changes_total.get("3"), 0, "first sight");

        report.report(&metrics, &leading);
        assert_eq!(metrics.raft_leader_changes_total.get("3"), 0, "same leader");

        let following = status(
            GroupRole::Follower,
            Some(2),
            vec![member(1, None), member(2, None), member(3, None)],
        );
        report.report(&metrics, &following);
        assert_eq!(metrics.raft_leader_changes_total.get("3"), 1);
        assert_eq!(metrics.raft_is_leader.get("3"), 0);
        assert_eq!(metrics.raft_leader.get("3"), 2);
        assert_eq!(
            metrics.raft_follower_lag_entries.series_count(),
            0,
            "a former leader reports no lag"
        );
        let electing = status(GroupRole::Candidate, None, vec![member(1, None)]);
        report.report(&metrics, &electing);
        assert_eq!(metrics.raft_leader_changes_total.get("3"), 2);
        assert_eq!(metrics.raft_leader.get("3"), 0);
    }

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let stat = "4242 (pm sd) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 \
                    12 0 1000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 \
                    1 0 0 0 0 0";
        let stats = ProcessStats::parse(stat, 1_700_000_000, 100, 4096, 12, 65536).expect("parsed");
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 2560 * 4096,
                virtual_bytes: 104_857_600,
                open_fds: 12,
                max_fds: 65536,
                start_time_seconds: 1_700_000_010,
            }
        );
        assert!(ProcessStats::read().is_some(), "this process's own stats");
    }
}
