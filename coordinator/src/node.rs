//! A coordinator node from a config file and flags (a flag wins over the file): what the
//! `mirador-coordinator` binary runs. Nothing here links libtorch; pipeline specs are
//! checked with the executors' own schema from `mirador-spec`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures::future::BoxFuture;
use mirador_spec::{DeviceSpec, PipelineSpec};
use serde::Deserialize;

use crate::admin::{Connectors, FieldError, ValidPipeline};
use crate::control::ControlConfig;
use crate::raft::RaftConfig;
use crate::region::{FailoverFile, PeerFile};
use crate::server::{Coordinator, CoordinatorConfig};
use crate::snapshot::SnapshotFile;

/// How a pipeline's partitions are counted (a Kafka topic's on its brokers): the
/// connectors' registry, which the binary passes in; this library has no connector.
pub type CountPartitions = for<'a> fn(&'a PipelineSpec) -> BoxFuture<'a, anyhow::Result<u32>>;

/// How a pipeline's source is moved from one region's copy to another's: see
/// [`Connectors::move_source`].
pub type MoveSource = for<'a> fn(
    &'a PipelineSpec,
    &'a str,
    &'a str,
    std::time::SystemTime,
) -> BoxFuture<'a, anyhow::Result<Option<String>>>;

/// The connectors as the coordinators use them, from the binary's registry: specs checked
/// with the executors' own schema, their partitions counted and their sources moved.
pub struct SpecConnectors {
    count: CountPartitions,
    move_source: MoveSource,
}

impl SpecConnectors {
    pub fn new(count: CountPartitions, move_source: MoveSource) -> Self {
        SpecConnectors { count, move_source }
    }
}

#[tonic::async_trait]
impl Connectors for SpecConnectors {
    async fn validate(&self, yaml: &str) -> Result<ValidPipeline, FieldError> {
        let spec = PipelineSpec::from_yaml(yaml)?;
        let partitions = (self.count)(&spec).await.map_err(|e| {
            FieldError::new("source", format!("cannot count the partitions: {e:#}"))
        })?;
        Ok(ValidPipeline {
            name: spec.name.clone(),
            partitions,
            gpu: spec.model.device == DeviceSpec::Cuda,
            failover: spec.failover,
        })
    }

    async fn move_source(
        &self,
        yaml: &str,
        from: &str,
        to: &str,
        since: std::time::SystemTime,
    ) -> anyhow::Result<Option<String>> {
        let spec = PipelineSpec::from_yaml(yaml)?;
        (self.move_source)(&spec, from, to, since).await
    }
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
    /// This node's Raft id, at least 1, unique in the region.
    #[arg(long)]
    id: Option<u64>,
    /// host:port to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// host:port that others use; default: --listen.
    #[arg(long)]
    advertise: Option<String>,
    /// Where this node keeps its Raft log and state (`raft.redb`), locked while it runs.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The initial voters: id=host:port,... (this node included). The node with the
    /// smallest id starts the group when its log is empty; the others wait for it.
    #[arg(long)]
    members: Option<String>,
    /// Join a group that runs already: start empty and wait to be added with
    /// `mirador admin add-learner` (then `promote`). Excludes --members.
    #[arg(long)]
    join: bool,
    /// Executor lease, ms.
    #[arg(long)]
    lease_ms: Option<u64>,
    /// The region this group runs; default: local.
    #[arg(long)]
    region: Option<String>,
    /// host:port where Prometheus scrapes this node's metrics (`GET /metrics`); loopback
    /// is safest. Default: not served.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct CoordinatorFile {
    id: Option<u64>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    members: Option<BTreeMap<u64, String>>,
    join: Option<bool>,
    lease_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    max_moves: Option<usize>,
    /// Raft's timing and log compaction; each setting defaults on its own.
    raft: Option<RaftConfig>,
    region: Option<String>,
    /// Snapshots of the region's state; each setting defaults on its own.
    snapshot: Option<SnapshotFile>,
    /// The other region: its name, snapshot store and coordinators.
    peer: Option<PeerFile>,
    /// When the other region is taken over without being asked.
    failover: Option<FailoverFile>,
    metrics_listen: Option<SocketAddr>,
}

pub fn coordinator_config(args: CoordinatorArgs) -> anyhow::Result<CoordinatorConfig> {
    let file: CoordinatorFile = mirador_proto::config::read_config_file(args.config.as_deref())
        .map_err(anyhow::Error::msg)?;
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
    // A flag wins over the file: `--members` over the file's `join`, `--join` over its
    // `members`.
    let (members, join) = match (args.members, args.join) {
        (Some(text), join) => (parse_members(&text)?, join),
        (None, true) => (BTreeMap::new(), true),
        (None, false) => (file.members.unwrap_or_default(), file.join.unwrap_or(false)),
    };
    let members = if join {
        anyhow::ensure!(
            members.is_empty(),
            "members: a node that joins a running group takes no initial members"
        );
        // No initial members: the node never starts a group of its own.
        members
    } else if members.is_empty() {
        BTreeMap::from([(node_id, advertise.clone())])
    } else {
        anyhow::ensure!(
            members.contains_key(&node_id),
            "members: must include this node ({node_id})"
        );
        members
    };
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
    let raft = file.raft.unwrap_or_default();
    raft.validate().map_err(|e| anyhow::anyhow!("raft: {e}"))?;
    let region = args
        .region
        .or(file.region)
        .unwrap_or_else(|| "local".into());
    let snapshot = file.snapshot.unwrap_or_default();
    snapshot.validate(&region)?;
    if let Some(peer) = &file.peer {
        peer.validate(&region)?;
    }
    let failover = file.failover.unwrap_or_default();
    failover.validate()?;
    Ok(CoordinatorConfig {
        node_id,
        region,
        snapshot,
        peer: file.peer,
        failover,
        listen,
        advertise,
        data_dir,
        members,
        control,
        raft,
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
    })
}

/// Runs a coordinator node until SIGINT or SIGTERM, checking pipelines with `validator`.
pub async fn run(args: CoordinatorArgs, validator: SpecConnectors) -> anyhow::Result<()> {
    let config = coordinator_config(args)?;
    eprintln!(
        "mirador coordinator {} on {} (initial members {:?}), data in {}",
        config.node_id,
        config.advertise,
        config.members,
        config.data_dir.display()
    );
    let coordinator = Coordinator::start(config, Arc::new(validator)).await?;
    mirador_proto::shutdown::requested().await;
    coordinator.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CoordinatorArgs,
    }

    fn config(flags: &[&str]) -> anyhow::Result<CoordinatorConfig> {
        let cli = Cli::try_parse_from(
            std::iter::once("mirador-coordinator").chain(flags.iter().copied()),
        )?;
        coordinator_config(cli.args)
    }

    const BASE: [&str; 6] = [
        "--id",
        "2",
        "--listen",
        "127.0.0.1:7002",
        "--data-dir",
        "/tmp/c2",
    ];

    #[test]
    fn a_node_alone_is_its_own_group_and_a_joining_node_has_no_members() {
        let alone = config(&BASE).unwrap();
        assert_eq!(
            alone.members,
            BTreeMap::from([(2, "127.0.0.1:7002".to_string())])
        );
        let joining = config(&[&BASE[..], &["--join"]].concat()).unwrap();
        assert!(
            joining.members.is_empty(),
            "it never starts a group of its own"
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let error = |flags: &[&str]| config(flags).unwrap_err().to_string();
        assert!(error(&BASE[2..]).starts_with("id:"));
        assert!(error(&["--id", "1", "--data-dir", "/tmp/c"]).starts_with("listen:"));
        let with = |extra: &[&str]| error(&[&BASE[..], extra].concat());
        assert!(with(&["--join", "--members", "1=127.0.0.1:7001"]).starts_with("members:"));
        assert!(with(&["--members", "1=127.0.0.1:7001"]).contains("must include this node"));
        assert!(with(&["--members", "1:127.0.0.1"]).starts_with("members:"));
        assert!(with(&["--lease-ms", "500"]).starts_with("lease_ms:"));
    }

    #[test]
    fn a_flag_wins_over_the_file_and_the_file_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "id: 3\nlisten: 127.0.0.1:7003\ndata_dir: /tmp/c3\njoin: true\nmax_moves: 2\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let from_file = config(&["--config", path]).unwrap();
        assert_eq!(from_file.node_id, 3);
        assert!(from_file.members.is_empty());
        assert_eq!(from_file.control.max_moves, 2);
        let flag_wins = config(&["--config", path, "--id", "4"]).unwrap();
        assert_eq!(flag_wins.node_id, 4);
        let members_win = config(&["--config", path, "--members", "3=127.0.0.1:7003"]).unwrap();
        assert_eq!(
            members_win.members.len(),
            1,
            "--members overrides the file's join"
        );

        std::fs::write(
            &file,
            "id: 3\nlisten: 127.0.0.1:7003\ndata_dir: /tmp/c3\nmembers: {3: 127.0.0.1:7003}\n",
        )
        .unwrap();
        let join_wins = config(&["--config", path, "--join"]).unwrap();
        assert!(
            join_wins.members.is_empty(),
            "--join overrides the file's members"
        );

        std::fs::write(&file, "id: 3\nlisten_on: 127.0.0.1:7003\n").unwrap();
        let error = config(&["--config", path]).unwrap_err().to_string();
        assert!(error.contains("listen_on"), "{error}");
    }

    #[test]
    fn region_and_snapshot_settings_come_from_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        let path = file.to_str().unwrap();
        let base = "id: 3\nlisten: 127.0.0.1:7003\ndata_dir: /tmp/c3\n";
        let with = |rest: &str| {
            std::fs::write(&file, format!("{base}{rest}")).unwrap();
            config(&["--config", path])
        };
        let defaults = with("").unwrap();
        assert_eq!(defaults.region, "local");
        assert_eq!(defaults.snapshot, SnapshotFile::default());
        let tuned =
            with("region: east\nsnapshot:\n  interval_ms: 1000\n  store: /srv/snap\n").unwrap();
        assert_eq!(tuned.region, "east");
        assert_eq!(tuned.snapshot.interval_ms, 1000);
        assert_eq!(tuned.snapshot.keep, SnapshotFile::default().keep);
        let error = |rest: &str| with(rest).unwrap_err().to_string();
        assert!(error("snapshot:\n  interval_ms: 5\n").starts_with("snapshot.interval_ms"));
        assert!(error("snapshot:\n  keep: 0\n").starts_with("snapshot.keep"));
        assert!(error("snapshot:\n  every_ms: 5\n").contains("every_ms"));
        assert!(error("region: a/b\n").starts_with("region"));
        let flag_wins = config(&["--config", path, "--region", "west"]).unwrap();
        assert_eq!(flag_wins.region, "west");
    }

    #[test]
    fn the_other_region_and_failover_settings_come_from_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        let path = file.to_str().unwrap();
        let base = "id: 3\nlisten: 127.0.0.1:7003\ndata_dir: /tmp/c3\nregion: east\n";
        let with = |rest: &str| {
            std::fs::write(&file, format!("{base}{rest}")).unwrap();
            config(&["--config", path])
        };
        let alone = with("").unwrap();
        assert_eq!(alone.peer, None);
        assert_eq!(alone.failover, FailoverFile::default());
        let paired = with(
            "peer:\n  region: west\n  store: /srv/west\n  coordinators: [127.0.0.1:8001]\n\
             failover:\n  after_secs: 5\n",
        )
        .unwrap();
        let peer = paired.peer.unwrap();
        assert_eq!(peer.region, "west");
        assert_eq!(peer.coordinators, vec!["127.0.0.1:8001".to_string()]);
        assert_eq!(paired.failover.after_secs, 5);
        assert_eq!(paired.failover.check_ms, FailoverFile::default().check_ms);
        let error = |rest: &str| with(rest).unwrap_err().to_string();
        assert!(error("peer:\n  region: east\n  store: /s\n").starts_with("peer.region"));
        assert!(error("peer:\n  region: _x\n  store: /s\n").starts_with("peer.region"));
        assert!(
            error("peer:\n  region: west\n  store: /s\n  coordinators: ['']\n")
                .starts_with("peer.coordinators[0]")
        );
        assert!(error("failover:\n  after_secs: 0\n").starts_with("failover.after_secs"));
        assert!(error("failover:\n  after_secs: 1\n  check_ms: 1000\n")
            .starts_with("failover.check_ms"));
        assert!(error("failover:\n  after: 5\n").contains("after"));
    }

    #[test]
    fn raft_settings_come_from_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        let path = file.to_str().unwrap();
        let base = "id: 3\nlisten: 127.0.0.1:7003\ndata_dir: /tmp/c3\n";
        let with = |raft: &str| {
            std::fs::write(&file, format!("{base}raft:\n{raft}")).unwrap();
            config(&["--config", path])
        };
        let tuned = with("  heartbeat_interval_ms: 40\n  snapshot_after_logs: 50\n").unwrap();
        assert_eq!(tuned.raft.heartbeat_interval_ms, 40);
        assert_eq!(tuned.raft.snapshot_after_logs, 50);
        assert_eq!(
            tuned.raft.election_timeout_max_ms,
            RaftConfig::default().election_timeout_max_ms,
            "a setting left out keeps its default"
        );
        let error = with("  heartbeat_interval_ms: 500\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("raft: heartbeat_interval_ms"), "{error}");
        let error = with("  heartbeat_ms: 40\n").unwrap_err().to_string();
        assert!(error.contains("heartbeat_ms"), "{error}");
    }
}
