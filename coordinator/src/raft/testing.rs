//! An in-process network for tests: Raft nodes of one process call each other directly, and
//! the test drops, delays or cuts their messages while they run.
//!
//! The router implements the same `RaftNetworkFactory` as [`super::GrpcNetwork`], so a test
//! cluster runs the very `RaftNode` a coordinator runs, minus sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rand::Rng;

use super::network::UNREACHABLE_BACKOFF;
use super::{Node, NodeId, Raft, TypeConfig};

/// Delivers Raft RPCs between the nodes added to it. Clones share the same links.
#[derive(Clone, Default)]
pub struct Router {
    links: Arc<Mutex<Links>>,
}

#[derive(Default)]
struct Links {
    nodes: BTreeMap<NodeId, Raft>,
    /// Pairs of nodes that cannot reach each other, as (lower id, higher id).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Probability that a request, and then its reply, is lost.
    drop_ratio: f64,
    /// Bounds of the random time a request waits before it is delivered.
    delay: (Duration, Duration),
    /// How long the answer to a pre-vote takes to come back.
    pre_vote_reply: Duration,
}

/// Why a message did not arrive.
#[derive(Debug, thiserror::Error)]
enum LinkFault {
    #[error("node {0} is not running")]
    Down(NodeId),
    #[error("the link between {0} and {1} is cut")]
    Cut(NodeId, NodeId),
    #[error("message between {0} and {1} lost")]
    Lost(NodeId, NodeId),
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// The network for node `id` to pass to `RaftNode::start`.
    pub fn network(&self, id: NodeId) -> RouterNetwork {
        RouterNetwork {
            router: self.clone(),
            id,
        }
    }

    /// Makes node `id` reachable (again), with the Raft it runs now.
    pub fn add(&self, id: NodeId, raft: Raft) {
        self.lock().nodes.insert(id, raft);
    }

    /// Takes node `id` off the network, as if its process were gone.
    pub fn remove(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Loses each request, and each reply, with probability `ratio` (0 to 1).
    pub fn set_drop_ratio(&self, ratio: f64) {
        self.lock().drop_ratio = ratio.clamp(0.0, 1.0);
    }

    /// Delays each request by a uniformly random time in `[min, max]`.
    pub fn set_delay(&self, min: Duration, max: Duration) {
        self.lock().delay = (min, max.max(min));
    }

    /// Delays each answer to a pre-vote by `delay`: it then reaches its asker after the
    /// answering node may have moved on (voted, or been elected).
    pub fn set_pre_vote_reply_delay(&self, delay: Duration) {
        self.lock().pre_vote_reply = delay;
    }

    /// Cuts every link between nodes of different groups; nodes in no group keep their links.
    /// Cuts add up until [`Router::heal`].
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut links = self.lock();
        for (i, a) in groups.iter().enumerate() {
            for b in &groups[i + 1..] {
                for &x in a.iter() {
                    for &y in b.iter() {
                        if x != y {
                            links.cut.insert(pair(x, y));
                        }
                    }
                }
            }
        }
    }

    /// Cuts node `id` from every other node added so far.
    pub fn isolate(&self, id: NodeId) {
        let mut links = self.lock();
        let others: Vec<NodeId> = links.nodes.keys().copied().filter(|&n| n != id).collect();
        for other in others {
            links.cut.insert(pair(id, other));
        }
    }

    /// Restores every cut link; drops and delays stay as set.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().expect("router links poisoned")
    }

    /// Whether a message from `from` gets to `to` now, and how long it takes.
    fn send(&self, from: NodeId, to: NodeId) -> Result<(Raft, Duration), LinkFault> {
        let links = self.lock();
        links.check(from, to)?;
        let raft = links.nodes.get(&to).ok_or(LinkFault::Down(to))?.clone();
        let (min, max) = links.delay;
        let delay = if max > min {
            rand::rng().random_range(min..=max)
        } else {
            min
        };
        Ok((raft, delay))
    }

    /// Whether the reply of `to` gets back to `from` now.
    fn reply(&self, from: NodeId, to: NodeId) -> Result<(), LinkFault> {
        let links = self.lock();
        if !links.nodes.contains_key(&from) {
            return Err(LinkFault::Down(from));
        }
        links.check(to, from)
    }
}

impl Links {
    fn check(&self, from: NodeId, to: NodeId) -> Result<(), LinkFault> {
        if self.cut.contains(&pair(from, to)) {
            return Err(LinkFault::Cut(from, to));
        }
        if self.drop_ratio > 0.0 && rand::rng().random_bool(self.drop_ratio) {
            return Err(LinkFault::Lost(from, to));
        }
        Ok(())
    }
}

/// The network of one node on a [`Router`].
#[derive(Clone)]
pub struct RouterNetwork {
    router: Router,
    id: NodeId,
}

impl super::prevote::PreVoteNetwork for RouterNetwork {
    fn pre_vote(
        &self,
        target: NodeId,
        _addr: String,
        request: super::prevote::PreVoteRequest,
        timing: super::prevote::Timing,
    ) -> futures::future::BoxFuture<'_, Option<super::prevote::PreVoteResponse>> {
        Box::pin(async move {
            let (raft, delay) = self.router.send(self.id, target).ok()?;
            let answer = tokio::time::timeout(timing.election_min, async {
                tokio::time::sleep(delay).await;
                let answer = super::prevote::answer(&raft, timing, &request).await;
                let reply_delay = self.router.lock().pre_vote_reply;
                tokio::time::sleep(reply_delay).await;
                answer
            })
            .await
            .ok()?;
            self.router.reply(self.id, target).ok()?;
            Some(answer)
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for RouterNetwork {
    type Network = RouterPeer;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> RouterPeer {
        RouterPeer {
            router: self.router.clone(),
            id: self.id,
            target,
        }
    }
}

/// One node's client to one peer on a [`Router`].
pub struct RouterPeer {
    router: Router,
    id: NodeId,
    target: NodeId,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl RouterPeer {
    /// Delivers one request with `call` as a network would: maybe late, maybe lost, maybe
    /// after the deadline, and the reply may be lost on its way back.
    async fn deliver<Resp, E, F, Fut>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        call: F,
    ) -> RpcResult<Resp, E>
    where
        E: std::error::Error,
        F: FnOnce(Raft) -> Fut,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>>,
    {
        let (raft, delay) = self
            .router
            .send(self.id, self.target)
            .map_err(fault_error)?;
        let deadline = option.hard_ttl();
        let delivered = tokio::time::timeout(deadline, async {
            tokio::time::sleep(delay).await;
            call(raft).await
        })
        .await;
        let Ok(result) = delivered else {
            return Err(RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: deadline,
            }));
        };
        self.router
            .reply(self.id, self.target)
            .map_err(fault_error)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// A cut link or a stopped node is unreachable (openraft backs off); a lost message is a
/// network error (openraft tries again at once).
fn fault_error<E: std::error::Error>(fault: LinkFault) -> RPCError<NodeId, Node, E> {
    match fault {
        LinkFault::Down(_) | LinkFault::Cut(..) => RPCError::Unreachable(Unreachable::new(&fault)),
        LinkFault::Lost(..) => RPCError::Network(NetworkError::new(&fault)),
    }
}

impl RaftNetwork<TypeConfig> for RouterPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.deliver(RPCTypes::AppendEntries, &option, |raft| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.deliver(RPCTypes::InstallSnapshot, &option, |raft| async move {
            raft.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.deliver(RPCTypes::Vote, &option, |raft| async move {
            raft.vote(rpc).await
        })
        .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
