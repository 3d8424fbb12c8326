//! `mirador coordinator` and `mirador executor`: a node of a region's cluster, from a
//! config file and flags (a flag wins over the file).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use mirador_coordinator::admin::{FieldError, PipelineValidator, ValidPipeline};
use mirador_coordinator::control::ControlConfig;
use mirador_coordinator::server::{Coordinator, CoordinatorConfig};
use mirador_executor::agent::{AgentConfig, ExecutorAgent};
use mirador_executor::infer::InferencePool;
use mirador_executor::pipeline::partition_count;
use mirador_executor::spec::DeviceSpec;
use mirador_executor::PipelineSpec;
use serde::Deserialize;

/// Checks pipeline specs for the admin API with the executors' own schema.
pub struct SpecValidator;

#[tonic::async_trait]
impl PipelineValidator for SpecValidator {
    async fn validate(&self, yaml: &str) -> Result<ValidPipeline, FieldError> {
        let spec = PipelineSpec::from_yaml(yaml).map_err(|e| FieldError {
            field: e.field.clone(),
            message: e.message.clone(),
        })?;
        let partitions = partition_count(&spec).await.map_err(|e| FieldError {
            field: "source".into(),
            message: format!("cannot count the partitions: {e:#}"),
        })?;
        Ok(ValidPipeline {
            name: spec.name.clone(),
            partitions,
            gpu: spec.model.device == DeviceSpec::Cuda,
        })
    }
}

fn read_config<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--config: {}: {e}", path.display()))?;
    let deserializer = serde_yaml::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(deserializer)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))
}

/// `1=127.0.0.1:7001,2=127.0.0.1:7002`.
fn parse_members(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|pair| {
            let (id, addr) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("members: {pair:?} is not id=host:port"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("members: {id:?} is not a node id"))?;
            Ok((id, addr.trim().to_string()))
        })
        .collect()
}

#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// A YAML file with any of the settings below (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    id: Option<u64>,
    /// host:port to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// host:port that others use; default: --listen.
    #[arg(long)]
    advertise: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The initial voters: id=host:port,... (this node included).
    #[arg(long)]
    members: Option<String>,
    /// Executor lease, ms.
    #[arg(long)]
    lease_ms: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct CoordinatorFile {
    id: Option<u64>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    members: Option<BTreeMap<u64, String>>,
    lease_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    max_moves: Option<usize>,
}

pub fn coordinator_config(args: CoordinatorArgs) -> anyhow::Result<CoordinatorConfig> {
    let file: CoordinatorFile = read_config(args.config.as_deref())?;
    let node_id = args
        .id
        .or(file.id)
        .ok_or_else(|| anyhow::anyhow!("id: needed (--id or `id:` in --config)"))?;
    anyhow::ensure!(node_id > 0, "id: must be at least 1");
    let listen = args
        .listen
        .or(file.listen)
        .ok_or_else(|| anyhow::anyhow!("listen: needed (--listen host:port)"))?;
    let advertise = args
        .advertise
        .or(file.advertise)
        .unwrap_or_else(|| listen.to_string());
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .ok_or_else(|| anyhow::anyhow!("data_dir: needed (--data-dir)"))?;
    let members = match args.members {
        Some(text) => parse_members(&text)?,
        None => file.members.unwrap_or_default(),
    };
    let members = if members.is_empty() {
        BTreeMap::from([(node_id, advertise.clone())])
    } else {
        members
    };
    anyhow::ensure!(
        members.contains_key(&node_id),
        "members: must include this node ({node_id})"
    );
    let defaults = ControlConfig::default();
    let lease = args.lease_ms.or(file.lease_ms).map(Duration::from_millis);
    let heartbeat = file.heartbeat_ms.map(Duration::from_millis);
    let control = ControlConfig {
        lease: lease.unwrap_or(defaults.lease),
        heartbeat: heartbeat.unwrap_or(defaults.heartbeat),
        max_moves: file.max_moves.unwrap_or(defaults.max_moves),
        ..defaults
    };
    anyhow::ensure!(
        control.heartbeat * 3 <= control.lease,
        "lease_ms: must be at least three heartbeats ({} ms)",
        control.heartbeat.as_millis() * 3
    );
    anyhow::ensure!(control.max_moves >= 1, "max_moves: must be at least 1");
    Ok(CoordinatorConfig {
        node_id,
        listen,
        advertise,
        data_dir,
        members,
        control,
    })
}

pub async fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let config = coordinator_config(args)?;
    eprintln!(
        "mirador coordinator {} on {} (members {:?}), data in {}",
        config.node_id,
        config.advertise,
        config.members,
        config.data_dir.display()
    );
    let coordinator = Coordinator::start(config, Arc::new(SpecValidator)).await?;
    tokio::signal::ctrl_c().await?;
    coordinator.shutdown().await;
    Ok(())
}

#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// A YAML file with any of the settings below (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    id: Option<String>,
    /// host:port of the region's coordinators, comma-separated.
    #[arg(long)]
    coordinators: Option<String>,
    #[arg(long)]
    region: Option<String>,
    /// Partitions it runs at most.
    #[arg(long)]
    slots: Option<u32>,
    /// host:port shown to operators.
    #[arg(long)]
    address: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ExecutorFile {
    id: Option<String>,
    coordinators: Option<Vec<String>>,
    region: Option<String>,
    slots: Option<u32>,
    address: Option<String>,
}

pub fn executor_config(args: ExecutorArgs) -> anyhow::Result<AgentConfig> {
    let file: ExecutorFile = read_config(args.config.as_deref())?;
    let executor_id = args
        .id
        .or(file.id)
        .ok_or_else(|| anyhow::anyhow!("id: needed (--id or `id:` in --config)"))?;
    anyhow::ensure!(!executor_id.is_empty(), "id: must not be empty");
    let coordinators: Vec<String> = match args.coordinators {
        Some(text) => text
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => file.coordinators.unwrap_or_default(),
    };
    anyhow::ensure!(
        !coordinators.is_empty(),
        "coordinators: needed (--coordinators host:port,...)"
    );
    let slots = args.slots.or(file.slots).unwrap_or(8);
    anyhow::ensure!(
        (1..=10_000).contains(&slots),
        "slots: {slots} is invalid: between 1 and 10000"
    );
    Ok(AgentConfig {
        address: args.address.or(file.address).unwrap_or_default(),
        region: args
            .region
            .or(file.region)
            .unwrap_or_else(|| "local".into()),
        slots,
        gpu: mirador_executor::infer::gpu_available(),
        coordinators,
        executor_id,
    })
}

pub async fn run_executor(args: ExecutorArgs) -> anyhow::Result<()> {
    let config = executor_config(args)?;
    eprintln!(
        "mirador executor {} ({} slots, gpu {}), coordinators {:?}",
        config.executor_id, config.slots, config.gpu, config.coordinators
    );
    let agent = Arc::new(ExecutorAgent::new(config, InferencePool::default()));
    agent
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
