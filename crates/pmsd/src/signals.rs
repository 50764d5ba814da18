//! The operator's signals: SIGTERM and SIGINT ask the node to stop cleanly, SIGHUP asks it to
//! reload its certificates. [`install`] runs first thing in `main`, before the node opens
//! anything, and turns each signal into state that every later wait observes.
//!
//! Invariant: from [`install`] on, no signal takes its default action (SIGTERM, SIGINT and
//! SIGHUP would otherwise kill the process abruptly, without flushing RocksDB).
//! Invariant: a stop request is never lost: it is a level ([`StopRequested::is_requested`]
//! stays true), not an event, so a signal that arrives between two waits is seen by the next
//! one. Reload requests coalesce: several SIGHUPs before the reload runs cause one reload.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};
use tracing::info;

/// Whether the operator asked the node to stop (SIGTERM or SIGINT). Cheap to clone.
#[derive(Clone, Debug)]
pub struct StopRequested(watch::Receiver<bool>);

impl StopRequested {
    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once a stop is requested (at once if it already was).
    pub async fn requested(&self) {
        let mut receiver = self.0.clone();
        // An error means the signal task ended, which it never does while the runtime runs:
        // then nobody can request a stop any more, so wait forever like an unsignalled node.
        if receiver.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `step` to completion unless a stop is requested first: `None` means stop now.
    pub async fn unless_requested<T>(&self, step: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            // A step that finished is used even if a stop came at the same moment.
            biased;
            output = step => Some(output),
            () = self.requested() => None,
        }
    }
}

/// The SIGHUPs not handled yet (coalesced into one).
#[derive(Clone, Debug)]
pub struct ReloadRequested(Arc<Notify>);

impl ReloadRequested {
    /// Returns at the next SIGHUP, or at once for one that came while nobody waited.
    pub async fn requested(&self) {
        self.0.notified().await;
    }
}

/// Installs the handlers and starts the task that turns signals into requests. Must run
/// inside the tokio runtime.
///
/// # Errors
/// When a handler cannot be installed (the process could not then stop cleanly).
pub fn install() -> anyhow::Result<(StopRequested, ReloadRequested)> {
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    let (stop_sender, stop) = watch::channel(false);
    let reload = Arc::new(Notify::new());
    let reload_sender = reload.clone();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = terminate.recv() => "SIGTERM",
                Some(()) = interrupt.recv() => "SIGINT",
                Some(()) = hangup.recv() => {
                    info!("SIGHUP received: reloading certificates");
                    reload_sender.notify_one();
                    continue;
                }
                else => break,
            };
            if *stop_sender.borrow() {
                info!(signal = name, "{name} received: already stopping");
            } else {
                info!(signal = name, "{name} received: stopping cleanly");
                stop_sender.send_replace(true);
            }
        }
    });
    Ok((StopRequested(stop), ReloadRequested(reload)))
}
