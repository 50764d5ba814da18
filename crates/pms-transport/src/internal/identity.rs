//! Which cluster this node belongs to, as internal RPCs see it ([`ClusterIdentity`]), and when
//! each group's leader was last heard from ([`LeaderContacts`], for `/readyz`).
//!
//! Every internal call carries the caller's cluster id in the `x-pms-cluster-id` metadata
//! header ([`CLUSTER_ID_HEADER`]); [`ClusterTag`] adds it to every outgoing call.
//!
//! Invariant: a node that knows its cluster id refuses every call that names another
//! (`FAILED_PRECONDITION`, for good), and answers a call that names none with `UNAVAILABLE`
//! (the caller is a node of a new cluster that has not learned the id yet: it retries), except
//! `NodeStatus`, which changes nothing and tells the caller the id. Each refused peer is logged
//! once, not once per heartbeat.
//! Invariant: a node that does not know its cluster id yet (a new cluster before bootstrap
//! recorded it, a `--join` node before it was added) accepts calls and adopts the first id a
//! call that changes something (a Raft call) carries, never a `NodeStatus` caller's; `pmsd` then
//! confirms it against the directory and records it in the data dir.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use pms_replication::Group;
use pms_types::GroupId;
use tonic::Status;

/// The metadata header that carries the caller's cluster id.
pub const CLUSTER_ID_HEADER: &str = "x-pms-cluster-id";
/// Longest cluster id accepted from the network (ids PMS makes are 32 hex digits).
pub const CLUSTER_ID_BYTES_MAX: usize = 64;
/// Most refused peers remembered so that each is logged once (then the memory starts over).
pub const REFUSED_PEERS_LOGGED_MAX: usize = 1_024;
/// A group whose leader is another node counts as reachable for `/readyz` while that leader's
/// last append-entries (heartbeats included, every 100 ms) is at most this old; a group this
/// node leads while a majority of its voters answered append-entries within this time.
pub const LEADER_CONTACT_AGE_MAX: Duration = Duration::from_secs(3);
/// A group's leader counts as reachable this long after `/readyz` first saw it lead (its first
/// heartbeats are on their way): leadership handed over between live nodes is not a blip.
pub const LEADER_ELECTED_GRACE: Duration = Duration::from_secs(1);

/// Whether `text` is a well-formed cluster id: 1..=[`CLUSTER_ID_BYTES_MAX`] ASCII hex digits.
pub fn is_valid_cluster_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= CLUSTER_ID_BYTES_MAX
        && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// This node's cluster id, once known, shared by the gRPC server and the clients.
#[derive(Debug, Default)]
pub struct ClusterIdentity {
    id: RwLock<Option<String>>,
    refused_logged: Mutex<HashSet<String>>,
}

impl ClusterIdentity {
    /// `known`: the id recorded in the data dir or the directory replica, if any.
    pub fn new(known: Option<String>) -> Self {
        ClusterIdentity {
            id: RwLock::new(known),
            refused_logged: Mutex::new(HashSet::new()),
        }
    }

    pub fn get(&self) -> Option<String> {
        self.id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets the id (adopted from the directory or from the cluster's first call).
    pub fn set(&self, id: String) {
        *self.id.write().unwrap_or_else(PoisonError::into_inner) = Some(id);
    }

    /// Checks the cluster id an incoming call carries. `read_only`: the call changes nothing
    /// (node status), so one without an id is answered.
    #[allow(clippy::result_large_err)] // tonic's Status is the handlers' error type.
    pub(crate) fn check_incoming(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<std::net::SocketAddr>,
        read_only: bool,
    ) -> Result<(), Status> {
        let claimed = match metadata.get(CLUSTER_ID_HEADER).map(|value| value.to_str()) {
            None => None,
            Some(Ok(text)) if is_valid_cluster_id(text) => Some(text),
            Some(_) => {
                return Err(Status::invalid_argument(format!(
                    "{CLUSTER_ID_HEADER} is not a cluster id (1 to {CLUSTER_ID_BYTES_MAX} hex digits)"
                )));
            }
        };
        let mut id = self.id.write().unwrap_or_else(PoisonError::into_inner);
        match (id.as_deref(), claimed) {
            (Some(ours), Some(theirs)) if ours == theirs => Ok(()),
            (Some(ours), Some(theirs)) => {
                let peer_host =
                    peer.map_or_else(|| "unknown".to_owned(), |peer| peer.ip().to_string());
                self.log_refusal_once(&peer_host, theirs, ours);
                Err(Status::failed_precondition(format!(
                    "cluster mismatch: this node belongs to cluster {ours}, the caller to cluster {theirs}; \
                     a node joins only the cluster whose data dir it was started with (start it with a fresh --data-dir and --join to add it to this cluster)"
                )))
            }
            (Some(_), None) if read_only => Ok(()),
            // A status call (add-node's check of a new node) teaches nothing: the id is adopted
            // from the cluster's Raft calls, once the node is a member.
            (None, Some(_)) if read_only => Ok(()),
            (Some(ours), None) => Err(Status::unavailable(format!(
                "the caller does not know its cluster id yet (this node belongs to cluster {ours}); retry once it has heard from its leader"
            ))),
            (None, Some(theirs)) => {
                tracing::info!(cluster = theirs, peer = ?peer, "adopting the cluster id of the first node that called");
                *id = Some(theirs.to_owned());
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// Whether `key` is seen for the first time (bounded: the set is cleared when full).
    fn first_time(&self, key: String) -> bool {
        let mut logged = self
            .refused_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged.len() >= REFUSED_PEERS_LOGGED_MAX {
            logged.clear();
        }
        logged.insert(key)
    }

    fn log_refusal_once(&self, peer_host: &str, theirs: &str, ours: &str) {
        if self.first_time(format!("{peer_host} {theirs}")) {
            tracing::error!(
                peer = peer_host,
                their_cluster = theirs,
                our_cluster = ours,
                "refusing internal RPCs from a node of another cluster (logged once per peer): check its --peers/--join and --data-dir"
            );
        }
    }

    /// Logs once per peer address that a peer refused this node's calls as another cluster's.
    pub(crate) fn note_refused_by(&self, address: &str, status: &Status) {
        if status.code() != tonic::Code::FailedPrecondition
            || !status.message().starts_with("cluster mismatch")
        {
            return;
        }
        if self.first_time(format!("callee {address}")) {
            tracing::error!(
                peer = address,
                detail = status.message(),
                "a peer refuses this node's RPCs (logged once per peer)"
            );
        }
    }
}

/// Adds this node's cluster id (when known) and the caller's trace context (when its span is
/// part of a trace) to every outgoing internal call.
#[derive(Clone, Debug)]
pub struct ClusterTag(pub(crate) std::sync::Arc<ClusterIdentity>);

impl tonic::service::Interceptor for ClusterTag {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(id) = self.0.get()
            && let Ok(value) = id.parse()
        {
            request.metadata_mut().insert(CLUSTER_ID_HEADER, value);
        }
        // W3C trace context of the span the call is made under, if it is part of a trace.
        super::trace::inject_current(request.metadata_mut());
        Ok(request)
    }
}

/// When each group last heard from its leader here (append-entries received, heartbeats
/// included), and, for groups this node leads, when each follower last answered one.
#[derive(Debug, Default)]
pub struct LeaderContacts {
    last: Mutex<HashMap<GroupId, Instant>>,
    acknowledged: Mutex<HashMap<(GroupId, u64), Instant>>,
    /// The leader each group had when `/readyz` last looked, and since when it was seen.
    leaders_seen: Mutex<HashMap<GroupId, (u64, Instant)>>,
}

impl LeaderContacts {
    /// An append-entries from `group`'s leader was handled here.
    pub(crate) fn record(&self, group: GroupId) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group, Instant::now());
    }

    /// `target` answered an append-entries of `group` sent from here.
    pub(crate) fn record_acknowledged(&self, group: GroupId, target: u64) {
        self.acknowledged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((group, target), Instant::now());
    }

    /// Whether `leader` became `group`'s leader (as far as this table saw) less than
    /// [`LEADER_ELECTED_GRACE`] ago.
    fn leader_is_new(&self, group: GroupId, leader: u64) -> bool {
        let mut seen = self
            .leaders_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let since = match seen.get(&group) {
            Some((known, since)) if *known == leader => *since,
            _ => {
                let now = Instant::now();
                seen.insert(group, (leader, now));
                now
            }
        };
        since.elapsed() < LEADER_ELECTED_GRACE
    }

    fn recent(at: Option<&Instant>) -> bool {
        at.is_some_and(|at| at.elapsed() <= LEADER_CONTACT_AGE_MAX)
    }

    /// Whether `group` has a leader this node can reach: itself with a majority of voters
    /// (itself included) that answered recently, or another node whose append-entries arrived
    /// recently.
    pub fn leader_reachable(&self, group: &Group) -> bool {
        let Some(leader) = group.current_leader() else {
            return false;
        };
        // A leader just elected (or handed over) has not exchanged its first heartbeats yet.
        if self.leader_is_new(group.id(), leader) {
            return true;
        }
        if leader == group.node_id() {
            let status = group.status();
            let voters: Vec<u64> = status
                .members
                .iter()
                .filter(|member| member.voter)
                .map(|member| member.node)
                .collect();
            let acknowledged = self
                .acknowledged
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let reachable = voters
                .iter()
                .filter(|node| {
                    **node == group.node_id()
                        || Self::recent(acknowledged.get(&(group.id(), **node)))
                })
                .count();
            return reachable > voters.len() / 2;
        }
        Self::recent(
            self.last
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&group.id()),
        )
    }
}
