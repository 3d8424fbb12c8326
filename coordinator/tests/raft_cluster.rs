//! Three coordinators in one process over the in-memory network: elections under lost and
//! late messages, failover, partitions, and a follower that catches up from a snapshot.

mod common;

use common::register;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirador_coordinator::raft::testing::Router;
use mirador_coordinator::raft::{NodeId, RaftConfig, RaftNode, WriteError};
use mirador_coordinator::state::{ClusterState, Command, Move, Outcome};
use openraft::ServerState;
use tempfile::TempDir;

/// A group of coordinators on one [`Router`], initialized and with a leader.
struct Cluster {
    router: Router,
    nodes: BTreeMap<NodeId, RaftNode>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    async fn start(size: u64, config: RaftConfig) -> Self {
        let router = Router::new();
        let mut nodes = BTreeMap::new();
        let mut dirs = Vec::new();
        for id in 1..=size {
            let dir = TempDir::new().unwrap();
            let node = RaftNode::start(id, addr(id), dir.path(), &config, router.network(id))
                .await
                .unwrap();
            router.add(id, node.raft().clone());
            nodes.insert(id, node);
            dirs.push(dir);
        }
        let members = nodes.keys().map(|&id| (id, addr(id))).collect();
        nodes[&1].initialize(members).await.unwrap();
        let cluster = Self {
            router,
            nodes,
            _dirs: dirs,
        };
        cluster
            .leader_among(&cluster.ids(), Duration::from_secs(5))
            .await;
        cluster
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[&id]
    }

    /// The node of `among` that is leader in the highest term, once there is one.
    async fn leader_among(&self, among: &[NodeId], within: Duration) -> NodeId {
        let deadline = Instant::now() + within;
        loop {
            let leader = among
                .iter()
                .map(|&id| self.node(id).metrics())
                .filter(|m| m.server_state == ServerState::Leader)
                .max_by_key(|m| m.term);
            if let Some(leader) = leader {
                return leader.id;
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {among:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Writes through whichever node leads, following `ForwardToLeader`.
    async fn write(&self, command: Command) -> Result<Outcome, WriteError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut target = self.ids()[0];
        loop {
            let error = match self.node(target).write(command.clone()).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(error);
            }
            target = match error {
                WriteError::ForwardToLeader {
                    leader_id: Some(leader),
                    ..
                } if self.nodes.contains_key(&leader) => leader,
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    self.ids()[(target as usize) % self.nodes.len()]
                }
            };
        }
    }

    /// Waits until the nodes `ids` have applied the same state, and returns it.
    async fn converged(&self, ids: &[NodeId], within: Duration) -> Arc<ClusterState> {
        let deadline = Instant::now() + within;
        loop {
            let states: Vec<_> = ids
                .iter()
                .map(|&id| (self.node(id).metrics().last_applied, self.node(id).state()))
                .collect();
            if states.windows(2).all(|w| w[0] == w[1]) {
                return states[0].1.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{ids:?} did not converge within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops node `id` and takes it off the network, as a crash would.
    async fn stop(&mut self, id: NodeId) {
        self.router.remove(id);
        let node = self.nodes.remove(&id).unwrap();
        node.shutdown().await.unwrap();
    }

    async fn shutdown(self) {
        for node in self.nodes.values() {
            node.shutdown().await.unwrap();
        }
    }
}

fn addr(id: NodeId) -> String {
    format!("coordinator-{id}:7400")
}

fn put_pipeline(name: &str, partitions: u32) -> Command {
    Command::PutPipeline {
        name: name.into(),
        spec: format!("name: {name}"),
        partitions,
        gpu: false,
        failover: mirador_spec::FailoverMode::Manual,
    }
}

fn assign(pipeline: &str, partition: u32, to: &str) -> Move {
    Move {
        pipeline: pipeline.into(),
        partition,
        from: None,
        to: to.into(),
    }
}

/// Commits executors, a pipeline and a plan; returns the state they make.
async fn commit_a_plan(cluster: &Cluster) -> Arc<ClusterState> {
    assert_eq!(
        cluster.write(register("e1")).await.unwrap(),
        Outcome::Registered { incarnation: 1 }
    );
    cluster.write(register("e2")).await.unwrap();
    assert_eq!(
        cluster.write(put_pipeline("clicks", 2)).await.unwrap(),
        Outcome::PipelineVersion { version: 1 }
    );
    let plan = Command::ApplyPlan {
        moves: vec![assign("clicks", 0, "e1"), assign("clicks", 1, "e2")],
    };
    assert_eq!(
        cluster.write(plan).await.unwrap(),
        Outcome::Applied { moves: 2 }
    );
    let leader = cluster
        .leader_among(&cluster.ids(), Duration::from_secs(1))
        .await;
    let state = cluster.node(leader).state();
    assert_eq!(state.owned_by("e1").count(), 1);
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_per_term_with_lost_and_late_messages() {
    let cluster = Cluster::start(3, RaftConfig::default()).await;
    cluster.router.set_drop_ratio(0.15);
    cluster
        .router
        .set_delay(Duration::ZERO, Duration::from_millis(20));

    // Every (term, leader) any node reports, from each node's metrics as they change.
    let leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<NodeId>>>> = Arc::default();
    let mut watchers = Vec::new();
    for node in cluster.nodes.values() {
        let mut metrics = node.raft().metrics();
        let leaders = leaders.clone();
        watchers.push(tokio::spawn(async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let mut leaders = leaders.lock().unwrap();
                    if let Some(leader) = m.current_leader {
                        leaders.entry(m.current_term).or_default().insert(leader);
                    }
                    if m.state == ServerState::Leader {
                        leaders.entry(m.current_term).or_default().insert(m.id);
                    }
                }
                if metrics.changed().await.is_err() {
                    break;
                }
            }
        }));
    }

    // Writes all along, and the leader cut off now and then so that terms change.
    let run = Instant::now();
    let mut written = 0;
    let mut rounds = 0;
    while run.elapsed() < Duration::from_secs(5) {
        rounds += 1;
        let leader = cluster
            .leader_among(&cluster.ids(), Duration::from_secs(5))
            .await;
        for _ in 0..5 {
            let id = format!("e{written}");
            if cluster.node(leader).write(register(&id)).await.is_ok() {
                written += 1;
            }
        }
        // Long enough for the others to elect a new leader (see RaftConfig).
        cluster.router.isolate(leader);
        tokio::time::sleep(Duration::from_millis(900)).await;
        cluster.router.heal();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cluster.router.set_drop_ratio(0.0);
    cluster.router.set_delay(Duration::ZERO, Duration::ZERO);
    let state = cluster
        .converged(&cluster.ids(), Duration::from_secs(5))
        .await;
    for watcher in &watchers {
        watcher.abort();
    }
    let leaders = leaders.lock().unwrap().clone();
    println!("{rounds} rounds, {written} writes committed, leaders by term: {leaders:?}");
    for (term, ids) in &leaders {
        assert_eq!(ids.len(), 1, "term {term} had leaders {ids:?}");
    }
    assert!(leaders.len() >= 3, "elections happened: {leaders:?}");
    assert!(
        state.executors.len() >= written,
        "every acknowledged write is in the state"
    );
    cluster.shutdown().await;
}

#[derive(Clone, Copy, Debug)]
enum LeaderLoss {
    /// Cut from the others by the network; it still runs and thinks it leads.
    Cut,
    /// Stopped.
    Shutdown,
}

async fn committed_commands_survive_the_loss_of_the_leader(loss: LeaderLoss) {
    let mut cluster = Cluster::start(3, RaftConfig::default()).await;
    let committed = commit_a_plan(&cluster).await;
    let old = cluster
        .leader_among(&cluster.ids(), Duration::from_secs(1))
        .await;
    let others: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != old).collect();

    let lost = Instant::now();
    match loss {
        LeaderLoss::Cut => cluster.router.isolate(old),
        LeaderLoss::Shutdown => cluster.stop(old).await,
    }
    let new = cluster.leader_among(&others, Duration::from_secs(2)).await;
    let failover = lost.elapsed();
    println!("leader {old} lost ({loss:?}): node {new} leads after {failover:?}");
    assert!(failover < Duration::from_secs(2));

    // The new leader applies what the old one committed once it commits an entry of its own
    // term (openraft's blank entry at election).
    let state = cluster.converged(&others, Duration::from_secs(2)).await;
    assert_eq!(state, committed);

    let new_leader = cluster.node(new);
    assert_eq!(
        new_leader.write(put_pipeline("views", 1)).await.unwrap(),
        Outcome::PipelineVersion { version: 1 }
    );
    let plan = Command::ApplyPlan {
        moves: vec![assign("views", 0, "e2")],
    };
    assert_eq!(
        new_leader.write(plan).await.unwrap(),
        Outcome::Applied { moves: 1 }
    );
    let state = cluster.converged(&others, Duration::from_secs(2)).await;
    assert_eq!(state.owned_by("e2").count(), 2);

    if let LeaderLoss::Cut = loss {
        cluster.router.heal();
        let healed = cluster
            .converged(&cluster.ids(), Duration::from_secs(5))
            .await;
        assert_eq!(healed, state, "the old leader follows the new one");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_commands_survive_a_leader_cut_off() {
    committed_commands_survive_the_loss_of_the_leader(LeaderLoss::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_commands_survive_a_leader_shut_down() {
    committed_commands_survive_the_loss_of_the_leader(LeaderLoss::Shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_commits_nothing_and_follows_the_majority_after_healing() {
    let config = RaftConfig {
        write_timeout_ms: 1_000,
        ..RaftConfig::default()
    };
    let cluster = Cluster::start(3, config).await;
    cluster.write(register("e1")).await.unwrap();
    let old = cluster
        .leader_among(&cluster.ids(), Duration::from_secs(1))
        .await;
    let majority: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    cluster
        .converged(&cluster.ids(), Duration::from_secs(2))
        .await;

    cluster.router.partition(&[&[old], &majority]);
    let before = cluster.node(old).state();
    match cluster.node(old).write(register("ghost")).await {
        Err(WriteError::Timeout(_)) => {}
        other => panic!("the minority's leader committed alone: {other:?}"),
    }
    assert_eq!(
        cluster.node(old).state(),
        before,
        "the minority applied nothing"
    );

    let new = cluster
        .leader_among(&majority, Duration::from_secs(2))
        .await;
    // Incarnations come from one counter: the second executor registered gets 2.
    assert_eq!(
        cluster.node(new).write(register("e2")).await.unwrap(),
        Outcome::Registered { incarnation: 2 }
    );
    let majority_state = cluster.converged(&majority, Duration::from_secs(2)).await;
    assert_eq!(cluster.node(old).state(), before, "still cut off");

    cluster.router.heal();
    let healed = cluster
        .converged(&cluster.ids(), Duration::from_secs(5))
        .await;
    assert_eq!(healed, majority_state);
    assert!(healed.executors.contains_key("e2"));
    assert!(
        !healed.executors.contains_key("ghost"),
        "the minority's uncommitted entry was dropped"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_catches_up_from_a_snapshot() {
    let config = RaftConfig {
        snapshot_after_logs: 10,
        logs_kept_after_snapshot: 0,
        ..RaftConfig::default()
    };
    let cluster = Cluster::start(3, config).await;
    let leader = cluster
        .leader_among(&cluster.ids(), Duration::from_secs(1))
        .await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.write(register("first")).await.unwrap();
    cluster
        .converged(&cluster.ids(), Duration::from_secs(2))
        .await;
    let behind = cluster.node(follower).metrics().last_applied;

    cluster.router.isolate(follower);
    for i in 0..30 {
        cluster
            .node(leader)
            .write(register(&format!("e{i}")))
            .await
            .unwrap();
    }
    let purged = cluster
        .node(leader)
        .raft()
        .wait(Some(Duration::from_secs(5)))
        .metrics(
            |m| m.purged.map(|p| p.index) > behind,
            "the leader purged past the follower",
        )
        .await
        .unwrap()
        .purged;
    println!("follower {follower} at {behind:?}, leader purged up to {purged:?}");

    cluster.router.heal();
    let state = cluster
        .converged(&cluster.ids(), Duration::from_secs(5))
        .await;
    assert_eq!(state.executors.len(), 31);
    let snapshot = cluster.node(follower).raft().metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "the follower holds a snapshot");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_follower_does_not_depose_a_leader_that_a_majority_follows() {
    let cluster = Cluster::start(3, RaftConfig::default()).await;
    cluster.write(register("e1")).await.unwrap();
    let leader = cluster
        .leader_among(&cluster.ids(), Duration::from_secs(1))
        .await;
    cluster
        .converged(&cluster.ids(), Duration::from_secs(2))
        .await;
    let term = cluster.node(leader).metrics().term;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();

    // Cut off for many election timeouts, then back.
    cluster.router.isolate(follower);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cluster.node(follower).metrics().term,
        term,
        "alone, it never wins a pre-vote, so it never raises its term"
    );
    cluster.router.heal();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in cluster.ids() {
        let m = cluster.node(id).metrics();
        assert_eq!(m.term, term, "node {id}: the term stayed");
        assert_eq!(m.leader, Some(leader), "node {id}: the leader stayed");
    }
    // And the group still elects when its leader is really gone.
    cluster.router.isolate(leader);
    let others: Vec<NodeId> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let new = cluster.leader_among(&others, Duration::from_secs(3)).await;
    assert_ne!(new, leader);
    cluster.router.heal();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_left_of_three_elect_one_leader_and_keep_it_though_their_answers_are_slow() {
    // Slow answers to pre-votes: they come back after the asker may have voted for the
    // other node meanwhile. It must not stand then, or the two depose each other in turn.
    let mut changes = Vec::new();
    for _ in 0..4 {
        let mut cluster = Cluster::start(3, RaftConfig::default()).await;
        cluster
            .router
            .set_pre_vote_reply_delay(Duration::from_millis(100));
        let old = cluster
            .leader_among(&cluster.ids(), Duration::from_secs(2))
            .await;
        cluster.stop(old).await;
        let others: Vec<NodeId> = cluster.ids();
        cluster.leader_among(&others, Duration::from_secs(3)).await;
        // Every term that had a leader over the next two seconds.
        let mut terms = BTreeSet::new();
        let watching = Instant::now();
        while watching.elapsed() < Duration::from_secs(2) {
            for &id in &others {
                let m = cluster.node(id).metrics();
                if m.server_state == ServerState::Leader {
                    terms.insert(m.term);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        changes.push(terms.len());
        cluster.shutdown().await;
    }
    println!("terms with a leader in the 2 s after each stop: {changes:?}");
    assert!(
        changes.iter().all(|&n| n == 1),
        "one leader, kept, after each stop: {changes:?}"
    );
}
