//! The network of a group that has no peers yet: [`UnreachableNetwork`] answers every RPC with
//! "unreachable". A single-voter group never sends RPCs, so it runs fine on it; the gRPC network
//! in `pms-transport` replaces it by implementing [`crate::raft_api::RaftNetworkFactory`].
//!
//! Invariant: nothing here blocks or retries; every call fails at once.

use crate::types::{SnapshotData, TypeConfig};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use std::future::Future;

/// A network factory whose clients can reach nobody.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnreachableNetworkFactory;

/// A client that can reach nobody; `target` is kept for the error message.
#[derive(Clone, Copy, Debug)]
pub struct UnreachableNetwork {
    target: u64,
}

impl UnreachableNetwork {
    fn unreachable(&self) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!(
            "node {} is unreachable: no network configured",
            self.target
        ))
    }
}

impl RaftNetworkFactory<TypeConfig> for UnreachableNetworkFactory {
    type Network = UnreachableNetwork;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        UnreachableNetwork { target }
    }
}

impl RaftNetworkV2<TypeConfig> for UnreachableNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: openraft::alias::VoteOf<TypeConfig>,
        _snapshot: openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
