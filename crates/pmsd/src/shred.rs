//! Crypto-shredding on every node (guarantee 6). Removing an account deletes its wrapped data
//! key from the directory, but a delete is not yet gone: the key is still in the directory's
//! Raft log (inside the `ProvisionUser` entry), in its last snapshot, and in RocksDB's SST
//! files and WAL under a tombstone. This task watches this node's directory replica and, for
//! every `RemoveUser` it applies:
//!
//! 1. evicts the user's unwrapped key from the keyring at once (every node, not only the one
//!    that served the admin call);
//! 2. runs a shred pass: builds a directory snapshot (which no longer holds the account),
//!    purges the directory log up to it, and has the store rewrite its files without deleted
//!    or overwritten values (`Store::purge_deleted`).
//!
//! Master-key rotation (issue 9 item 8) rides on the same watch: `ChangeMasterKey` makes the
//! new key this node's active one, and every `RewrapUser` starts a pass like a removal (the old
//! wrapped key is in the log entry that provisioned the account, in snapshots and in the
//! files, and opens with the old master key).
//!
//! A replica that was away during a removal may never apply it: it installs a snapshot from
//! the leader instead, which replaces its old records (the removed account's among them) with
//! tombstones. A snapshot this task did not make therefore also starts a pass.
//!
//! Invariant: removals applied while a pass runs are covered by the next pass; passes never
//! overlap, and `pms_shred_pending` is 0 only once every applied removal is shredded here.
//! Invariant: the file `shred-pending` in the data dir exists from the moment a removal is
//! seen until a pass covering it finished, so a node stopped or killed in between shreds
//! when it starts again.
//! Invariant: a pass that fails (no snapshot yet, a leader still replicating the entries) is
//! retried after `SHRED_RETRY_INTERVAL`, so a removal is shredded within a bounded time once
//! the group is healthy: documented in docs/security.md.
//! Mailbox groups never held the key (their copy of the record carries none), so only the
//! directory is shredded; the ciphertext left in mailbox groups cannot be opened without it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pms_edge::keyring::Keyring;
use pms_mailbox::{Command, CommandResponse};
use pms_replication::Replication;
use pms_types::metrics::Metrics;
use pms_types::{GroupId, Keyspace};
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};

/// How long one pass waits for its snapshot and for its log purge.
pub const SHRED_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a failed pass the next one starts.
pub const SHRED_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Where a wrapped data key is stored: the account record, the directory's log entries, and
/// the stored snapshot (in the Raft metadata). Only these are compacted by a pass.
const SHREDDED_KEYSPACES: [Keyspace; 3] = [Keyspace::Users, Keyspace::RaftLog, Keyspace::RaftMeta];

/// The marker file (in the data dir) of removals not yet shredded on this node.
pub const SHRED_PENDING_FILE: &str = "shred-pending";

/// Watches the directory group of this node until it closes.
pub async fn shred_removed_accounts(
    replication: Arc<Replication>,
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
    marker: PathBuf,
) {
    let Some(directory) = replication.group(GroupId::DIRECTORY) else {
        return;
    };
    let mut events = directory.subscribe_applied();
    let mut pending: i64 = i64::from(marker.exists());
    metrics.shred_pending.set(pending);
    let mut snapshot = directory.snapshot_index();
    loop {
        // Wait for a removal or a snapshot this task did not make (one installed from the
        // leader replaces state that may still be in the files); with work pending, drain
        // what is already there, then run a pass over all of it.
        let event = if pending == 0 {
            tokio::select! {
                event = events.recv() => Some(event),
                changed = directory.snapshot_changed(snapshot) => {
                    snapshot = changed;
                    pending += 1;
                    metrics.shred_pending.set(pending);
                    mark_pending(&marker);
                    continue;
                }
            }
        } else {
            tokio::time::timeout(Duration::ZERO, events.recv())
                .await
                .ok()
        };
        match event {
            Some(Ok(event)) => {
                match (&*event.command, &event.response) {
                    (Command::RemoveUser { user }, CommandResponse::Done) => {
                        keyring.forget(user);
                        pending += 1;
                        metrics.shred_pending.set(pending);
                        mark_pending(&marker);
                        debug!(%user, "account removed: its key is shredded on the next pass");
                    }
                    (Command::RewrapUser { user, .. }, CommandResponse::Done) => {
                        pending += 1;
                        metrics.shred_pending.set(pending);
                        mark_pending(&marker);
                        debug!(%user, "account rewrapped: its old wrapped key is shredded on the next pass");
                    }
                    (Command::ChangeMasterKey { to, .. }, CommandResponse::Done) => {
                        if keyring.activate(to) {
                            info!(fingerprint = %to, "the cluster's master key changed: this node now wraps and seals with it");
                        } else {
                            warn!(fingerprint = %to, "the cluster's master key changed to one this node does not hold: restart it with that key as --master-key-file");
                        }
                    }
                    _ => {}
                }
                // Drain whatever else was applied before running a pass over all of it.
                continue;
            }
            Some(Err(RecvError::Lagged(missed))) => {
                // A missed entry may have been a removal: shred to be safe. The keyring cannot
                // tell which user was removed, so it is emptied; keys are unwrapped again.
                warn!(
                    missed,
                    "directory events missed: emptying the keyring and shredding"
                );
                keyring.clear();
                pending += 1;
                metrics.shred_pending.set(pending);
                mark_pending(&marker);
                continue;
            }
            Some(Err(RecvError::Closed)) => return,
            None => {}
        }
        let outcome = shred_pass(&replication).await;
        // The pass's own snapshot is not news.
        snapshot = directory.snapshot_index();
        match outcome {
            Ok(()) => {
                info!(
                    removals = pending,
                    "shred pass finished: removed accounts' keys are gone from this node's data dir"
                );
                pending = 0;
                metrics.shred_pending.set(0);
                if let Err(error) = std::fs::remove_file(&marker)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(%error, path = %marker.display(), "cannot remove the shred marker");
                }
                metrics.shred_passes_total.inc();
            }
            Err(error) => {
                warn!(%error, retry_in_secs = SHRED_RETRY_INTERVAL.as_secs(), "shred pass failed; retrying");
                tokio::time::sleep(SHRED_RETRY_INTERVAL).await;
            }
        }
    }
}

fn mark_pending(marker: &Path) {
    if let Err(error) = std::fs::write(marker, b"") {
        warn!(%error, path = %marker.display(), "cannot write the shred marker: a restart before the pass finishes will not resume it");
    }
}

async fn shred_pass(replication: &Replication) -> anyhow::Result<()> {
    let Some(directory) = replication.group(GroupId::DIRECTORY) else {
        return Ok(());
    };
    directory.snapshot_now(SHRED_STEP_TIMEOUT).await?;
    directory.purge_log_to_snapshot(SHRED_STEP_TIMEOUT).await?;
    let store = directory.store().clone();
    tokio::task::spawn_blocking(move || store.purge_deleted(&SHREDDED_KEYSPACES)).await??;
    Ok(())
}
