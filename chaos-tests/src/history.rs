//! The recorded history of a chaos run: every send, response, delivery, fault, heal and
//! recovery as one JSON object per line, in the order the harness observed them.
//!
//! The history is the only input of the checker (`checker::check` is a pure function over
//! `Vec<Event>`), so a run can be re-checked later from its file (`pms-chaos --check FILE`).
//!
//! Invariants:
//! - Invariant: the file and the in-memory list hold the same events in the same order; each line
//!   is flushed as it is written, so the file of a crashed run is complete up to the crash.
//! - Invariant: memory is bounded: at most [`HISTORY_EVENTS_MAX`] events are kept; past that the
//!   history is marked truncated and the checker fails the run rather than judge a partial view.
//! - Invariant: a write error never stops the run; the first one is kept and reported.

use std::fs::File;
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Most events kept (a 30-minute run with the default load records about 100 000).
pub const HISTORY_EVENTS_MAX: usize = 5_000_000;
/// Longest history line read back by [`read_history`].
pub const HISTORY_LINE_BYTES_MAX: usize = 64 * 1024;

/// [`Event::Recovered`] label of the first start of the cluster (reported, not bounded: a cold
/// start opens RocksDB and bootstraps Raft).
pub const RECOVERY_LABEL_START: &str = "start";
/// [`Event::Recovered`] label of the check after the nemesis stopped and every fault healed.
pub const RECOVERY_LABEL_FINAL: &str = "final";

/// Milliseconds since the Unix epoch by the harness's wall clock (all processes of a run share
/// this machine's clock, so send, delivery and server times are comparable).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// What the nemesis did to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the node that leads the (first) group; heal: start it again on the same data.
    KillLeader,
    /// SIGKILL a random node; heal: start it again.
    KillNode,
    /// Drop all traffic between a random node and the other nodes (not the harness); heal:
    /// flush the rules. Network-namespace mode only.
    PartitionNode,
    /// The same for the current leader.
    PartitionLeader,
    /// SIGSTOP a random node; heal: SIGCONT.
    PauseNode,
    /// SIGTERM a random node (graceful stop), keep it down, start it again.
    RestartNode,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::KillLeader,
        FaultKind::KillNode,
        FaultKind::PartitionNode,
        FaultKind::PartitionLeader,
        FaultKind::PauseNode,
        FaultKind::RestartNode,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillNode => "kill-node",
            FaultKind::PartitionNode => "partition-node",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PauseNode => "pause-node",
            FaultKind::RestartNode => "restart-node",
        }
    }

    /// Whether the fault is aimed at the current leader rather than a random node.
    pub fn targets_leader(self) -> bool {
        matches!(self, FaultKind::KillLeader | FaultKind::PartitionLeader)
    }

    /// Whether the fault needs per-node network namespaces.
    pub fn needs_network_namespaces(self) -> bool {
        matches!(self, FaultKind::PartitionNode | FaultKind::PartitionLeader)
    }
}

/// How one MESSAGE attempt ended, as the sender saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendOutcome {
    /// `200 OK` or `202 Accepted`: the server says the message is committed.
    Acknowledged,
    /// A final error response (the code is in the event). 408/500/503/504 leave the outcome
    /// unknown; other codes are definite refusals.
    Refused,
    /// No final response within the send timeout, or the connection dropped: the message may
    /// or may not have been stored.
    Unknown,
}

/// One observation. `at_ms` is [`now_ms`] when the harness observed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        at_ms: u64,
        run_id: String,
        seed: u64,
        /// `netns` or `loopback`.
        mode: String,
        nodes: usize,
        senders: usize,
        recipients: usize,
        duration_secs: u64,
        /// Checker bounds in force for this run (recorded so `--check` judges alike).
        late_tolerance_ms: u64,
        recovery_bound_ms: u64,
    },
    /// A sender wrote a MESSAGE (attempt 1) or its retry (attempt 2+) to a node.
    SendStarted {
        at_ms: u64,
        sender: String,
        recipient: String,
        /// `s<sender>-n<seq>`; unique per message within the run.
        body_id: String,
        /// The sender's sequence number of this message (1, 2, …).
        seq: u64,
        body: String,
        attempt: u32,
        node: u64,
        /// The MESSAGE's `Expires`, when it set one (else the server default applies).
        validity_secs: Option<u64>,
        call_id: String,
    },
    SendFinished {
        at_ms: u64,
        sender: String,
        body_id: String,
        attempt: u32,
        outcome: SendOutcome,
        /// The final SIP status, when there was one.
        code: Option<u16>,
        /// `X-PMS-Message-ID` of a 2xx.
        server_message_id: Option<String>,
        detail: String,
    },
    /// A recipient device received a MESSAGE (it answers 200 right after).
    Delivered {
        at_ms: u64,
        recipient: String,
        node: u64,
        body: String,
        /// Parsed from the body; `None` when the body is not one the harness sent.
        body_id: Option<String>,
        server_message_id: Option<String>,
        call_id: Option<String>,
    },
    FaultStarted {
        at_ms: u64,
        fault_id: u64,
        kind: FaultKind,
        node: u64,
        detail: String,
    },
    FaultHealed {
        at_ms: u64,
        fault_id: u64,
        kind: FaultKind,
        node: u64,
    },
    /// While a fault held the leader down, how long until the other nodes agreed on a new one.
    Failover {
        at_ms: u64,
        fault_id: u64,
        kind: FaultKind,
        new_leader: Option<u64>,
        /// `None`: no new leader before the fault healed.
        failover_ms: Option<u64>,
    },
    /// Every node answers `/readyz` 200 and all agree on a leader for every group.
    /// `label` is the fault kind's name after a heal, [`RECOVERY_LABEL_START`] after the cluster
    /// first started, [`RECOVERY_LABEL_FINAL`] after the nemesis stopped.
    Recovered {
        at_ms: u64,
        fault_id: Option<u64>,
        label: String,
        /// `None`: not recovered within the harness's wait limit.
        recovery_ms: Option<u64>,
        detail: String,
    },
    /// A node process exited without the nemesis asking it to (a crash).
    NodeExited {
        at_ms: u64,
        node: u64,
        status: String,
        /// The node's log file (its last lines tell why).
        #[serde(default)]
        log_path: String,
    },
    /// At the end of the run: the server's status of an acknowledged message that no recipient
    /// received, from the admin API (`enqueued`, `delivered`, `expired`, `failed`,
    /// `not-found`, `unavailable`).
    StatusChecked {
        at_ms: u64,
        body_id: String,
        server_message_id: String,
        state: String,
    },
    /// The drain phase ended: `pending` acknowledged messages were still undelivered.
    DrainFinished {
        at_ms: u64,
        pending: usize,
        drain_ms: u64,
    },
    /// A recipient device registered (`online: true`) or its connection ended.
    RecipientSession {
        at_ms: u64,
        recipient: String,
        node: u64,
        online: bool,
        /// Why the session ended (`period over`, the error, `stop`); empty when going online.
        detail: String,
    },
    RunFinished {
        at_ms: u64,
    },
}

/// The history of one run: the file being written and the same events in memory.
pub struct History {
    path: PathBuf,
    inner: Mutex<HistoryInner>,
}

struct HistoryInner {
    writer: BufWriter<File>,
    events: Vec<Event>,
    truncated: bool,
    write_error: Option<String>,
}

impl History {
    /// Creates (truncates) the history file.
    pub fn create(path: &Path) -> anyhow::Result<History> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = File::create(path)
            .with_context(|| format!("creating history file {}", path.display()))?;
        Ok(History {
            path: path.to_path_buf(),
            inner: Mutex::new(HistoryInner {
                writer: BufWriter::new(file),
                events: Vec::new(),
                truncated: false,
                write_error: None,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event to the file (flushed) and to memory.
    pub fn record(&self, event: Event) {
        let mut inner = match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        if inner.events.len() >= HISTORY_EVENTS_MAX {
            inner.truncated = true;
            return;
        }
        let written = serde_json::to_writer(&mut inner.writer, &event)
            .map_err(|error| error.to_string())
            .and_then(|()| {
                inner
                    .writer
                    .write_all(b"\n")
                    .and_then(|()| inner.writer.flush())
                    .map_err(|error| error.to_string())
            });
        if let Err(error) = written
            && inner.write_error.is_none()
        {
            inner.write_error = Some(error);
        }
        inner.events.push(event);
    }

    /// A copy of every event so far.
    pub fn snapshot(&self) -> Vec<Event> {
        match self.inner.lock() {
            Ok(inner) => inner.events.clone(),
            Err(poisoned) => poisoned.into_inner().events.clone(),
        }
    }

    /// Runs `inspect` over the events so far without copying them (the lock is held meanwhile,
    /// so `inspect` must not record).
    pub fn inspect<T>(&self, inspect: impl FnOnce(&[Event]) -> T) -> T {
        match self.inner.lock() {
            Ok(inner) => inspect(&inner.events),
            Err(poisoned) => inspect(&poisoned.into_inner().events),
        }
    }

    /// Whether events were dropped because [`HISTORY_EVENTS_MAX`] was reached.
    pub fn truncated(&self) -> bool {
        match self.inner.lock() {
            Ok(inner) => inner.truncated,
            Err(poisoned) => poisoned.into_inner().truncated,
        }
    }

    /// The first error writing the file, if any.
    pub fn write_error(&self) -> Option<String> {
        match self.inner.lock() {
            Ok(inner) => inner.write_error.clone(),
            Err(poisoned) => poisoned.into_inner().write_error.clone(),
        }
    }
}

/// Reads a history file back (for `pms-chaos --check FILE`). Lines that do not parse are an
/// error naming the line: a history is evidence and is not silently repaired.
pub fn read_history(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut events = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        anyhow::ensure!(
            line.len() <= HISTORY_LINE_BYTES_MAX,
            "{} line {}: longer than {HISTORY_LINE_BYTES_MAX} bytes",
            path.display(),
            index + 1
        );
        anyhow::ensure!(
            events.len() < HISTORY_EVENTS_MAX,
            "{}: more than {HISTORY_EVENTS_MAX} events",
            path.display()
        );
        let event = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), index + 1))?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        let history = History::create(&path).expect("create");
        let events = vec![
            Event::FaultStarted {
                at_ms: 1,
                fault_id: 1,
                kind: FaultKind::PartitionLeader,
                node: 2,
                detail: String::new(),
            },
            Event::Delivered {
                at_ms: 2,
                recipient: "r1".into(),
                node: 1,
                body: "chaos x s1 n1 😀".into(),
                body_id: Some("s1-n1".into()),
                server_message_id: Some("abc".into()),
                call_id: None,
            },
        ];
        for event in &events {
            history.record(event.clone());
        }
        assert_eq!(history.snapshot(), events);
        assert_eq!(read_history(&path).expect("read"), events);
        let text = std::fs::read_to_string(&path).expect("read text");
        assert!(text.contains("\"event\":\"fault_started\""), "{text}");
        assert!(text.contains("\"kind\":\"partition-leader\""), "{text}");
    }
}
