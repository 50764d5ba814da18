//! One chaos run from start to verdict: launch the cluster, provision the accounts, run the
//! workload and the nemesis together, heal, drain, ask the server about undelivered messages,
//! stop the cluster, check the history and render the summary.
//!
//! Invariants:
//! - Invariant: the seed is chosen (or taken) before anything else and printed to stderr first,
//!   so even a run that dies can be replayed.
//! - Invariant: the run dir is removed only when the run passed; on failure or error it is kept
//!   (node logs and data are the evidence). The history file is always kept.
//! - Invariant: every phase has a deadline: startup, provisioning, the workload's duration,
//!   each recovery, the drain, joining the workload's tasks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use crate::checker::{
    self, CheckConfig, DELIVERIES_PER_MESSAGE_MAX, LATE_TOLERANCE_MS_DEFAULT,
    RECOVERY_BOUND_MS_DEFAULT, Report,
};
use crate::cluster::{self, Cluster, ClusterConfig};
use crate::history::{Event, History, RECOVERY_LABEL_FINAL, RECOVERY_LABEL_START, now_ms};
use crate::nemesis::{self, NemesisConfig, NemesisSummary};
use crate::summary::{self, RunFacts};
use crate::user_agent::random_hex;
use crate::workload::{
    self, ACCOUNT_PASSWORD, RecipientPhase, SEND_ATTEMPTS_MAX, Workload, WorkloadConfig,
};

/// SIP domain of the chaos cluster.
pub const DOMAIN: &str = "localhost";
/// How long a fresh cluster may take to become healthy.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long provisioning all accounts may take.
pub const PROVISION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the harness waits for recovery after a heal before recording a failure (the
/// checker's bound is separate and usually tighter).
pub const RECOVERY_WAIT_MAX: Duration = Duration::from_secs(60);
/// Pace of checking whether the backlog drained.
pub const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Server status queries at the end, at most (one per undelivered acknowledged message).
pub const STATUS_QUERIES_MAX: usize = 10_000;
/// Extra time allowed for workload tasks to finish after their last deadline.
pub const TASK_JOIN_SLACK: Duration = Duration::from_secs(15);

/// Everything a run can be told.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// `None`: a random seed (printed).
    pub seed: Option<u64>,
    /// How long senders send and the nemesis injects faults.
    pub duration: Duration,
    pub nodes: usize,
    pub senders: usize,
    pub recipients: usize,
    pub fault_interval: Duration,
    /// `None`: a temporary dir, removed when the run passes.
    pub run_dir: Option<PathBuf>,
    /// `None`: `<tmp>/pms-chaos-<run>-history.jsonl`.
    pub history: Option<PathBuf>,
    pub prefer_namespaces: bool,
    pub pmsd: Option<PathBuf>,
    pub pmsctl: Option<PathBuf>,
    pub send_interval: Duration,
    pub send_timeout: Duration,
    pub drain_timeout: Duration,
    pub recovery_bound: Duration,
    pub late_tolerance: Duration,
    pub short_validity_percent: u32,
    pub log_filter: String,
    /// Print progress lines to stderr.
    pub verbose: bool,
}

impl ChaosOptions {
    /// The standard run: 60 s of workload, a fault every ~10 s.
    pub fn standard() -> ChaosOptions {
        ChaosOptions {
            seed: None,
            duration: Duration::from_secs(60),
            nodes: 3,
            senders: 4,
            recipients: 6,
            fault_interval: Duration::from_secs(10),
            run_dir: None,
            history: None,
            prefer_namespaces: true,
            pmsd: None,
            pmsctl: None,
            send_interval: Duration::from_millis(200),
            send_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(60),
            recovery_bound: Duration::from_millis(RECOVERY_BOUND_MS_DEFAULT),
            late_tolerance: Duration::from_millis(LATE_TOLERANCE_MS_DEFAULT),
            short_validity_percent: 20,
            log_filter: "info".to_owned(),
            verbose: true,
        }
    }

    /// The CI form: 60 s of workload with a fault every ~6 s, fewer participants; about 2–3
    /// minutes of wall clock with startup, drain and shutdown.
    pub fn short() -> ChaosOptions {
        ChaosOptions {
            duration: Duration::from_secs(60),
            senders: 3,
            recipients: 4,
            fault_interval: Duration::from_secs(6),
            send_interval: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(45),
            ..ChaosOptions::standard()
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub report: Report,
    pub summary: String,
    pub history_path: PathBuf,
    pub run_dir: PathBuf,
    pub run_dir_kept: bool,
}

impl RunOutcome {
    pub fn passed(&self) -> bool {
        self.report.passed()
    }
}

fn progress(options: &ChaosOptions, text: &str) {
    if options.verbose {
        eprintln!("pms-chaos: {text}");
    }
}

/// Runs one chaos test. `Err` means the harness could not run (no binaries, the cluster never
/// became healthy, …); a run that found broken guarantees is `Ok` with a failed report.
pub async fn run(options: ChaosOptions) -> anyhow::Result<RunOutcome> {
    let started = Instant::now();
    let seed = options.seed.unwrap_or_else(rand::random);
    let run_id = random_hex(3);
    progress(&options, &format!("run {run_id} seed {seed}"));
    let pmsd = cluster::locate_binary("pmsd", options.pmsd.as_deref(), cluster::PMSD_ENV)?;
    let pmsctl = cluster::locate_binary("pmsctl", options.pmsctl.as_deref(), cluster::PMSCTL_ENV)?;
    let (run_dir, temp_dir) = match &options.run_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix(&format!("pms-chaos-{run_id}-"))
                .tempdir()
                .context("creating the run dir")?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let history_path = options
        .history
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("pms-chaos-{run_id}-history.jsonl")));
    let history = Arc::new(History::create(&history_path)?);
    progress(
        &options,
        &format!(
            "run dir {}, history {}",
            run_dir.display(),
            history_path.display()
        ),
    );
    let mut facts = RunFacts {
        run_id: run_id.clone(),
        seed,
        nodes: options.nodes,
        senders: options.senders,
        recipients: options.recipients,
        workload_secs: options.duration.as_secs_f64(),
        history_path: Some(history_path.clone()),
        ..RunFacts::default()
    };
    let cluster_config = ClusterConfig {
        nodes: options.nodes,
        run_dir: run_dir.clone(),
        pmsd,
        pmsctl,
        prefer_namespaces: options.prefer_namespaces,
        run_pid: std::process::id(),
        domain: DOMAIN.to_owned(),
        log_filter: options.log_filter.clone(),
    };
    let check_config = CheckConfig {
        late_tolerance_ms: u64::try_from(options.late_tolerance.as_millis()).unwrap_or(u64::MAX),
        recovery_bound_ms: u64::try_from(options.recovery_bound.as_millis()).unwrap_or(u64::MAX),
        deliveries_per_message_max: DELIVERIES_PER_MESSAGE_MAX,
    };
    let result = drive(
        &options,
        seed,
        &run_id,
        cluster_config,
        &history,
        &check_config,
        &mut facts,
    )
    .await;
    let events = history.snapshot();
    let mut report = checker::check(&events, &check_config);
    if history.truncated() {
        report.failures.push(format!(
            "history truncated at {} events: the checker saw a partial run",
            crate::history::HISTORY_EVENTS_MAX
        ));
    }
    if let Some(error) = history.write_error() {
        facts
            .notes
            .push(format!("history file write failed: {error}"));
    }
    facts.total_secs = Some(started.elapsed().as_secs_f64());
    let keep = result.is_err() || !report.passed();
    let run_dir_kept = match temp_dir {
        Some(temp) if keep => {
            let _ = temp.keep();
            true
        }
        Some(temp) => {
            drop(temp);
            false
        }
        None => true,
    };
    facts.run_dir = Some((run_dir.clone(), run_dir_kept));
    if let Err(error) = result {
        report
            .failures
            .push(format!("the harness could not complete the run: {error:#}"));
        let summary = summary::render(&facts, &report);
        return Err(error.context(summary));
    }
    let summary = summary::render(&facts, &report);
    Ok(RunOutcome {
        report,
        summary,
        history_path,
        run_dir,
        run_dir_kept,
    })
}

/// The phases of a run with a live cluster. The cluster is dropped (nodes killed, namespaces
/// removed) when this returns, whichever way.
async fn drive(
    options: &ChaosOptions,
    seed: u64,
    run_id: &str,
    cluster_config: ClusterConfig,
    history: &Arc<History>,
    check_config: &CheckConfig,
    facts: &mut RunFacts,
) -> anyhow::Result<()> {
    let mut cluster = Cluster::launch(cluster_config).await?;
    facts.mode = cluster.mode().name().to_owned();
    facts.notes.extend(cluster.notes().iter().cloned());
    for note in cluster.notes() {
        progress(options, note);
    }
    progress(
        options,
        &format!(
            "{} nodes started ({}); waiting until all are ready with an agreed leader",
            options.nodes,
            cluster.mode().name()
        ),
    );
    history.record(Event::RunStarted {
        at_ms: now_ms(),
        run_id: run_id.to_owned(),
        seed,
        mode: cluster.mode().name().to_owned(),
        nodes: options.nodes,
        senders: options.senders,
        recipients: options.recipients,
        duration_secs: options.duration.as_secs(),
        late_tolerance_ms: check_config.late_tolerance_ms,
        recovery_bound_ms: check_config.recovery_bound_ms,
    });
    let startup = Instant::now();
    let healthy = cluster.wait_healthy(startup + STARTUP_TIMEOUT).await;
    history.record(Event::Recovered {
        at_ms: now_ms(),
        fault_id: None,
        label: RECOVERY_LABEL_START.to_owned(),
        recovery_ms: healthy
            .as_ref()
            .ok()
            .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)),
        detail: healthy.as_ref().err().cloned().unwrap_or_default(),
    });
    if let Err(reason) = healthy {
        let mut tails = String::new();
        for node in cluster.node_ids() {
            tails.push_str(&format!(
                "\n--- last lines of node {node}'s log ---\n{}",
                cluster.log_tail(node)
            ));
        }
        anyhow::bail!(
            "the cluster did not become healthy within {STARTUP_TIMEOUT:?}: {reason}{tails}"
        );
    }
    progress(
        options,
        &format!(
            "cluster healthy after {:.1} s",
            startup.elapsed().as_secs_f64()
        ),
    );

    let provision_deadline = Instant::now() + PROVISION_TIMEOUT;
    let users = (1..=options.senders)
        .map(workload::sender_name)
        .chain((1..=options.recipients).map(workload::recipient_name));
    for user in users {
        cluster
            .provision_user(&user, ACCOUNT_PASSWORD, provision_deadline)
            .await?;
    }
    let tls = pms_crypto::client_config(&cluster.ca_file()).map_err(|error| {
        anyhow::anyhow!("TLS trust from {}: {error}", cluster.ca_file().display())
    })?;

    let end = Instant::now() + options.duration;
    progress(
        options,
        &format!(
            "workload and nemesis for {} s (fault every ~{} s)",
            options.duration.as_secs(),
            options.fault_interval.as_secs()
        ),
    );
    let mut harness_failures: Vec<String> = Vec::new();
    let mut workload = Workload::start(
        WorkloadConfig {
            run_id: run_id.to_owned(),
            seed,
            senders: options.senders,
            recipients: options.recipients,
            domain: DOMAIN.to_owned(),
            send_interval: options.send_interval,
            send_timeout: options.send_timeout,
            short_validity_percent: options.short_validity_percent,
            short_validity_secs: (5, 20),
            online_secs: (3, 12),
            // Longer than many short validities (5–20 s): some messages expire undelivered.
            offline_secs: (4, 25),
            end,
        },
        cluster.endpoints(),
        tls,
        Arc::clone(history),
    )?;
    let mut nemesis_summary = nemesis::run(
        &mut cluster,
        history,
        &NemesisConfig {
            seed,
            fault_interval: options.fault_interval,
            recovery_wait_max: RECOVERY_WAIT_MAX,
            end,
        },
    )
    .await;
    tokio::time::sleep_until(end).await;
    let senders_deadline = end
        + options.send_timeout * (SEND_ATTEMPTS_MAX + 1)
        + workload::CONNECT_TIMEOUT * 2
        + TASK_JOIN_SLACK;
    let joined = tokio::time::timeout_at(senders_deadline, async {
        while let Some(joined) = workload.senders.join_next().await {
            note_panic(joined, "sender", &mut harness_failures);
        }
    })
    .await;
    if joined.is_err() {
        facts
            .notes
            .push("some senders did not finish in time and were aborted".to_owned());
        workload.senders.abort_all();
    }
    progress(options, "workload over; final recovery check");
    for problem in cluster.heal_everything() {
        nemesis_summary.problems.push(problem);
    }
    nemesis::record_recovery(
        &mut cluster,
        history,
        None,
        RECOVERY_LABEL_FINAL,
        RECOVERY_WAIT_MAX,
        &mut nemesis_summary,
    )
    .await;

    progress(options, "draining: every recipient online");
    workload.set_phase(RecipientPhase::Drain);
    let drain_started = Instant::now();
    let drain_deadline = drain_started + options.drain_timeout;
    let pending = loop {
        nemesis::record_crashes(&mut cluster, history, &mut nemesis_summary);
        let now = now_ms();
        let pending = history
            .inspect(|events| {
                workload::acknowledged_undelivered(events, check_config.late_tolerance_ms)
            })
            .into_iter()
            .filter(|undelivered| {
                undelivered
                    .deadline_ms
                    .is_none_or(|deadline| deadline > now)
            })
            .count();
        if pending == 0 || Instant::now() >= drain_deadline {
            break pending;
        }
        tokio::time::sleep(DRAIN_POLL_INTERVAL).await;
    };
    history.record(Event::DrainFinished {
        at_ms: now_ms(),
        pending,
        drain_ms: u64::try_from(drain_started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    progress(
        options,
        &format!(
            "drain over after {:.1} s ({pending} pending); asking the server about undelivered messages",
            drain_started.elapsed().as_secs_f64()
        ),
    );
    let undelivered = history.inspect(|events| {
        workload::acknowledged_undelivered(events, check_config.late_tolerance_ms)
    });
    if undelivered.len() > STATUS_QUERIES_MAX {
        facts.notes.push(format!(
            "{} undelivered messages; only the first {STATUS_QUERIES_MAX} were looked up",
            undelivered.len()
        ));
    }
    for message in undelivered.into_iter().take(STATUS_QUERIES_MAX) {
        let (server_message_id, state) = match &message.server_message_id {
            Some(id) => (id.clone(), cluster.message_state(id).await),
            None => (String::new(), "no-server-id".to_owned()),
        };
        history.record(Event::StatusChecked {
            at_ms: now_ms(),
            body_id: message.body_id,
            server_message_id,
            state,
        });
    }
    workload.set_phase(RecipientPhase::Stop);
    let joined = tokio::time::timeout(REGISTER_JOIN_TIMEOUT, async {
        while let Some(joined) = workload.recipients.join_next().await {
            note_panic(joined, "recipient", &mut harness_failures);
        }
    })
    .await;
    if joined.is_err() {
        workload.recipients.abort_all();
    }
    nemesis::record_crashes(&mut cluster, history, &mut nemesis_summary);
    history.record(Event::RunFinished { at_ms: now_ms() });
    progress(options, "stopping the cluster");
    let stops = cluster.shutdown().await;
    for stop in stops {
        if !stop.contains("exited: exit status: 0") {
            facts.notes.push(format!("graceful stop: {stop}"));
        }
    }
    summarise_nemesis(&nemesis_summary, facts);
    anyhow::ensure!(
        harness_failures.is_empty(),
        "the harness itself failed: {}",
        harness_failures.join("; ")
    );
    Ok(())
}

/// Remembers a workload task that panicked (a harness bug: the history may miss events).
fn note_panic(
    joined: Result<(), tokio::task::JoinError>,
    role: &str,
    harness_failures: &mut Vec<String>,
) {
    if let Err(error) = joined
        && error.is_panic()
    {
        harness_failures.push(format!("a {role} task panicked: {error}"));
    }
}

/// Longest wait for recipients to notice `Stop` (one REGISTER in flight at most).
const REGISTER_JOIN_TIMEOUT: Duration = Duration::from_secs(15);

fn summarise_nemesis(summary: &NemesisSummary, facts: &mut RunFacts) {
    let kinds = summary
        .kinds
        .iter()
        .map(|kind| kind.name())
        .collect::<Vec<_>>()
        .join(", ");
    facts.notes.push(format!("fault kinds in play: {kinds}"));
    for problem in &summary.problems {
        facts.notes.push(format!("nemesis: {problem}"));
    }
}
