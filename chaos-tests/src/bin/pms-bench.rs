//! `pms-bench`: measures a real PMS cluster's MESSAGE throughput and latency (offline store →
//! 202, online relay → 200) and the CPU it spends per message, prints a summary table and
//! writes the full result as JSON (`--out`). See `docs/benchmarks.md`.
//!
//! Invariants: exit code 0 when every step ran (whatever the numbers), 2 when the benchmark
//! itself could not run, 130 on Ctrl-C (the cluster is killed when the run future is dropped).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pms_chaos::bench::{self, BenchOptions, Load, Scenario, SipTransport};
use pms_chaos::cluster::{PMSCTL_ENV, PMSD_ENV, locate_binary};

const EXIT_ERROR: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "pms-bench",
    version,
    about = "MESSAGE throughput and latency of a real PMS cluster (offline store → 202, online relay → 200)"
)]
struct Cli {
    /// Number of pmsd nodes (every Raft group is replicated on all of them).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Sending connections (one account and one persistent connection each, spread over the
    /// nodes).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Closed loop: requests each connection keeps outstanding; a list runs one step each
    /// [default: 1].
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    window: Vec<usize>,
    /// Open loop: total MESSAGEs per second over all connections; a list runs one step each.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Scenarios to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "offline,online"
    )]
    scenario: Vec<Scenario>,
    /// Measured seconds per step (after the warm-up).
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    duration: f64,
    /// Warm-up seconds per step (connect, authenticate, fill the pipeline; not measured).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    warmup: f64,
    /// A request without a final answer after this long counts as a timeout.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    /// Offline recipients (accounts that never register).
    #[arg(long, default_value_t = 2_000)]
    recipients: usize,
    /// Online recipients (each one registered device connection).
    #[arg(long, default_value_t = 500)]
    online_recipients: usize,
    /// SIP transport of every connection (Debian's SIPp, used by the Kamailio baseline, has
    /// no TLS: `tcp` compares with its TCP series).
    #[arg(long, value_enum, default_value = "tls")]
    transport: SipTransport,
    /// Write the full result as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The pmsd binary [default: $PMS_CHAOS_PMSD, else next to this executable].
    #[arg(long, value_name = "PATH")]
    pmsd: Option<PathBuf>,
    /// The pmsctl binary (makes the certificates) [default: $PMS_CHAOS_PMSCTL, else next to
    /// this executable].
    #[arg(long, value_name = "PATH")]
    pmsctl: Option<PathBuf>,
    /// Directory for node data, logs and certificates, kept afterwards [default: a temporary
    /// dir, removed at the end].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// `--log` filter of every node.
    #[arg(long, default_value = "info")]
    log: String,
    /// Before each step wait until other processes use at most this share of the machine (%).
    #[arg(long, value_name = "PERCENT", default_value_t = 15.0)]
    quiet_below: f64,
    /// Longest wait for a quiet machine before each step (0: do not wait).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    quiet_wait: f64,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{flag} {value} is not a duration"))
}

fn options(cli: &Cli, run_dir: PathBuf) -> anyhow::Result<BenchOptions> {
    let loads = if cli.rate.is_empty() {
        let windows = if cli.window.is_empty() {
            vec![1]
        } else {
            cli.window.clone()
        };
        windows
            .into_iter()
            .map(|window| Load::ClosedLoop { window })
            .collect()
    } else {
        cli.rate
            .iter()
            .map(|rate_per_sec| Load::OpenLoop {
                rate_per_sec: *rate_per_sec,
            })
            .collect()
    };
    Ok(BenchOptions {
        nodes: cli.nodes,
        connections: cli.connections,
        loads,
        scenarios: cli.scenario.clone(),
        warmup: seconds(cli.warmup, "warmup")?,
        duration: seconds(cli.duration, "duration")?,
        timeout: seconds(cli.timeout, "timeout")?,
        offline_recipients: cli.recipients,
        online_recipients: cli.online_recipients,
        transport: cli.transport,
        pmsd: locate_binary("pmsd", cli.pmsd.as_deref(), PMSD_ENV)?,
        pmsctl: locate_binary("pmsctl", cli.pmsctl.as_deref(), PMSCTL_ENV)?,
        run_dir,
        log_filter: cli.log.clone(),
        domain: "localhost".to_owned(),
        command_line: std::env::args().collect(),
        quiet_below_percent: cli.quiet_below,
        quiet_wait: seconds(cli.quiet_wait, "quiet-wait")?,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The temporary dir (when no --run-dir) lives until the end of this function.
    let (run_dir, _temporary) = match &cli.run_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("pms-bench-")
                .tempdir()
                .context("creating a temporary run dir")?;
            (temporary.path().to_path_buf(), Some(temporary))
        }
    };
    let options = options(&cli, run_dir)?;
    let progress = |line: &str| eprintln!("pms-bench: {line}");
    let report = bench::run(options, &progress).await?;
    println!("{}", bench::render_summary(&report));
    if let Some(out) = &cli.out {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(out, json + "\n").with_context(|| format!("writing {}", out.display()))?;
        eprintln!("pms-bench: wrote {}", out.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tokio::select! {
        result = run(cli) => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("pms-bench: {error:#}");
                ExitCode::from(EXIT_ERROR)
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("pms-bench: interrupted; the cluster is stopped");
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}
