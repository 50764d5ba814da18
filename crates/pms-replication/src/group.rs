//! [`Group`]: one running Raft group on this node — its log store, state machine and openraft
//! instance — and the operations the rest of PMS needs: bootstrap, propose, leadership, reads,
//! applied-entry notifications and shutdown.
//!
//! Invariant: `propose` returns `Ok` only after the command is committed by a majority AND
//! applied on this node, so a read of [`Group::read`] right after sees its effects.
//! Invariant: a propose that times out or loses its leader reports an *unknown* outcome
//! ([`ReplicationError::outcome_unknown`]), never a failure: the entry may still commit.
//! Invariant: openraft types appear in this API only where a network plugs in (the factory
//! bound of [`Group::open`], and [`Group::raft`] for the RPC server), through
//! [`crate::raft_api`]; callers see PMS types and [`ReplicationError`].

use crate::ReplicationError;
use crate::log_store::LogStore;
use crate::state_machine::{AppliedEvent, SharedSnapshotObserver, SnapshotObserver, StateMachine};
use crate::types::{LogCommand, SnapshotData, TypeConfig};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, Fatal, InitializeError, LinearizableReadError, RaftError};
use openraft::network::{NetSnapshot, RaftNetworkFactory};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use pms_mailbox::{Command, CommandResponse, GroupCommand};
use pms_storage::Store;
use pms_types::{GroupId, StateRead};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Receives the commit latency of every successful propose: the time from `propose` being
/// called to the command being committed and applied on this node.
pub type CommitLatencyObserver = Arc<dyn Fn(GroupId, Duration) + Send + Sync>;

/// How long `Group::shutdown` waits for openraft's tasks to release the storage.
pub const SHUTDOWN_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// The Raft handle type of a group.
type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Tunables of a group. Times in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is built after this many entries were applied since the last one. Generous,
    /// because of openraft#2116 (panic when snapshots purge logs under heavy write load).
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot, so lagging followers catch up from the log.
    pub logs_kept_after_snapshot: u64,
    /// Most entries in one append-entries request.
    pub append_entries_max: u64,
    /// How long `propose` waits for commit before reporting an unknown outcome.
    pub propose_timeout_ms: u64,
    /// Capacity of the applied-entry broadcast channel; slower receivers lag and miss events.
    pub applied_events_capacity: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_logs_since_last: 20_000,
            logs_kept_after_snapshot: 5_000,
            append_entries_max: 300,
            propose_timeout_ms: 5_000,
            applied_events_capacity: 1_024,
        }
    }
}

impl GroupConfig {
    fn to_openraft(&self, group: GroupId) -> Result<Config, ReplicationError> {
        if self.applied_events_capacity == 0 {
            return Err(ReplicationError::Config {
                detail: "applied_events_capacity must be at least 1".into(),
            });
        }
        let config = Config {
            cluster_name: format!("pms-group-{group}"),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            max_payload_entries: self.append_entries_max,
            ..Default::default()
        };
        config.validate().map_err(|error| ReplicationError::Config {
            detail: error.to_string(),
        })
    }
}

/// The role of this node in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl GroupRole {
    /// The role named by [`GroupRole::as_str`], e.g. in another node's status report.
    pub fn parse(name: &str) -> Option<GroupRole> {
        [
            GroupRole::Leader,
            GroupRole::Follower,
            GroupRole::Candidate,
            GroupRole::Learner,
            GroupRole::Shutdown,
        ]
        .into_iter()
        .find(|role| role.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupRole::Leader => "leader",
            GroupRole::Follower => "follower",
            GroupRole::Candidate => "candidate",
            GroupRole::Learner => "learner",
            GroupRole::Shutdown => "shutdown",
        }
    }
}

/// One member of a group's membership as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub node: u64,
    pub address: String,
    pub voter: bool,
    /// The last log index known replicated to this member (known on the leader only).
    pub matched_index: Option<u64>,
}

/// What this node knows about one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: GroupRole,
    pub leader: Option<u64>,
    /// The Raft term this replica is in.
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub members: Vec<GroupMember>,
}

/// One Raft group running on this node.
pub struct Group {
    node_id: u64,
    group: GroupId,
    raft: Raft,
    store: Arc<dyn Store>,
    events: broadcast::Sender<AppliedEvent>,
    propose_timeout: Duration,
    commit_latency_observer: RwLock<Option<CommitLatencyObserver>>,
    snapshot_observer: SharedSnapshotObserver,
    /// Messages queued in this replica, kept by the state machine.
    queued: Arc<AtomicU64>,
    /// Yields `None` once openraft dropped every clone of the log store and state machine.
    storage_released: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("node_id", &self.node_id)
            .field("group", &self.group)
            .finish()
    }
}

impl Group {
    /// Starts the group on this node from whatever `store` holds for it (nothing, for a new
    /// group). The group serves nothing until it is initialized here or joined by a leader.
    pub async fn open<N>(
        node_id: u64,
        group: GroupId,
        store: Arc<dyn Store>,
        network: N,
        config: &GroupConfig,
    ) -> Result<Group, ReplicationError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
    {
        let raft_config = Arc::new(config.to_openraft(group)?);
        let (events, _) = broadcast::channel(config.applied_events_capacity);
        let (alive, storage_released) = tokio::sync::mpsc::channel(1);
        let log_store = LogStore::new(group, Arc::clone(&store)).with_liveness(alive.clone());
        let snapshot_observer = SharedSnapshotObserver::default();
        let queued = Arc::new(AtomicU64::new(0));
        let state_machine = StateMachine::new(group, Arc::clone(&store), events.clone())
            .with_liveness(alive)
            .with_snapshot_observer(Arc::clone(&snapshot_observer))
            .with_queue_count(Arc::clone(&queued))?;
        let raft = Raft::new(node_id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|fatal| fatal_error(group, fatal))?;
        Ok(Group {
            node_id,
            group,
            raft,
            store,
            events,
            propose_timeout: Duration::from_millis(config.propose_timeout_ms),
            commit_latency_observer: RwLock::new(None),
            snapshot_observer,
            queued,
            storage_released: tokio::sync::Mutex::new(storage_released),
        })
    }

    pub fn id(&self) -> GroupId {
        self.group
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Makes this node the single voter of the group, unless the group is already initialized
    /// (here, earlier, or by a leader that added this node). Idempotent across restarts.
    pub async fn initialize_single(&self, addr: String) -> Result<(), ReplicationError> {
        self.initialize(BTreeMap::from([(self.node_id, addr)]))
            .await
    }

    /// Bootstraps the group with `members` (node id → gRPC address) as its voters, like etcd's
    /// `--initial-cluster`, unless it is already initialized. Every member may call this with the
    /// same map: the first membership entry is identical on all of them, and the group elects a
    /// leader once a majority runs. Idempotent across restarts (a restarted node keeps its log).
    pub async fn initialize(&self, members: BTreeMap<u64, String>) -> Result<(), ReplicationError> {
        if !members.contains_key(&self.node_id) {
            return Err(ReplicationError::Config {
                detail: format!(
                    "node {} is not among the initial members {:?}",
                    self.node_id,
                    members.keys().collect::<Vec<_>>()
                ),
            });
        }
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|fatal| fatal_error(self.group, fatal))?;
        if initialized {
            return Ok(());
        }
        let members: BTreeMap<u64, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Raced with another initialization: the goal, an initialized group, holds.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(error)) => Err(ReplicationError::Refused {
                group: self.group,
                detail: error.to_string(),
            }),
            Err(RaftError::Fatal(fatal)) => Err(fatal_error(self.group, fatal)),
        }
    }

    /// Adds `node` (reachable at `addr`) to the group: first as a learner, waiting until it has
    /// caught up, then as a voter. Each step is one membership change, so the group never has
    /// fewer voters able to form a quorum than before. Only the leader can do this.
    pub async fn add_voter(&self, node: u64, addr: String) -> Result<(), ReplicationError> {
        self.raft
            .add_learner(node, BasicNode { addr }, true)
            .await
            .map_err(|error| self.raft_write_error(error))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node])), false)
            .await
            .map_err(|error| self.raft_write_error(error))?;
        Ok(())
    }

    /// Removes `node` from the group's voters and learners. Only the leader can do this; openraft
    /// refuses a change that leaves no voter.
    pub async fn remove_node(&self, node: u64) -> Result<(), ReplicationError> {
        let membership = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let is_voter = membership.membership().voter_ids().any(|id| id == node);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([node]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|error| self.raft_write_error(error))?;
        Ok(())
    }

    fn raft_write_error(
        &self,
        error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> ReplicationError {
        match error {
            RaftError::APIError(error) => self.client_write_error(error),
            RaftError::Fatal(fatal) => fatal_error(self.group, fatal),
        }
    }

    /// What this node knows of the group: its role, applied index, leader, members and (on the
    /// leader) how far each member has replicated.
    pub fn status(&self) -> GroupStatus {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| GroupMember {
                node: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: metrics.replication.as_ref().and_then(|replication| {
                    replication
                        .get(id)
                        .and_then(|log_id| log_id.as_ref().map(|log_id| log_id.index()))
                }),
            })
            .collect();
        GroupStatus {
            group: self.group,
            role: match metrics.state {
                ServerState::Leader => GroupRole::Leader,
                ServerState::Candidate => GroupRole::Candidate,
                ServerState::Learner => GroupRole::Learner,
                ServerState::Follower if voters.contains(&self.node_id) => GroupRole::Follower,
                ServerState::Follower => GroupRole::Learner,
                ServerState::Shutdown => GroupRole::Shutdown,
            },
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.as_ref().map(|log_id| log_id.index()),
            members,
        }
    }

    /// Asks this group's leadership to move to `node` (best effort: a failed hand-over leaves
    /// this node leading).
    pub async fn transfer_leadership(&self, node: u64) {
        if let Err(fatal) = self.raft.trigger().transfer_leader(node).await {
            tracing::warn!(group = %self.group, %fatal, "leadership transfer not started");
        }
    }

    /// The gRPC address of `node` as the group's membership records it.
    pub fn member_address(&self, node: u64) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics
            .membership_config
            .membership()
            .get_node(&node)
            .map(|node| node.addr.clone())
    }

    /// Whether this node is a voter or learner of the group's current membership.
    pub fn is_member(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics
            .membership_config
            .membership()
            .get_node(&self.node_id)
            .is_some()
    }

    /// Replicates `command` and waits until it is committed and applied here; returns what
    /// applying it produced. See [`ReplicationError::is_retryable`] and
    /// [`ReplicationError::outcome_unknown`] for what to do on failure.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, ReplicationError> {
        self.propose_indexed(command)
            .await
            .map(|(response, _index)| response)
    }

    /// [`Group::propose`], also returning the log index the command committed at (so a node
    /// that forwarded the command can wait until its own replica applied it).
    #[tracing::instrument(name = "raft_proposal", skip_all, fields(group = %self.group, command = crate::types::command_name(&command)))]
    pub async fn propose_indexed(
        &self,
        command: Command,
    ) -> Result<(CommandResponse, u64), ReplicationError> {
        let started = Instant::now();
        let write = self.raft.client_write(LogCommand(GroupCommand {
            group: self.group,
            command,
        }));
        let result = match tokio::time::timeout(self.propose_timeout, write).await {
            Ok(result) => result,
            Err(_elapsed) => {
                return Err(ReplicationError::Timeout {
                    group: self.group,
                    timeout_ms: u64::try_from(self.propose_timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
        };
        match result {
            Ok(written) => {
                let elapsed = started.elapsed();
                if let Some(observer) = self.observer() {
                    observer(self.group, elapsed);
                }
                Ok((written.data, written.log_id.index()))
            }
            Err(RaftError::APIError(error)) => Err(self.client_write_error(error)),
            Err(RaftError::Fatal(fatal)) => Err(fatal_error(self.group, fatal)),
        }
    }

    fn client_write_error(&self, error: ClientWriteError<TypeConfig>) -> ReplicationError {
        match error {
            ClientWriteError::ForwardToLeader(forward) => ReplicationError::NotLeader {
                group: self.group,
                leader: forward.leader_id,
            },
            ClientWriteError::LogEntryDiscarded(forward) => ReplicationError::LeaderChanged {
                group: self.group,
                leader: forward.leader_id,
            },
            other => ReplicationError::Refused {
                group: self.group,
                detail: other.to_string(),
            },
        }
    }

    fn observer(&self) -> Option<CommitLatencyObserver> {
        match self.commit_latency_observer.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Installs the function told the commit latency of every successful [`Group::propose`]
    /// (replacing any earlier one). It runs on the proposer's task: keep it short.
    pub fn set_commit_latency_observer(&self, observer: CommitLatencyObserver) {
        let mut guard = match self.commit_latency_observer.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Some(observer);
    }

    /// Installs the function told of every snapshot this group builds or installs, with its
    /// duration (replacing any earlier one). It runs on the state machine's task: keep it short.
    pub fn set_snapshot_observer(&self, observer: SnapshotObserver) {
        *self
            .snapshot_observer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(observer);
    }

    /// Whether this node currently believes it leads the group.
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.node_id)
    }

    /// Confirms with a quorum (a read index: one round of heartbeats) that this node still leads
    /// the group, and waits until it has applied everything committed before the call. `false`
    /// when it does not lead, or no quorum answered within `timeout`. A leader cut off from the
    /// majority still *believes* it leads; this is how it finds out before acting on its state.
    pub async fn confirm_leadership(&self, timeout: Duration) -> bool {
        let read = self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex);
        matches!(tokio::time::timeout(timeout, read).await, Ok(Ok(_)))
    }

    /// On the leader: confirms with a quorum that this node still leads (one round of
    /// heartbeats) and returns the read index, the log index a replica must have applied to
    /// see every command committed before the call (Raft thesis §6.4). A follower asks its
    /// leader for it, then waits with [`Group::wait_for_applied`], before a read that must not
    /// miss a recent write. `NotLeader` on a follower; `Timeout` when no quorum answered.
    pub async fn read_index(&self, timeout: Duration) -> Result<u64, ReplicationError> {
        let read = self
            .raft
            .get_read_linearizer(openraft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(linearizer)) => Ok(linearizer.read_log_id().index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)))) => {
                Err(ReplicationError::NotLeader {
                    group: self.group,
                    leader: forward.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) | Err(_) => {
                Err(ReplicationError::Timeout {
                    group: self.group,
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
            Ok(Err(RaftError::Fatal(fatal))) => Err(fatal_error(self.group, fatal)),
        }
    }

    /// The leader this node knows of, if any.
    pub fn current_leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Waits until some node leads the group (as seen from here); returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ReplicationError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let waited = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |metrics| metrics.current_leader.is_some(),
                "a leader is known",
            )
            .await;
        match waited {
            Ok(metrics) => metrics.current_leader.ok_or(ReplicationError::NoLeader {
                group: self.group,
                timeout_ms,
            }),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(ReplicationError::NoLeader {
                group: self.group,
                timeout_ms,
            }),
            Err(openraft::metrics::WaitError::ShuttingDown) => {
                Err(ReplicationError::ShuttingDown { group: self.group })
            }
        }
    }

    /// Waits until this node has applied the entry at `index` (or a later one).
    pub async fn wait_for_applied(
        &self,
        index: u64,
        timeout: Duration,
    ) -> Result<(), ReplicationError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        match self
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
        {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(ReplicationError::Timeout {
                group: self.group,
                timeout_ms,
            }),
            Err(openraft::metrics::WaitError::ShuttingDown) => {
                Err(ReplicationError::ShuttingDown { group: self.group })
            }
        }
    }

    /// The index of the last entry applied on this node.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|log_id| log_id.index())
    }

    /// The applied state of this node (every group's keys; queries use this group's prefix).
    /// On a follower it may lag the leader.
    pub fn read(&self) -> &dyn StateRead {
        self.store.as_ref()
    }

    /// The store under this group (shared with the other groups of this node).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A receiver of [`AppliedEvent`]s for entries applied from now on.
    pub fn subscribe_applied(&self) -> broadcast::Receiver<AppliedEvent> {
        self.events.subscribe()
    }

    /// Builds a snapshot now (normally the snapshot policy decides) and waits until it exists.
    pub async fn snapshot_now(&self, timeout: Duration) -> Result<(), ReplicationError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let applied = self.raft.metrics().borrow_watched().last_applied;
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|fatal| fatal_error(self.group, fatal))?;
        let waited = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |metrics| {
                    metrics.snapshot.as_ref().map(|id| id.index())
                        >= applied.as_ref().map(|id| id.index())
                },
                "snapshot covers the applied log",
            )
            .await;
        waited.map(|_| ()).map_err(|_| ReplicationError::Timeout {
            group: self.group,
            timeout_ms,
        })
    }

    /// Messages queued in this replica of the group (as of its last applied entry).
    pub fn queued_messages(&self) -> u64 {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls `report` with this replica's status now and after every change openraft reports
    /// (term, leader, log, applied index, replication progress); returns once the group
    /// stopped. Changes that arrive while `report` runs are coalesced into one call.
    pub async fn watch_status(&self, mut report: impl FnMut(GroupStatus)) {
        let mut metrics = self.raft.metrics();
        loop {
            report(self.status());
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until this replica's latest snapshot is another one than `since` (built here or
    /// installed from the leader) and returns its last log index. Pending forever once the
    /// group stopped.
    pub async fn snapshot_changed(&self, since: Option<u64>) -> Option<u64> {
        let mut metrics = self.raft.metrics();
        loop {
            let current = metrics.borrow_watched().snapshot.map(|id| id.index());
            if current != since {
                return current;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The last log index of this replica's latest snapshot.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .snapshot
            .map(|id| id.index())
    }

    /// Purges this replica's log up to its latest snapshot (inclusive) and waits until it is
    /// gone: entries that held something now shredded must not outlive the snapshot that no
    /// longer does. A leader may delay the purge while it still replicates those entries.
    pub async fn purge_log_to_snapshot(&self, timeout: Duration) -> Result<(), ReplicationError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let Some(snapshot) = self.raft.metrics().borrow_watched().snapshot else {
            return Ok(());
        };
        let upto = snapshot.index();
        self.raft
            .trigger()
            .purge_log(upto)
            .await
            .map_err(|fatal| fatal_error(self.group, fatal))?;
        self.raft
            .wait(Some(timeout))
            .metrics(
                |metrics| metrics.purged.as_ref().map(|id| id.index()) >= Some(upto),
                "log purged up to the snapshot",
            )
            .await
            .map(|_| ())
            .map_err(|_| ReplicationError::Timeout {
                group: self.group,
                timeout_ms,
            })
    }

    /// Whether this group has stopped on a fatal error (storage, apply); `None` while healthy.
    pub fn fatal_error(&self) -> Option<ReplicationError> {
        let metrics = self.raft.metrics();
        let running = metrics.borrow_watched().running_state.clone();
        running.err().map(|fatal| fatal_error(self.group, fatal))
    }

    /// Stops the group on this node: no more proposes, applies or elections. Returns once
    /// openraft's tasks have released the log store and state machine (or after
    /// [`SHUTDOWN_RELEASE_WAIT`]), so the store can be closed and reopened.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(group = %self.group, %error, "raft task ended abnormally during shutdown");
        }
        let mut released = self.storage_released.lock().await;
        // No sender ever sends: `recv` yields `None` exactly when the last holder is dropped.
        if tokio::time::timeout(SHUTDOWN_RELEASE_WAIT, released.recv())
            .await
            .is_err()
        {
            tracing::warn!(group = %self.group, "raft tasks still hold the storage after shutdown");
        }
    }

    /// The openraft handle, for the network server in `pms-transport` only.
    pub fn raft(&self) -> &crate::raft_api::Raft {
        &self.raft
    }
}

fn fatal_error(group: GroupId, fatal: Fatal<TypeConfig>) -> ReplicationError {
    match fatal {
        Fatal::Stopped => ReplicationError::ShuttingDown { group },
        other => ReplicationError::Fatal {
            group,
            detail: other.to_string(),
        },
    }
}
