//! Two regions: which one owns each pipeline, planned and forced failover, and the
//! leader's region loop (ownership checks, the other region's liveness, automatic
//! failover).
//!
//! A pipeline is owned by one region at a time. Its state carries a region epoch that
//! grows at every change of owner, and every change is also an ownership record in both
//! regions' stores (see [`crate::snapshot::store`]), created only if absent:
//!
//! - *Planned* (`failover --to B`): B asks A to hand over. A stops the partitions at
//!   checkpoints (as for a pause), records B as owner at the next epoch, writes a final
//!   snapshot and copies it into B's store; B adopts the pipelines from that snapshot.
//!   Nothing is lost and nothing is processed twice.
//! - *Forced* (`--force`, or automatic for pipelines with `failover: automatic` once A's
//!   leader has not answered for `failover.after_secs`): B records itself as owner at the
//!   next epoch in its own store (and in A's when it can reach it) and adopts the
//!   pipelines from the newest whole snapshot of A that it holds. Nothing is lost (the
//!   snapshot's checkpoints are behind what A's sinks wrote); what A processed after that
//!   snapshot is processed again.
//! - *Fencing*: a leader lets executors start partitions or commit checkpoints only once,
//!   in its term, it has read the ownership records and stopped every pipeline that a
//!   record gives to the other region at a higher epoch; it reads them again at every
//!   check, so a region that returns, or was cut off while its store was reachable, stops
//!   within one check of seeing the other's record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mirador_proto::admin::admin_client::AdminClient;
use mirador_proto::admin::{FailoverRequest, FailoverResponse, Ownership, RegionsResponse};
use mirador_proto::leader::LeaderChannel;
use mirador_proto::region::region_peer_client::RegionPeerClient;
use mirador_proto::region::region_peer_server::RegionPeer;
use mirador_proto::region::{
    HandOverRequest, HandOverResponse, PeerStatusRequest, PeerStatusResponse, PipelineEpoch,
};
use mirador_proto::snapshot as pb;
use mirador_proto::sync::Locked;
use mirador_proto::transport::ChannelOptions;
use mirador_spec::{FailoverMode, FieldError};
use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::admin::Connectors;
use crate::raft::RaftNode;
use crate::snapshot::admin::info;
use crate::snapshot::store::{check_region, Owner, StoreConfig};
use crate::snapshot::Snapshots;
use crate::state::{ClusterState, Command, Pipeline};
use crate::status::invalid;

/// `peer:` in a coordinator's config file: the other region.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    pub region: String,
    /// Its snapshot store: each of this region's snapshots is copied there, and ownership
    /// records are written there too.
    pub store: StoreConfig,
    /// `host:port` of its coordinators (any of them; the leader is followed). Needed for
    /// planned failover and automatic failover; without them only a forced one is possible.
    #[serde(default)]
    pub coordinators: Vec<String>,
}

impl PeerFile {
    pub fn validate(&self, region: &str) -> Result<(), FieldError> {
        check_region("peer.region", &self.region)?;
        if self.region == region {
            return Err(FieldError::new(
                "peer.region",
                format!("{region:?} is this region's own name"),
            ));
        }
        for (i, address) in self.coordinators.iter().enumerate() {
            if address.trim().is_empty() {
                return Err(FieldError::new(
                    format!("peer.coordinators[{i}]"),
                    "is empty",
                ));
            }
        }
        Ok(())
    }
}

/// `failover:` in a coordinator's config file; each setting defaults on its own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverFile {
    /// The other region's leader silent this long: its `failover: automatic` pipelines
    /// are taken over.
    pub after_secs: u64,
    /// How often the leader reads the ownership records and asks the other region.
    pub check_ms: u64,
}

impl Default for FailoverFile {
    fn default() -> Self {
        FailoverFile {
            after_secs: 30,
            check_ms: 500,
        }
    }
}

impl FailoverFile {
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(1..=86_400).contains(&self.after_secs) {
            return Err(FieldError::new(
                "failover.after_secs",
                format!("{} is invalid: between 1 and 86400", self.after_secs),
            ));
        }
        if !(100..=60_000).contains(&self.check_ms) || self.check_ms >= self.after_secs * 1000 {
            return Err(FieldError::new(
                "failover.check_ms",
                format!(
                    "{} is invalid: between 100 and 60000, and below failover.after_secs",
                    self.check_ms
                ),
            ));
        }
        Ok(())
    }
}

/// How this region reaches the other's leader.
struct PeerLink {
    region: String,
    coordinators: Vec<String>,
    /// For `Status`: a short patience, as a silent peer is what it measures.
    status: LeaderChannel,
    /// For hand-overs and forwarded requests.
    calls: LeaderChannel,
}

/// What the leader learnt of the other region, in its memory only.
#[derive(Default)]
struct View {
    /// When the other region's leader last answered, or this node began to lead.
    last_heard: Option<Instant>,
    reachable: bool,
    /// The newest ownership records of the last check.
    records: BTreeMap<String, Owner>,
    /// The last automatic failover's failure, logged once.
    last_failure: Option<String>,
}

/// A region's side of the two-region protocol, shared by the admin API, the executor
/// service (the fence) and the region loop.
pub struct Regions {
    region: String,
    raft: Arc<RaftNode>,
    snapshots: Arc<Snapshots>,
    failover: FailoverFile,
    peer: Option<PeerLink>,
    /// The Raft term in which this node, leading, last checked ownership (0: never).
    checked_term: AtomicU64,
    view: Mutex<View>,
    /// One failover at a time, given or taken.
    busy: tokio::sync::Mutex<()>,
    /// Moves a source's position between the regions' copies before it starts here.
    connectors: Arc<dyn Connectors>,
}

fn unavailable(error: anyhow::Error) -> Status {
    Status::unavailable(format!("{error:#}"))
}

/// When a snapshot's state was read.
fn taken_at(manifest: &pb::Manifest) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(manifest.taken_at_ms)
}

/// How long a hand-over waits for partitions to stop in one call; the taker asks again.
const HAND_OVER_WAIT: Duration = Duration::from_secs(3);
/// How long a write into the other region's store may take before it is given up.
const PEER_STORE_PATIENCE: Duration = Duration::from_secs(3);

impl Regions {
    pub fn new(
        region: String,
        raft: Arc<RaftNode>,
        snapshots: Arc<Snapshots>,
        failover: FailoverFile,
        peer: Option<&PeerFile>,
        connectors: Arc<dyn Connectors>,
    ) -> Self {
        let peer = peer
            .filter(|p| !p.coordinators.is_empty())
            .map(|p| PeerLink {
                region: p.region.clone(),
                coordinators: p.coordinators.clone(),
                status: LeaderChannel::new(p.coordinators.clone(), Duration::from_secs(1)),
                calls: LeaderChannel::with_options(
                    p.coordinators.clone(),
                    Duration::from_secs(60),
                    ChannelOptions::long_calls(),
                ),
            });
        Regions {
            region,
            raft,
            snapshots,
            failover,
            peer,
            checked_term: AtomicU64::new(0),
            view: Mutex::new(View::default()),
            busy: tokio::sync::Mutex::new(()),
            connectors,
        }
    }

    /// Whether executors may start partitions and commit checkpoints here: always in a
    /// region alone; with another region, once this leader checked ownership in its term.
    pub fn open_to_executors(&self) -> bool {
        self.snapshots.peer().is_none()
            || self.checked_term.load(Ordering::Acquire) == self.raft.metrics().term
    }

    /// The newest ownership record of each pipeline, from this region's store (which must
    /// answer) and the other's (when it answers in time).
    async fn records(&self) -> anyhow::Result<BTreeMap<String, Owner>> {
        let mut records = self.snapshots.store().owners().await?;
        if let Some(peer) = self.snapshots.peer() {
            match tokio::time::timeout(PEER_STORE_PATIENCE, peer.copies.owners()).await {
                Ok(Ok(theirs)) => {
                    for (pipeline, owner) in theirs {
                        let newer = records
                            .get(&pipeline)
                            .is_none_or(|known| known.epoch < owner.epoch);
                        if newer {
                            records.insert(pipeline, owner);
                        }
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(error = %format!("{error:#}"), "the other region's ownership records not read")
                }
                Err(_) => tracing::debug!("the other region's store did not answer in time"),
            }
        }
        Ok(records)
    }

    /// Before a snapshot of region `from`, taken at `since`, is restored here: this region
    /// takes every pipeline of it at a new region epoch, recorded in the stores, with its
    /// source moved to where `from`'s stood. Active-active pipelines have no records.
    pub async fn take_restored(
        &self,
        from: &str,
        since: SystemTime,
        state: &mut ClusterState,
    ) -> Result<(), Status> {
        if !self.raft.state().pipelines.is_empty() {
            // The restore itself refuses, naming the field.
            return Ok(());
        }
        let records = self.records().await.map_err(unavailable)?;
        for pipeline in state.pipelines.values_mut() {
            if from != self.region {
                self.move_source(pipeline, from, since).await?;
            }
            if pipeline.failover == FailoverMode::ActiveActive {
                continue;
            }
            let recorded = records.get(&pipeline.name).map_or(0, |o| o.epoch);
            pipeline.region_epoch = pipeline.region_epoch.max(recorded) + 1;
            self.claim(&pipeline.name, pipeline.region_epoch, &self.region)
                .await?;
        }
        Ok(())
    }

    /// Records `region` as owner of `pipeline` from `epoch` on: in this region's store
    /// (which must take it), then in the other's (when it answers in time).
    async fn claim(&self, pipeline: &str, epoch: u64, region: &str) -> Result<(), Status> {
        let taken = self
            .snapshots
            .store()
            .claim(pipeline, epoch, region)
            .await
            .map_err(unavailable)?;
        if !taken {
            return Err(Status::aborted(format!(
                "pipelines: region epoch {epoch} of {pipeline:?} is recorded for another \
                 region already: ask again"
            )));
        }
        if let Some(peer) = self.snapshots.peer() {
            let theirs = tokio::time::timeout(
                PEER_STORE_PATIENCE,
                peer.copies.claim(pipeline, epoch, region),
            )
            .await;
            match theirs {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => tracing::warn!(
                    pipeline,
                    epoch,
                    "the other region's store holds another owner for this epoch"
                ),
                Ok(Err(error)) => {
                    tracing::warn!(pipeline, epoch, error = %format!("{error:#}"), "ownership not recorded in the other region's store")
                }
                Err(_) => tracing::warn!(
                    pipeline,
                    epoch,
                    "ownership not recorded in the other region's store: it did not answer in time"
                ),
            }
        }
        Ok(())
    }

    /// Reads the ownership records and stops every pipeline another region owns at a
    /// higher epoch; then opens the region to executors for this term.
    async fn check(&self) -> anyhow::Result<()> {
        let term = self.raft.metrics().term;
        let records = self.records().await?;
        let state = self.raft.state();
        for (name, pipeline) in &state.pipelines {
            let Some(owner) = records.get(name) else {
                continue;
            };
            if pipeline.failover == FailoverMode::ActiveActive {
                continue;
            }
            if owner.region != self.region && owner.epoch > pipeline.region_epoch {
                tracing::warn!(
                    pipeline = %name,
                    region = %owner.region,
                    epoch = owner.epoch,
                    "the other region owns this pipeline now: it stops here"
                );
                self.raft
                    .write(Command::Disown {
                        pipeline: name.clone(),
                        region: owner.region.clone(),
                        region_epoch: owner.epoch,
                    })
                    .await?;
            }
        }
        self.view.locked().records = records;
        self.checked_term.store(term, Ordering::Release);
        Ok(())
    }

    /// Asks the other region's leader whether it is there.
    async fn hear_peer(&self, link: &PeerLink) {
        let request = PeerStatusRequest {
            region: self.region.clone(),
        };
        let answer = link
            .status
            .call(|channel| {
                let request = request.clone();
                async move { RegionPeerClient::new(channel).status(request).await }
            })
            .await;
        let mut view = self.view.locked();
        view.reachable = answer.is_ok();
        if answer.is_ok() {
            view.last_heard = Some(Instant::now());
        }
    }

    fn silent_for(&self) -> Duration {
        self.view
            .locked()
            .last_heard
            .map_or(Duration::ZERO, |heard| heard.elapsed())
    }

    /// Takes over, from the newest snapshot of the other region held here, its
    /// `failover: automatic` pipelines that this region does not run.
    async fn automatic(&self) {
        let Ok(_busy) = self.busy.try_lock() else {
            return;
        };
        let result = self.take_over(&[], true).await;
        let mut view = self.view.locked();
        match result {
            Ok(Some(done)) => {
                tracing::warn!(
                    pipelines = ?done.pipelines,
                    snapshot = done.snapshot.as_ref().map_or(0, |s| s.sequence),
                    took_ms = done.took_ms,
                    "the other region is silent: its automatic pipelines were taken over"
                );
                view.last_failure = None;
            }
            Ok(None) => view.last_failure = None,
            Err(status) => {
                let message = status.message().to_string();
                if view.last_failure.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "automatic failover failed; tried again");
                    view.last_failure = Some(message);
                }
            }
        }
    }

    /// Moves `pipelines` (all the other region's when empty) to this region.
    pub async fn failover(
        &self,
        pipelines: &[String],
        force: bool,
    ) -> Result<FailoverResponse, Status> {
        let _busy = self.busy.lock().await;
        tracing::info!(?pipelines, force, "failover to this region asked");
        if force {
            return self.take_over(pipelines, false).await?.ok_or_else(|| {
                Status::failed_precondition(
                    "pipelines: the other region's newest snapshot holds no pipeline it runs \
                     and this region does not",
                )
            });
        }
        self.planned(pipelines).await
    }

    /// A forced takeover from the newest whole snapshot of the other region held here.
    /// `Ok(None)`: nothing to take over.
    async fn take_over(
        &self,
        pipelines: &[String],
        automatic: bool,
    ) -> Result<Option<FailoverResponse>, Status> {
        let started = Instant::now();
        let peer = self.snapshots.peer().ok_or_else(|| {
            Status::failed_precondition("to: no other region is configured (peer:)")
        })?;
        let (found, skipped) = peer.incoming.newest_valid().await.map_err(unavailable)?;
        for (sequence, problem) in skipped {
            tracing::warn!(region = %peer.region, sequence, %problem, "a snapshot of the other region cannot be restored: an older one is used");
        }
        let (manifest, snapshot) = found.ok_or_else(|| {
            Status::failed_precondition(format!(
                "no whole snapshot of region {:?} in this region's store ({}): nothing to \
                 take over from",
                peer.region,
                peer.incoming.url()
            ))
        })?;
        let here = self.raft.state();
        let runs_here = |name: &str| here.pipelines.get(name).is_some_and(Pipeline::is_local);
        let names: Vec<String> = if pipelines.is_empty() {
            snapshot
                .pipelines
                .values()
                // What it runs, and what it handed to this region (a hand-over that
                // this region did not get to adopt).
                .filter(|p| p.is_local() || p.owned_by.as_deref() == Some(self.region.as_str()))
                .filter(|p| p.failover != FailoverMode::ActiveActive)
                .filter(|p| p.failover == FailoverMode::Automatic || !automatic)
                .filter(|p| !runs_here(&p.name))
                .map(|p| p.name.clone())
                .collect()
        } else {
            for name in pipelines {
                if !snapshot.pipelines.contains_key(name) {
                    return Err(invalid(&FieldError::new(
                        "pipelines",
                        format!(
                            "{name:?} is not in the newest snapshot of region {:?} (sequence {})",
                            peer.region, manifest.sequence
                        ),
                    )));
                }
                if runs_here(name) {
                    return Err(invalid(&FieldError::new(
                        "pipelines",
                        format!("{name:?} runs in this region already"),
                    )));
                }
                if snapshot.pipelines[name].failover == FailoverMode::ActiveActive {
                    return Err(invalid(&FieldError::new(
                        "pipelines",
                        format!("{name:?} is active-active: create it in this region too"),
                    )));
                }
            }
            pipelines.to_vec()
        };
        if names.is_empty() {
            return Ok(None);
        }
        let records = self.records().await.map_err(unavailable)?;
        let mut adopted = Vec::with_capacity(names.len());
        for name in &names {
            let pipeline = &snapshot.pipelines[name];
            let known = here.pipelines.get(name).map_or(0, |p| p.region_epoch);
            let recorded = records.get(name).map_or(0, |o| o.epoch);
            let epoch = pipeline.region_epoch.max(known).max(recorded) + 1;
            self.claim(name, epoch, &self.region).await?;
            adopted.push(Pipeline {
                region_epoch: epoch,
                ..pipeline.clone()
            });
        }
        self.adopt(adopted, &snapshot, &peer.region, taken_at(&manifest))
            .await?;
        Ok(Some(FailoverResponse {
            to: self.region.clone(),
            pipelines: names,
            snapshot: Some(info(manifest.sequence, Some(&manifest), None)),
            stop_ms: 0,
            took_ms: started.elapsed().as_millis() as u64,
        }))
    }

    /// A planned failover to this region: the other region hands over, then this one
    /// adopts its final snapshot.
    async fn planned(&self, pipelines: &[String]) -> Result<FailoverResponse, Status> {
        let started = Instant::now();
        let link = self.peer.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "peer.coordinators: a planned failover asks the other region's coordinators, \
                 and none is configured (or fail over with --force)",
            )
        })?;
        let stores = self
            .snapshots
            .peer()
            .expect("a link comes with the peer's stores");
        let names = if pipelines.is_empty() {
            let request = PeerStatusRequest {
                region: self.region.clone(),
            };
            link.calls
                .call(|channel| {
                    let request = request.clone();
                    async move { RegionPeerClient::new(channel).status(request).await }
                })
                .await?
                .into_inner()
                .pipelines
        } else {
            pipelines.to_vec()
        };
        if names.is_empty() {
            return Err(invalid(&FieldError::new(
                "pipelines",
                format!("region {:?} runs no pipeline", link.region),
            )));
        }
        let request = HandOverRequest {
            to: self.region.clone(),
            pipelines: names.clone(),
        };
        tracing::info!(pipelines = ?names, from = %link.region, "asking for a hand-over");
        let handed = link
            .calls
            .call(|channel| {
                let request = request.clone();
                async move { RegionPeerClient::new(channel).hand_over(request).await }
            })
            .await?
            .into_inner();
        let (manifest, snapshot) = match stores
            .incoming
            .read(handed.sequence)
            .await
            .map_err(unavailable)?
        {
            Ok(read) => read,
            Err(problem) => {
                return Err(Status::data_loss(format!(
                    "the final snapshot {} of region {:?} in this region's store cannot be \
                     restored ({problem}): the pipelines are handed over but not started; \
                     fail over with --force to start them from the newest whole snapshot",
                    handed.sequence, link.region
                )))
            }
        };
        let mut adopted = Vec::with_capacity(names.len());
        for name in &names {
            let pipeline = snapshot.pipelines.get(name).ok_or_else(|| {
                Status::internal(format!(
                    "the final snapshot {} does not hold {name:?}",
                    handed.sequence
                ))
            })?;
            adopted.push(pipeline.clone());
        }
        self.adopt(adopted, &snapshot, &link.region, taken_at(&manifest))
            .await?;
        Ok(FailoverResponse {
            to: self.region.clone(),
            pipelines: names,
            snapshot: Some(info(manifest.sequence, Some(&manifest), None)),
            stop_ms: handed.stop_ms,
            took_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Commits the adoption of `pipelines` (their region epochs set) with what `snapshot`
    /// of region `from`, taken at `since`, holds of them, once their sources are moved to
    /// where `from`'s stood.
    async fn adopt(
        &self,
        pipelines: Vec<Pipeline>,
        snapshot: &ClusterState,
        from: &str,
        since: SystemTime,
    ) -> Result<(), Status> {
        for pipeline in &pipelines {
            self.move_source(pipeline, from, since).await?;
        }
        let names: BTreeSet<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
        let checkpoints = snapshot
            .checkpoints
            .iter()
            .filter(|((p, _), _)| names.contains(p.as_str()))
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        let finished = snapshot
            .assignments
            .iter()
            .filter(|((p, _), a)| a.finished && names.contains(p.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        self.raft
            .commit(Command::Adopt {
                pipelines,
                checkpoints,
                finished,
                last_epoch: snapshot.last_epoch,
            })
            .await?;
        Ok(())
    }

    /// Moves the pipeline's source to where region `from`'s copy stood, before it starts
    /// here.
    async fn move_source(
        &self,
        pipeline: &Pipeline,
        from: &str,
        since: SystemTime,
    ) -> Result<(), Status> {
        match self
            .connectors
            .move_source(&pipeline.spec, from, &self.region, since)
            .await
        {
            Ok(Some(done)) => {
                tracing::info!(pipeline = %pipeline.name, %done, "source moved");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => Err(Status::unavailable(format!(
                "pipeline {:?}: its source cannot be moved to region {:?} ({error:#}): \
                 nothing was started; ask again",
                pipeline.name, self.region
            ))),
        }
    }

    /// Passes a failover to the other region on, when it is the one to take over.
    pub async fn forward(&self, request: FailoverRequest) -> Result<FailoverResponse, Status> {
        let link = self.peer.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "peer.coordinators: none configured; ask the other region's coordinators",
            )
        })?;
        Ok(link
            .calls
            .call(|channel| {
                let request = request.clone();
                async move { AdminClient::new(channel).failover(request).await }
            })
            .await?
            .into_inner())
    }

    /// This region's name, and the other's when one is configured.
    pub fn names(&self) -> (&str, Option<&str>) {
        (
            &self.region,
            self.snapshots.peer().map(|p| p.region.as_str()),
        )
    }

    /// Adds what this region knows of the other and of ownership to `response`.
    pub fn describe(&self, response: &mut RegionsResponse) {
        let state = self.raft.state();
        let view = self.view.locked();
        if let Some(link) = &self.peer {
            response.peer_coordinators = link.coordinators.clone();
            response.peer_reachable = view.reachable;
            response.peer_silent_ms = view
                .last_heard
                .map_or(0, |heard| heard.elapsed().as_millis() as u64);
        }
        response.failover_after_secs = self.failover.after_secs;
        let names: BTreeSet<&String> = state.pipelines.keys().chain(view.records.keys()).collect();
        response.ownership = names
            .into_iter()
            .map(|name| {
                let pipeline = state.pipelines.get(name);
                let record = view.records.get(name);
                Ownership {
                    pipeline: name.clone(),
                    region: pipeline
                        .map(|p| p.owned_by.clone().unwrap_or_else(|| self.region.clone()))
                        .unwrap_or_default(),
                    region_epoch: pipeline.map_or(0, |p| p.region_epoch),
                    record_region: record.map(|r| r.region.clone()).unwrap_or_default(),
                    record_epoch: record.map_or(0, |r| r.epoch),
                }
            })
            .collect();
    }
}

/// The leader's region loop: checks ownership, asks after the other region, and takes
/// over its automatic pipelines when it has been silent too long.
pub async fn region_loop(regions: Arc<Regions>) {
    if regions.snapshots.peer().is_none() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(regions.failover.check_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let after = Duration::from_secs(regions.failover.after_secs);
    let mut leading_term = None;
    loop {
        tick.tick().await;
        if !regions.raft.leads_a_quorum() {
            leading_term = None;
            continue;
        }
        let term = regions.raft.metrics().term;
        if leading_term != Some(term) {
            // A new leader gives the other region a whole `after_secs` from now.
            leading_term = Some(term);
            regions.view.locked().last_heard = Some(Instant::now());
        }
        if let Err(error) = regions.check().await {
            tracing::warn!(error = %format!("{error:#}"), "ownership not checked: executors wait");
            continue;
        }
        let Some(link) = &regions.peer else {
            continue;
        };
        regions.hear_peer(link).await;
        if regions.silent_for() >= after {
            regions.automatic().await;
        }
    }
}

#[tonic::async_trait]
impl RegionPeer for Regions {
    async fn status(
        &self,
        _request: Request<PeerStatusRequest>,
    ) -> Result<Response<PeerStatusResponse>, Status> {
        self.raft.lead()?;
        let metrics = self.raft.metrics();
        let state = self.raft.state();
        Ok(Response::new(PeerStatusResponse {
            region: self.region.clone(),
            leader_id: metrics.leader.unwrap_or_default(),
            term: metrics.term,
            pipelines: state
                .pipelines
                .values()
                .filter(|p| p.is_local() && p.failover != FailoverMode::ActiveActive)
                .map(|p| p.name.clone())
                .collect(),
        }))
    }

    async fn hand_over(
        &self,
        request: Request<HandOverRequest>,
    ) -> Result<Response<HandOverResponse>, Status> {
        self.raft.lead()?;
        let request = request.into_inner();
        let peer = self.snapshots.peer().map(|p| p.region.clone());
        if peer.as_deref() != Some(request.to.as_str()) {
            return Err(invalid(&FieldError::new(
                "to",
                format!(
                    "{:?} is not the other region of {:?}",
                    request.to, self.region
                ),
            )));
        }
        if request.pipelines.is_empty() {
            return Err(invalid(&FieldError::new("pipelines", "is empty")));
        }
        let _busy = self.busy.lock().await;
        tracing::info!(pipelines = ?request.pipelines, to = %request.to, "hand-over asked");
        let started = Instant::now();
        let state = self.raft.state();
        let mut to_hand = Vec::new();
        for name in &request.pipelines {
            let pipeline = state
                .pipelines
                .get(name)
                .ok_or_else(|| Status::not_found(format!("pipelines: no pipeline {name:?}")))?;
            if pipeline.failover == FailoverMode::ActiveActive {
                return Err(Status::failed_precondition(format!(
                    "pipelines: {name:?} is active-active: it runs in both regions"
                )));
            }
            match &pipeline.owned_by {
                None => to_hand.push(name.clone()),
                // Handed over already: an earlier call that gave up waiting.
                Some(owner) if *owner == request.to => {}
                Some(owner) => {
                    return Err(Status::failed_precondition(format!(
                        "pipelines: {name:?} is owned by region {owner:?}"
                    )))
                }
            }
        }
        if !to_hand.is_empty() {
            self.raft
                .commit(Command::HandOver {
                    pipelines: to_hand,
                    to: request.to.clone(),
                })
                .await?;
        }
        // Every partition stops at a checkpoint and is released (or its executor's lease
        // runs out): then the checkpoints are final.
        let names: BTreeSet<&str> = request.pipelines.iter().map(String::as_str).collect();
        loop {
            let state = self.raft.state();
            let running = state
                .assignments
                .iter()
                .filter(|((p, _), a)| names.contains(p.as_str()) && a.owner.is_some())
                .count();
            if running == 0 {
                break;
            }
            if started.elapsed() >= HAND_OVER_WAIT {
                return Err(Status::unavailable(format!(
                    "{running} partitions are still stopping at their checkpoints: ask again"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stop_ms = started.elapsed().as_millis() as u64;
        let state = self.raft.state();
        let mut epochs = Vec::new();
        for name in &request.pipelines {
            let epoch = state.pipelines[name].region_epoch;
            self.claim(name, epoch, &request.to).await?;
            epochs.push(PipelineEpoch {
                pipeline: name.clone(),
                region_epoch: epoch,
            });
        }
        let written = self
            .snapshots
            .take(&self.raft, true)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::internal("a forced snapshot wrote nothing"))?;
        let sequence = written.manifest.sequence;
        if self.snapshots.last_copy().map(|c| c.sequence) != Some(sequence) {
            return Err(Status::unavailable(format!(
                "the final snapshot {sequence} was not copied into region {:?}'s store ({}): \
                 ask again",
                request.to,
                self.snapshots.last_copy_error().unwrap_or_default()
            )));
        }
        tracing::info!(pipelines = ?request.pipelines, to = %request.to, sequence, stop_ms, "handed over");
        Ok(Response::new(HandOverResponse {
            sequence,
            epochs,
            stop_ms,
        }))
    }
}
