//! `pms-chaos`: runs the chaos test against real `pmsd` processes and prints a one-screen
//! summary (see `docs/chaos.md`), or re-checks a recorded history with `--check FILE`.
//!
//! Invariants: exit code 0 when every guarantee held, 1 when the checker found a broken
//! guarantee, 2 when the harness itself could not run, 130 on Ctrl-C (after the cluster and
//! its network namespaces were torn down: dropping the run future drops them).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pms_chaos::checker::{self, CheckConfig};
use pms_chaos::history::read_history;
use pms_chaos::summary::{self, RunFacts};
use pms_chaos::{ChaosOptions, run};

const EXIT_FAILED: u8 = 1;
const EXIT_HARNESS_ERROR: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "pms-chaos",
    version,
    about = "Jepsen-style chaos test for a PMS cluster: real processes, real faults, a recorded history and a checker"
)]
struct Cli {
    /// Seed of the fault schedule and workload choices [default: random, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of workload with faults [default: 60].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// The CI form: 60 s of workload, a fault every ~6 s, about 2–3 minutes in all.
    #[arg(long)]
    short: bool,
    /// Number of pmsd nodes (1 is supported: faults then hit the only node).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Sending users [default: 4, short: 3].
    #[arg(long)]
    senders: Option<usize>,
    /// Receiving users [default: 6, short: 4].
    #[arg(long)]
    recipients: Option<usize>,
    /// Mean seconds between fault starts [default: 10, short: 6].
    #[arg(long, value_name = "SECS")]
    fault_interval: Option<u64>,
    /// Directory for node data, logs and certificates [default: a temp dir, kept on failure].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// History file (JSON lines) [default: $TMPDIR/pms-chaos-<run>-history.jsonl].
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Use loopback addresses even as root (no partitions).
    #[arg(long)]
    no_netns: bool,
    /// The pmsd binary [default: next to this executable; env PMS_CHAOS_PMSD].
    #[arg(long, value_name = "PATH")]
    pmsd: Option<PathBuf>,
    /// The pmsctl binary [default: next to this executable; env PMS_CHAOS_PMSCTL].
    #[arg(long, value_name = "PATH")]
    pmsctl: Option<PathBuf>,
    /// Longest acceptable recovery after a heal, milliseconds [default: 10000].
    #[arg(long, value_name = "MS")]
    recovery_bound_ms: Option<u64>,
    /// Longest wait for the backlog to drain at the end, seconds [default: 60, short: 45].
    #[arg(long, value_name = "SECS")]
    drain_timeout: Option<u64>,
    /// Log filter of the nodes (`--log` of pmsd).
    #[arg(long, default_value = "info")]
    log: String,
    /// Do not run: check an existing history file and print its summary.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

impl Cli {
    fn options(&self) -> ChaosOptions {
        let mut options = if self.short {
            ChaosOptions::short()
        } else {
            ChaosOptions::standard()
        };
        options.seed = self.seed;
        options.nodes = self.nodes;
        if let Some(secs) = self.duration {
            options.duration = Duration::from_secs(secs);
        }
        if let Some(senders) = self.senders {
            options.senders = senders;
        }
        if let Some(recipients) = self.recipients {
            options.recipients = recipients;
        }
        if let Some(secs) = self.fault_interval {
            options.fault_interval = Duration::from_secs(secs.max(1));
        }
        if let Some(ms) = self.recovery_bound_ms {
            options.recovery_bound = Duration::from_millis(ms);
        }
        if let Some(secs) = self.drain_timeout {
            options.drain_timeout = Duration::from_secs(secs);
        }
        options.run_dir.clone_from(&self.run_dir);
        options.history.clone_from(&self.history);
        options.prefer_namespaces = !self.no_netns;
        options.pmsd.clone_from(&self.pmsd);
        options.pmsctl.clone_from(&self.pmsctl);
        options.log_filter.clone_from(&self.log);
        options
    }
}

fn check_file(path: &Path) -> ExitCode {
    let events = match read_history(path) {
        Ok(events) => events,
        Err(error) => {
            eprintln!("pms-chaos: {error:#}");
            return ExitCode::from(EXIT_HARNESS_ERROR);
        }
    };
    let report = checker::check(&events, &CheckConfig::from_history(&events));
    let mut facts = RunFacts::from_history(&events);
    facts.history_path = Some(path.to_path_buf());
    print!("{}", summary::render(&facts, &report));
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = &cli.check {
        return check_file(path);
    }
    let options = cli.options();
    tokio::select! {
        outcome = run(options) => match outcome {
            Ok(outcome) => {
                print!("{}", outcome.summary);
                if outcome.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_FAILED)
                }
            }
            Err(error) => {
                eprintln!("pms-chaos: the run could not complete: {error:#}");
                ExitCode::from(EXIT_HARNESS_ERROR)
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("pms-chaos: interrupted; the cluster and its network were torn down");
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}
