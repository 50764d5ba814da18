//! `pmsd`: one PMS node. With no arguments it runs a single-node cluster on development
//! defaults (see `config`); `node` wires the layers together.
//!
//! Invariant: `anyhow` lives only here, in the binary; library crates return their own errors.

mod backends;
mod certificates;
mod cluster;
mod config;
mod http;
mod identity;
mod node;
mod node_metrics;
mod prune;
mod shred;
mod signals;
mod telemetry;

use std::process::ExitCode;

/// Mode bits no file or directory `pmsd` creates may have: nothing for group or others. RocksDB,
/// the certs dir and the master key are all created by this process (guarantee 6: an account on
/// the host cannot read the data dir).
const UMASK: u32 = 0o077;

fn main() -> ExitCode {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(UMASK));
    let config = match config::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("pmsd: {error:#}");
            return ExitCode::from(2);
        }
    };
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("pmsd-worker")
            .build()
            // Invariant: without a runtime the node cannot start at all; this is startup, not input.
            .expect("building the tokio runtime")
    });
    let result = system.block_on(async move {
        // First thing: from here on SIGTERM, SIGINT and SIGHUP never kill the process abruptly.
        let (stop, reload) = signals::install()?;
        let mut telemetry = telemetry::init(&config.log, config.log_format, config.node_id.0)?;
        tracing::info!(otlp_export = telemetry.is_exporting(), "telemetry ready");
        let result = node::run(config, stop, reload).await;
        if let Err(error) = &result {
            tracing::error!("{error:#}");
        }
        if let Err(error) = telemetry.shutdown() {
            eprintln!("pmsd: flushing telemetry: {error:#}");
        }
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pmsd: {error:#}");
            ExitCode::FAILURE
        }
    }
}
