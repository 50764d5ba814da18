//! The one-screen summary of a run: what was sent, acknowledged, delivered, expired, lost; the
//! faults by kind; recovery times; the verdict and what failed.
//!
//! Invariant: the summary is derived from the checker's [`Report`] and the run's facts only, so
//! `pms-chaos --check FILE` prints the same numbers as the run that wrote FILE.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::checker::{DurationStats, RECOVERY_TARGET_MS, Report};
use crate::history::Event;

/// Facts about the run that the report does not hold.
#[derive(Clone, Debug, Default)]
pub struct RunFacts {
    pub run_id: String,
    pub seed: u64,
    pub mode: String,
    pub nodes: usize,
    pub senders: usize,
    pub recipients: usize,
    pub workload_secs: f64,
    pub total_secs: Option<f64>,
    pub history_path: Option<PathBuf>,
    /// The run dir and whether it was kept.
    pub run_dir: Option<(PathBuf, bool)>,
    pub notes: Vec<String>,
}

impl RunFacts {
    /// What a history's `run_started` and `run_finished` say.
    pub fn from_history(events: &[Event]) -> RunFacts {
        let mut facts = RunFacts::default();
        let mut started_at = None;
        for event in events {
            match event {
                Event::RunStarted {
                    at_ms,
                    run_id,
                    seed,
                    mode,
                    nodes,
                    senders,
                    recipients,
                    duration_secs,
                    ..
                } => {
                    started_at = Some(*at_ms);
                    facts.run_id.clone_from(run_id);
                    facts.seed = *seed;
                    facts.mode.clone_from(mode);
                    facts.nodes = *nodes;
                    facts.senders = *senders;
                    facts.recipients = *recipients;
                    facts.workload_secs = *duration_secs as f64;
                }
                Event::RunFinished { at_ms } => {
                    if let Some(started_at) = started_at {
                        facts.total_secs = Some(at_ms.saturating_sub(started_at) as f64 / 1000.0);
                    }
                }
                _ => {}
            }
        }
        facts
    }
}

fn stats_line(stats: &DurationStats) -> String {
    let mut line = format!("{:>3}", stats.count);
    match (stats.max_ms, stats.median_ms) {
        (Some(max), Some(median)) => {
            let _ = write!(line, "  max {max:>6} ms  median {median:>6} ms");
        }
        _ => line.push_str("  (none completed)"),
    }
    if stats.incomplete > 0 {
        let _ = write!(line, "  {} did not complete", stats.incomplete);
    }
    line
}

/// Renders the summary.
pub fn render(facts: &RunFacts, report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pms-chaos run {}  seed {}  mode {}  nodes {}  senders {}  recipients {}",
        facts.run_id, facts.seed, facts.mode, facts.nodes, facts.senders, facts.recipients
    );
    let total = facts
        .total_secs
        .map_or_else(String::new, |secs| format!(", total {secs:.1} s"));
    let _ = writeln!(
        out,
        "time       workload {:.1} s{total}",
        facts.workload_secs
    );
    let _ = writeln!(
        out,
        "messages   sent {}  acknowledged {}  delivered {}  expired {}  lost {}",
        report.messages_sent, report.acknowledged, report.delivered, report.expired, report.lost
    );
    let codes = report
        .refused_by_code
        .iter()
        .map(|(code, count)| format!("{code}×{count}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "           unknown {} ({} delivered)  refused by server {}{}  attempts {} (retries {})",
        report.unknown,
        report.unknown_delivered,
        report.refused,
        if codes.is_empty() {
            String::new()
        } else {
            format!(" ({codes})")
        },
        report.send_attempts,
        report.retries
    );
    let deliveries_max = report
        .config
        .map_or(0, |config| config.deliveries_per_message_max);
    let _ = writeln!(
        out,
        "deliveries {} total; duplicates: {} messages redelivered ({} over {deliveries_max}); late {}; phantom {}; out of order {}; stored twice {}",
        report.deliveries_total,
        report.redelivered,
        report.excess_deliveries,
        report.late,
        report.phantom,
        report.out_of_order,
        report.stored_twice
    );
    let faults_total: usize = report.faults_by_kind.values().sum();
    let kinds = report
        .faults_by_kind
        .iter()
        .map(|(kind, count)| format!("{} {count}", kind.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "faults     {faults_total}{}{kinds}; node crashes {}",
        if kinds.is_empty() { "" } else { ": " },
        report.node_crashes
    );
    let bound = report.config.map_or(0, |config| config.recovery_bound_ms);
    let _ = writeln!(
        out,
        "recovery   (every node ready + leader agreed) bound {bound} ms, target {RECOVERY_TARGET_MS} ms; after heals max {}",
        report
            .recovery_overall
            .max_ms
            .map_or_else(|| "-".to_owned(), |max| format!("{max} ms"))
    );
    for (label, stats) in &report.recovery_by_label {
        let _ = writeln!(out, "           {label:<17}{}", stats_line(stats));
    }
    let _ = writeln!(
        out,
        "failover   (leader faulty → others agree on a new leader) {}",
        stats_line(&report.failover)
    );
    match (report.drain_pending, report.drain_ms) {
        (Some(pending), Some(drain_ms)) => {
            let _ = writeln!(
                out,
                "drain      {pending} acknowledged messages pending after {:.1} s",
                drain_ms as f64 / 1000.0
            );
        }
        _ => {
            let _ = writeln!(out, "drain      (not reached)");
        }
    }
    if let Some(path) = &facts.history_path {
        let _ = writeln!(out, "history    {}", path.display());
    }
    if let Some((dir, kept)) = &facts.run_dir {
        let _ = writeln!(
            out,
            "run dir    {} ({})",
            dir.display(),
            if *kept { "kept" } else { "removed" }
        );
    }
    for note in &facts.notes {
        let _ = writeln!(out, "note       {note}");
    }
    if report.passed() {
        let _ = writeln!(out, "verdict    PASS");
    } else {
        let _ = writeln!(
            out,
            "verdict    FAIL ({} rules broken)",
            report.failures.len()
        );
        for failure in &report.failures {
            let _ = writeln!(out, "  - {failure}");
        }
    }
    out
}
