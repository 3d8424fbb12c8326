//! `mirador bench-snapshot`: how long the leader takes to snapshot a large region, and
//! whether the async threads (heartbeats, the apply loop) wait for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirador_coordinator::snapshot::format;
use mirador_coordinator::snapshot::{SnapshotStore, StoreConfig};
use mirador_coordinator::state::{ClusterState, Command, Move};

/// A region of `pipelines` pipelines of `partitions` partitions each, every partition
/// assigned on one of 32 executors with a committed checkpoint, and specs of the size
/// of the demo's.
fn large_state(pipelines: usize, partitions: u32) -> ClusterState {
    let mut state = ClusterState::default();
    let executors = 32;
    for e in 0..executors {
        state.apply(&Command::RegisterExecutor {
            id: format!("executor-{e}"),
            address: format!("10.0.{}.{}:7100", e / 250, e % 250),
            region: "east".into(),
            slots: 10_000,
            gpu: false,
        });
    }
    let spec = include_str!("../../examples/kafka-bigtable.yaml");
    for p in 0..pipelines {
        let name = format!("pipeline-{p:04}");
        state.apply(&Command::PutPipeline {
            name: name.clone(),
            spec: spec.replace("name: kafka-bigtable", &format!("name: {name}")),
            partitions,
            gpu: false,
            failover: Default::default(),
        });
        let moves = (0..partitions)
            .map(|partition| Move {
                pipeline: name.clone(),
                partition,
                from: None,
                to: format!(
                    "executor-{}",
                    (p as u32 * partitions + partition) % executors
                ),
            })
            .collect();
        state.apply(&Command::ApplyPlan { moves });
        for partition in 0..partitions {
            let key = (name.clone(), partition);
            let a = &state.assignments[&key];
            let (executor, epoch) = (a.owner.clone().unwrap_or_default(), a.epoch);
            state.apply(&Command::CommitCheckpoint {
                pipeline: name.clone(),
                partition,
                executor,
                epoch,
                position: 1_000_000 + u64::from(partition) * 4096,
            });
        }
    }
    state
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

pub async fn bench_snapshot(pipelines: usize, partitions: u32, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(runs >= 1, "runs: at least 1");
    let state = Arc::new(large_state(pipelines, partitions));
    anyhow::ensure!(
        state.checkpoints.len() == pipelines * partitions as usize,
        "the benchmark state lacks checkpoints"
    );
    let dir = tempfile::tempdir()?;
    let store = SnapshotStore::open(
        &StoreConfig::Url(dir.path().display().to_string()),
        "east",
        "store",
    )
    .map_err(anyhow::Error::msg)?;

    // A 10 ms ticker on the async threads, as heartbeats and the apply loop run: how late
    // it fires while snapshots are taken says whether they wait for the snapshot.
    let worst_late_us = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let worst = worst_late_us.clone();
        async move {
            let period = Duration::from_millis(10);
            let mut next = Instant::now() + period;
            loop {
                tokio::time::sleep_until(next.into()).await;
                let late = Instant::now().saturating_duration_since(next);
                worst.fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                next += period;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let idle_late_us = worst_late_us.swap(0, Ordering::Relaxed);

    let (mut encodes, mut writes, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut size = 0;
    for sequence in 1..=runs as u64 {
        let started = Instant::now();
        let snapshot = state.clone();
        let encoded = tokio::task::spawn_blocking(move || format::encode(&snapshot)).await?;
        let encoded_at = Instant::now();
        size = encoded.body.len();
        let manifest = encoded.manifest("east", sequence, 1);
        anyhow::ensure!(
            store.write(manifest, encoded.body).await?.is_some(),
            "snapshot {sequence} was not committed"
        );
        store.prune(3).await?;
        encodes.push(encoded_at - started);
        writes.push(encoded_at.elapsed());
        totals.push(started.elapsed());
    }
    let busy_late_us = worst_late_us.load(Ordering::Relaxed);
    ticker.abort();

    let started = Instant::now();
    let (newest, _) = store.newest_valid().await?;
    let read = started.elapsed();
    let (manifest, restored) = newest.ok_or_else(|| anyhow::anyhow!("no snapshot read back"))?;
    anyhow::ensure!(restored == *state, "the snapshot read back differs");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "snapshot of {pipelines} pipelines x {partitions} partitions ({} partitions, {} \
         checkpoints, {} executors), {runs} runs, local directory:",
        manifest.partitions,
        restored.checkpoints.len(),
        restored.executors.len()
    );
    println!("  size                  {:.2} MB", size as f64 / 1e6);
    println!(
        "  encode + SHA-256      {:.1} ms (median)",
        ms(median(encodes))
    );
    println!(
        "  write + retention     {:.1} ms (median)",
        ms(median(writes))
    );
    println!(
        "  whole snapshot        {:.1} ms (median), {:.1} ms (worst)",
        ms(median(totals.clone())),
        ms(totals.iter().copied().max().unwrap_or_default())
    );
    println!("  read back + check     {:.1} ms", ms(read));
    println!(
        "  a 10 ms ticker on the async threads: {:.2} ms late at worst while snapshotting \
         ({:.2} ms idle)",
        busy_late_us as f64 / 1000.0,
        idle_late_us as f64 / 1000.0
    );
    Ok(())
}
