//! A coordinator node: its Raft member, the leader's control loop, and one gRPC port that
//! serves Raft traffic, executors and the admin API (each its own service), with gRPC
//! health and reflection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mirador_proto::admin::admin_server::AdminServer;
use mirador_proto::coordinator::executor_service_server::ExecutorServiceServer;
use mirador_proto::region::region_peer_server::RegionPeerServer;

use crate::admin::{AdminEndpoint, Connectors};
use crate::control::{control_loop, ControlConfig, Observations};
use crate::executors::ExecutorEndpoint;
use crate::raft::{RaftConfig, RaftNode};
use crate::region::{FailoverFile, PeerFile, Regions};
use crate::snapshot::{SnapshotFile, Snapshots};

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub node_id: u64,
    /// The region this coordinator's group runs.
    pub region: String,
    /// Where the gRPC port listens.
    pub listen: SocketAddr,
    /// `host:port` that peers, executors and operators use to reach it.
    pub advertise: String,
    /// The Raft log, vote and state machine.
    pub data_dir: PathBuf,
    /// The initial voters (node id -> `host:port`), this node included. The group is
    /// initialized by the node with the smallest id when its log is empty; others wait.
    /// Empty: the node joins a running group when an operator adds it.
    pub members: BTreeMap<u64, String>,
    pub control: ControlConfig,
    pub raft: RaftConfig,
    /// Where and how often the leader writes the region's snapshots (opened at start).
    pub snapshot: SnapshotFile,
    /// The other region, when there is one.
    pub peer: Option<PeerFile>,
    pub failover: FailoverFile,
    /// Where Prometheus scrapes this node's metrics; none: not served.
    pub metrics_listen: Option<SocketAddr>,
}

/// The services a coordinator offers, over its Raft member, sharing what the leader
/// observes of executors.
struct Endpoints {
    observations: Observations,
    executors: Arc<ExecutorEndpoint>,
    admin: Arc<AdminEndpoint>,
}

impl Endpoints {
    fn new(
        raft: &Arc<RaftNode>,
        control: &ControlConfig,
        validator: Arc<dyn Connectors>,
        snapshots: Arc<Snapshots>,
        regions: Arc<Regions>,
    ) -> Self {
        let observations = Observations::default();
        Endpoints {
            executors: Arc::new(ExecutorEndpoint::new(
                raft.clone(),
                observations.clone(),
                control.clone(),
                regions.clone(),
            )),
            admin: Arc::new(AdminEndpoint::new(
                raft.clone(),
                observations.clone(),
                validator,
                snapshots,
                regions,
            )),
            observations,
        }
    }
}

/// A running coordinator.
pub struct Coordinator {
    pub raft: Arc<RaftNode>,
    pub observations: Observations,
    pub snapshots: Arc<Snapshots>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    control: tokio::task::JoinHandle<()>,
    snapshot_writer: tokio::task::JoinHandle<()>,
    region_loop: tokio::task::JoinHandle<()>,
}

impl Coordinator {
    /// Starts the node and its gRPC port.
    pub async fn start(
        config: CoordinatorConfig,
        validator: Arc<dyn Connectors>,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listen: {}: {e}", config.listen))?;
        Self::start_on(listener, config, validator).await
    }

    /// Starts the node on a port already bound (`config.listen` is not used): for a
    /// node on a port picked by the system, with no window in which another takes it.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        config: CoordinatorConfig,
        validator: Arc<dyn Connectors>,
    ) -> anyhow::Result<Self> {
        let raft = Arc::new(
            RaftNode::start_grpc(
                config.node_id,
                config.advertise.clone(),
                &config.data_dir,
                &config.raft,
            )
            .await?,
        );
        let snapshot = config.snapshot.open(
            &config.region,
            &config.data_dir.join("snapshots"),
            config.peer.as_ref(),
        )?;
        let snapshots = Arc::new(Snapshots::new(config.node_id, snapshot));
        let regions = Arc::new(Regions::new(
            config.region.clone(),
            raft.clone(),
            snapshots.clone(),
            config.failover.clone(),
            config.peer.as_ref(),
            validator.clone(),
        ));
        let endpoints = Endpoints::new(
            &raft,
            &config.control,
            validator,
            snapshots.clone(),
            regions.clone(),
        );
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<AdminServer<AdminEndpoint>>()
            .await;
        let router = mirador_proto::transport::server()
            .add_service(health)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(raft.grpc_service())
            .add_service(ExecutorServiceServer::from_arc(endpoints.executors))
            .add_service(AdminServer::from_arc(endpoints.admin))
            .add_service(RegionPeerServer::from_arc(regions.clone()));
        let server = tokio::spawn(
            router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        if config.members.keys().next() == Some(&config.node_id) {
            raft.initialize_if_new(config.members.clone()).await?;
        }
        let control = tokio::spawn(control_loop(
            raft.clone(),
            endpoints.observations.clone(),
            config.control.clone(),
        ));
        if let Some(listen) = config.metrics_listen {
            let (raft, observations, snapshots) = (
                raft.clone(),
                endpoints.observations.clone(),
                snapshots.clone(),
            );
            let lease = config.control.lease;
            let render: mirador_proto::metrics::Render = Arc::new(move || {
                let text = crate::metrics::render(&raft, &observations, &snapshots, lease);
                Box::pin(async move { text })
            });
            let bound = mirador_proto::metrics::serve(listen, render)
                .await
                .map_err(|e| anyhow::anyhow!("metrics_listen: {listen}: {e}"))?;
            tracing::info!(%bound, "metrics served");
        }
        let snapshot_writer =
            tokio::spawn(crate::snapshot::writer(raft.clone(), snapshots.clone()));
        let region_loop = tokio::spawn(crate::region::region_loop(regions));
        Ok(Coordinator {
            raft,
            observations: endpoints.observations,
            snapshots,
            server,
            control,
            snapshot_writer,
            region_loop,
        })
    }

    /// Stops serving and leaves the group's traffic.
    pub async fn shutdown(self) {
        self.control.abort();
        self.snapshot_writer.abort();
        self.region_loop.abort();
        self.server.abort();
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
    }
}

/// A one-node coordinator with no port: its services are objects that tests call
/// directly (the executor agent through `InProcessCoordinators`).
#[cfg(any(test, feature = "testing"))]
pub struct InProcessCoordinator {
    pub raft: Arc<RaftNode>,
    pub executors: Arc<ExecutorEndpoint>,
    pub admin: Arc<AdminEndpoint>,
    control: tokio::task::JoinHandle<()>,
}

#[cfg(any(test, feature = "testing"))]
impl InProcessCoordinator {
    /// Starts node 1 on `data_dir`, a group of its own, and waits until it leads.
    pub async fn start(
        data_dir: &std::path::Path,
        control: ControlConfig,
        validator: Arc<dyn Connectors>,
    ) -> anyhow::Result<Self> {
        let snapshot =
            SnapshotFile::default().open("in-process", &data_dir.join("snapshots"), None)?;
        let router = crate::raft::testing::Router::new();
        let raft = Arc::new(
            RaftNode::start(
                1,
                "in-process",
                data_dir,
                &RaftConfig::default(),
                router.network(1),
            )
            .await?,
        );
        router.add(1, raft.raft().clone());
        raft.initialize_if_new(BTreeMap::from([(1, "in-process".to_string())]))
            .await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !raft.is_leader() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the in-process coordinator did not become leader"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let snapshots = Arc::new(Snapshots::new(1, snapshot));
        let regions = Arc::new(Regions::new(
            "in-process".to_string(),
            raft.clone(),
            snapshots.clone(),
            FailoverFile::default(),
            None,
            validator.clone(),
        ));
        let endpoints = Endpoints::new(&raft, &control, validator, snapshots, regions);
        let control = tokio::spawn(control_loop(raft.clone(), endpoints.observations, control));
        Ok(InProcessCoordinator {
            raft,
            executors: endpoints.executors,
            admin: endpoints.admin,
            control,
        })
    }

    pub async fn shutdown(self) {
        self.control.abort();
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
    }
}

/// Reflection over every service the admin port serves, offered both as
/// `grpc.reflection.v1` and as `v1alpha`, which many clients still speak.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mirador_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
