//! A region of one coordinator and one executor in this process, for `mirador dev` and
//! `mirador bench-cluster`: the code of `mirador coordinator` and `mirador executor`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mirador_coordinator::control::ControlConfig;
use mirador_coordinator::node::SpecConnectors;
use mirador_coordinator::raft::RaftConfig;
use mirador_coordinator::server::{Coordinator, CoordinatorConfig};
use mirador_executor::agent::{AgentConfig, ExecutorAgent};
use mirador_executor::connectors::registry;
use mirador_executor::infer::InferencePool;
use mirador_executor::pipeline::Counts;

/// Whether `partitions` partition pipelines run here and every one has ended.
pub fn all_ended(snapshots: &[mirador_actors::PipelineSnapshot], partitions: usize) -> bool {
    snapshots.len() == partitions
        && snapshots
            .iter()
            .all(|s| !matches!(s.exit, mirador_actors::ExitStatus::Running))
}

/// A region of one coordinator and one executor in this process, on a loopback port.
pub struct LocalRegion {
    pub coordinator: Coordinator,
    pub agent: Arc<ExecutorAgent>,
    pub address: String,
    stop: tokio::sync::oneshot::Sender<()>,
    agent_task: tokio::task::JoinHandle<()>,
}

impl LocalRegion {
    pub async fn start(data_dir: &Path, slots: u32) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        let address = listen.to_string();
        let coordinator = Coordinator::start_on(
            listener,
            CoordinatorConfig {
                node_id: 1,
                region: "local".into(),
                snapshot: Default::default(),
                peer: None,
                failover: Default::default(),
                listen,
                advertise: address.clone(),
                data_dir: data_dir.to_path_buf(),
                members: BTreeMap::from([(1, address.clone())]),
                control: ControlConfig::default(),
                raft: RaftConfig::default(),
                metrics_listen: None,
            },
            Arc::new(SpecConnectors::new(
                registry::count_partitions,
                registry::move_source,
            )),
        )
        .await?;
        let agent = Arc::new(ExecutorAgent::new(
            AgentConfig {
                executor_id: "local".into(),
                address: String::new(),
                region: "local".into(),
                slots,
                gpu: mirador_executor::infer::gpu_available(),
                coordinators: vec![address.clone()],
            },
            InferencePool::default(),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent_task = tokio::spawn(agent.clone().run(async {
            let _ = stopped.await;
        }));
        Ok(LocalRegion {
            coordinator,
            agent,
            address,
            stop,
            agent_task,
        })
    }

    /// Creates a pipeline through the admin API, as `mirador admin create` does.
    pub async fn create(&self, spec: String) -> anyhow::Result<()> {
        let channel = mirador_proto::leader::LeaderChannel::new(
            vec![self.address.clone()],
            Duration::from_secs(10),
        );
        channel
            .call(|c| {
                let spec = spec.clone();
                async move {
                    mirador_proto::admin::admin_client::AdminClient::new(c)
                        .create_pipeline(mirador_proto::admin::PipelineSpecRequest { spec })
                        .await
                }
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(())
    }

    /// Waits until `partitions` partitions ran to their end; returns the records read.
    pub async fn wait_finished(&self, partitions: usize) -> u64 {
        loop {
            let snapshots = self.agent.snapshots().await;
            if all_ended(&snapshots, partitions) {
                return Counts::of(&snapshots).read;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.agent_task.await;
        self.coordinator.shutdown().await;
    }
}
