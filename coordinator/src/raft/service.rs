//! Raft RPCs between coordinators over gRPC (`mirador.raft.v1.Raft`), server side: each
//! request goes to the local Raft node as is.

use mirador_proto::raft::raft_server::{self, RaftServer};
use mirador_proto::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::network::MAX_MESSAGE_BYTES;
use super::prevote::{self, PreVoteRequest, Timing};
use super::Raft;

/// Serves a node's Raft to its peers.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    timing: Timing,
}

impl RaftService {
    pub fn new(raft: Raft, timing: Timing) -> Self {
        Self { raft, timing }
    }

    /// The tonic service to add to the coordinator's gRPC server.
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// What can go wrong in the service itself; Raft's own errors travel in the reply.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    /// The caller sent something that is not an openraft request: its bug or another version.
    #[error("undecodable raft request: {0}")]
    Decode(serde_json::Error),
    #[error("cannot encode the raft reply: {0}")]
    Encode(serde_json::Error),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Decode(_) => Status::invalid_argument(e.to_string()),
            ServiceError::Encode(_) => Status::internal(e.to_string()),
        }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, ServiceError> {
    serde_json::from_slice(&request.into_inner().data).map_err(ServiceError::Decode)
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(result).map_err(ServiceError::Encode)?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: PreVoteRequest = decode(request)?;
        reply(&prevote::answer(&self.raft, self.timing, &rpc).await)
    }
}
