//! The gRPC service that executors call: register, heartbeat, follow assignments, commit
//! checkpoints, release partitions. Only the leader answers.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use mirador_proto::coordinator::executor_service_server::ExecutorService;
use mirador_proto::coordinator::{
    AssignmentSet, CommitRequest, CommitResponse, HeartbeatRequest, HeartbeatResponse,
    LeaveRequest, LeaveResponse, PartitionAssignment, RegisterRequest, RegisterResponse,
    ReleaseRequest, ReleaseResponse, WatchRequest,
};
use tonic::{Request, Response, Status};

use crate::control::{ControlConfig, Observations};
use crate::raft::RaftNode;
use crate::region::Regions;
use crate::state::{ClusterState, Command, Outcome};

pub struct ExecutorEndpoint {
    raft: Arc<RaftNode>,
    observations: Observations,
    config: ControlConfig,
    regions: Arc<Regions>,
}

impl ExecutorEndpoint {
    pub fn new(
        raft: Arc<RaftNode>,
        observations: Observations,
        config: ControlConfig,
        regions: Arc<Regions>,
    ) -> Self {
        ExecutorEndpoint {
            raft,
            observations,
            config,
            regions,
        }
    }

    /// A leader that has not checked, in its term, which pipelines the other region owns
    /// lets nothing start or commit (executors ask again).
    fn open(&self) -> Result<(), Status> {
        if self.regions.open_to_executors() {
            Ok(())
        } else {
            Err(Status::unavailable(
                "this leader is checking which pipelines the other region owns: ask again",
            ))
        }
    }

    /// Refuses a call from an executor that is unknown or from an older incarnation.
    fn check_incarnation(
        state: &ClusterState,
        executor: &str,
        incarnation: u64,
    ) -> Result<(), Status> {
        match state.executors.get(executor) {
            Some(e) if e.incarnation == incarnation => Ok(()),
            Some(e) => Err(Status::failed_precondition(format!(
                "executor_id: {executor:?} is at incarnation {}, not {incarnation}",
                e.incarnation
            ))),
            None => Err(Status::failed_precondition(format!(
                "executor_id: {executor:?} is not registered (expired?)"
            ))),
        }
    }
}

/// The assignments of one executor in `state`.
pub fn assignments_of(state: &ClusterState, executor: &str) -> AssignmentSet {
    let partitions = state
        .owned_by(executor)
        .filter_map(|((pipeline, partition), a)| {
            let p = state.pipelines.get(pipeline)?;
            Some(PartitionAssignment {
                pipeline: pipeline.clone(),
                partition: *partition,
                epoch: a.epoch,
                spec: p.spec.clone(),
                version: p.version,
                checkpoint: state
                    .checkpoints
                    .get(&(pipeline.clone(), *partition))
                    .map(|c| c.position),
                // Paused, or handed over to the other region: stop at a checkpoint and
                // release.
                run: a.target.is_none() && !p.paused && p.is_local(),
            })
        })
        .collect();
    AssignmentSet { partitions }
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    Ok(())
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<AssignmentSet, Status>> + Send>>;

#[tonic::async_trait]
impl ExecutorService for ExecutorEndpoint {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.raft.lead()?;
        let r = request.into_inner();
        required("executor_id", &r.executor_id)?;
        if r.slots == 0 || r.slots > 10_000 {
            return Err(Status::invalid_argument(format!(
                "slots: {} is invalid: between 1 and 10000",
                r.slots
            )));
        }
        let outcome = self
            .raft
            .commit(Command::RegisterExecutor {
                id: r.executor_id.clone(),
                address: r.address,
                region: r.region,
                slots: r.slots,
                gpu: r.gpu,
            })
            .await?;
        let Outcome::Registered { incarnation } = outcome else {
            return Err(Status::internal("registration gave no incarnation"));
        };
        self.observations
            .heartbeat(&r.executor_id, incarnation, Vec::new());
        Ok(Response::new(RegisterResponse {
            incarnation,
            lease_ms: self.config.lease.as_millis() as u64,
            heartbeat_ms: self.config.heartbeat.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.raft.lead()?;
        // An answered heartbeat extends the executor's lease: only a leader that a
        // majority still follows may give one, or an executor would run on through a lost
        // quorum while the majority side hands its partitions to others.
        if !self.raft.leads_a_quorum() {
            return Err(Status::unavailable(
                "this coordinator leads no majority of the region's coordinators",
            ));
        }
        let r = request.into_inner();
        Self::check_incarnation(&self.raft.state(), &r.executor_id, r.incarnation)?;
        self.observations
            .heartbeat(&r.executor_id, r.incarnation, r.partitions);
        Ok(Response::new(HeartbeatResponse {}))
    }

    type WatchAssignmentsStream = AssignmentStream;

    async fn watch_assignments(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<AssignmentStream>, Status> {
        self.raft.lead()?;
        self.open()?;
        let r = request.into_inner();
        Self::check_incarnation(&self.raft.state(), &r.executor_id, r.incarnation)?;
        let mut states = self.raft.subscribe();
        let raft = self.raft.clone();
        let observations = self.observations.clone();
        // A bounded channel: a slow executor holds back only its own stream, and only the
        // newest set matters.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<AssignmentSet> = None;
            loop {
                let state = states.borrow_and_update().clone();
                if !raft.is_leader() {
                    let _ = tx.send(Err(raft.not_leader())).await;
                    return;
                }
                if let Err(status) = Self::check_incarnation(&state, &r.executor_id, r.incarnation)
                {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let set = assignments_of(&state, &r.executor_id);
                if last.as_ref() != Some(&set) {
                    for p in set.partitions.iter().filter(|p| p.run) {
                        observations.dispatched(&(p.pipeline.clone(), p.partition));
                    }
                    if tx.send(Ok(set.clone())).await.is_err() {
                        return;
                    }
                    last = Some(set);
                }
                // Leadership can go without a state change: look again now and then.
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(500), states.changed())
                        .await;
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn commit_checkpoint(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        self.raft.lead()?;
        self.open()?;
        let r = request.into_inner();
        Self::check_incarnation(&self.raft.state(), &r.executor_id, r.incarnation)?;
        self.raft
            .commit(Command::CommitCheckpoint {
                pipeline: r.pipeline,
                partition: r.partition,
                executor: r.executor_id,
                epoch: r.epoch,
                position: r.position,
            })
            .await?;
        Ok(Response::new(CommitResponse {}))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        self.raft.lead()?;
        let r = request.into_inner();
        Self::check_incarnation(&self.raft.state(), &r.executor_id, r.incarnation)?;
        // Noted before the commit: the new owner's stream may carry the partition before
        // this call returns. A release for an operator's pause is no move: the time the
        // pipeline stays paused is not a move's pause.
        let paused = self
            .raft
            .state()
            .pipelines
            .get(&r.pipeline)
            .is_some_and(|p| p.paused || !p.is_local());
        if !paused {
            self.observations
                .released((r.pipeline.clone(), r.partition), r.stop_ms);
        }
        self.raft
            .commit(Command::Release {
                pipeline: r.pipeline,
                partition: r.partition,
                executor: r.executor_id,
                epoch: r.epoch,
                finished: r.finished,
            })
            .await?;
        Ok(Response::new(ReleaseResponse {}))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        self.raft.lead()?;
        let r = request.into_inner();
        Self::check_incarnation(&self.raft.state(), &r.executor_id, r.incarnation)?;
        // Drained: the planner gives it nothing new while it releases what it runs. Its
        // lease then runs out, and the leader forgets it.
        self.raft
            .commit(Command::SetDraining {
                id: r.executor_id,
                draining: true,
            })
            .await?;
        Ok(Response::new(LeaveResponse {}))
    }
}
