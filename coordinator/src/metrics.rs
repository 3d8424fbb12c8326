//! What a coordinator shows Prometheus (`metrics_listen:` or `--metrics-listen`): its Raft
//! member on every node; the region's executors, pipelines and partitions from the
//! replicated state; and, on the leader, the leases, lags and handover pauses it observes
//! and the snapshots it writes. Read when scraped.

use std::time::Instant;

use mirador_proto::metrics::{encode, Family};

use crate::control::Observations;
use crate::raft::RaftNode;
use crate::snapshot::{age_ms, Snapshots};

/// The text Prometheus reads, from this coordinator as it is now.
pub fn render(
    raft: &RaftNode,
    observations: &Observations,
    snapshots: &Snapshots,
    lease: std::time::Duration,
) -> String {
    let leads = raft.is_leader();
    let mut families = raft_member(raft, leads);
    families.extend(region(raft, leads, observations, lease));
    if leads {
        // The leader writes the snapshots; a former leader's last one only grows old.
        families.extend(snapshot(snapshots));
    }
    encode(families)
}

fn gauge(name: &str, help: &str, value: f64) -> Family {
    let mut family = Family::gauge(name, help);
    family.add(&[], value);
    family
}

fn raft_member(raft: &RaftNode, leads: bool) -> Vec<Family> {
    let m = raft.metrics();
    let mut families = vec![
        gauge(
            "mirador_raft_term",
            "The Raft term this coordinator is in.",
            m.term as f64,
        ),
        gauge(
            "mirador_raft_leader",
            "1 on the Raft leader of the region's coordinators, 0 elsewhere.",
            if leads { 1.0 } else { 0.0 },
        ),
        gauge(
            "mirador_raft_leader_id",
            "The node id of the leader this coordinator knows, 0 for none.",
            m.leader.unwrap_or(0) as f64,
        ),
        gauge(
            "mirador_raft_last_log_index",
            "The index of the last entry in this coordinator's Raft log.",
            m.last_log_index.unwrap_or(0) as f64,
        ),
        gauge(
            "mirador_raft_last_applied_index",
            "The index of the last Raft entry applied to this coordinator's state.",
            m.last_applied.unwrap_or(0) as f64,
        ),
        gauge(
            "mirador_raft_voters",
            "Voting members of the Raft group, as this coordinator knows it.",
            m.voters.len() as f64,
        ),
    ];
    let mut lag = Family::gauge(
        "mirador_raft_replication_lag_entries",
        "On the leader: entries of its log a member has not acknowledged.",
    );
    if leads {
        for id in m.members.keys().filter(|id| **id != m.id) {
            if let Some(entries) = raft.replication_lag(*id) {
                lag.add(&[("member", &id.to_string())], entries as f64);
            }
        }
    }
    families.push(lag);
    families
}

fn region(
    raft: &RaftNode,
    leads: bool,
    observations: &Observations,
    lease: std::time::Duration,
) -> Vec<Family> {
    let state = raft.state();
    let count = |of: fn(&crate::state::Assignment) -> bool| {
        state.assignments.values().filter(|a| of(a)).count()
    };
    let assigned = count(|a| a.owner.is_some());
    let finished = count(|a| a.finished);
    let waiting = count(|a| a.owner.is_none() && !a.finished);
    let mut families = vec![
        gauge(
            "mirador_region_executors",
            "Executors registered in the region.",
            state.executors.len() as f64,
        ),
        gauge(
            "mirador_region_pipelines",
            "Pipelines in the region.",
            state.pipelines.len() as f64,
        ),
    ];
    let mut partitions = Family::gauge(
        "mirador_region_partitions",
        "Partitions of the region's pipelines, by state: assigned to an executor, waiting for one, finished.",
    );
    partitions.add(&[("state", "assigned")], assigned as f64);
    partitions.add(&[("state", "waiting")], waiting as f64);
    partitions.add(&[("state", "finished")], finished as f64);
    families.push(partitions);
    let mut slots = Family::gauge(
        "mirador_region_executor_slots",
        "Partitions an executor runs at most.",
    );
    for executor in state.executors.values() {
        slots.add(&[("executor", &executor.id)], f64::from(executor.slots));
    }
    families.push(slots);
    if !leads {
        // Leases, lags and pauses are the leader's observations.
        return families;
    }
    let now = Instant::now();
    let mut live = Family::gauge(
        "mirador_executor_lease_live",
        "On the leader: 1 while an executor's lease holds (a heartbeat within the lease), 0 once it ran out.",
    );
    let mut since = Family::gauge(
        "mirador_executor_heartbeat_age_seconds",
        "On the leader: time since an executor's last heartbeat.",
    );
    for id in state.executors.keys() {
        if let Some(at) = observations.last_heartbeat(id) {
            let age = now.saturating_duration_since(at);
            live.add(&[("executor", id)], if age <= lease { 1.0 } else { 0.0 });
            since.add(&[("executor", id)], age.as_secs_f64());
        }
    }
    families.extend([live, since]);
    let mut lag = Family::gauge(
        "mirador_partition_lag_records",
        "On the leader: records between a partition's checkpoint and the end of its source, as its owner reports.",
    );
    let mut freshness = Family::gauge(
        "mirador_partition_data_freshness_seconds",
        "On the leader: time since the newest event time among a partition's committed records, as its owner reports.",
    );
    let mut system_lag = Family::gauge(
        "mirador_partition_system_lag_seconds",
        "On the leader: how long a partition's oldest record in flight has waited, as its owner reports.",
    );
    let mut pause = Family::gauge(
        "mirador_partition_handover_pause_seconds",
        "On the leader: how long a partition's last move left it running nowhere.",
    );
    for (key, assignment) in &state.assignments {
        let partition = key.1.to_string();
        let labels = [
            ("pipeline", key.0.as_str()),
            ("partition", partition.as_str()),
        ];
        // A partition that runs nowhere has no owner to report it.
        let progress = assignment
            .owner
            .as_ref()
            .and_then(|_| observations.progress(key));
        if let Some(progress) = progress {
            if let Some(records) = progress.lag {
                lag.add(&labels, records as f64);
            }
            if let Some(ms) = progress.freshness_ms {
                freshness.add(&labels, ms as f64 / 1000.0);
            }
            system_lag.add(&labels, progress.system_lag_ms as f64 / 1000.0);
        }
        if let Some(ms) = observations.move_pause(key).and_then(|p| p.pause_ms) {
            pause.add(&labels, ms as f64 / 1000.0);
        }
    }
    families.extend([lag, freshness, system_lag, pause]);
    families
}

fn snapshot(snapshots: &Snapshots) -> Vec<Family> {
    let mut families = Vec::new();
    if let Some(written) = snapshots.last() {
        families.push(gauge(
            "mirador_snapshot_age_seconds",
            "Age of the newest snapshot this coordinator wrote of the region's state.",
            age_ms(written.manifest.taken_at_ms) as f64 / 1000.0,
        ));
        families.push(gauge(
            "mirador_snapshot_sequence",
            "The sequence number of the newest snapshot this coordinator wrote.",
            written.manifest.sequence as f64,
        ));
    }
    if let Some(copied) = snapshots.last_copy() {
        families.push(gauge(
            "mirador_snapshot_replication_lag_seconds",
            "From the newest snapshot's commit here to its copy in the other region's store.",
            copied.lag.as_secs_f64(),
        ));
    }
    families
}
