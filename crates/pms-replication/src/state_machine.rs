//! [`StateMachine`]: openraft's `RaftStateMachine` for ONE group over a shared [`Store`].
//!
//! Applying an entry runs `pms_mailbox::apply` against the stored state and writes its
//! mutations together with `last_applied` (and the membership, for a membership entry) in one
//! atomic batch; then it answers the proposer and broadcasts an [`AppliedEvent`].
//!
//! Invariant: state and `last_applied` change together, so after any crash the state is that
//! of exactly the entries up to `last_applied` (openraft re-applies the rest from the log).
//! Invariant: an entry that cannot be applied (`ApplyError`, an entry of another group, a
//! mutation outside the group) stops the group with a storage error; it is never skipped,
//! because a skipped entry would make this replica diverge.
//! Invariant: state-machine writes are not synced: the log is, and the WAL is ordered.
//! Invariant: snapshots are captured on the state machine task (see `try_create_snapshot_builder`),
//! so no entry is applied while the state is read.

use crate::ReplicationError;
use crate::format::RaftValue;
use crate::keys::{self, META_LAST_APPLIED, META_MEMBERSHIP, META_SNAPSHOT};
/// The current snapshot as stored under `META_SNAPSHOT` (defined with the snapshot format).
pub(crate) use crate::snapshot::StoredSnapshot;
use crate::snapshot::{self, SnapshotBlob};
use crate::types::{LogCommand, SnapshotData, TypeConfig};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use pms_mailbox::{Command, CommandResponse};
use pms_storage::{Store, WriteOp};
use pms_types::{GroupId, Keyspace, Mutation, StateRead, StorageFault};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;

type LogId = LogIdOf<TypeConfig>;
type StoredMembership = StoredMembershipOf<TypeConfig>;
type SnapshotMeta = SnapshotMetaOf<TypeConfig>;
type Snapshot = SnapshotOf<TypeConfig, SnapshotData>;

/// Sent after each normal entry is applied on this node. Sent on a bounded broadcast channel:
/// a receiver that lags misses events (it gets `RecvError::Lagged`) and must re-read the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedEvent {
    pub group: GroupId,
    pub index: u64,
    pub command: Arc<Command>,
    pub response: CommandResponse,
}

/// Reads a `dyn Store` through [`StateRead`] (`pms_mailbox::apply` takes a sized reader).
struct StoreReader<'a>(&'a dyn Store);

impl StateRead for StoreReader<'_> {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault> {
        self.0.get(keyspace, key)
    }

    fn scan_prefix(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<pms_storage::KeyValues, StorageFault> {
        self.0.scan_prefix(keyspace, prefix, start, limit)
    }
}

/// What applying one payload produced: the write batch, the response and, for a normal entry,
/// the command to announce.
type PayloadApplied = (Vec<WriteOp>, CommandResponse, Option<Arc<Command>>);

/// Messages an entry's writes queued and removed: puts and deletes of [`Keyspace::Messages`].
fn queued_changes(ops: &[WriteOp]) -> (u64, u64) {
    ops.iter().fold((0, 0), |(added, removed), op| match op {
        WriteOp::Put {
            keyspace: Keyspace::Messages,
            ..
        } => (added + 1, removed),
        WriteOp::Delete {
            keyspace: Keyspace::Messages,
            ..
        } => (added, removed + 1),
        _ => (added, removed),
    })
}

/// Whether a snapshot was built from this node's state or installed from the leader's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    Built,
    Installed,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Built => "built",
            SnapshotKind::Installed => "installed",
        }
    }
}

/// Receives every snapshot a group built or installed, with how long it took.
pub type SnapshotObserver = Arc<dyn Fn(GroupId, SnapshotKind, std::time::Duration) + Send + Sync>;
/// The observer cell a [`Group`](crate::Group) shares with its state machine.
pub(crate) type SharedSnapshotObserver = Arc<std::sync::RwLock<Option<SnapshotObserver>>>;

/// The state machine of one group.
pub struct StateMachine {
    group: GroupId,
    store: Arc<dyn Store>,
    events: broadcast::Sender<AppliedEvent>,
    snapshot_observer: SharedSnapshotObserver,
    /// Messages queued in this replica of the group: counted once when the state machine is
    /// made, then moved by each applied entry's puts and deletes of queued messages (a put is
    /// always a new message, a delete always one that was there), recounted after a snapshot
    /// is installed.
    queued: Arc<AtomicU64>,
    /// Dropped with the state machine: lets `Group::shutdown` wait until openraft let go of it.
    _alive: Option<tokio::sync::mpsc::Sender<()>>,
}

impl StateMachine {
    pub fn new(
        group: GroupId,
        store: Arc<dyn Store>,
        events: broadcast::Sender<AppliedEvent>,
    ) -> Self {
        StateMachine {
            group,
            store,
            events,
            snapshot_observer: SharedSnapshotObserver::default(),
            queued: Arc::new(AtomicU64::new(0)),
            _alive: None,
        }
    }

    /// Counts the messages this replica holds and keeps `queued` up to date from then on.
    pub(crate) fn with_queue_count(
        mut self,
        queued: Arc<AtomicU64>,
    ) -> Result<Self, ReplicationError> {
        self.queued = queued;
        self.recount_queue()?;
        Ok(self)
    }

    fn recount_queue(&self) -> Result<(), ReplicationError> {
        let queued = pms_mailbox::query::queue_depth(&StoreReader(self.store.as_ref()), self.group)
            .map_err(|error| self.storage_error(error))?;
        self.queued.store(queued, Ordering::Relaxed);
        Ok(())
    }

    /// Reports each snapshot built or installed to whatever `observer` holds at the time.
    pub(crate) fn with_snapshot_observer(mut self, observer: SharedSnapshotObserver) -> Self {
        self.snapshot_observer = observer;
        self
    }

    fn observe_snapshot(&self, kind: SnapshotKind, started: std::time::Instant) {
        let observer = self
            .snapshot_observer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            observer(self.group, kind, started.elapsed());
        }
    }

    pub(crate) fn with_liveness(mut self, alive: tokio::sync::mpsc::Sender<()>) -> Self {
        self._alive = Some(alive);
        self
    }

    fn storage_error(&self, detail: impl ToString) -> ReplicationError {
        ReplicationError::Storage {
            group: self.group,
            detail: detail.to_string(),
        }
    }

    fn get_meta<T: RaftValue>(&self, name: &[u8]) -> Result<Option<T>, ReplicationError> {
        keys::read_meta(self.store.as_ref(), self.group, name)
    }

    fn meta_op<T: RaftValue>(&self, name: &[u8], value: &T) -> Result<WriteOp, ReplicationError> {
        Ok(WriteOp::Put {
            keyspace: Keyspace::RaftMeta,
            key: keys::meta_key(self.group, name),
            value: keys::encode(self.group, value)?,
        })
    }

    /// The last applied log id and membership, as stored.
    pub fn read_applied_state(
        &self,
    ) -> Result<(Option<LogId>, StoredMembership), ReplicationError> {
        let last_applied: Option<Option<LogId>> = self.get_meta(META_LAST_APPLIED)?;
        let membership: Option<StoredMembership> = self.get_meta(META_MEMBERSHIP)?;
        Ok((last_applied.flatten(), membership.unwrap_or_default()))
    }

    /// Applies one entry's payload: the write batch, the response and the event command.
    fn apply_payload(
        &self,
        log_id: &LogId,
        payload: EntryPayload<LogCommand, u64, openraft::BasicNode>,
    ) -> Result<PayloadApplied, ReplicationError> {
        let index = log_id.index();
        match payload {
            EntryPayload::Blank => Ok((Vec::new(), CommandResponse::Done, None)),
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(*log_id), membership);
                Ok((
                    vec![self.meta_op(META_MEMBERSHIP, &stored)?],
                    CommandResponse::Done,
                    None,
                ))
            }
            EntryPayload::Normal(LogCommand(group_command)) => {
                if group_command.group != self.group {
                    return Err(ReplicationError::CorruptRaftData {
                        group: self.group,
                        detail: format!(
                            "log index {index} holds a command of group {}",
                            group_command.group
                        ),
                    });
                }
                let applied = pms_mailbox::apply(
                    &StoreReader(self.store.as_ref()),
                    self.group,
                    &group_command.command,
                )
                .map_err(|error| ReplicationError::Apply {
                    group: self.group,
                    index,
                    detail: error.to_string(),
                })?;
                let prefix = self.group.key_prefix();
                let mut ops = Vec::with_capacity(applied.mutations.len() + 1);
                for mutation in applied.mutations {
                    let (Mutation::Put { keyspace, key, .. } | Mutation::Delete { keyspace, key }) =
                        &mutation;
                    // Invariant: apply touches only this group's state keyspaces.
                    if !key.starts_with(&prefix) || !Keyspace::STATE.contains(keyspace) {
                        return Err(ReplicationError::Apply {
                            group: self.group,
                            index,
                            detail: format!(
                                "mutation outside the group's state: {} {key:?}",
                                keyspace.name()
                            ),
                        });
                    }
                    ops.push(WriteOp::from(mutation));
                }
                Ok((ops, applied.response, Some(Arc::new(group_command.command))))
            }
        }
    }

    /// Captures the current state as a snapshot and stores it as the current snapshot.
    fn capture_snapshot(&self) -> Result<Snapshot, ReplicationError> {
        let (last_log_id, last_membership) = self.read_applied_state()?;
        let blob = snapshot::capture(self.store.as_ref(), self.group)?;
        let data = keys::encode(self.group, &blob)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let op = self.meta_op(META_SNAPSHOT, &stored)?;
        self.store
            .write_ops(&[op], false)
            .map_err(|error| self.storage_error(error))?;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData::new(stored.data),
        })
    }

    fn snapshot_builder(&self) -> SnapshotBuilder {
        let started = std::time::Instant::now();
        let prepared = self.capture_snapshot();
        match &prepared {
            Ok(_) => self.observe_snapshot(SnapshotKind::Built, started),
            Err(error) => {
                tracing::error!(group = %self.group, %error, "capturing a snapshot failed")
            }
        }
        SnapshotBuilder {
            prepared: Some(prepared),
        }
    }
}

/// Hands out a snapshot captured on the state machine task (building is just handing over).
pub struct SnapshotBuilder {
    prepared: Option<Result<Snapshot, ReplicationError>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        match self.prepared.take() {
            Some(result) => result.map_err(ReplicationError::into_io),
            None => Err(io::Error::other("snapshot builder used twice")),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.read_applied_state().map_err(ReplicationError::into_io)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id;
            let (mut ops, response, command) = self.apply_payload(&log_id, entry.payload).map_err(|error| {
                tracing::error!(group = %self.group, index = log_id.index(), %error, "apply failed; stopping the group");
                error.into_io()
            })?;
            ops.push(
                self.meta_op(META_LAST_APPLIED, &Some(log_id))
                    .map_err(ReplicationError::into_io)?,
            );
            self.store
                .write_ops(&ops, false)
                .map_err(|error| self.storage_error(error).into_io())?;
            let (added, removed) = queued_changes(&ops);
            self.queued.fetch_add(added, Ordering::Relaxed);
            self.queued.fetch_sub(removed, Ordering::Relaxed);

            if let Some(command) = command {
                // No receiver is fine: events are a notification, not a queue.
                let _ = self.events.send(AppliedEvent {
                    group: self.group,
                    index: log_id.index(),
                    command,
                    response: response.clone(),
                });
            }
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.snapshot_builder())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_builder()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let started = std::time::Instant::now();
        let data = snapshot.into_inner();
        let blob: SnapshotBlob =
            keys::decode(self.group, &data).map_err(ReplicationError::into_io)?;
        let mut ops = snapshot::install_ops(self.group, blob).map_err(ReplicationError::into_io)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let meta_ops = [
            self.meta_op(META_LAST_APPLIED, &meta.last_log_id),
            self.meta_op(META_MEMBERSHIP, &meta.last_membership),
            self.meta_op(META_SNAPSHOT, &stored),
        ];
        for op in meta_ops {
            ops.push(op.map_err(ReplicationError::into_io)?);
        }
        // Synced: openraft purges the log behind an installed snapshot.
        let store = Arc::clone(&self.store);
        let group = self.group;
        tokio::task::spawn_blocking(move || store.write_ops(&ops, true))
            .await
            .map_err(|join| {
                ReplicationError::Storage {
                    group,
                    detail: join.to_string(),
                }
                .into_io()
            })?
            .map_err(|error| self.storage_error(error).into_io())?;
        self.recount_queue().map_err(ReplicationError::into_io)?;
        self.observe_snapshot(SnapshotKind::Installed, started);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let stored: Option<StoredSnapshot> = self
            .get_meta(META_SNAPSHOT)
            .map_err(ReplicationError::into_io)?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: SnapshotData::new(stored.data),
        }))
    }
}
