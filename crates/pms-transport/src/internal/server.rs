//! The `Internal` gRPC service: hands Raft RPCs to the addressed group, runs forwarded
//! commands and membership changes on this node's groups, pushes deliveries into this node's
//! flows, and reports this node's status.
//!
//! Invariant: a handler runs only for a TLS peer whose certificate chains to `ca.crt` and whose
//! common name is `node`; an admin or device certificate gets `PERMISSION_DENIED`.
//! Invariant: payloads from the network are size-bounded and decoded without panicking; a bad
//! one gets `INVALID_ARGUMENT`.
//! Invariant: every handler first checks the caller's cluster id ([`ClusterIdentity`]): a
//! node of another cluster changes nothing here and learns nothing but the refusal.
//! Invariant: a successful append-entries records the leader's contact ([`LeaderContacts`]).

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pms_mailbox::Command;
use pms_replication::raft_api::{FullSnapshot, SnapshotMeta, Vote};
use pms_replication::{Group, Replication, ReplicationError, wire};
use pms_types::{FlowId, GroupId, NodeId};
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::identity::{ClusterIdentity, LeaderContacts};
use super::peers::{node_status_to_proto, report_to_proto};
use super::{
    DELIVER_REQUEST_BYTES_MAX, DELIVER_TIMEOUT_MAX, FlowDelivery, PeerNodeStatus,
    READ_INDEX_TIMEOUT_MAX, SNAPSHOT_BYTES_MAX,
};
use crate::admin::server::ServiceAdder;
use crate::proto::internal_v1 as pb;
use crate::tls::peer_common_name;

/// The certificate common name of a cluster node.
pub const NODE_CLIENT_NAME: &str = pms_crypto::NODE_COMMON_NAME;

/// Refuses every call whose peer certificate is not a node's.
#[allow(clippy::result_large_err)] // tonic's interceptor signature fixes the error type.
fn require_node(request: Request<()>) -> Result<Request<()>, Status> {
    match peer_common_name(&request) {
        Some(name) if name == NODE_CLIENT_NAME => Ok(request),
        other => {
            tracing::warn!(
                peer = ?request.remote_addr(),
                common_name = ?other,
                "internal call refused: client certificate is not a node's"
            );
            Err(Status::permission_denied(format!(
                "internal RPCs require a node certificate (common name {NODE_CLIENT_NAME:?})"
            )))
        }
    }
}

struct InternalService {
    node: NodeId,
    address: String,
    replication: Arc<Replication>,
    flows: Arc<dyn FlowDelivery>,
    identity: Arc<ClusterIdentity>,
    contacts: Arc<LeaderContacts>,
    master_key_fingerprint: String,
}

/// What the internal service shares with the rest of the node: the cluster id it checks calls
/// against, and when each group's leader was last heard from.
#[derive(Clone, Debug)]
pub struct InternalShared {
    pub identity: Arc<ClusterIdentity>,
    pub contacts: Arc<LeaderContacts>,
    /// The fingerprint of the master key this node loaded, reported by `NodeStatus` so that
    /// `add-node` can refuse a node started with another key.
    pub master_key_fingerprint: String,
}

/// The internal service with its permission check, as a [`ServiceAdder`] for the node's gRPC
/// server (which uses [`server_tls_config`](crate::server_tls_config)).
pub fn internal_service(
    node: NodeId,
    address: String,
    replication: Arc<Replication>,
    flows: Arc<dyn FlowDelivery>,
    shared: InternalShared,
) -> ServiceAdder {
    let rpc_bytes_max = usize::try_from(wire::RPC_BYTES_MAX).unwrap_or(usize::MAX);
    let server = pb::internal_server::InternalServer::new(InternalService {
        node,
        address,
        replication,
        flows,
        identity: shared.identity,
        contacts: shared.contacts,
        master_key_fingerprint: shared.master_key_fingerprint,
    })
    .max_decoding_message_size(rpc_bytes_max)
    .max_encoding_message_size(rpc_bytes_max);
    let service = tonic::service::interceptor::InterceptedService::new(server, require_node);
    Box::new(move |routes: Routes| routes.add_service(service))
}

fn invalid(error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(error.to_string())
}

fn replication_status(error: &ReplicationError) -> Status {
    if error.is_retryable() {
        Status::unavailable(error.to_string())
    } else if matches!(error, ReplicationError::UnknownGroup { .. }) {
        Status::not_found(error.to_string())
    } else {
        Status::internal(error.to_string())
    }
}

impl InternalService {
    /// Refuses a call from another cluster (see [`ClusterIdentity`]).
    #[allow(clippy::result_large_err)]
    fn check_cluster<T>(&self, request: &Request<T>, read_only: bool) -> Result<(), Status> {
        self.identity
            .check_incoming(request.metadata(), request.remote_addr(), read_only)
    }

    #[allow(clippy::result_large_err)]
    fn group(&self, group: u32) -> Result<&Group, Status> {
        self.replication
            .require_group(GroupId(group))
            .map_err(|error| replication_status(&error))
    }

    fn not_leader(&self, group: &Group, leader: Option<u64>) -> pb::NotLeader {
        pb::NotLeader {
            leader,
            leader_address: leader
                .and_then(|leader| group.member_address(leader))
                .unwrap_or_default(),
        }
    }

    fn raft_reply<T: serde::Serialize>(
        group: u32,
        what: &'static str,
        value: &T,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let payload =
            wire::encode(what, value).map_err(|error| Status::internal(error.to_string()))?;
        Ok(Response::new(pb::RaftMessage { group, payload }))
    }
}

#[tonic::async_trait]
impl pb::internal_server::Internal for InternalService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.check_cluster(&request, false)?;
        let message = request.into_inner();
        let group = self.group(message.group)?;
        let rpc = wire::decode("append entries", &message.payload).map_err(invalid)?;
        let reply = group
            .raft()
            .append_entries(rpc)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        self.contacts.record(group.id());
        Self::raft_reply(message.group, "append entries response", &reply)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.check_cluster(&request, false)?;
        let message = request.into_inner();
        let group = self.group(message.group)?;
        let rpc = wire::decode("vote", &message.payload).map_err(invalid)?;
        let reply = group
            .raft()
            .vote(rpc)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        Self::raft_reply(message.group, "vote response", &reply)
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.check_cluster(&request, false)?;
        let message = request.into_inner();
        let group = self.group(message.group)?;
        let rpc = wire::decode("transfer leader", &message.payload).map_err(invalid)?;
        let reply = group
            .raft()
            .handle_transfer_leader(rpc)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        Self::raft_reply(message.group, "transfer leader response", &reply)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.check_cluster(&request, false)?;
        let mut chunks = request.into_inner();
        let Some(first) = chunks.next().await.transpose()? else {
            return Err(invalid("empty snapshot stream"));
        };
        let group_id = first.group;
        let group = self.group(group_id)?;
        let vote: Vote = wire::decode("vote", &first.vote).map_err(invalid)?;
        let meta: SnapshotMeta = wire::decode("snapshot meta", &first.meta).map_err(invalid)?;
        let mut data = first.data;
        let mut done = first.done;
        while !done {
            let Some(chunk) = chunks.next().await.transpose()? else {
                return Err(invalid("snapshot stream ended before its last chunk"));
            };
            if chunk.group != group_id {
                return Err(invalid("snapshot chunks of two groups in one stream"));
            }
            if data.len().saturating_add(chunk.data.len()) > SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted(format!(
                    "snapshot larger than {SNAPSHOT_BYTES_MAX} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
            done = chunk.done;
        }
        let snapshot = FullSnapshot {
            meta,
            snapshot: Cursor::new(data),
        };
        let reply = group
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        Self::raft_reply(group_id, "snapshot response", &reply)
    }

    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let span = super::trace::server_span("Propose", request.metadata(), request.remote_addr());
        self.check_cluster(&request, false)?;
        let request = request.into_inner();
        let group = self.group(request.group)?;
        let command: Command = wire::decode("command", &request.command).map_err(invalid)?;
        let commit = tracing::info_span!(
            parent: &span,
            "raft_commit",
            otel.kind = "internal",
            pms.group = request.group,
            pms.command = pms_replication::command_name(&command),
        );
        // Before the proposal, so that the leader's delivery of what it applies finds it.
        commit.in_scope(|| self.flows.proposing(&command));
        let outcome = match group
            .propose_indexed(command)
            .instrument(commit)
            .instrument(span)
            .await
        {
            Ok((response, log_index)) => pb::propose_response::Outcome::Committed(pb::Committed {
                response: wire::encode("command response", &response)
                    .map_err(|error| Status::internal(error.to_string()))?,
                log_index,
            }),
            Err(ReplicationError::NotLeader { leader, .. }) => {
                pb::propose_response::Outcome::NotLeader(self.not_leader(group, leader))
            }
            Err(error) => return Err(replication_status(&error)),
        };
        Ok(Response::new(pb::ProposeResponse {
            outcome: Some(outcome),
        }))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.check_cluster(&request, false)?;
        let group = self.group(request.get_ref().group)?;
        let outcome = match group.read_index(READ_INDEX_TIMEOUT_MAX).await {
            Ok(index) => pb::read_index_response::Outcome::Index(index),
            Err(ReplicationError::NotLeader { leader, .. }) => {
                pb::read_index_response::Outcome::NotLeader(self.not_leader(group, leader))
            }
            Err(error) => return Err(replication_status(&error)),
        };
        Ok(Response::new(pb::ReadIndexResponse {
            outcome: Some(outcome),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::ChangeMembershipResponse>, Status> {
        let span = super::trace::server_span(
            "ChangeMembership",
            request.metadata(),
            request.remote_addr(),
        );
        self.check_cluster(&request, false)?;
        let request = request.into_inner();
        let group = self.group(request.group)?;
        if !request.remove && request.address.is_empty() {
            return Err(invalid("adding a node needs its address"));
        }
        let result = if request.remove {
            group.remove_node(request.node).instrument(span).await
        } else {
            group
                .add_voter(request.node, request.address)
                .instrument(span)
                .await
        };
        match result {
            Ok(()) => Ok(Response::new(pb::ChangeMembershipResponse {
                not_leader: None,
            })),
            Err(ReplicationError::NotLeader { leader, .. }) => {
                Ok(Response::new(pb::ChangeMembershipResponse {
                    not_leader: Some(self.not_leader(group, leader)),
                }))
            }
            Err(ReplicationError::Refused { detail, .. }) => {
                Err(Status::failed_precondition(detail))
            }
            Err(error) => Err(replication_status(&error)),
        }
    }

    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let span = super::trace::server_span("Deliver", request.metadata(), request.remote_addr());
        self.check_cluster(&request, false)?;
        let request = request.into_inner();
        if request.request.len() > DELIVER_REQUEST_BYTES_MAX {
            return Err(invalid(format!(
                "delivery request larger than {DELIVER_REQUEST_BYTES_MAX} bytes"
            )));
        }
        let flow = FlowId {
            node: NodeId(request.flow_node),
            incarnation: request.flow_incarnation,
            connection: request.flow_connection,
        };
        let timeout = Duration::from_millis(u64::from(request.timeout_ms)).min(DELIVER_TIMEOUT_MAX);
        let report = self
            .flows
            .deliver(flow, request.request, timeout)
            .instrument(span)
            .await;
        Ok(Response::new(report_to_proto(report)))
    }

    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        self.check_cluster(&request, true)?;
        let mut status = local_status(
            self.node,
            &self.address,
            &self.replication,
            &self.master_key_fingerprint,
        );
        status.cluster_id = self.identity.get();
        Ok(Response::new(node_status_to_proto(&status)))
    }
}

/// What this node knows about itself and each of its groups.
pub fn local_status(
    node: NodeId,
    address: &str,
    replication: &Replication,
    master_key_fingerprint: &str,
) -> PeerNodeStatus {
    PeerNodeStatus {
        node,
        cluster_id: None,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        master_key_fingerprint: Some(master_key_fingerprint.to_owned()),
        address: address.to_owned(),
        groups: replication.groups().map(Group::status).collect(),
    }
}
