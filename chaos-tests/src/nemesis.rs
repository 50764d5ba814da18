//! The nemesis: a seeded schedule of faults against the cluster, each held for a few seconds and
//! then healed, with the time to recover measured after every heal.
//!
//! Fault kinds (see [`FaultKind`]): SIGKILL the leader or a random node (heal: start it on the
//! same data), partition the leader or a random node from the other nodes (network-namespace
//! mode only; heal: flush the rules), SIGSTOP a random node (heal: SIGCONT), SIGTERM a random
//! node (heal: start it again).
//!
//! Invariants:
//! - Invariant: at most one node is faulty at a time (a minority of 3), and every fault is
//!   healed before the next one starts and before [`run`] returns.
//! - Invariant: the schedule (kinds, delays, durations, random targets) depends only on the
//!   seed, so `--seed N` replays it; which node leads is the cluster's choice.
//! - Invariant: every fault, heal, failover, recovery and crash is recorded in the history with
//!   the time the harness saw it.
//! - Invariant: no fault starts unless it can be healed before the workload's end.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;

use crate::cluster::{CONDITION_POLL_INTERVAL, Cluster};
use crate::history::{Event, FaultKind, History, now_ms};

/// How much a delay between faults varies around the fault interval (±, percent).
pub const FAULT_INTERVAL_JITTER_PERCENT: u64 = 25;
/// Shortest time a fault is held.
pub const FAULT_DURATION_MIN: Duration = Duration::from_secs(2);
/// Longest time a fault is held (also capped at half the fault interval).
pub const FAULT_DURATION_MAX: Duration = Duration::from_secs(6);
/// Quiet time after a recovery before the next fault, whatever the schedule says.
pub const QUIET_AFTER_RECOVERY: Duration = Duration::from_secs(1);
/// Faults injected at most in one run.
pub const FAULTS_MAX: u64 = 100_000;
/// Pace of checking for crashed nodes while waiting for the next fault.
pub const CRASH_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What [`run`] needs.
#[derive(Clone, Debug)]
pub struct NemesisConfig {
    pub seed: u64,
    /// Mean time from one fault's start to the next one's.
    pub fault_interval: Duration,
    /// How long the harness waits for recovery after a heal before recording a failure.
    pub recovery_wait_max: Duration,
    /// No fault starts unless it heals before this instant.
    pub end: Instant,
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    /// From the previous fault's start.
    pub delay: Duration,
    pub kind: FaultKind,
    /// Index of the target among the nodes when the kind does not aim at the leader (also the
    /// fallback when no leader is known).
    pub node_index: usize,
    pub duration: Duration,
}

/// The fault kinds possible for this cluster.
pub fn available_kinds(nodes: usize, can_partition: bool) -> Vec<FaultKind> {
    FaultKind::ALL
        .into_iter()
        .filter(|kind| can_partition || !kind.needs_network_namespaces())
        .filter(|kind| nodes > 1 || !kind.needs_network_namespaces())
        .collect()
}

/// The seeded sequence of faults.
pub struct Schedule {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    nodes: usize,
    fault_interval: Duration,
}

impl Schedule {
    pub fn new(seed: u64, kinds: Vec<FaultKind>, nodes: usize, fault_interval: Duration) -> Self {
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds,
            nodes: nodes.max(1),
            fault_interval,
        }
    }

    /// Longest fault: [`FAULT_DURATION_MAX`], at most half the interval, at least the minimum.
    fn duration_max(&self) -> Duration {
        (self.fault_interval / 2).clamp(FAULT_DURATION_MIN, FAULT_DURATION_MAX)
    }

    pub fn next_fault(&mut self) -> Option<PlannedFault> {
        if self.kinds.is_empty() {
            return None;
        }
        let interval_ms = u64::try_from(self.fault_interval.as_millis()).unwrap_or(u64::MAX);
        let jitter_ms = interval_ms / 100 * FAULT_INTERVAL_JITTER_PERCENT;
        let delay_ms = self.rng.gen_range(
            interval_ms.saturating_sub(jitter_ms)..=interval_ms.saturating_add(jitter_ms),
        );
        let kind = self.kinds[self.rng.gen_range(0..self.kinds.len())];
        let node_index = self.rng.gen_range(0..self.nodes);
        let min_ms = u64::try_from(FAULT_DURATION_MIN.as_millis()).unwrap_or(2_000);
        let max_ms = u64::try_from(self.duration_max().as_millis()).unwrap_or(min_ms);
        let duration_ms = self.rng.gen_range(min_ms..=max_ms.max(min_ms));
        Some(PlannedFault {
            delay: Duration::from_millis(delay_ms),
            kind,
            node_index,
            duration: Duration::from_millis(duration_ms),
        })
    }
}

/// What the nemesis did, for the summary.
#[derive(Debug, Default)]
pub struct NemesisSummary {
    pub faults: u64,
    pub kinds: Vec<FaultKind>,
    /// Faults that could not be injected or healed, and crashes seen.
    pub problems: Vec<String>,
}

/// Injects faults until no further fault could heal before `config.end`.
pub async fn run(
    cluster: &mut Cluster,
    history: &History,
    config: &NemesisConfig,
) -> NemesisSummary {
    let node_ids = cluster.node_ids();
    let kinds = available_kinds(node_ids.len(), cluster.can_partition());
    let mut schedule = Schedule::new(
        config.seed,
        kinds.clone(),
        node_ids.len(),
        config.fault_interval,
    );
    let mut summary = NemesisSummary {
        kinds,
        ..NemesisSummary::default()
    };
    let mut previous_start = Instant::now();
    let mut earliest_next = Instant::now();
    for fault_id in 1..=FAULTS_MAX {
        let Some(plan) = schedule.next_fault() else {
            break;
        };
        let start_at = (previous_start + plan.delay).max(earliest_next);
        if start_at + plan.duration > config.end {
            break;
        }
        wait_until(cluster, history, start_at, &mut summary).await;
        previous_start = Instant::now();
        let leader_before = if node_ids.len() > 1 {
            cluster.leader().await
        } else {
            node_ids.first().copied()
        };
        let random_target = node_ids[plan.node_index % node_ids.len()];
        let (target, detail) = match (plan.kind.targets_leader(), leader_before) {
            (true, Some(leader)) => (leader, format!("leader before: {leader}")),
            (true, None) => (
                random_target,
                "no leader known: a random node instead".to_owned(),
            ),
            (false, leader) => (random_target, format!("leader before: {leader:?}")),
        };
        let injected_at = Instant::now();
        if let Err(error) = inject(cluster, plan.kind, target).await {
            summary.problems.push(format!(
                "fault {fault_id} {} on node {target}: inject failed: {error:#}",
                plan.kind.name()
            ));
            earliest_next = Instant::now() + QUIET_AFTER_RECOVERY;
            continue;
        }
        summary.faults += 1;
        history.record(Event::FaultStarted {
            at_ms: now_ms(),
            fault_id,
            kind: plan.kind,
            node: target,
            detail,
        });
        // Held for the planned time from when it took effect (a graceful stop takes a while).
        let heal_at = Instant::now() + plan.duration;
        if node_ids.len() > 1 && leader_before == Some(target) {
            let window = (injected_at, heal_at);
            measure_failover(cluster, history, fault_id, plan.kind, target, window).await;
        }
        tokio::time::sleep_until(heal_at).await;
        if let Err(error) = heal(cluster, plan.kind, target).await {
            summary.problems.push(format!(
                "fault {fault_id} {} on node {target}: heal failed: {error:#}",
                plan.kind.name()
            ));
            for problem in cluster.heal_everything() {
                summary.problems.push(problem);
            }
        }
        history.record(Event::FaultHealed {
            at_ms: now_ms(),
            fault_id,
            kind: plan.kind,
            node: target,
        });
        record_recovery(
            cluster,
            history,
            Some(fault_id),
            plan.kind.name(),
            config.recovery_wait_max,
            &mut summary,
        )
        .await;
        earliest_next = Instant::now() + QUIET_AFTER_RECOVERY;
    }
    // No further fault fits before the end: keep watching for crashes until then.
    wait_until(cluster, history, config.end, &mut summary).await;
    summary
}

/// Waits for the cluster to be healthy again (up to `wait_max`) and records how long it took.
/// Crashed nodes seen meanwhile are recorded and restarted.
pub async fn record_recovery(
    cluster: &mut Cluster,
    history: &History,
    fault_id: Option<u64>,
    label: &str,
    wait_max: Duration,
    summary: &mut NemesisSummary,
) -> Option<Duration> {
    let started = Instant::now();
    let deadline = started + wait_max;
    loop {
        match cluster.wait_healthy(deadline).await {
            Ok(_) => {
                let elapsed = started.elapsed();
                history.record(Event::Recovered {
                    at_ms: now_ms(),
                    fault_id,
                    label: label.to_owned(),
                    recovery_ms: Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)),
                    detail: String::new(),
                });
                return Some(elapsed);
            }
            Err(not_healthy) => {
                let crashed = record_crashes(cluster, history, summary);
                if crashed && Instant::now() < deadline {
                    continue;
                }
                history.record(Event::Recovered {
                    at_ms: now_ms(),
                    fault_id,
                    label: label.to_owned(),
                    recovery_ms: None,
                    detail: not_healthy,
                });
                return None;
            }
        }
    }
}

/// Records nodes that exited on their own and starts them again (as a supervisor would).
/// Returns whether there were any.
pub fn record_crashes(
    cluster: &mut Cluster,
    history: &History,
    summary: &mut NemesisSummary,
) -> bool {
    let exited = cluster.reap_unexpected_exits();
    for (node, status) in &exited {
        history.record(Event::NodeExited {
            at_ms: now_ms(),
            node: *node,
            status: status.clone(),
            log_path: cluster
                .log_path(*node)
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
        });
        summary
            .problems
            .push(format!("node {node} exited on its own ({status})"));
        if let Err(error) = cluster.start(*node) {
            summary
                .problems
                .push(format!("restarting crashed node {node}: {error:#}"));
        }
    }
    !exited.is_empty()
}

async fn wait_until(
    cluster: &mut Cluster,
    history: &History,
    at: Instant,
    summary: &mut NemesisSummary,
) {
    while Instant::now() < at {
        record_crashes(cluster, history, summary);
        let remaining = at.saturating_duration_since(Instant::now());
        tokio::time::sleep(remaining.min(CRASH_CHECK_INTERVAL)).await;
    }
}

/// While `target` (the leader) is faulty, how long from the fault's start until the other
/// nodes agree on a new leader; `(started, until)` is the fault's window.
async fn measure_failover(
    cluster: &Cluster,
    history: &History,
    fault_id: u64,
    kind: FaultKind,
    target: u64,
    (started, until): (Instant, Instant),
) {
    let mut new_leader = None;
    while Instant::now() < until {
        if let Some(leader) = cluster.leader_excluding(target).await
            && leader != target
        {
            new_leader = Some(leader);
            break;
        }
        let remaining = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(remaining.min(CONDITION_POLL_INTERVAL)).await;
    }
    history.record(Event::Failover {
        at_ms: now_ms(),
        fault_id,
        kind,
        new_leader,
        failover_ms: new_leader
            .map(|_| u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
    });
}

async fn inject(cluster: &mut Cluster, kind: FaultKind, node: u64) -> anyhow::Result<()> {
    match kind {
        FaultKind::KillLeader | FaultKind::KillNode => cluster.kill(node).await,
        FaultKind::PartitionNode | FaultKind::PartitionLeader => cluster.partition(node),
        FaultKind::PauseNode => cluster.pause(node),
        FaultKind::RestartNode => cluster.stop(node).await.map(|_| ()),
    }
}

async fn heal(cluster: &mut Cluster, kind: FaultKind, node: u64) -> anyhow::Result<()> {
    match kind {
        FaultKind::KillLeader | FaultKind::KillNode | FaultKind::RestartNode => {
            if cluster.is_running(node) {
                anyhow::bail!("node {node} is running although it was stopped");
            }
            cluster.start(node)
        }
        FaultKind::PartitionNode | FaultKind::PartitionLeader => cluster.heal_partition(node),
        FaultKind::PauseNode => cluster.resume(node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let kinds = available_kinds(3, true);
        let interval = Duration::from_secs(10);
        let mut first = Schedule::new(42, kinds.clone(), 3, interval);
        let mut second = Schedule::new(42, kinds.clone(), 3, interval);
        let mut other = Schedule::new(43, kinds, 3, interval);
        let a: Vec<_> = (0..20).filter_map(|_| first.next_fault()).collect();
        let b: Vec<_> = (0..20).filter_map(|_| second.next_fault()).collect();
        let c: Vec<_> = (0..20).filter_map(|_| other.next_fault()).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        for fault in &a {
            assert!(
                fault.delay >= Duration::from_millis(7_500)
                    && fault.delay <= Duration::from_millis(12_500)
            );
            assert!(
                fault.duration >= FAULT_DURATION_MIN && fault.duration <= Duration::from_secs(5)
            );
            assert!(fault.node_index < 3);
        }
    }

    #[test]
    fn partitions_need_namespaces_and_peers() {
        assert_eq!(available_kinds(3, true).len(), FaultKind::ALL.len());
        assert!(
            available_kinds(3, false)
                .iter()
                .all(|kind| !kind.needs_network_namespaces())
        );
        assert!(
            available_kinds(1, true)
                .iter()
                .all(|kind| !kind.needs_network_namespaces())
        );
    }
}
