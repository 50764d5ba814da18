//! Node-to-node gRPC (`proto/pms_internal.proto`): the Raft network of every group, commands
//! forwarded to a group's leader, deliveries pushed to the node that holds a device's flow, and
//! node status for `pmsctl cluster status`.
//!
//! Callers see plain Rust types: [`PeerClients`] (calls to other nodes), [`GrpcNetworkFactory`]
//! (openraft's network for one group), [`internal_routes`] (the server side) and the
//! [`FlowDelivery`] trait the node implements over its SIP edge.
//!
//! Invariant: every call is mutually authenticated TLS between certificates of the cluster CA,
//! and a handler runs only for a peer whose certificate common name is `node`.
//! Invariant: every call carries the caller's cluster id and is refused across clusters
//! (`identity.rs`).

pub mod identity;
pub mod network;
pub mod peers;
pub mod server;
pub mod trace;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pms_replication::GroupStatus;
use pms_types::{FlowId, NodeId};

pub use identity::{ClusterIdentity, LeaderContacts};
pub use network::GrpcNetworkFactory;
pub use peers::{ForwardError, Forwarded, PeerClients};
pub use server::internal_service;

/// Most bytes of one snapshot accepted over the network (chunks beyond it are refused).
pub const SNAPSHOT_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Bytes of snapshot data per streamed chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Most bytes of one SIP request pushed for delivery.
pub const DELIVER_REQUEST_BYTES_MAX: usize = 256 * 1024;
/// Longest a pushed delivery may wait for the device.
pub const DELIVER_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// Longest a leader spends confirming a read index with a quorum.
pub const READ_INDEX_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// A boxed future, so that the traits stay object-safe.
pub type PeerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What became of a delivery pushed through a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryReport {
    /// The device answered with this final status.
    Final(u16),
    /// The device did not answer within the timeout.
    TimedOut,
    /// The flow is not open on the node (closed, another incarnation, or the node is gone).
    FlowClosed,
    /// The flow already has a delivery outstanding.
    Busy,
}

/// Delivery through the flows this node holds; implemented by `pmsd` over its SIP edge.
pub trait FlowDelivery: Send + Sync + 'static {
    /// Sends `request` (a SIP request as bytes) through `flow` and waits up to `timeout` for the
    /// device's final response.
    fn deliver(
        &self,
        flow: FlowId,
        request: Vec<u8>,
        timeout: Duration,
    ) -> PeerFuture<'_, DeliveryReport>;

    /// Called on this node, inside the span of a forwarded proposal, just before it proposes
    /// `command` to a group it leads: the node keeps the span's trace context for the delivery
    /// of the message the command queues (see `pms_edge::delivery::remember_trace`).
    fn proposing(&self, command: &pms_mailbox::Command) {
        let _ = command;
    }
}

/// A node's view of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNodeStatus {
    pub node: NodeId,
    /// The cluster the node belongs to, when it knows (`None` from [`local_status`](server::local_status)).
    pub cluster_id: Option<String>,
    /// The PMS version the node runs.
    pub version: String,
    /// The fingerprint of the master key the node loaded (`None` from an older node).
    pub master_key_fingerprint: Option<String>,
    pub address: String,
    pub groups: Vec<GroupStatus>,
}
