//! A region of one coordinator and one executor in this process, for `mirador dev` and
//! `mirador bench-cluster`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mirador_coordinator::control::ControlConfig;
use mirador_coordinator::node::SpecValidator;
use mirador_coordinator::server::{Coordinator, CoordinatorConfig};
use mirador_executor::agent::{AgentConfig, ExecutorAgent};
use mirador_executor::connectors::registry;
use mirador_executor::infer::InferencePool;
use mirador_executor::pipeline::{partition_count, Counts};
use mirador_executor::PipelineSpec;

/// Whether `partitions` partition pipelines run here and every one has ended.
fn all_ended(snapshots: &[mirador_actors::PipelineSnapshot], partitions: usize) -> bool {
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
                listen,
                advertise: address.clone(),
                data_dir: data_dir.to_path_buf(),
                members: BTreeMap::from([(1, address.clone())]),
                control: ControlConfig::default(),
            },
            Arc::new(SpecValidator::new(registry::count_partitions)),
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

/// The same pipeline run directly and through a local region: events/s of each.
pub async fn bench_cluster(events: u64, partitions: u32) -> anyhow::Result<()> {
    let scratch =
        std::env::temp_dir().join(format!("mirador-bench-cluster-{}", std::process::id()));
    let yaml = crate::demo::bench_cluster_yaml(&scratch, partitions, events)?;

    let pool = InferencePool::default();
    let resources = Arc::new(
        mirador_executor::PipelineResources::build(PipelineSpec::from_yaml(&yaml)?, &pool).await?,
    );
    let events = events / partitions as u64 * partitions as u64;
    let direct = mirador_executor::run_pipeline(resources, &Default::default()).await?;
    anyhow::ensure!(
        direct.succeeded(),
        "the direct run failed: {:?}",
        direct.failures
    );
    let direct_rate = direct.events_in as f64 / direct.elapsed_secs;
    drop(pool);

    let region = LocalRegion::start(&scratch.join("coordinator"), partitions).await?;
    let started = std::time::Instant::now();
    region.create(yaml).await?;
    // Once every partition runs: the direct rate is measured the same way, after the
    // pipeline's resources (model, tables, clients) are built.
    let (running_at, read_then) = loop {
        let snapshots = region.agent.snapshots().await;
        if snapshots.len() == partitions as usize {
            break (std::time::Instant::now(), Counts::of(&snapshots).read);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let read = region.wait_finished(partitions as usize).await;
    let elapsed = started.elapsed().as_secs_f64();
    let running = running_at.elapsed().as_secs_f64();
    region.shutdown().await;
    let _ = std::fs::remove_dir_all(&scratch);
    anyhow::ensure!(read == events, "the region read {read} of {events} events");
    let running_rate = (read - read_then) as f64 / running;
    println!("mirador bench-cluster: {events} events over {partitions} partitions, null sinks");
    println!("  direct (mirador run):              {direct_rate:>12.0} events/s");
    println!(
        "  through a region, once running:    {running_rate:>12.0} events/s  ({:.0} % of direct)",
        100.0 * running_rate / direct_rate
    );
    println!(
        "  through a region, create to end:   {:>12.0} events/s  (assignment and start included)",
        read as f64 / elapsed
    );
    Ok(())
}

/// `mirador dev`: the pipeline through a one-node region in this process, the same code as
/// `mirador coordinator` and `mirador executor`. Ends when every partition ran to its end,
/// or at Ctrl-C; returns whether no partition failed.
pub async fn run_dev(out: &Path, yaml: String) -> anyhow::Result<bool> {
    let spec = PipelineSpec::from_yaml(&yaml)?;
    let partitions = partition_count(&spec).await?;
    let region = LocalRegion::start(&out.join("coordinator"), partitions).await?;
    eprintln!(
        "mirador dev: coordinator on {}, one executor with {partitions} slots",
        region.address
    );
    region.create(yaml).await?;
    let started = std::time::Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // The end is looked for every 100 ms, so that the closing rate is close; progress is
    // printed every second.
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut last = (std::time::Instant::now(), 0u64);
    let snapshots = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut ctrl_c => break region.agent.snapshots().await,
        }
        let snapshots = region.agent.snapshots().await;
        if all_ended(&snapshots, partitions as usize) {
            break snapshots;
        }
        if last.0.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let read = Counts::of(&snapshots).read;
        let rate = (read - last.1.min(read)) as f64 / last.0.elapsed().as_secs_f64();
        last = (std::time::Instant::now(), read);
        eprintln!(
            "  {:>6.1} s  {read:>10} events  {rate:>9.0} events/s",
            started.elapsed().as_secs_f64()
        );
    };
    let elapsed = started.elapsed().as_secs_f64();
    let Counts {
        read,
        scored,
        dead_lettered: dead,
    } = Counts::of(&snapshots);
    let failed: Vec<String> = snapshots
        .iter()
        .filter_map(|s| match &s.exit {
            mirador_actors::ExitStatus::Failed(e) => {
                Some(format!("partition {}: {e}", s.partition))
            }
            _ => None,
        })
        .collect();
    region.shutdown().await;
    eprintln!(
        "mirador dev: {read} events in {elapsed:.2} s ({:.0} events/s): {scored} scored, {dead} dead-lettered",
        read as f64 / elapsed.max(1e-9)
    );
    for failure in &failed {
        eprintln!("  failed: {failure}");
    }
    Ok(failed.is_empty())
}
