//! The coordinators of a region form a Raft group (openraft) that commits [`Command`]s to the
//! replicated [`ClusterState`].
//!
//! - [`RaftNode`]: what the rest of the coordinator uses: start a node, write a command,
//!   change the membership, read the state and who leads.
//! - [`LogStore`] and [`StateMachineStore`]: the log, the vote and the applied state, durable
//!   in one redb file per node.
//! - [`GrpcNetwork`] and [`RaftService`]: Raft RPCs between coordinators over gRPC, one
//!   channel per peer.
//! - [`prevote`]: elections that a returning node cannot win against a leader that a
//!   majority still follows.
//! - [`testing::Router`]: an in-process network that drops, delays and partitions, for
//!   tests of the whole group in one process.

mod config;
mod error;
mod log_store;
mod network;
pub mod prevote;
mod service;
mod state_machine;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{RaftNetworkFactory, ServerState};
use tokio::sync::watch;

pub use self::config::{ConfigError, RaftConfig};
pub use self::error::{InitError, ShutdownError, StartError, WriteError};
pub use self::log_store::LogStore;
pub use self::network::{GrpcNetwork, GrpcPeer};
pub use self::service::RaftService;
pub use self::state_machine::{SnapshotBuilder, StateMachineStore};
pub use self::store::{open as open_store, DiskError, OpenStore, StoreClosed, StoreError};
use crate::state::{ClusterState, Command, Outcome};

/// Coordinators are numbered; the number stays with the coordinator across restarts.
pub type NodeId = u64;
/// What the group knows of a member: its gRPC `host:port`.
pub type Node = openraft::BasicNode;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;

openraft::declare_raft_types!(
    /// The types the coordinators' Raft group runs on.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A coordinator's member of the Raft group.
///
/// Cheap to clone: clones share the running node.
#[derive(Clone)]
pub struct RaftNode {
    id: NodeId,
    addr: String,
    raft: Raft,
    state: watch::Receiver<Arc<ClusterState>>,
    write_timeout: Duration,
    timing: prevote::Timing,
    /// Runs this node's elections; stopped with the node.
    campaign: tokio::task::AbortHandle,
    /// A leader whose quorum last acknowledged it longer ago than this may be cut off.
    quorum_ack_bound: Duration,
    /// Taken by the first [`RaftNode::shutdown`].
    store_closed: Arc<Mutex<Option<StoreClosed>>>,
}

/// How long [`RaftNode::shutdown`] waits for openraft to let go of the store.
const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who leads and who belongs, as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMetrics {
    pub id: NodeId,
    /// Leader, follower, candidate or learner.
    pub server_state: ServerState,
    pub term: u64,
    /// The leader of `term`, once this node knows it.
    pub leader: Option<NodeId>,
    /// Index of the last entry applied to this node's state.
    pub last_applied: Option<u64>,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    /// Voters and learners, with their gRPC address.
    pub members: BTreeMap<NodeId, String>,
}

impl RaftNode {
    /// Starts node `id` on the log and state kept in `data_dir`, talking to its peers over
    /// `network`. `addr` is this node's gRPC `host:port`, as its peers reach it.
    ///
    /// A new node does nothing until it is initialized ([`RaftNode::initialize`], on one node
    /// of a new group) or added by the leader of an existing group; a restarted node resumes
    /// with the state it had applied.
    pub async fn start<N>(
        id: NodeId,
        addr: impl Into<String>,
        data_dir: &Path,
        config: &RaftConfig,
        network: N,
    ) -> Result<Self, StartError>
    where
        N: RaftNetworkFactory<TypeConfig> + prevote::PreVoteNetwork + Clone,
    {
        config.validate()?;
        let raft_config = Arc::new(config.to_openraft().validate()?);
        let dir = data_dir.to_path_buf();
        // Opening fsyncs the new tables: off the runtime's threads.
        let store = tokio::task::spawn_blocking(move || open_store(&dir))
            .await
            .expect("opening the raft store panicked")?;
        let state = store.state_machine.subscribe();
        let raft = Raft::new(
            id,
            raft_config,
            network.clone(),
            store.log,
            store.state_machine,
        )
        .await?;
        let timing = config.timing();
        let campaign =
            tokio::spawn(prevote::campaign(raft.clone(), network, timing)).abort_handle();
        Ok(Self {
            id,
            addr: addr.into(),
            raft,
            state,
            write_timeout: config.write_timeout(),
            timing,
            campaign,
            quorum_ack_bound: Duration::from_millis(2 * config.election_timeout_max_ms),
            store_closed: Arc::new(Mutex::new(Some(store.closed))),
        })
    }

    /// Starts node `id` with peers reached over gRPC; serve [`RaftNode::grpc_service`] at
    /// `addr`.
    pub async fn start_grpc(
        id: NodeId,
        addr: impl Into<String>,
        data_dir: &Path,
        config: &RaftConfig,
    ) -> Result<Self, StartError> {
        let network = GrpcNetwork::new(id, config.connect_timeout());
        Self::start(id, addr, data_dir, config, network).await
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The openraft handle, for what this type does not wrap (metrics watch, triggers).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The service that lets peers reach this node, for the coordinator's gRPC server.
    pub fn grpc_service(&self) -> mirador_proto::raft::raft_server::RaftServer<RaftService> {
        RaftService::new(self.raft.clone(), self.timing).into_server()
    }

    /// Makes a new group of `members` (id to gRPC address, this node included). Call it on
    /// one node of a new group; the others learn the membership from it.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), InitError> {
        let members: BTreeMap<NodeId, Node> = members
            .into_iter()
            .map(|(id, addr)| (id, Node { addr }))
            .collect();
        self.raft.initialize(members).await?;
        Ok(())
    }

    /// Adds node `id` at `addr` as a learner: it receives the log but does not vote. Returns
    /// once the change is committed, not when the learner has caught up. Leader only.
    pub async fn add_learner(&self, id: NodeId, addr: impl Into<String>) -> Result<(), WriteError> {
        let node = Node { addr: addr.into() };
        self.bounded(self.raft.add_learner(id, node, false))
            .await??;
        Ok(())
    }

    /// Makes `voters` the voting members; each must be a member (a learner) already. Voters
    /// left out are removed from the group. Leader only.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), WriteError> {
        self.bounded(self.raft.change_membership(voters, false))
            .await??;
        Ok(())
    }

    /// Removes learners (nodes that do not vote) from the group. Leader only.
    pub async fn remove_learners(&self, learners: BTreeSet<NodeId>) -> Result<(), WriteError> {
        self.bounded(
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(learners), false),
        )
        .await??;
        Ok(())
    }

    /// Commits `command` and returns what applying it produced. Leader only: elsewhere it
    /// fails with [`WriteError::ForwardToLeader`].
    pub async fn write(&self, command: Command) -> Result<Outcome, WriteError> {
        let response = self.bounded(self.raft.client_write(command)).await??;
        Ok(response.data)
    }

    /// Waits at most the write timeout: a leader cut off from its quorum keeps a proposal
    /// pending until a new leader makes it step down, which needs the partition to heal.
    async fn bounded<T>(
        &self,
        write: impl std::future::Future<Output = T>,
    ) -> Result<T, WriteError> {
        tokio::time::timeout(self.write_timeout, write)
            .await
            .map_err(|_| WriteError::Timeout(self.write_timeout))
    }

    /// The state as this node has applied it (possibly behind the leader's).
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    /// The applied state now and after every change, e.g. for an executor that follows its
    /// assignments.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    pub fn metrics(&self) -> NodeMetrics {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        NodeMetrics {
            id: m.id,
            server_state: m.state,
            term: m.current_term,
            leader: m.current_leader,
            last_applied: m.last_applied.map(|id| id.index),
            last_log_index: m.last_log_index,
            voters: membership.voter_ids().collect(),
            members: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
        }
    }

    /// Whether this node leads and a majority of voters acknowledged it within two
    /// election timeouts: a leader cut off from its quorum answers nothing that extends a
    /// lease, though openraft keeps it leader until it learns of a newer term.
    pub fn leads_a_quorum(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader
            && m.current_leader == Some(m.id)
            && m.millis_since_quorum_ack
                .is_some_and(|ms| ms <= self.quorum_ack_bound.as_millis() as u64)
    }

    /// On the leader: how many entries of its log `id` has not yet acknowledged. `None`
    /// when it has acknowledged none (it may not even run), on a node that does not lead,
    /// or for a node the leader does not replicate to.
    pub fn replication_lag(&self, id: NodeId) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let matched = (*m.replication.as_ref()?.get(&id)?)?;
        Some(m.last_log_index.unwrap_or(0).saturating_sub(matched.index))
    }

    /// Stops the node. When this returns, its store is closed: the same data directory can
    /// be started again in this process.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        self.campaign.abort();
        self.raft.shutdown().await?;
        let closed = self
            .store_closed
            .lock()
            .expect("store_closed poisoned")
            .take();
        if let Some(closed) = closed {
            tokio::time::timeout(STORE_CLOSE_TIMEOUT, closed.wait())
                .await
                .map_err(|_| ShutdownError::StoreStillOpen(STORE_CLOSE_TIMEOUT))?;
        }
        Ok(())
    }
}
