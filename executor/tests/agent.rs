//! The executor agent against a coordinator in this process, through the
//! `CoordinatorClient` seam: no socket, no port.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mirador_coordinator::control::ControlConfig;
use mirador_coordinator::node::SpecConnectors;
use mirador_coordinator::server::InProcessCoordinator;
use mirador_executor::agent::{
    AgentConfig, CoordinatorClient, CoordinatorError, ExecutorAgent, InProcessCoordinators,
};
use mirador_executor::connectors::registry;
use mirador_executor::infer::InferencePool;
use mirador_executor::pipeline::Counts;
use mirador_proto::admin::admin_server::Admin;
use mirador_proto::admin::PipelineSpecRequest;
use mirador_proto::coordinator::{CommitRequest, HeartbeatRequest, RegisterRequest};
use tonic::Request;

fn agent_config(id: &str) -> AgentConfig {
    AgentConfig {
        executor_id: id.into(),
        address: String::new(),
        region: "test".into(),
        slots: 4,
        gpu: false,
        coordinators: Vec::new(),
    }
}

fn generator_pipeline(dir: &std::path::Path, partitions: u32, events: u64) -> String {
    let source = format!(
        "  generator:\n    events: {events}\n    partitions: {partitions}\n    customers: 500"
    );
    let sink = format!("  file:\n    path: {}", dir.join("scored.jsonl").display());
    let dead_letter = format!("  file:\n    path: {}", dir.join("dead.jsonl").display());
    common::spec_yaml(
        "agent-test",
        &source,
        &sink,
        &dead_letter,
        &dir.join("checkpoints"),
    )
}

async fn start_coordinator(dir: &std::path::Path) -> InProcessCoordinator {
    InProcessCoordinator::start(
        &dir.join("raft"),
        ControlConfig::default(),
        Arc::new(SpecConnectors::new(
            registry::count_partitions,
            registry::move_source,
        )),
    )
    .await
    .expect("an in-process coordinator starts")
}

async fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_its_partitions_to_the_end_and_commits_them_through_an_in_process_coordinator(
) {
    const EVENTS: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start_coordinator(dir.path()).await;
    let client = Arc::new(InProcessCoordinators::new(coordinator.executors.clone()));
    let agent = Arc::new(ExecutorAgent::with_coordinators(
        agent_config("e1"),
        InferencePool::default(),
        client,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.clone().run(async {
        let _ = stopped.await;
    }));

    coordinator
        .admin
        .create_pipeline(Request::new(PipelineSpecRequest {
            spec: generator_pipeline(dir.path(), 2, EVENTS),
        }))
        .await
        .expect("the pipeline is created");

    // Both partitions are assigned to the one executor and reach their end; their last
    // checkpoints reach the replicated state under the assignment's epoch.
    let raft = coordinator.raft.clone();
    let checkpoints = wait_until(
        "both checkpoints at the end",
        Duration::from_secs(60),
        || {
            let state = raft.state();
            let done: Vec<_> = (0..2)
                .filter_map(|p| state.checkpoints.get(&("agent-test".to_string(), p)))
                .filter(|c| c.position == EVENTS)
                .copied()
                .collect();
            (done.len() == 2).then_some(done)
        },
    )
    .await;
    let state = raft.state();
    for (partition, checkpoint) in checkpoints.iter().enumerate() {
        let assignment = &state.assignments[&("agent-test".to_string(), partition as u32)];
        assert_eq!(assignment.owner.as_deref(), Some("e1"));
        assert_eq!(checkpoint.epoch, assignment.epoch);
    }
    let counts = Counts::of(&agent.snapshots().await);
    assert_eq!(counts.read, 2 * EVENTS);
    assert_eq!(counts.scored + counts.dead_lettered, 2 * EVENTS);

    // On shutdown the agent releases what it ran: no owner is left.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the agent stops")
        .unwrap();
    let state = raft.state();
    for partition in 0..2 {
        let assignment = &state.assignments[&("agent-test".to_string(), partition)];
        assert_ne!(
            assignment.owner.as_deref(),
            Some("e1"),
            "partition {partition} released"
        );
    }
    coordinator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_incarnation_is_fenced_as_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start_coordinator(dir.path()).await;
    let client = InProcessCoordinators::new(coordinator.executors.clone());
    let register = RegisterRequest {
        executor_id: "e1".into(),
        address: String::new(),
        region: "test".into(),
        slots: 2,
        gpu: false,
    };
    let first = client.register(register.clone()).await.unwrap();
    let second = client.register(register.clone()).await.unwrap();
    assert!(second.incarnation > first.incarnation);

    let heartbeat = |incarnation| HeartbeatRequest {
        executor_id: "e1".into(),
        incarnation,
        partitions: Vec::new(),
    };
    client
        .heartbeat(heartbeat(second.incarnation))
        .await
        .unwrap();
    let stale = client.heartbeat(heartbeat(first.incarnation)).await;
    assert!(
        matches!(&stale, Err(CoordinatorError::Fenced(m)) if m.contains("incarnation")),
        "{stale:?}"
    );
    let commit = client
        .commit_checkpoint(CommitRequest {
            executor_id: "e1".into(),
            incarnation: first.incarnation,
            pipeline: "none".into(),
            partition: 0,
            epoch: 1,
            position: 10,
        })
        .await;
    assert!(
        matches!(commit, Err(CoordinatorError::Fenced(_))),
        "{commit:?}"
    );
    // A bad request is refused, not fenced.
    let refused = client
        .register(RegisterRequest {
            slots: 0,
            ..register
        })
        .await;
    assert!(matches!(refused, Err(CoordinatorError::Refused(m)) if m.contains("slots")));
    coordinator.shutdown().await;
}
