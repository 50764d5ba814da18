//! [`PeerClients`]: calls from this node to the others — forwarded commands, membership
//! changes, pushed deliveries, status — and the channels the Raft network shares.
//!
//! Invariant: one lazily connected, reconnecting channel per peer address; every call has a
//! deadline, so a paused or partitioned peer costs a timeout, never a hang.
//! Invariant: a channel presents the node certificate that was in use when it was made; once
//! the certificate is replaced (SIGHUP), the next call to a peer makes a new channel.
//! Invariant: a forwarded command whose answer was lost is reported as
//! [`ForwardError::OutcomeUnknown`], never as a failure: it may have committed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pms_crypto::ReloadableCertificate;
use pms_mailbox::{Command, CommandResponse};
use pms_replication::{GroupMember, GroupRole, GroupStatus, wire};
use pms_types::{FlowId, GroupId, NodeId};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument as _;

use super::identity::{ClusterIdentity, ClusterTag, LeaderContacts};
use super::{DeliveryReport, PeerNodeStatus};
use crate::TransportError;
use crate::proto::internal_v1 as pb;
use crate::tls::{GrpcTlsConnector, grpc_endpoint, load_node_certificate};

/// How long connecting to a peer (TCP + TLS + HTTP/2) may take.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// HTTP/2 keep-alive pings find a dead connection within interval + timeout.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(1_000);
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Most peer addresses with a cached channel (a cluster has far fewer nodes).
pub const PEER_CHANNELS_MAX: usize = 1_024;

/// A command committed at the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    pub response: CommandResponse,
    pub log_index: u64,
}

/// Why a call to a peer did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The peer is not the group's leader; it names the one it knows of.
    #[error("node is not the leader of the group (leader: {leader:?} at {leader_address:?})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_address: Option<String>,
    },
    /// No answer: the peer is unreachable, busy or timed out. A command may have committed.
    #[error("no answer from {address}: {detail}")]
    OutcomeUnknown { address: String, detail: String },
    /// The peer refused the call for good (bad request, unknown group, fatal error there).
    #[error("{address} refused: {detail}")]
    Refused { address: String, detail: String },
}

impl ForwardError {
    fn from_status(address: &str, status: &tonic::Status) -> ForwardError {
        use tonic::Code;
        let detail = status_detail(status);
        match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::Internal
            | Code::FailedPrecondition => ForwardError::Refused {
                address: address.to_owned(),
                detail,
            },
            _ => ForwardError::OutcomeUnknown {
                address: address.to_owned(),
                detail,
            },
        }
    }
}

/// A status's code and message, then each underlying cause that says something new (a TLS
/// handshake failure is only in the causes: "transport error" alone tells nothing).
fn status_detail(status: &tonic::Status) -> String {
    let mut detail = format!("{:?}: {}", status.code(), status.message());
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        let text = error.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        cause = error.source();
    }
    detail
}

/// Channels to the other nodes of the cluster.
#[derive(Debug)]
pub struct PeerClients {
    certs_dir: PathBuf,
    /// The certificate calls present; a node shares it with its gRPC server and reloads it.
    node_certificate: Arc<ReloadableCertificate>,
    /// Per address, the channel and the certificate generation it presents.
    channels: Mutex<HashMap<String, (u64, Channel)>>,
    /// Sent with every call; a node's server and clients share it.
    identity: Arc<ClusterIdentity>,
    /// Which followers answered this node's append-entries, and when (for `/readyz`).
    contacts: Arc<LeaderContacts>,
}

/// The client of a peer's internal service, every call tagged with this node's cluster id.
pub(crate) type InternalStub =
    pb::internal_client::InternalClient<InterceptedService<Channel, ClusterTag>>;

impl PeerClients {
    /// Peers reached with this node's certificate (`node.crt`) from `certs_dir`. Checks now that
    /// the certificates load, so a misconfigured node fails at start rather than at first call.
    pub fn new(certs_dir: &Path) -> Result<Self, TransportError> {
        let node_certificate = load_node_certificate(certs_dir)?;
        pms_crypto::grpc_client_config(certs_dir, &node_certificate.pem_identity()).map_err(
            |error| TransportError::Certificates {
                certs_dir: certs_dir.to_path_buf(),
                reason: error.to_string(),
            },
        )?;
        Ok(PeerClients {
            certs_dir: certs_dir.to_path_buf(),
            node_certificate,
            channels: Mutex::new(HashMap::new()),
            identity: Arc::new(ClusterIdentity::default()),
            contacts: Arc::new(LeaderContacts::default()),
        })
    }

    /// Calls present the certificate `node_certificate` holds when their channel is made (a
    /// node passes the one its gRPC server presents, which it reloads on SIGHUP).
    #[must_use]
    pub fn with_node_certificate(mut self, node_certificate: Arc<ReloadableCertificate>) -> Self {
        self.node_certificate = node_certificate;
        self.channels
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self
    }

    /// Calls carry `identity`'s cluster id (a node passes the one its server checks against;
    /// without it, calls carry none, which only `NodeStatus` answers).
    #[must_use]
    pub fn with_identity(mut self, identity: Arc<ClusterIdentity>) -> Self {
        self.identity = identity;
        self
    }

    /// This node's cluster id, as its calls carry it.
    pub fn identity(&self) -> &Arc<ClusterIdentity> {
        &self.identity
    }

    /// When groups' leaders and followers were last heard from; the node's internal service
    /// records into the same table.
    pub fn contacts(&self) -> &Arc<LeaderContacts> {
        &self.contacts
    }

    /// Logs once per peer when `status` says the peer belongs to another cluster.
    pub(crate) fn note_refusal(&self, address: &str, status: &tonic::Status) {
        self.identity.note_refused_by(address, status);
    }

    /// The channel to `address` (`HOST:PORT`), created on first use; it connects lazily and
    /// reconnects by itself.
    pub(crate) fn channel(&self, address: &str) -> Result<Channel, TransportError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = self.node_certificate.generation();
        if let Some((made_with, channel)) = channels.get(address)
            && *made_with == generation
        {
            return Ok(channel.clone());
        }
        let connector = GrpcTlsConnector::new(
            &self.certs_dir,
            &self.node_certificate.pem_identity(),
            address,
        )?;
        let channel = grpc_endpoint(address)?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector);
        if channels.len() >= PEER_CHANNELS_MAX {
            channels.clear();
        }
        channels.insert(address.to_owned(), (generation, channel.clone()));
        Ok(channel)
    }

    pub(crate) fn stub(&self, address: &str) -> Result<InternalStub, ForwardError> {
        self.channel(address)
            .map(|channel| {
                pb::internal_client::InternalClient::with_interceptor(
                    channel,
                    ClusterTag(self.identity.clone()),
                )
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX)
            })
            .map_err(|error| ForwardError::Refused {
                address: address.to_owned(),
                detail: error.to_string(),
            })
    }

    /// What a failed call to `address` means for the caller (a refusal is logged once).
    fn call_error(&self, address: &str, status: &tonic::Status) -> ForwardError {
        self.note_refusal(address, status);
        ForwardError::from_status(address, status)
    }

    /// Asks the node at `address` to replicate `command` in `group`, which it should lead.
    pub async fn propose(
        &self,
        address: &str,
        group: GroupId,
        command: &Command,
        timeout: Duration,
    ) -> Result<Forwarded, ForwardError> {
        let refused = |detail: String| ForwardError::Refused {
            address: address.to_owned(),
            detail,
        };
        let request = pb::ProposeRequest {
            group: group.0,
            command: wire::encode("command", command)
                .map_err(|error| refused(error.to_string()))?,
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        let response = self
            .stub(address)?
            .propose(request)
            .instrument(super::trace::client_span("Propose", address))
            .await
            .map_err(|status| self.call_error(address, &status))?
            .into_inner();
        match response.outcome {
            Some(pb::propose_response::Outcome::Committed(committed)) => Ok(Forwarded {
                response: wire::decode("command response", &committed.response)
                    .map_err(|error| refused(error.to_string()))?,
                log_index: committed.log_index,
            }),
            Some(pb::propose_response::Outcome::NotLeader(not_leader)) => {
                Err(not_leader_from_proto(not_leader))
            }
            None => Err(refused("empty propose response".into())),
        }
    }

    /// Asks the node at `address`, which should lead `group`, for a read index: the log index
    /// this node must apply to see every command the group committed before the call.
    pub async fn read_index(
        &self,
        address: &str,
        group: GroupId,
        timeout: Duration,
    ) -> Result<u64, ForwardError> {
        let mut request = tonic::Request::new(pb::ReadIndexRequest { group: group.0 });
        request.set_timeout(timeout);
        let response = self
            .stub(address)?
            .read_index(request)
            .await
            .map_err(|status| self.call_error(address, &status))?
            .into_inner();
        match response.outcome {
            Some(pb::read_index_response::Outcome::Index(index)) => Ok(index),
            Some(pb::read_index_response::Outcome::NotLeader(not_leader)) => {
                Err(not_leader_from_proto(not_leader))
            }
            None => Err(ForwardError::Refused {
                address: address.to_owned(),
                detail: "empty read index response".into(),
            }),
        }
    }

    /// Asks the node at `address`, which should lead `group`, to add `node` at `node_address`
    /// (learner, then voter) or, with `None`, to remove it.
    pub async fn change_membership(
        &self,
        address: &str,
        group: GroupId,
        node: NodeId,
        node_address: Option<String>,
        timeout: Duration,
    ) -> Result<(), ForwardError> {
        let mut request = tonic::Request::new(pb::ChangeMembershipRequest {
            group: group.0,
            node: node.0,
            remove: node_address.is_none(),
            address: node_address.unwrap_or_default(),
        });
        request.set_timeout(timeout);
        let response = self
            .stub(address)?
            .change_membership(request)
            .instrument(super::trace::client_span("ChangeMembership", address))
            .await
            .map_err(|status| self.call_error(address, &status))?
            .into_inner();
        match response.not_leader {
            Some(not_leader) => Err(not_leader_from_proto(not_leader)),
            None => Ok(()),
        }
    }

    /// Pushes a SIP request to the node at `address` for delivery through `flow`. A node that
    /// cannot be reached holds no usable flow: that is [`DeliveryReport::FlowClosed`].
    pub async fn deliver(
        &self,
        address: &str,
        flow: FlowId,
        request: Vec<u8>,
        timeout: Duration,
    ) -> DeliveryReport {
        let Ok(mut stub) = self.stub(address) else {
            return DeliveryReport::FlowClosed;
        };
        let mut call = tonic::Request::new(pb::DeliverRequest {
            flow_node: flow.node.0,
            flow_incarnation: flow.incarnation,
            flow_connection: flow.connection,
            request,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        });
        // The device's own timeout runs on the far node; allow for the network on top.
        call.set_timeout(timeout + PEER_CONNECT_TIMEOUT);
        let call = stub
            .deliver(call)
            .instrument(super::trace::client_span("Deliver", address));
        match call.await {
            Ok(response) => report_from_proto(&response.into_inner()),
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                DeliveryReport::TimedOut
            }
            Err(_) => DeliveryReport::FlowClosed,
        }
    }

    /// What the node at `address` reports about itself.
    pub async fn node_status(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<PeerNodeStatus, ForwardError> {
        let mut request = tonic::Request::new(pb::NodeStatusRequest {});
        request.set_timeout(timeout);
        let response = self
            .stub(address)?
            .node_status(request)
            .await
            .map_err(|status| self.call_error(address, &status))?
            .into_inner();
        Ok(node_status_from_proto(response))
    }
}

fn not_leader_from_proto(not_leader: pb::NotLeader) -> ForwardError {
    ForwardError::NotLeader {
        leader: not_leader.leader.map(NodeId),
        leader_address: Some(not_leader.leader_address).filter(|address| !address.is_empty()),
    }
}

fn report_from_proto(response: &pb::DeliverResponse) -> DeliveryReport {
    use pb::deliver_response::Outcome;
    match Outcome::try_from(response.outcome) {
        Ok(Outcome::Final) => match u16::try_from(response.status) {
            Ok(status @ 100..=699) => DeliveryReport::Final(status),
            _ => DeliveryReport::FlowClosed,
        },
        Ok(Outcome::TimedOut) => DeliveryReport::TimedOut,
        Ok(Outcome::Busy) => DeliveryReport::Busy,
        Ok(Outcome::FlowClosed | Outcome::Unspecified) | Err(_) => DeliveryReport::FlowClosed,
    }
}

pub(crate) fn report_to_proto(report: DeliveryReport) -> pb::DeliverResponse {
    use pb::deliver_response::Outcome;
    let (outcome, status) = match report {
        DeliveryReport::Final(status) => (Outcome::Final, u32::from(status)),
        DeliveryReport::TimedOut => (Outcome::TimedOut, 0),
        DeliveryReport::FlowClosed => (Outcome::FlowClosed, 0),
        DeliveryReport::Busy => (Outcome::Busy, 0),
    };
    pb::DeliverResponse {
        outcome: outcome as i32,
        status,
    }
}

fn node_status_from_proto(response: pb::NodeStatusResponse) -> PeerNodeStatus {
    PeerNodeStatus {
        node: NodeId(response.node),
        cluster_id: Some(response.cluster_id).filter(|id| !id.is_empty()),
        version: response.version,
        master_key_fingerprint: Some(response.master_key_fingerprint)
            .filter(|fingerprint| !fingerprint.is_empty()),
        address: response.address,
        groups: response
            .groups
            .into_iter()
            .map(|group| GroupStatus {
                group: GroupId(group.group),
                // A role this node does not know (a newer peer) reads as a shut-down replica.
                role: GroupRole::parse(&group.role).unwrap_or(GroupRole::Shutdown),
                leader: group.leader,
                term: group.term,
                last_log_index: group.last_log_index,
                last_applied_index: group.last_applied_index,
                members: group
                    .members
                    .into_iter()
                    .map(|member| GroupMember {
                        node: member.node,
                        address: member.address,
                        voter: member.voter,
                        matched_index: member.matched_index,
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub(crate) fn node_status_to_proto(status: &PeerNodeStatus) -> pb::NodeStatusResponse {
    pb::NodeStatusResponse {
        node: status.node.0,
        cluster_id: status.cluster_id.clone().unwrap_or_default(),
        version: status.version.clone(),
        master_key_fingerprint: status.master_key_fingerprint.clone().unwrap_or_default(),
        address: status.address.clone(),
        groups: status
            .groups
            .iter()
            .map(|group| pb::GroupStatus {
                group: group.group.0,
                role: group.role.as_str().to_owned(),
                leader: group.leader,
                term: group.term,
                last_log_index: group.last_log_index,
                last_applied_index: group.last_applied_index,
                members: group
                    .members
                    .iter()
                    .map(|member| pb::GroupMember {
                        node: member.node,
                        address: member.address.clone(),
                        voter: member.voter,
                        matched_index: member.matched_index,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_reports_round_trip_through_protobuf() {
        for report in [
            DeliveryReport::Final(200),
            DeliveryReport::Final(486),
            DeliveryReport::TimedOut,
            DeliveryReport::FlowClosed,
            DeliveryReport::Busy,
        ] {
            assert_eq!(report_from_proto(&report_to_proto(report)), report);
        }
        // A status outside SIP's range from a confused peer is not a final answer.
        let odd = pb::DeliverResponse {
            outcome: pb::deliver_response::Outcome::Final as i32,
            status: 70_000,
        };
        assert_eq!(report_from_proto(&odd), DeliveryReport::FlowClosed);
    }

    #[test]
    fn node_status_round_trips_through_protobuf() {
        let status = PeerNodeStatus {
            node: NodeId(2),
            cluster_id: Some("0123abcd".into()),
            version: "0.1.0".into(),
            master_key_fingerprint: Some("5f0c2a".into()),
            address: "10.0.0.2:50051".into(),
            groups: vec![GroupStatus {
                group: GroupId(1),
                role: GroupRole::Follower,
                leader: Some(1),
                term: 4,
                last_log_index: Some(9),
                last_applied_index: Some(8),
                members: vec![GroupMember {
                    node: 1,
                    address: "10.0.0.1:50051".into(),
                    voter: true,
                    matched_index: None,
                }],
            }],
        };
        assert_eq!(
            node_status_from_proto(node_status_to_proto(&status)),
            status
        );
    }
}
