//! Pre-vote: a node stands for election only when a majority of the voters would vote
//! for it, so that a node coming back from a pause or a cut link cannot depose a leader
//! that a majority still follows.
//!
//! openraft 0.9 has no pre-vote. Its followers refuse a vote while their leader's lease
//! holds, but a returning node still raises its own term when its election timer fires;
//! the leader then meets that higher term in a reply and steps down, and the region
//! elects again for nothing. So openraft's own elections are switched off
//! (`enable_elect: false`) and [`campaign`] runs them instead: when a voter has heard from
//! no leader for a random election timeout, it asks every voter whether it would vote for
//! it in the next term ([`PreVoteRequest`], which changes no one's term), and calls an
//! election (`Raft::trigger().elect()`) only once a majority says yes.
//!
//! A voter says yes ([`answer`]) when it has heard from no leader for the minimum election
//! timeout itself (a leader: no quorum acknowledged it in that time) and the candidate's
//! log is at least as up to date as its own: exactly the votes the election would get.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::{LogId, ServerState};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{NodeId, Raft};

/// "Would you vote for me in `term`?"
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The term the candidate would stand in: its current term plus one.
    pub term: u64,
    pub last_log_id: Option<LogId<NodeId>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
}

/// How a node asks its peers; the gRPC network and the test router both do.
pub trait PreVoteNetwork: Send + Sync + 'static {
    /// `None` when `target` did not answer within the minimum election timeout. `timing` is
    /// the caller's (the router answers with it for the node it calls).
    fn pre_vote(
        &self,
        target: NodeId,
        addr: String,
        request: PreVoteRequest,
        timing: Timing,
    ) -> BoxFuture<'_, Option<PreVoteResponse>>;
}

/// The election timeouts: an election waits a random time in `[min, max)`, and a leader's
/// lease on its followers' votes lasts `max` (openraft's).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub election_min: Duration,
    pub election_max: Duration,
}

/// What this node answers to a pre-vote: no while its leader's lease holds (openraft
/// would refuse the vote itself then), or while it leads a quorum.
pub async fn answer(raft: &Raft, timing: Timing, request: &PreVoteRequest) -> PreVoteResponse {
    let lease = timing.election_max;
    let leader_fresh = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader
            && m.millis_since_quorum_ack
                .is_some_and(|ms| u128::from(ms) < lease.as_millis())
    };
    if leader_fresh {
        return PreVoteResponse { granted: false };
    }
    let candidate_log = request.last_log_id;
    let term = request.term;
    let own_log = raft.data_metrics().borrow().last_log;
    let granted = raft
        .with_raft_state(move |st| {
            let vote = st.vote_ref();
            // A follower hears from its leader at every heartbeat, which renews the time
            // of its (committed) vote.
            let heard_lately = vote.is_committed()
                && st
                    .vote_last_modified()
                    .is_some_and(|at| at.elapsed() < lease);
            !heard_lately && term > vote.leader_id().get_term() && candidate_log >= own_log
        })
        .await
        .unwrap_or(false);
    PreVoteResponse { granted }
}

/// The instants of openraft's runtime.
type RaftInstant =
    <<super::TypeConfig as openraft::RaftTypeConfig>::AsyncRuntime as openraft::AsyncRuntime>::Instant;

/// When this node last voted or heard from a leader, and its vote's term; `None` once
/// `raft` has shut down.
async fn vote_seen(raft: &Raft) -> Option<(Option<RaftInstant>, u64)> {
    raft.with_raft_state(|st| {
        (
            st.vote_last_modified(),
            st.vote_ref().leader_id().get_term(),
        )
    })
    .await
    .ok()
}

/// Runs this node's elections until `raft` shuts down: see the module's documentation.
pub async fn campaign<N: PreVoteNetwork>(raft: Raft, network: N, timing: Timing) {
    let min = timing.election_min.as_millis() as u64;
    let max = (timing.election_max.as_millis() as u64).max(min + 1);
    loop {
        let timeout = Duration::from_millis(rand::rng().random_range(min..max));
        tokio::time::sleep(timeout).await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.running_state.is_err() {
            return;
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        if metrics.state == ServerState::Leader || !voters.contains(&metrics.id) {
            continue;
        }
        let Some((heard_at, term)) = vote_seen(&raft).await else {
            return;
        };
        let quiet_for = heard_at.map_or(Duration::MAX, |at| at.elapsed());
        let last_log_id = raft.data_metrics().borrow().last_log;
        // Heard from a leader (or voted) within this round's timeout: wait on.
        if quiet_for < timeout {
            continue;
        }
        let request = PreVoteRequest {
            candidate: metrics.id,
            term: term + 1,
            last_log_id,
        };
        let addresses: BTreeMap<NodeId, String> = membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        let asks = voters
            .iter()
            .filter(|id| **id != metrics.id)
            .filter_map(|id| Some((*id, addresses.get(id)?.clone())))
            .map(|(id, addr)| network.pre_vote(id, addr, request.clone(), timing));
        let granted = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|r| r.as_ref().is_some_and(|r| r.granted))
            .count()
            + 1;
        if granted * 2 > voters.len() {
            // The answers took a while: if this node voted for another candidate meanwhile,
            // or heard from a leader, the region has one (or is electing it), and standing
            // now would depose it. Two nodes left of three would take turns so, each
            // elected and deposed by the other, for as long as their answers cross.
            let Some(since) = vote_seen(&raft).await else {
                return;
            };
            if since != (heard_at, term) {
                tracing::debug!(
                    term = term + 1,
                    "pre-vote won, but a leader or a candidate came meanwhile"
                );
                continue;
            }
            tracing::info!(
                term = term + 1,
                granted,
                voters = voters.len(),
                "pre-vote won: standing for election"
            );
            if raft.trigger().elect().await.is_err() {
                return;
            }
        } else {
            tracing::debug!(
                term = term + 1,
                granted,
                voters = voters.len(),
                "pre-vote lost"
            );
        }
    }
}
