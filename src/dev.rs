//! `mirador dev`: a pipeline through a one-node region in this process.

use std::path::Path;
use std::time::Duration;

use mirador_executor::pipeline::{partition_count, Counts};
use mirador_executor::PipelineSpec;

use crate::region::{all_ended, LocalRegion};

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
    let requested = mirador_proto::shutdown::requested();
    tokio::pin!(requested);
    // The end is looked for every 100 ms, so that the closing rate is close; progress is
    // printed every second.
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut last = (std::time::Instant::now(), 0u64);
    let snapshots = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut requested => break region.agent.snapshots().await,
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
