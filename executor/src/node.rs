//! An executor node of a region's cluster, from a config file and flags (a flag wins over
//! the file): what `mirador executor` runs. The coordinator's counterpart is
//! `mirador_coordinator::node`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;

use crate::agent::{AgentConfig, ExecutorAgent};
use crate::infer::InferencePool;

#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// A YAML file with any of the settings below (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This executor's id, unique in the region; default: the host name.
    #[arg(long)]
    id: Option<String>,
    /// host:port of the region's coordinators, comma-separated.
    #[arg(long)]
    coordinators: Option<String>,
    /// The region it belongs to, as its coordinators name it.
    #[arg(long)]
    region: Option<String>,
    /// Partitions it runs at most.
    #[arg(long)]
    slots: Option<u32>,
    /// host:port shown to operators.
    #[arg(long)]
    address: Option<String>,
    /// host:port where Prometheus scrapes this node's metrics (`GET /metrics`); loopback
    /// is safest. Default: not served.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ExecutorFile {
    id: Option<String>,
    coordinators: Option<Vec<String>>,
    region: Option<String>,
    slots: Option<u32>,
    address: Option<String>,
    metrics_listen: Option<SocketAddr>,
}

/// An executor's settings: its agent's, and where its metrics are served.
pub struct ExecutorConfig {
    pub agent: AgentConfig,
    pub metrics_listen: Option<SocketAddr>,
}

pub fn executor_config(args: ExecutorArgs) -> anyhow::Result<ExecutorConfig> {
    let file: ExecutorFile = mirador_proto::config::read_config_file(args.config.as_deref())
        .map_err(anyhow::Error::msg)?;
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
    let metrics_listen = args.metrics_listen.or(file.metrics_listen);
    let agent = AgentConfig {
        address: args.address.or(file.address).unwrap_or_default(),
        region: args
            .region
            .or(file.region)
            .unwrap_or_else(|| "local".into()),
        slots,
        gpu: crate::infer::gpu_available(),
        coordinators,
        executor_id,
    };
    Ok(ExecutorConfig {
        agent,
        metrics_listen,
    })
}

pub async fn run_executor(args: ExecutorArgs) -> anyhow::Result<()> {
    let ExecutorConfig {
        agent: config,
        metrics_listen,
    } = executor_config(args)?;
    eprintln!(
        "mirador executor {} ({} slots, gpu {}), coordinators {:?}",
        config.executor_id, config.slots, config.gpu, config.coordinators
    );
    let agent = Arc::new(ExecutorAgent::new(config, InferencePool::default()));
    if let Some(listen) = metrics_listen {
        let scraped = agent.clone();
        let render: mirador_proto::metrics::Render = Arc::new(move || {
            let agent = scraped.clone();
            Box::pin(async move { crate::metrics::render(&agent.metrics().await) })
        });
        let bound = mirador_proto::metrics::serve(listen, render)
            .await
            .map_err(|e| anyhow::anyhow!("metrics_listen: {listen}: {e}"))?;
        eprintln!("metrics on http://{bound}/metrics");
    }
    // On SIGINT or SIGTERM the agent stops its partitions at a checkpoint and releases them.
    agent.run(mirador_proto::shutdown::requested()).await;
    Ok(())
}
