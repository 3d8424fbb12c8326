//! `mirador admin ...`: the admin API's client, with readable tables or `--json`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use mirador_proto::admin::admin_client::AdminClient;
use mirador_proto::admin::{
    AddLearnerRequest, ClusterStatusRequest, ClusterStatusResponse, CreateSnapshotRequest,
    DrainNodeRequest, FailoverRequest, ListNodesRequest, ListPipelinesRequest,
    ListSnapshotsRequest, ListSnapshotsResponse, MemberRequest, NodeInfo, PipelineInfo,
    PipelineRequest, PipelineSpecRequest, RegionsRequest, RegionsResponse, RestoreRequest,
    ShowSnapshotRequest, ShowSnapshotResponse, SnapshotInfo,
};
use mirador_proto::leader::LeaderChannel;
use serde_json::{json, Value};
use tonic::transport::Channel;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// The Raft group: leader, term, members.
    Status,
    /// Add a coordinator as a learner (it copies the log, does not vote yet).
    AddLearner {
        /// Raft id of the new coordinator (unused in the group).
        #[arg(long)]
        node_id: u64,
        /// host:port of its gRPC endpoint.
        #[arg(long)]
        address: String,
    },
    /// Make a learner a voter.
    Promote {
        /// Raft id of a learner that has caught up with the leader's log.
        #[arg(long)]
        node_id: u64,
    },
    /// Remove a voter or a learner from the group.
    RemoveMember {
        /// Raft id of the member.
        #[arg(long)]
        node_id: u64,
    },
    /// Executors, their slots, partitions and last heartbeat.
    Nodes,
    /// Move every partition off an executor, and give it nothing new.
    Drain {
        /// Id of the executor, as `mirador admin nodes` shows it.
        executor_id: String,
        /// Take it back into service instead.
        #[arg(long)]
        undo: bool,
    },
    /// Create a pipeline from a spec file.
    Create {
        /// The pipeline spec, YAML (docs/pipeline-spec.md).
        spec: PathBuf,
    },
    /// Replace a pipeline's spec (its name is in the file).
    Update {
        /// The new spec, YAML; its `name` picks the pipeline.
        spec: PathBuf,
    },
    /// Stop reading a pipeline's partitions, keeping their checkpoints and slots.
    Pause {
        /// The pipeline's name.
        name: String,
    },
    /// Start a paused pipeline's partitions again from their checkpoints.
    Resume {
        /// The pipeline's name.
        name: String,
    },
    /// Stop a pipeline and forget it, with its checkpoints.
    Delete {
        /// The pipeline's name.
        name: String,
    },
    /// A pipeline's partitions: owner, epoch, checkpoint, rate, lag, dead letters.
    Describe {
        /// The pipeline's name.
        name: String,
    },
    /// Every pipeline.
    Pipelines,
    /// A pipeline's dead letters, read from the dead-letter target of its spec (a file,
    /// whose relative path resolves here, or a Kafka topic).
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// This region and the other: snapshots, their copies, and the other's newest.
    Regions,
    /// The region's snapshots in its object store.
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Restore a snapshot into this region, which must hold no pipeline: its pipelines
    /// resume here from the snapshot's checkpoints.
    Restore {
        /// STORE/REGION for the region's newest whole snapshot, or STORE/REGION/SEQUENCE;
        /// STORE is a directory, s3://bucket/prefix or gs://bucket/prefix.
        #[arg(long)]
        snapshot: String,
        /// A setting of the store, KEY=VALUE (object_store's keys: credentials, endpoint);
        /// repeat for several.
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// Move pipelines to region TO (this one or the other): planned, the old region stops
    /// them at checkpoints and hands them over, nothing lost or done twice; `--force`
    /// takes them over from the newest snapshot of the old region held here, without it.
    Failover {
        /// The region that takes over.
        #[arg(long)]
        to: String,
        /// The pipelines; none: every pipeline the old region runs.
        pipelines: Vec<String>,
        /// Do not ask the old region (it is down or cut off).
        #[arg(long)]
        force: bool,
    },
}

/// `STORE/REGION[/SEQUENCE]` (a sequence may be a manifest's name) as a request.
fn restore_request(snapshot: &str, options: &[String]) -> anyhow::Result<RestoreRequest> {
    let options = options
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("option: {o:?} is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    let trimmed = snapshot.trim_end_matches('/');
    let (rest, last) = trimmed
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("snapshot: {snapshot:?} is not STORE/REGION[/SEQUENCE]"))?;
    let number = last.strip_suffix(".manifest").unwrap_or(last);
    let (store, region, sequence) = match number.parse::<u64>() {
        Ok(sequence) => {
            let (store, region) = rest.rsplit_once('/').ok_or_else(|| {
                anyhow::anyhow!("snapshot: {snapshot:?} is not STORE/REGION/SEQUENCE")
            })?;
            (store, region, sequence)
        }
        Err(_) => (rest, last, 0),
    };
    anyhow::ensure!(
        !store.is_empty() && !store.ends_with(':') && !store.ends_with(":/") && !region.is_empty(),
        "snapshot: {snapshot:?} is not STORE/REGION[/SEQUENCE]"
    );
    Ok(RestoreRequest {
        store: store.to_string(),
        options,
        region: region.to_string(),
        sequence,
    })
}

#[derive(Subcommand, Debug)]
pub enum SnapshotsCommand {
    /// Every snapshot in the store, newest first, each checked by its checksum.
    List {
        /// The other region's name: its copies in this region's store.
        #[arg(long)]
        region: Option<String>,
    },
    /// What one snapshot holds.
    Show {
        /// Its sequence number; default: the newest whole one.
        sequence: Option<u64>,
    },
    /// Write a snapshot now.
    Create,
}

/// Runs one admin command against the coordinators at `coordinators`.
pub async fn run(
    coordinators: Vec<String>,
    json: bool,
    command: AdminCommand,
) -> anyhow::Result<()> {
    // A failover waits for partitions to stop and for the other region, by design.
    let channel = match command {
        AdminCommand::Failover { .. } => LeaderChannel::with_options(
            coordinators,
            Duration::from_secs(10),
            mirador_proto::transport::ChannelOptions::long_calls(),
        ),
        _ => LeaderChannel::new(coordinators, Duration::from_secs(10)),
    };
    let out: Value = match command {
        AdminCommand::Status => {
            let status = call(&channel, |mut c| async move {
                c.cluster_status(ClusterStatusRequest {}).await
            })
            .await?;
            return print(json, status_json(&status), || render_status(&status));
        }
        AdminCommand::AddLearner { node_id, address } => {
            let status = call(&channel, |mut c| {
                let address = address.clone();
                async move { c.add_learner(AddLearnerRequest { node_id, address }).await }
            })
            .await?;
            return print(json, status_json(&status), || render_status(&status));
        }
        AdminCommand::Promote { node_id } => {
            let status = call(&channel, |mut c| async move {
                c.promote(MemberRequest { node_id }).await
            })
            .await?;
            return print(json, status_json(&status), || render_status(&status));
        }
        AdminCommand::RemoveMember { node_id } => {
            let status = call(&channel, |mut c| async move {
                c.remove_member(MemberRequest { node_id }).await
            })
            .await?;
            return print(json, status_json(&status), || render_status(&status));
        }
        AdminCommand::Nodes => {
            let nodes = call(&channel, |mut c| async move {
                c.list_nodes(ListNodesRequest {}).await
            })
            .await?
            .nodes;
            return print(
                json,
                Value::Array(nodes.iter().map(node_json).collect()),
                || render_nodes(&nodes),
            );
        }
        AdminCommand::Drain { executor_id, undo } => {
            let node = call(&channel, |mut c| {
                let executor_id = executor_id.clone();
                async move { c.drain_node(DrainNodeRequest { executor_id, undo }).await }
            })
            .await?;
            return print(json, node_json(&node), || {
                render_nodes(std::slice::from_ref(&node))
            });
        }
        AdminCommand::Create { spec } | AdminCommand::Update { spec } if !spec.is_file() => {
            anyhow::bail!("{}: no such file", spec.display())
        }
        AdminCommand::Create { spec } => {
            let spec = std::fs::read_to_string(&spec)?;
            let info = call(&channel, |mut c| {
                let spec = spec.clone();
                async move { c.create_pipeline(PipelineSpecRequest { spec }).await }
            })
            .await?;
            return print(json, pipeline_json(&info), || render_pipeline(&info));
        }
        AdminCommand::Update { spec } => {
            let spec = std::fs::read_to_string(&spec)?;
            let info = call(&channel, |mut c| {
                let spec = spec.clone();
                async move { c.update_pipeline(PipelineSpecRequest { spec }).await }
            })
            .await?;
            return print(json, pipeline_json(&info), || render_pipeline(&info));
        }
        AdminCommand::Pause { name } => {
            return pipeline_call(&channel, json, name, Verb::Pause).await
        }
        AdminCommand::Resume { name } => {
            return pipeline_call(&channel, json, name, Verb::Resume).await
        }
        AdminCommand::Describe { name } => {
            return pipeline_call(&channel, json, name, Verb::Describe).await
        }
        AdminCommand::DeadLetters { command } => {
            return dead_letters(&channel, json, command).await
        }
        AdminCommand::Delete { name } => {
            call(&channel, |mut c| {
                let name = name.clone();
                async move { c.delete_pipeline(PipelineRequest { name }).await }
            })
            .await?;
            json!({ "deleted": name })
        }
        AdminCommand::Pipelines => {
            let pipelines = call(&channel, |mut c| async move {
                c.list_pipelines(ListPipelinesRequest {}).await
            })
            .await?
            .pipelines;
            return print(
                json,
                Value::Array(pipelines.iter().map(pipeline_json).collect()),
                || {
                    if pipelines.is_empty() {
                        return "no pipelines (mirador admin create SPEC adds one)".to_string();
                    }
                    pipelines
                        .iter()
                        .map(render_pipeline)
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        AdminCommand::Snapshots { command } => return snapshots(&channel, json, command).await,
        AdminCommand::Regions => {
            let regions = call(&channel, |mut c| async move {
                c.regions(RegionsRequest {}).await
            })
            .await?;
            return print(json, regions_json(&regions), || render_regions(&regions));
        }
        AdminCommand::Failover {
            to,
            pipelines,
            force,
        } => {
            let request = FailoverRequest {
                to,
                pipelines,
                force,
            };
            let done = call(&channel, |mut c| {
                let request = request.clone();
                async move { c.failover(request).await }
            })
            .await?;
            return print(
                json,
                json!({
                    "to": done.to,
                    "pipelines": done.pipelines,
                    "snapshot": done.snapshot.as_ref().map(snapshot_json),
                    "stop_ms": done.stop_ms,
                    "took_ms": done.took_ms,
                }),
                || {
                    format!(
                        "region {} runs {} now, from snapshot {} of region {} (stopped in {} ms, took {} ms)\n",
                        done.to,
                        done.pipelines.join(", "),
                        done.snapshot.as_ref().map_or(0, |s| s.sequence),
                        done.snapshot.as_ref().map_or("", |s| s.region.as_str()),
                        done.stop_ms,
                        done.took_ms
                    )
                },
            );
        }
        AdminCommand::Restore { snapshot, options } => {
            let request = restore_request(&snapshot, &options)?;
            let restored = call(&channel, |mut c| {
                let request = request.clone();
                async move { c.restore(request).await }
            })
            .await?;
            return print(
                json,
                json!({
                    "snapshot": restored.snapshot.as_ref().map(snapshot_json),
                    "pipelines": restored.pipelines,
                    "partitions": restored.partitions,
                    "checkpoints": restored.checkpoints,
                }),
                || {
                    format!(
                        "restored snapshot {} of region {}: {} pipelines, {} partitions, {} checkpoints\n",
                        restored.snapshot.as_ref().map_or(0, |s| s.sequence),
                        restored.snapshot.as_ref().map_or("", |s| s.region.as_str()),
                        restored.pipelines,
                        restored.partitions,
                        restored.checkpoints
                    )
                },
            );
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn snapshots(
    channel: &LeaderChannel,
    json: bool,
    command: SnapshotsCommand,
) -> anyhow::Result<()> {
    match command {
        SnapshotsCommand::List { region } => {
            let region = region.unwrap_or_default();
            let list = call(channel, |mut c| {
                let region = region.clone();
                async move { c.list_snapshots(ListSnapshotsRequest { region }).await }
            })
            .await?;
            print(json, snapshot_list_json(&list), || render_snapshots(&list))
        }
        SnapshotsCommand::Show { sequence } => {
            let sequence = sequence.unwrap_or(0);
            let shown = call(channel, |mut c| async move {
                c.show_snapshot(ShowSnapshotRequest { sequence }).await
            })
            .await?;
            print(json, snapshot_show_json(&shown), || render_snapshot(&shown))
        }
        SnapshotsCommand::Create => {
            let info = call(channel, |mut c| async move {
                c.create_snapshot(CreateSnapshotRequest {}).await
            })
            .await?;
            print(json, snapshot_json(&info), || {
                render_snapshot_rows(std::slice::from_ref(&info))
            })
        }
    }
}

fn snapshot_json(s: &SnapshotInfo) -> Value {
    json!({
        "sequence": s.sequence,
        "region": s.region,
        "taken_at_ms": s.taken_at_ms,
        "age_ms": s.age_ms,
        "raft_index": s.raft_index,
        "raft_term": s.raft_term,
        "written_by": s.written_by,
        "size": s.size,
        "sha256": s.sha256,
        "pipelines": s.pipelines,
        "partitions": s.partitions,
        "valid": s.problem.is_empty(),
        "problem": s.problem,
    })
}

fn regions_json(r: &RegionsResponse) -> Value {
    json!({
        "region": r.region,
        "leader_id": r.leader_id,
        "leader_address": r.leader_address,
        "store": r.store,
        "newest_snapshot": r.newest_snapshot.as_ref().map(snapshot_json),
        "peer_region": r.peer_region,
        "peer_store": r.peer_store,
        "copied_sequence": r.copied_sequence,
        "copy_lag_ms": r.copy_lag_ms,
        "copies_behind": r.copies_behind,
        "copy_error": r.copy_error,
        "peer_snapshot": r.peer_snapshot.as_ref().map(snapshot_json),
        "peer_coordinators": r.peer_coordinators,
        "peer_reachable": r.peer_reachable,
        "peer_silent_ms": r.peer_silent_ms,
        "failover_after_secs": r.failover_after_secs,
        "ownership": r.ownership.iter().map(|o| json!({
            "pipeline": o.pipeline, "region": o.region, "region_epoch": o.region_epoch,
            "record_region": o.record_region, "record_epoch": o.record_epoch,
        })).collect::<Vec<_>>(),
    })
}

fn render_regions(r: &RegionsResponse) -> String {
    let age = |s: &Option<SnapshotInfo>| match s {
        Some(s) => format!(
            "{} ({:.1} s old, {} bytes)",
            s.sequence,
            s.age_ms as f64 / 1000.0,
            s.size
        ),
        None => "none yet".to_string(),
    };
    let mut out = format!(
        "region {}: leader {} ({}), store {}\n  newest snapshot {}\n",
        r.region,
        r.leader_id,
        r.leader_address,
        r.store,
        age(&r.newest_snapshot)
    );
    if r.peer_region.is_empty() {
        out.push_str("  no other region configured (peer:)\n");
        return out;
    }
    out.push_str(&format!(
        "  copied to region {} ({}): up to {}, {} behind, {} ms after its commit\n",
        r.peer_region, r.peer_store, r.copied_sequence, r.copies_behind, r.copy_lag_ms
    ));
    if !r.copy_error.is_empty() {
        out.push_str(&format!("  the last copy failed: {}\n", r.copy_error));
    }
    out.push_str(&format!(
        "region {}: newest whole snapshot here {}\n",
        r.peer_region,
        age(&r.peer_snapshot)
    ));
    if r.peer_coordinators.is_empty() {
        out.push_str("  its coordinators are not configured: only a forced failover\n");
    } else if r.peer_reachable {
        out.push_str("  its leader answers\n");
    } else {
        out.push_str(&format!(
            "  its leader has not answered for {:.1} s (automatic failover after {} s)\n",
            r.peer_silent_ms as f64 / 1000.0,
            r.failover_after_secs
        ));
    }
    if !r.ownership.is_empty() {
        out += &table(
            &["PIPELINE", "OWNER", "EPOCH", "RECORD"],
            r.ownership
                .iter()
                .map(|o| {
                    vec![
                        o.pipeline.clone(),
                        o.region.clone(),
                        o.region_epoch.to_string(),
                        if o.record_region.is_empty() {
                            "-".to_string()
                        } else {
                            format!("{} from {}", o.record_region, o.record_epoch)
                        },
                    ]
                })
                .collect(),
        );
    }
    out
}

fn snapshot_list_json(l: &ListSnapshotsResponse) -> Value {
    json!({
        "store": l.store,
        "interval_ms": l.interval_ms,
        "last_error": l.last_error,
        "last_encode_ms": l.last_encode_ms,
        "last_write_ms": l.last_write_ms,
        "snapshots": l.snapshots.iter().map(snapshot_json).collect::<Vec<_>>(),
    })
}

fn snapshot_show_json(s: &ShowSnapshotResponse) -> Value {
    json!({
        "snapshot": s.snapshot.as_ref().map(snapshot_json),
        "executors": s.executors,
        "pipelines": s.pipelines.iter().map(|p| json!({
            "name": p.name,
            "version": p.version,
            "partitions": p.partitions,
            "checkpoints": p.checkpoints,
            "paused": p.paused,
        })).collect::<Vec<_>>(),
    })
}

fn render_snapshot_rows(snapshots: &[SnapshotInfo]) -> String {
    let rows = snapshots
        .iter()
        .map(|s| {
            let whole = s.problem.is_empty();
            vec![
                s.sequence.to_string(),
                if whole {
                    format!("{:.1}s", s.age_ms as f64 / 1000.0)
                } else {
                    String::new()
                },
                if whole {
                    s.size.to_string()
                } else {
                    String::new()
                },
                if whole {
                    s.pipelines.to_string()
                } else {
                    String::new()
                },
                if whole {
                    s.partitions.to_string()
                } else {
                    String::new()
                },
                s.sha256.get(..12).unwrap_or_default().to_string(),
                if whole {
                    "whole".to_string()
                } else {
                    format!("BAD: {}", s.problem)
                },
            ]
        })
        .collect();
    table(
        &[
            "SEQUENCE",
            "AGE",
            "BYTES",
            "PIPELINES",
            "PARTITIONS",
            "SHA256",
            "STATE",
        ],
        rows,
    )
}

fn render_snapshots(l: &ListSnapshotsResponse) -> String {
    let mut out = format!("store {}, a snapshot every {} ms\n", l.store, l.interval_ms);
    if !l.last_error.is_empty() {
        out.push_str(&format!("the last write failed: {}\n", l.last_error));
    }
    if l.snapshots.is_empty() {
        out.push_str("no snapshots yet\n");
    } else {
        out.push_str(&render_snapshot_rows(&l.snapshots));
    }
    out
}

fn render_snapshot(s: &ShowSnapshotResponse) -> String {
    let mut out = render_snapshot_rows(s.snapshot.as_slice());
    out.push_str(&format!("{} executors\n", s.executors));
    let rows = s
        .pipelines
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.version.to_string(),
                p.partitions.to_string(),
                p.checkpoints.to_string(),
                if p.paused { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["PIPELINE", "VERSION", "PARTITIONS", "CHECKPOINTS", "PAUSED"],
        rows,
    ));
    out
}

#[derive(Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// List them (the first `--limit`), by reason, stage and time if asked.
    List {
        /// The pipeline's name.
        name: String,
        /// Only this reason code (`invalid_json`, `features_not_found`...).
        #[arg(long)]
        reason: Option<String>,
        /// Only those this stage sent (`decode`, `enrich`, `infer`, `sink`...).
        #[arg(long)]
        stage: Option<String>,
        /// Only those dead-lettered at or after this time (RFC 3339, UTC:
        /// 2026-12-08T03:00:00.000Z).
        #[arg(long)]
        since: Option<String>,
        /// Show the first this many of those that match.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter with its original bytes, by its input's partition and offset.
    Show {
        /// The pipeline's name.
        name: String,
        /// The input's partition.
        #[arg(long)]
        partition: u64,
        /// The input's offset in its partition.
        #[arg(long)]
        offset: u64,
    },
}

async fn dead_letters(
    channel: &LeaderChannel,
    json: bool,
    command: DeadLettersCommand,
) -> anyhow::Result<()> {
    let name = match &command {
        DeadLettersCommand::List { name, .. } | DeadLettersCommand::Show { name, .. } => {
            name.clone()
        }
    };
    let info = call(channel, |mut c| {
        let request = PipelineRequest { name: name.clone() };
        async move { c.describe_pipeline(request).await }
    })
    .await?;
    let spec = info.spec.clone();
    let entries = tokio::task::spawn_blocking(move || crate::dead_letters::read(&spec)).await??;
    match command {
        DeadLettersCommand::List {
            reason,
            stage,
            since,
            limit,
            ..
        } => {
            let filter = crate::dead_letters::Filter {
                reason,
                stage,
                since,
            };
            let kept: Vec<_> = entries.iter().filter(|e| filter.keeps(e)).collect();
            let shown = &kept[..kept.len().min(limit)];
            let value = json!({
                "pipeline": name, "matching": kept.len(), "total": entries.len(),
                "dead_letters": shown.iter().map(|e| e.json(false)).collect::<Vec<_>>(),
            });
            print(json, value, || {
                let mut out = format!(
                    "{}: {} of {} dead letters match{}\n",
                    name,
                    kept.len(),
                    entries.len(),
                    if shown.len() < kept.len() {
                        format!(", the first {} shown", shown.len())
                    } else {
                        String::new()
                    }
                );
                out += &table(
                    &["PARTITION", "OFFSET", "STAGE", "REASON", "AT", "MESSAGE"],
                    shown
                        .iter()
                        .map(|e| {
                            vec![
                                e.partition.to_string(),
                                e.offset.to_string(),
                                e.stage.clone(),
                                e.reason.clone(),
                                e.at.clone().unwrap_or_else(|| "-".into()),
                                e.message.clone(),
                            ]
                        })
                        .collect(),
                );
                out
            })
        }
        DeadLettersCommand::Show {
            partition, offset, ..
        } => {
            let entry = entries
                .iter()
                .find(|e| e.partition == partition && e.offset == offset)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "offset: no dead letter of {name} for partition {partition} offset {offset}"
                    )
                })?;
            print(json, entry.json(true), || {
                format!(
                    "partition {} offset {}: {} at {} ({})\n{}\n{}\n",
                    entry.partition,
                    entry.offset,
                    entry.reason,
                    entry.stage,
                    entry.at.as_deref().unwrap_or("-"),
                    entry.message,
                    String::from_utf8_lossy(&entry.payload)
                )
            })
        }
    }
}

enum Verb {
    Pause,
    Resume,
    Describe,
}

async fn pipeline_call(
    channel: &LeaderChannel,
    json: bool,
    name: String,
    verb: Verb,
) -> anyhow::Result<()> {
    let info = call(channel, |mut c| {
        let request = PipelineRequest { name: name.clone() };
        let verb = &verb;
        async move {
            match verb {
                Verb::Pause => c.pause_pipeline(request).await,
                Verb::Resume => c.resume_pipeline(request).await,
                Verb::Describe => c.describe_pipeline(request).await,
            }
        }
    })
    .await?;
    print(json, pipeline_json(&info), || render_pipeline(&info))
}

async fn call<T, F, Fut>(channel: &LeaderChannel, f: F) -> anyhow::Result<T>
where
    F: Fn(AdminClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    channel
        .call(|c| f(AdminClient::new(c)))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| anyhow::anyhow!("{}", status.message()))
}

fn print(json: bool, value: Value, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", table());
    }
    Ok(())
}

fn status_json(s: &ClusterStatusResponse) -> Value {
    json!({
        "leader_id": s.leader_id,
        "leader_address": s.leader_address,
        "term": s.term,
        "last_applied": s.last_applied,
        "members": s.members.iter().map(|m| json!({
            "node_id": m.node_id, "address": m.address, "role": m.role,
        })).collect::<Vec<_>>(),
    })
}

fn render_status(s: &ClusterStatusResponse) -> String {
    let mut out = format!(
        "leader {} ({}), term {}, last applied {}\n",
        s.leader_id, s.leader_address, s.term, s.last_applied
    );
    out += &table(
        &["NODE", "ADDRESS", "ROLE"],
        s.members
            .iter()
            .map(|m| vec![m.node_id.to_string(), m.address.clone(), m.role.clone()])
            .collect(),
    );
    out
}

fn node_json(n: &NodeInfo) -> Value {
    json!({
        "executor_id": n.executor_id, "address": n.address, "region": n.region,
        "slots": n.slots, "gpu": n.gpu, "draining": n.draining,
        "incarnation": n.incarnation, "partitions": n.partitions,
        "last_heartbeat_ms": n.last_heartbeat_ms,
    })
}

fn render_nodes(nodes: &[NodeInfo]) -> String {
    table(
        &[
            "EXECUTOR",
            "ADDRESS",
            "REGION",
            "SLOTS",
            "GPU",
            "PARTITIONS",
            "STATE",
            "HEARTBEAT",
        ],
        nodes
            .iter()
            .map(|n| {
                vec![
                    n.executor_id.clone(),
                    n.address.clone(),
                    n.region.clone(),
                    n.slots.to_string(),
                    if n.gpu { "yes" } else { "no" }.into(),
                    n.partitions.to_string(),
                    if n.draining { "draining" } else { "active" }.into(),
                    format!("{} ms ago", n.last_heartbeat_ms),
                ]
            })
            .collect(),
    )
}

fn pipeline_json(p: &PipelineInfo) -> Value {
    json!({
        "name": p.name, "version": p.version, "partitions": p.partitions,
        "gpu": p.gpu, "paused": p.paused, "region": p.region, "region_epoch": p.region_epoch,
        "failover": p.failover, "slo_freshness_p90_secs": p.slo_freshness_p90_secs,
        "slo_met": p.slo_met, "slo_budget_left": p.slo_budget_left,
        "assignments": p.assignments.iter().map(|a| json!({
            "partition": a.partition, "owner": a.owner, "epoch": a.epoch,
            "moving_to": a.moving_to, "checkpoint": a.checkpoint, "lag": a.lag,
            "events_per_sec": a.events_per_sec, "records_in": a.records_in,
            "dead_lettered": a.dead_lettered, "restarts": a.restarts, "failed": a.failed,
            "last_move_pause_ms": a.last_move_pause_ms, "state": a.state,
            "freshness_ms": a.freshness_ms, "system_lag_ms": a.system_lag_ms,
            "slo_met": a.slo_met,
        })).collect::<Vec<_>>(),
    })
}

fn render_pipeline(p: &PipelineInfo) -> String {
    let lags: Vec<u64> = p.assignments.iter().filter_map(|a| a.lag).collect();
    let lag = if lags.is_empty() {
        String::new()
    } else {
        format!(", lag {}", lags.iter().sum::<u64>())
    };
    let slo = match (p.slo_freshness_p90_secs, p.slo_met, p.slo_budget_left) {
        (Some(target), Some(met), Some(left)) => format!(
            ", freshness SLO {target} s p90: {:.1} % met, {:.0} % of the budget left",
            100.0 * met,
            100.0 * left
        ),
        (Some(target), ..) => format!(", freshness SLO {target} s p90: not measured yet"),
        _ => String::new(),
    };
    let mut out = format!(
        "pipeline {} v{}: {} partitions{}{}{lag}{slo}, region {} (epoch {}{})\n",
        p.name,
        p.version,
        p.partitions,
        if p.gpu { ", gpu" } else { "" },
        if p.paused { ", paused" } else { "" },
        p.region,
        p.region_epoch,
        match p.failover.as_str() {
            "automatic" => ", automatic failover",
            "active_active" => ", active-active",
            _ => "",
        }
    );
    out += &table(
        &[
            "PARTITION",
            "STATE",
            "OWNER",
            "EPOCH",
            "CHECKPOINT",
            "EVENTS/S",
            "LAG",
            "FRESHNESS",
            "IN",
            "DEAD",
            "RESTARTS",
            "MOVE PAUSE",
        ],
        p.assignments
            .iter()
            .map(|a| {
                let owner = match (a.owner.as_str(), a.moving_to.as_str()) {
                    ("", _) => "-".to_string(),
                    (owner, "") => owner.to_string(),
                    (owner, to) => format!("{owner} -> {to}"),
                };
                vec![
                    a.partition.to_string(),
                    a.state.clone(),
                    owner,
                    a.epoch.to_string(),
                    a.checkpoint.map_or("-".into(), |c| c.to_string()),
                    format!("{:.0}", a.events_per_sec),
                    a.lag.map_or("-".into(), |l| l.to_string()),
                    a.freshness_ms
                        .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                    a.records_in.to_string(),
                    a.dead_lettered.to_string(),
                    a.restarts.to_string(),
                    if a.last_move_pause_ms > 0 {
                        format!("{} ms", a.last_move_pause_ms)
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect(),
    );
    out
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text: String = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        text.truncate(text.trim_end().len());
        text + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_named_by_store_region_and_sequence() {
        let r = restore_request("/srv/snap/east", &[]).unwrap();
        assert_eq!(
            (r.store.as_str(), r.region.as_str(), r.sequence),
            ("/srv/snap", "east", 0)
        );
        let r = restore_request("s3://b/p/east/42", &["aws_region=x".into()]).unwrap();
        assert_eq!(
            (r.store.as_str(), r.region.as_str(), r.sequence),
            ("s3://b/p", "east", 42)
        );
        assert_eq!(r.options["aws_region"], "x");
        let r = restore_request("/s/east/00000000000000000007.manifest", &[]).unwrap();
        assert_eq!(r.sequence, 7);
        for bad in ["east", "s3://east", "/s/42"] {
            let e = restore_request(bad, &[]).unwrap_err().to_string();
            assert!(e.starts_with("snapshot:"), "{bad}: {e}");
        }
        let e = restore_request("/s/east", &["no-equals".into()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("option:"), "{e}");
    }
}
