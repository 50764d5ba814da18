//! openraft's network for one group over gRPC: [`GrpcNetworkFactory`] makes a [`GrpcNetwork`]
//! per target node, which sends append-entries, votes and whole snapshots (streamed in chunks)
//! to the target's `Internal` service, tagged with the group id.
//!
//! Invariant: an unreachable target is reported as `Unreachable` (openraft backs off), a late
//! answer as a network error after the RPC's hard deadline; nothing here retries by itself.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pms_replication::raft_api::{
    AppendEntriesRequest, AppendEntriesResponse, BasicNode, FullSnapshot, NetworkError,
    OptionalSend, RPCError, RPCOption, RaftNetworkFactory, RaftNetworkV2, ReplicationClosed,
    SnapshotResponse, StreamingError, TransferLeaderRequest, TransferLeaderResponse, Unreachable,
    VoteRequest, VoteResponse,
};
use pms_replication::{SnapshotData, TypeConfig, wire};
use pms_types::GroupId;

use super::SNAPSHOT_CHUNK_BYTES;
use super::peers::PeerClients;
use crate::proto::internal_v1 as pb;

/// Makes the clients of one group's Raft network.
#[derive(Clone, Debug)]
pub struct GrpcNetworkFactory {
    group: GroupId,
    peers: Arc<PeerClients>,
}

impl GrpcNetworkFactory {
    pub fn new(group: GroupId, peers: Arc<PeerClients>) -> Self {
        GrpcNetworkFactory { group, peers }
    }
}

/// The client of one group towards one target node.
pub struct GrpcNetwork {
    group: GroupId,
    target: u64,
    address: String,
    peers: Arc<PeerClients>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        GrpcNetwork {
            group: self.group,
            target,
            address: node.addr.clone(),
            peers: Arc::clone(&self.peers),
        }
    }
}

fn unreachable(
    target: u64,
    address: &str,
    detail: impl std::fmt::Display,
) -> Unreachable<TypeConfig> {
    Unreachable::from_string(format!("node {target} at {address}: {detail}"))
}

fn network_error(
    target: u64,
    address: &str,
    detail: impl std::fmt::Display,
) -> NetworkError<TypeConfig> {
    NetworkError::from_string(format!("node {target} at {address}: {detail}"))
}

impl GrpcNetwork {
    fn rpc_error(&self, status: &tonic::Status) -> RPCError<TypeConfig> {
        self.peers.note_refusal(&self.address, status);
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                RPCError::Unreachable(unreachable(self.target, &self.address, status.message()))
            }
            _ => RPCError::Network(network_error(
                self.target,
                &self.address,
                format!("{:?}: {}", status.code(), status.message()),
            )),
        }
    }

    fn message<T: serde::Serialize>(
        &self,
        what: &'static str,
        rpc: &T,
        ttl: Duration,
    ) -> Result<tonic::Request<pb::RaftMessage>, RPCError<TypeConfig>> {
        let payload = wire::encode(what, rpc)
            .map_err(|error| RPCError::Network(network_error(self.target, &self.address, error)))?;
        let mut request = tonic::Request::new(pb::RaftMessage {
            group: self.group.0,
            payload,
        });
        request.set_timeout(ttl);
        Ok(request)
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        reply: &pb::RaftMessage,
    ) -> Result<T, RPCError<TypeConfig>> {
        wire::decode(what, &reply.payload)
            .map_err(|error| RPCError::Network(network_error(self.target, &self.address, error)))
    }

    fn stub(&self) -> Result<super::peers::InternalStub, RPCError<TypeConfig>> {
        self.peers
            .stub(&self.address)
            .map_err(|error| RPCError::Unreachable(unreachable(self.target, &self.address, error)))
    }
}

impl RaftNetworkV2<TypeConfig> for GrpcNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message("append entries", &rpc, option.hard_ttl())?;
        let reply = self
            .stub()?
            .append_entries(request)
            .await
            .map_err(|status| self.rpc_error(&status))?;
        self.peers
            .contacts()
            .record_acknowledged(self.group, self.target);
        self.decode("append entries response", reply.get_ref())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message("vote", &rpc, option.hard_ttl())?;
        let reply = self
            .stub()?
            .vote(request)
            .await
            .map_err(|status| self.rpc_error(&status))?;
        self.decode("vote response", reply.get_ref())
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message("transfer leader", &rpc, option.hard_ttl())?;
        let reply = self
            .stub()?
            .transfer_leader(request)
            .await
            .map_err(|status| self.rpc_error(&status))?;
        self.decode("transfer leader response", reply.get_ref())
    }

    async fn full_snapshot(
        &mut self,
        vote: pms_replication::raft_api::Vote,
        snapshot: FullSnapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let network = |error: String| {
            StreamingError::Network(network_error(self.target, &self.address, error))
        };
        let vote_bytes = wire::encode("vote", &vote).map_err(|error| network(error.to_string()))?;
        let meta_bytes = wire::encode("snapshot meta", &snapshot.meta)
            .map_err(|error| network(error.to_string()))?;
        let data = snapshot.snapshot.into_inner();
        let group = self.group.0;
        let mut chunks: Vec<pb::SnapshotChunk> = data
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .map(|slice| pb::SnapshotChunk {
                group,
                vote: Vec::new(),
                meta: Vec::new(),
                data: slice.to_vec(),
                done: false,
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(pb::SnapshotChunk {
                group,
                vote: Vec::new(),
                meta: Vec::new(),
                data: Vec::new(),
                done: false,
            });
        }
        if let Some(first) = chunks.first_mut() {
            first.vote = vote_bytes;
            first.meta = meta_bytes;
        }
        if let Some(last) = chunks.last_mut() {
            last.done = true;
        }
        let mut request = tonic::Request::new(futures::stream::iter(chunks));
        // A snapshot may be large: allow one soft TTL per chunk on top of the hard one.
        request.set_timeout(
            option.hard_ttl()
                + option.soft_ttl()
                    * u32::try_from(data.len() / SNAPSHOT_CHUNK_BYTES)
                        .unwrap_or(u32::MAX)
                        .min(1_000),
        );
        let mut stub = self.stub().map_err(|error| match error {
            RPCError::Unreachable(unreachable) => StreamingError::Unreachable(unreachable),
            other => network(other.to_string()),
        })?;
        let call = stub.install_snapshot(request);
        let reply = futures::select! {
            reply = call.fuse() => reply,
            closed = Box::pin(cancel).fuse() => {
                return Err(StreamingError::Closed(closed));
            }
        };
        let reply = reply.map_err(|status| match self.rpc_error(&status) {
            RPCError::Unreachable(unreachable) => StreamingError::Unreachable(unreachable),
            other => network(other.to_string()),
        })?;
        wire::decode("snapshot response", &reply.get_ref().payload)
            .map_err(|error| network(error.to_string()))
    }
}
