//! The admin gRPC API: the Raft group, executors and pipelines of a region. A bad request
//! is refused with INVALID_ARGUMENT naming the field, before anything is written.

use std::collections::BTreeSet;
use std::sync::Arc;

use mirador_proto::admin::admin_server::Admin;
use mirador_proto::admin::{
    AddLearnerRequest, ClusterStatusRequest, ClusterStatusResponse, CreateSnapshotRequest,
    DeletePipelineResponse, DrainNodeRequest, FailoverRequest, FailoverResponse, ListNodesRequest,
    ListNodesResponse, ListPipelinesRequest, ListPipelinesResponse, ListSnapshotsRequest,
    ListSnapshotsResponse, Member, MemberRequest, NodeInfo, PartitionInfo, PipelineInfo,
    PipelineRequest, PipelineSpecRequest, RegionsRequest, RegionsResponse, RestoreRequest,
    RestoreResponse, ShowSnapshotRequest, ShowSnapshotResponse, SnapshotInfo,
};
use tonic::{Request, Response, Status};

use crate::control::Observations;
use crate::raft::RaftNode;
use crate::region::Regions;
use crate::snapshot::Snapshots;
use crate::state::{ClusterState, Command};
use crate::status::write_error;

/// A pipeline spec that passed validation: what the coordinators need of it.
#[derive(Clone, Debug)]
pub struct ValidPipeline {
    pub name: String,
    pub partitions: u32,
    pub gpu: bool,
    /// Its `failover:` mode.
    pub failover: mirador_spec::FailoverMode,
}

pub use mirador_spec::FieldError;

/// What the coordinators ask of the connectors, which they do not link (they belong to the
/// executors, with the spec's schema and libtorch): the binary passes them in.
#[tonic::async_trait]
pub trait Connectors: Send + Sync + 'static {
    /// Checks a pipeline spec.
    async fn validate(&self, spec: &str) -> Result<ValidPipeline, FieldError>;

    /// Before this region (`to`) starts a pipeline that region `from` ran: moves this
    /// region's copy of its source to where `from`'s stands (a Pub/Sub subscription per
    /// region). `since`: when the snapshot it resumes from was taken. Returns what was
    /// done, for the log; `Ok(None)` when the source needs nothing.
    async fn move_source(
        &self,
        spec: &str,
        from: &str,
        to: &str,
        since: std::time::SystemTime,
    ) -> anyhow::Result<Option<String>> {
        let _ = (spec, from, to, since);
        Ok(None)
    }
}

pub struct AdminEndpoint {
    raft: Arc<RaftNode>,
    observations: Observations,
    validator: Arc<dyn Connectors>,
    snapshots: Arc<Snapshots>,
    regions: Arc<Regions>,
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    crate::status::invalid(&FieldError::new(field, message.to_string()))
}

/// Entries a learner may still lack when it is made a voter: it catches up within a few
/// heartbeats. One that lags more (or cannot be reached at all) would count towards the
/// quorum without being able to vote in time.
pub const PROMOTE_MAX_LAG: u64 = 64;
/// How long a promote waits for a learner to come within [`PROMOTE_MAX_LAG`].
const PROMOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn not_a_member(id: u64) -> Status {
    invalid("node_id", format!("{id} is not a member or learner"))
}

fn valid_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    Ok(())
}

impl AdminEndpoint {
    /// Waits a little for learner `id` to come within [`PROMOTE_MAX_LAG`] entries of the
    /// leader's log; refuses with how far behind it is.
    async fn caught_up(&self, id: u64) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + PROMOTE_WAIT;
        loop {
            let lag = self.raft.replication_lag(id);
            if lag.is_some_and(|lag| lag <= PROMOTE_MAX_LAG) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let behind = match lag {
                    Some(lag) => format!("{lag} entries behind the leader's log"),
                    None => "behind by the whole log (it has acknowledged none of it)".to_string(),
                };
                return Err(Status::failed_precondition(format!(
                    "node_id: learner {id} is {behind} (a voter may lag {PROMOTE_MAX_LAG} at \
                     most): check that it runs at its address, and promote it once it has \
                     caught up"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn new(
        raft: Arc<RaftNode>,
        observations: Observations,
        validator: Arc<dyn Connectors>,
        snapshots: Arc<Snapshots>,
        regions: Arc<Regions>,
    ) -> Self {
        AdminEndpoint {
            raft,
            observations,
            validator,
            snapshots,
            regions,
        }
    }

    async fn validated(&self, spec: &str) -> Result<ValidPipeline, Status> {
        if spec.trim().is_empty() {
            return Err(invalid("spec", "is empty"));
        }
        if spec.len() > 1 << 20 {
            return Err(invalid("spec", "is over 1 MiB"));
        }
        self.validator
            .validate(spec)
            .await
            .map_err(|e| invalid(&format!("spec.{}", e.field), e.message))
    }

    fn pipeline_info(&self, state: &ClusterState, name: &str) -> Result<PipelineInfo, Status> {
        let p = state
            .pipelines
            .get(name)
            .ok_or_else(|| Status::not_found(format!("name: no pipeline {name:?}")))?;
        let assignments = (0..p.partitions)
            .map(|partition| {
                let key = (name.to_string(), partition);
                let a = state.assignments.get(&key);
                let progress = self
                    .observations
                    .progress(&key)
                    .filter(|progress| a.is_some_and(|a| a.epoch == progress.epoch));
                let progress = progress.unwrap_or_default();
                PartitionInfo {
                    partition,
                    owner: a.and_then(|a| a.owner.clone()).unwrap_or_default(),
                    epoch: a.map_or(0, |a| a.epoch),
                    moving_to: a.and_then(|a| a.target.clone()).unwrap_or_default(),
                    checkpoint: state.checkpoints.get(&key).map(|c| c.position),
                    // Finished: its bounded source is committed to the end.
                    lag: if a.is_some_and(|a| a.finished) {
                        Some(0)
                    } else {
                        progress.lag
                    },
                    events_per_sec: progress.events_per_sec,
                    records_in: progress.records_in,
                    dead_lettered: progress.dead_lettered,
                    restarts: progress.stage_restarts + progress.generation_restarts,
                    failed: progress.failed,
                    last_move_pause_ms: self
                        .observations
                        .move_pause(&key)
                        .and_then(|m| m.pause_ms)
                        .unwrap_or_default(),
                    state: partition_state(state, p, a),
                    // Finished: nothing more arrives, its freshness is no longer news.
                    freshness_ms: progress
                        .freshness_ms
                        .filter(|_| !a.is_some_and(|a| a.finished)),
                    system_lag_ms: progress.system_lag_ms,
                    slo_met: (progress.slo_measured_ms > 0)
                        .then(|| progress.slo_good_ms as f64 / progress.slo_measured_ms as f64),
                }
            })
            .collect();
        let slo = mirador_spec::PipelineSpec::from_yaml(&p.spec)
            .ok()
            .and_then(|spec| spec.slo);
        let (measured, good) = (0..p.partitions)
            .filter_map(|partition| self.observations.progress(&(name.to_string(), partition)))
            .fold((0u64, 0u64), |(m, g), progress| {
                (m + progress.slo_measured_ms, g + progress.slo_good_ms)
            });
        let met = (slo.is_some() && measured > 0).then(|| good as f64 / measured as f64);
        Ok(PipelineInfo {
            name: p.name.clone(),
            version: p.version,
            partitions: p.partitions,
            gpu: p.gpu,
            paused: p.paused,
            assignments,
            spec: p.spec.clone(),
            region: p
                .owned_by
                .clone()
                .unwrap_or_else(|| self.regions.names().0.to_string()),
            region_epoch: p.region_epoch,
            failover: p.failover.as_str().to_string(),
            slo_freshness_p90_secs: slo.map(|slo| slo.freshness_p90_secs),
            slo_met: met,
            // The budget is the time the objective leaves out of the target.
            slo_budget_left: met
                .map(|met| 1.0 - (1.0 - met) / (1.0 - mirador_spec::SloSpec::OBJECTIVE)),
        })
    }

    fn status(&self) -> ClusterStatusResponse {
        let s = self.raft.status();
        ClusterStatusResponse {
            leader_id: s.leader_id.unwrap_or_default(),
            leader_address: s.leader_addr.unwrap_or_default(),
            term: s.term,
            last_applied: s.last_applied,
            members: s
                .members
                .into_iter()
                .map(|m| Member {
                    node_id: m.id,
                    address: m.addr,
                    role: m.role.to_string(),
                })
                .collect(),
        }
    }

    /// Creates a pipeline (`update` false: it must not exist) or replaces its spec
    /// (`update` true: it must exist).
    ///
    /// A create of the very spec a pipeline of version 1 already has answers as `describe`
    /// and changes nothing: a client that lost the answer to its create (a connection cut
    /// after the commit) can send it again safely.
    async fn put_pipeline(&self, spec: String, update: bool) -> Result<PipelineInfo, Status> {
        self.raft.lead()?;
        let valid = self.validated(&spec).await?;
        let state = self.raft.state();
        let existing = state.pipelines.get(&valid.name);
        if !update && existing.is_some_and(|p| p.version == 1 && p.spec == spec) {
            return self.pipeline_info(&state, &valid.name);
        }
        match (existing.is_some(), update) {
            (true, false) => {
                return Err(Status::already_exists(format!(
                    "spec.name: pipeline {:?} exists; update it instead",
                    valid.name
                )))
            }
            (false, true) => {
                return Err(Status::not_found(format!(
                    "spec.name: no pipeline {:?}; create it first",
                    valid.name
                )))
            }
            _ => {}
        }
        self.raft
            .commit(Command::PutPipeline {
                name: valid.name.clone(),
                spec,
                partitions: valid.partitions,
                gpu: valid.gpu,
                failover: valid.failover,
            })
            .await?;
        self.pipeline_info(&self.raft.state(), &valid.name)
    }

    async fn set_paused(&self, name: String, paused: bool) -> Result<PipelineInfo, Status> {
        self.raft.lead()?;
        valid_name("name", &name)?;
        self.raft
            .commit(Command::SetPaused {
                name: name.clone(),
                paused,
            })
            .await?;
        self.pipeline_info(&self.raft.state(), &name)
    }
}

#[tonic::async_trait]
impl Admin for AdminEndpoint {
    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.raft.lead()?;
        let r = request.into_inner();
        if r.node_id == 0 {
            return Err(invalid("node_id", "must not be 0"));
        }
        if r.address.parse::<std::net::SocketAddr>().is_err() && !r.address.contains(':') {
            return Err(invalid(
                "address",
                format!("{:?} is not host:port", r.address),
            ));
        }
        match self.raft.status().member(r.node_id) {
            // Asked again: nothing to change.
            Some(m) if m.role == "learner" && m.addr == r.address => {
                return Ok(Response::new(self.status()))
            }
            Some(m) => {
                return Err(Status::failed_precondition(format!(
                    "node_id: {} is already a {} at {}; remove it first to give it another \
                     address",
                    r.node_id, m.role, m.addr
                )))
            }
            None => {}
        }
        self.raft
            .add_learner(r.node_id, r.address)
            .await
            .map_err(write_error)?;
        Ok(Response::new(self.status()))
    }

    async fn promote(
        &self,
        request: Request<MemberRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.raft.lead()?;
        let id = request.into_inner().node_id;
        let status = self.raft.status();
        match status.member(id) {
            None => return Err(not_a_member(id)),
            Some(m) if m.role != "learner" => return Ok(Response::new(self.status())),
            Some(_) => self.caught_up(id).await?,
        }
        let mut voters = status.voters();
        voters.insert(id);
        self.raft
            .change_membership(voters)
            .await
            .map_err(write_error)?;
        Ok(Response::new(self.status()))
    }

    async fn remove_member(
        &self,
        request: Request<MemberRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.raft.lead()?;
        let id = request.into_inner().node_id;
        let status = self.raft.status();
        let member = status.member(id).ok_or_else(|| not_a_member(id))?;
        if member.role == "learner" {
            self.raft
                .remove_learners(BTreeSet::from([id]))
                .await
                .map_err(write_error)?;
            return Ok(Response::new(self.status()));
        }
        let mut voters = status.voters();
        if voters.len() == 1 {
            return Err(invalid("node_id", "the last voter cannot be removed"));
        }
        voters.remove(&id);
        self.raft
            .change_membership(voters)
            .await
            .map_err(write_error)?;
        Ok(Response::new(self.status()))
    }

    async fn list_nodes(
        &self,
        _request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.raft.lead()?;
        let state = self.raft.state();
        let nodes = state
            .executors
            .values()
            .map(|e| NodeInfo {
                executor_id: e.id.clone(),
                address: e.address.clone(),
                region: e.region.clone(),
                slots: e.slots,
                gpu: e.gpu,
                draining: e.draining,
                incarnation: e.incarnation,
                partitions: state.owned_by(&e.id).count() as u32,
                last_heartbeat_ms: self
                    .observations
                    .last_heartbeat(&e.id)
                    .map_or(0, |t| t.elapsed().as_millis() as u64),
            })
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<NodeInfo>, Status> {
        self.raft.lead()?;
        let r = request.into_inner();
        valid_name("executor_id", &r.executor_id)?;
        self.raft
            .commit(Command::SetDraining {
                id: r.executor_id.clone(),
                draining: !r.undo,
            })
            .await?;
        let nodes = self
            .list_nodes(Request::new(ListNodesRequest {}))
            .await?
            .into_inner()
            .nodes;
        nodes
            .into_iter()
            .find(|n| n.executor_id == r.executor_id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("executor_id: {:?} is gone", r.executor_id)))
    }

    async fn create_pipeline(
        &self,
        request: Request<PipelineSpecRequest>,
    ) -> Result<Response<PipelineInfo>, Status> {
        Ok(Response::new(
            self.put_pipeline(request.into_inner().spec, false).await?,
        ))
    }

    async fn update_pipeline(
        &self,
        request: Request<PipelineSpecRequest>,
    ) -> Result<Response<PipelineInfo>, Status> {
        Ok(Response::new(
            self.put_pipeline(request.into_inner().spec, true).await?,
        ))
    }

    async fn pause_pipeline(
        &self,
        request: Request<PipelineRequest>,
    ) -> Result<Response<PipelineInfo>, Status> {
        Ok(Response::new(
            self.set_paused(request.into_inner().name, true).await?,
        ))
    }

    async fn resume_pipeline(
        &self,
        request: Request<PipelineRequest>,
    ) -> Result<Response<PipelineInfo>, Status> {
        Ok(Response::new(
            self.set_paused(request.into_inner().name, false).await?,
        ))
    }

    async fn delete_pipeline(
        &self,
        request: Request<PipelineRequest>,
    ) -> Result<Response<DeletePipelineResponse>, Status> {
        self.raft.lead()?;
        let name = request.into_inner().name;
        valid_name("name", &name)?;
        self.raft.commit(Command::DeletePipeline { name }).await?;
        Ok(Response::new(DeletePipelineResponse {}))
    }

    async fn describe_pipeline(
        &self,
        request: Request<PipelineRequest>,
    ) -> Result<Response<PipelineInfo>, Status> {
        self.raft.lead()?;
        let name = request.into_inner().name;
        valid_name("name", &name)?;
        Ok(Response::new(
            self.pipeline_info(&self.raft.state(), &name)?,
        ))
    }

    async fn list_pipelines(
        &self,
        _request: Request<ListPipelinesRequest>,
    ) -> Result<Response<ListPipelinesResponse>, Status> {
        self.raft.lead()?;
        let state = self.raft.state();
        let pipelines = state
            .pipelines
            .keys()
            .map(|name| self.pipeline_info(&state, name))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ListPipelinesResponse { pipelines }))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        self.raft.lead()?;
        let region = request.into_inner().region;
        let (here, peer) = self.regions.names();
        let store = if region.is_empty() || region == here {
            self.snapshots.store()
        } else if Some(region.as_str()) == peer {
            &self.snapshots.peer().expect("a peer's name").incoming
        } else {
            return Err(invalid(
                "region",
                format!("{region:?} is neither this region ({here:?}) nor the other"),
            ));
        };
        Ok(Response::new(
            crate::snapshot::admin::list(&self.snapshots, store).await?,
        ))
    }

    async fn show_snapshot(
        &self,
        request: Request<ShowSnapshotRequest>,
    ) -> Result<Response<ShowSnapshotResponse>, Status> {
        self.raft.lead()?;
        let sequence = request.into_inner().sequence;
        Ok(Response::new(
            crate::snapshot::admin::show(&self.snapshots, sequence).await?,
        ))
    }

    async fn create_snapshot(
        &self,
        _request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<SnapshotInfo>, Status> {
        self.raft.lead()?;
        Ok(Response::new(
            crate::snapshot::admin::create(&self.snapshots, &self.raft).await?,
        ))
    }

    async fn restore(
        &self,
        request: Request<RestoreRequest>,
    ) -> Result<Response<RestoreResponse>, Status> {
        self.raft.lead()?;
        Ok(Response::new(
            crate::snapshot::admin::restore(&self.raft, &self.regions, request.into_inner())
                .await?,
        ))
    }

    async fn regions(
        &self,
        _request: Request<RegionsRequest>,
    ) -> Result<Response<RegionsResponse>, Status> {
        self.raft.lead()?;
        let mut response = crate::snapshot::admin::regions(&self.snapshots, &self.raft);
        self.regions.describe(&mut response);
        Ok(Response::new(response))
    }

    async fn failover(
        &self,
        request: Request<FailoverRequest>,
    ) -> Result<Response<FailoverResponse>, Status> {
        self.raft.lead()?;
        let request = request.into_inner();
        let (here, peer) = self.regions.names();
        if request.to == here {
            let response = self
                .regions
                .failover(&request.pipelines, request.force)
                .await?;
            Ok(Response::new(response))
        } else if Some(request.to.as_str()) == peer {
            Ok(Response::new(self.regions.forward(request).await?))
        } else {
            Err(invalid(
                "to",
                format!(
                    "{:?} is neither this region ({here:?}) nor the other ({})",
                    request.to,
                    peer.map_or("none configured".to_string(), |p| format!("{p:?}"))
                ),
            ))
        }
    }
}

/// What a partition is doing, for `describe`: and when nothing runs it, why.
fn partition_state(
    state: &ClusterState,
    pipeline: &crate::state::Pipeline,
    a: Option<&crate::state::Assignment>,
) -> String {
    let Some(a) = a else {
        return "waiting: not planned yet".to_string();
    };
    if a.finished {
        return "finished".to_string();
    }
    if let Some(region) = &pipeline.owned_by {
        return match a.owner {
            Some(_) => format!("stopping: region {region:?} owns it now"),
            None => format!("standby: region {region:?} runs it"),
        };
    }
    if pipeline.paused {
        return "paused".to_string();
    }
    match (&a.owner, &a.target) {
        (Some(_), Some(_)) => return "moving".to_string(),
        (Some(_), None) => return "running".to_string(),
        _ => {}
    }
    let eligible: Vec<&crate::state::Executor> = state
        .executors
        .values()
        .filter(|e| !e.draining && (e.gpu || !pipeline.gpu))
        .collect();
    if state.executors.values().all(|e| e.draining) {
        return "waiting: no executor in service".to_string();
    }
    if eligible.is_empty() {
        return "waiting: no GPU executor (the pipeline's model runs on a GPU)".to_string();
    }
    let slots: u32 = eligible.iter().map(|e| e.slots).sum();
    let taken = state
        .assignments
        .values()
        .filter(|a| {
            a.target
                .as_ref()
                .or(a.owner.as_ref())
                .is_some_and(|on| eligible.iter().any(|e| &e.id == on))
        })
        .count() as u32;
    if taken >= slots {
        format!(
            "waiting: no free slot (the {slots} slots of the executors that may run it are taken)"
        )
    } else {
        "waiting: to be assigned".to_string()
    }
}
