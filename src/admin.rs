//! `mirador admin ...`: the admin API's client, with readable tables or `--json`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use mirador_proto::admin::admin_client::AdminClient;
use mirador_proto::admin::{
    AddLearnerRequest, ClusterStatusRequest, ClusterStatusResponse, DrainNodeRequest,
    ListNodesRequest, ListPipelinesRequest, MemberRequest, NodeInfo, PipelineInfo, PipelineRequest,
    PipelineSpecRequest,
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
}

/// Runs one admin command against the coordinators at `coordinators`.
pub async fn run(
    coordinators: Vec<String>,
    json: bool,
    command: AdminCommand,
) -> anyhow::Result<()> {
    let channel = LeaderChannel::new(coordinators, Duration::from_secs(10));
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
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
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
        "gpu": p.gpu, "paused": p.paused,
        "assignments": p.assignments.iter().map(|a| json!({
            "partition": a.partition, "owner": a.owner, "epoch": a.epoch,
            "moving_to": a.moving_to, "checkpoint": a.checkpoint, "lag": a.lag,
            "events_per_sec": a.events_per_sec, "records_in": a.records_in,
            "dead_lettered": a.dead_lettered, "restarts": a.restarts, "failed": a.failed,
            "last_move_pause_ms": a.last_move_pause_ms, "state": a.state,
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
    let mut out = format!(
        "pipeline {} v{}: {} partitions{}{}{lag}\n",
        p.name,
        p.version,
        p.partitions,
        if p.gpu { ", gpu" } else { "" },
        if p.paused { ", paused" } else { "" }
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
