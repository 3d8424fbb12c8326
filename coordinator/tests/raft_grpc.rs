//! Three coordinators over real gRPC on localhost: the same group as the in-memory tests,
//! through `GrpcNetwork` and `RaftService`.

mod common;

use common::register;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mirador_coordinator::raft::{NodeId, RaftConfig, RaftNode, WriteError};
use mirador_coordinator::state::Outcome;
use openraft::ServerState;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

struct Coordinator {
    node: RaftNode,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
    _dir: TempDir,
}

async fn start(id: NodeId, incoming: TcpIncoming, addr: String) -> Coordinator {
    let dir = TempDir::new().unwrap();
    let node = RaftNode::start_grpc(id, addr, dir.path(), &RaftConfig::default())
        .await
        .unwrap();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let service = node.grpc_service();
    let server = tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                stopped.await.ok();
            })
            .await
            .unwrap();
    });
    Coordinator {
        node,
        stop_server,
        server,
        _dir: dir,
    }
}

async fn leader_among(nodes: &BTreeMap<NodeId, Coordinator>, within: Duration) -> NodeId {
    let deadline = Instant::now() + within;
    loop {
        let leader = nodes
            .values()
            .map(|c| c.node.metrics())
            .filter(|m| m.server_state == ServerState::Leader)
            .max_by_key(|m| m.term);
        if let Some(leader) = leader {
            return leader.id;
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_over_grpc_replicate_and_fail_over() {
    let mut incoming = BTreeMap::new();
    let mut members = BTreeMap::new();
    for id in 1..=3 {
        let listener = TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .with_nodelay(Some(true));
        members.insert(id, listener.local_addr().unwrap().to_string());
        incoming.insert(id, listener);
    }
    let mut nodes = BTreeMap::new();
    for (id, listener) in incoming {
        nodes.insert(id, start(id, listener, members[&id].clone()).await);
    }
    nodes[&1].node.initialize(members.clone()).await.unwrap();
    let leader = leader_among(&nodes, Duration::from_secs(5)).await;
    let follower = *nodes.keys().find(|&&id| id != leader).unwrap();
    nodes[&follower]
        .node
        .raft()
        .wait(Some(Duration::from_secs(2)))
        .current_leader(leader, "the follower hears from the leader")
        .await
        .unwrap();

    // A follower sends the client to the leader's gRPC address.
    match nodes[&follower].node.write(register("e1")).await {
        Err(WriteError::ForwardToLeader {
            leader_id,
            leader_addr,
        }) => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(leader_addr.as_ref(), Some(&members[&leader]));
        }
        other => panic!("a follower accepted a write: {other:?}"),
    }
    assert_eq!(
        nodes[&leader].node.write(register("e1")).await.unwrap(),
        Outcome::Registered { incarnation: 1 }
    );
    let metrics = nodes[&leader].node.metrics();
    assert_eq!(metrics.voters.len(), 3);
    assert_eq!(metrics.members, members);

    // The leader's process goes away: server and Raft.
    let old = nodes.remove(&leader).unwrap();
    let lost = Instant::now();
    old.stop_server.send(()).ok();
    old.node.shutdown().await.unwrap();
    old.server.await.unwrap();
    let new = leader_among(&nodes, Duration::from_secs(2)).await;
    println!(
        "gRPC: leader {leader} stopped, node {new} leads after {:?}",
        lost.elapsed()
    );
    // Incarnations come from one counter: the second executor registered gets 2.
    assert_eq!(
        nodes[&new].node.write(register("e2")).await.unwrap(),
        Outcome::Registered { incarnation: 2 }
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while nodes.values().any(|c| c.node.state().executors.len() != 2) {
        assert!(
            Instant::now() < deadline,
            "both writes reach both nodes left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (_, coordinator) in nodes {
        coordinator.stop_server.send(()).ok();
        coordinator.node.shutdown().await.unwrap();
    }
}
