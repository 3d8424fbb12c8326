//! Errors of [`super::RaftNode`], classified by what the caller does next.

use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, InitializeError, RaftError};

use super::config::ConfigError;
use super::store::StoreError;
use super::{Node, NodeId};

/// Why a command (or a membership change) was not committed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader: retry at the leader. Both are `None` while an election
    /// is under way; retry after a short wait then.
    #[error("not the leader; the leader is node {leader_id:?} at {leader_addr:?}")]
    ForwardToLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// No quorum acknowledged the entry in time (this node may be cut off from the
    /// majority). The entry may still commit later: retry only commands that are safe to
    /// apply twice, or read the state first.
    #[error("not committed within {0:?}; it may still commit")]
    Timeout(Duration),
    /// A membership change that cannot be made now: another one is in progress, a new voter
    /// is not a learner yet, or no voter would be left.
    #[error(transparent)]
    Membership(ChangeMembershipError<NodeId>),
    /// The Raft node stopped (shut down, or a storage failure): restart the coordinator.
    #[error("raft stopped: {0}")]
    Stopped(Box<Fatal<NodeId>>),
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, Node>>> for WriteError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(to)) => Self::ForwardToLeader {
                leader_id: to.leader_id,
                leader_addr: to.leader_node.map(|node| node.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Self::Membership(e),
            RaftError::Fatal(fatal) => Self::Stopped(Box::new(fatal)),
        }
    }
}

/// Why a cluster could not be initialized.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// This node already has a log or a vote (it was initialized, or joined a cluster), or
    /// it is not among the members.
    #[error(transparent)]
    Refused(InitializeError<NodeId, Node>),
    #[error("raft stopped: {0}")]
    Stopped(Box<Fatal<NodeId>>),
}

impl From<RaftError<NodeId, InitializeError<NodeId, Node>>> for InitError {
    fn from(e: RaftError<NodeId, InitializeError<NodeId, Node>>) -> Self {
        match e {
            RaftError::APIError(e) => Self::Refused(e),
            RaftError::Fatal(fatal) => Self::Stopped(Box::new(fatal)),
        }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid raft config: {0}")]
    Config(#[from] ConfigError),
    /// openraft's own checks, should ours miss one.
    #[error("invalid raft config: {0}")]
    Openraft(#[from] openraft::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft did not start: {0}")]
    Raft(#[from] Fatal<NodeId>),
}

/// Why a node did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("the raft core task failed: {0}")]
    Core(#[from] tokio::task::JoinError),
    /// Some task still holds the store: its directory cannot be opened again in this process.
    #[error("the raft store was still open {0:?} after the node stopped")]
    StoreStillOpen(std::time::Duration),
}
