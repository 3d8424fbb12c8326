//! Raft RPCs between coordinators over gRPC (`mirador.raft.v1.Raft`), client side.
//!
//! Each RPC carries the openraft request as JSON and gets back the JSON of
//! `Result<response, RaftError>`: a Raft error of the remote node reaches openraft as a
//! [`RemoteError`], and only transport failures are gRPC statuses.

use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirador_proto::raft::raft_client::RaftClient;
use mirador_proto::raft::RaftPayload;
use mirador_proto::transport::{self, ChannelOptions};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{Node, NodeId, TypeConfig};

/// Raft messages can be large (a batch of entries, a snapshot chunk as JSON).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long a replication stream waits before it tries an unreachable peer again. openraft's
/// default (500 ms) would slow down a follower's return after a partition heals.
pub(crate) const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Makes the clients a node uses to reach its peers: one gRPC channel per peer, made on
/// first use and shared by every later client (heartbeats, replication, votes), so a peer
/// costs one HTTP/2 connection however many RPCs go to it.
#[derive(Clone)]
pub struct GrpcNetwork {
    id: NodeId,
    connect_timeout: Duration,
    channels: Arc<Mutex<HashMap<NodeId, PeerChannel>>>,
}

struct PeerChannel {
    addr: String,
    channel: Channel,
}

/// An address that is not a valid URI; the peer stays unreachable until its address changes.
#[derive(Debug, thiserror::Error)]
#[error("invalid peer address {addr:?}: {message}")]
struct InvalidAddr {
    addr: String,
    message: String,
}

impl GrpcNetwork {
    /// The network of node `id`; connecting to a peer fails after `connect_timeout`.
    pub fn new(id: NodeId, connect_timeout: Duration) -> Self {
        Self {
            id,
            connect_timeout,
            channels: Arc::default(),
        }
    }

    /// The channel to `target`, made now if there is none for its current address. A lazy
    /// channel connects on its first RPC and reconnects by itself after a failure.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, InvalidAddr> {
        let mut channels = self.channels.lock().expect("peer channel map poisoned");
        if let Some(peer) = channels.get(&target) {
            if peer.addr == addr {
                return Ok(peer.channel.clone());
            }
        }
        let channel = transport::channel(addr, &ChannelOptions::raft(self.connect_timeout))
            .map_err(|e| InvalidAddr {
                addr: addr.to_string(),
                message: e.message,
            })?;
        channels.insert(
            target,
            PeerChannel {
                addr: addr.to_string(),
                channel: channel.clone(),
            },
        );
        Ok(channel)
    }
}

impl super::prevote::PreVoteNetwork for GrpcNetwork {
    fn pre_vote(
        &self,
        target: NodeId,
        addr: String,
        request: super::prevote::PreVoteRequest,
        timing: super::prevote::Timing,
    ) -> futures::future::BoxFuture<'_, Option<super::prevote::PreVoteResponse>> {
        Box::pin(async move {
            let mut client = RaftClient::new(self.channel(target, &addr).ok()?);
            let data = serde_json::to_vec(&request).ok()?;
            let mut call = tonic::Request::new(RaftPayload { data });
            call.set_timeout(timing.election_min);
            let answer = tokio::time::timeout(timing.election_min, client.pre_vote(call))
                .await
                .ok()?
                .ok()?;
            serde_json::from_slice(&answer.into_inner().data).ok()
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcPeer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> GrpcPeer {
        let client = self.channel(target, &node.addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        GrpcPeer {
            id: self.id,
            target,
            client: client.map_err(Arc::new),
        }
    }
}

/// One node's client to one peer.
pub struct GrpcPeer {
    id: NodeId,
    target: NodeId,
    client: Result<RaftClient<Channel>, Arc<InvalidAddr>>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl GrpcPeer {
    /// Sends one request with `send` and decodes the reply, within the RPC's deadline.
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        action: RPCTypes,
        request: &Req,
        option: &RPCOption,
        send: F,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, Status>>,
    {
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e.as_ref()))),
        };
        let data = serde_json::to_vec(request).map_err(|e| network_error(&e))?;
        let deadline = option.hard_ttl();
        let mut request = tonic::Request::new(RaftPayload { data });
        // The peer stops working on it past the deadline too.
        request.set_timeout(deadline);
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: deadline,
            })
        };
        let reply = match tokio::time::timeout(deadline, send(client, request)).await {
            Err(_) => return Err(timeout()),
            Ok(Err(status)) if status.code() == Code::DeadlineExceeded => return Err(timeout()),
            // No connection: openraft waits a backoff before it tries this peer again.
            Ok(Err(status)) if status.code() == Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)))
            }
            Ok(Err(status)) => return Err(network_error(&status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.data).map_err(|e| network_error(&e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn network_error<E: Error + 'static, RE: Error>(e: &E) -> RPCError<NodeId, Node, RE> {
    RPCError::Network(NetworkError::new(e))
}

impl RaftNetwork<TypeConfig> for GrpcPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(
            RPCTypes::AppendEntries,
            &rpc,
            &option,
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(
            RPCTypes::InstallSnapshot,
            &rpc,
            &option,
            |mut c, r| async move { c.install_snapshot(r).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(RPCTypes::Vote, &rpc, &option, |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
