//! Bounded state: dedup entries and final message statuses are kept for a documented time
//! (`--dedup-retention-secs` after the message's expiry, `--status-retention-secs` after the
//! final status), then forgotten. Every `--prune-interval-secs`, this node proposes `Prune` to
//! each mailbox group it leads, stamped with the leader's clock like every other command.
//!
//! Invariant: a prune removes at most `APPLY_BATCH_MAX` entries of each kind per command;
//! while one answers `more`, the next is proposed at once, so pruning keeps up with any load
//! the groups can commit.

use std::sync::Arc;
use std::time::Duration;

use pms_mailbox::{Command, CommandResponse, MailboxService};
use pms_replication::Replication;
use pms_types::{Clock, GroupId};
use tracing::{debug, warn};

/// What the schedule keeps and how often it runs.
#[derive(Clone, Copy, Debug)]
pub struct PruneSchedule {
    pub interval: Duration,
    pub dedup_retention: Duration,
    pub status_retention: Duration,
}

/// Runs until the process ends.
pub async fn prune_on_schedule(
    replication: Arc<Replication>,
    mailboxes: Arc<dyn MailboxService>,
    clock: Arc<dyn Clock>,
    schedule: PruneSchedule,
) {
    let mut interval = tokio::time::interval(schedule.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    loop {
        interval.tick().await;
        let led: Vec<GroupId> = replication
            .groups()
            .filter(|group| group.id() != GroupId::DIRECTORY && group.is_leader())
            .map(|group| group.id())
            .collect();
        for group in led {
            loop {
                let command = Command::Prune {
                    now: clock.now(),
                    dedup_retention_ms: millis(schedule.dedup_retention),
                    status_retention_ms: millis(schedule.status_retention),
                };
                match mailboxes.propose(group, command).await {
                    Ok(CommandResponse::Pruned {
                        dedup_entries,
                        statuses,
                        more,
                    }) => {
                        if dedup_entries + statuses > 0 {
                            debug!(%group, dedup_entries, statuses, "pruned");
                        }
                        if !more {
                            break;
                        }
                    }
                    Ok(other) => {
                        warn!(%group, ?other, "unexpected answer to Prune");
                        break;
                    }
                    Err(error) => {
                        debug!(%group, %error, "prune not committed; the next interval retries");
                        break;
                    }
                }
            }
        }
    }
}
