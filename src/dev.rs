//! `mirador dev`: a pipeline through a one-node region in this process.

use std::path::Path;
use std::time::Duration;

use mirador_executor::pipeline::{partition_count, Counts};
use mirador_executor::progress::{bounded_total, Progress};
use mirador_executor::watch::{watch, Rate};
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
    // The end is looked for every 100 ms, so that the closing rate is close; progress is
    // printed every second. At Ctrl-C the region is shut down at once.
    let mut rate = Rate::every(Duration::from_secs(1));
    let progress = Progress::start(bounded_total(&spec), "events");
    watch(
        Duration::from_millis(100),
        async || {
            let snapshots = region.agent.snapshots().await;
            if all_ended(&snapshots, partitions as usize) {
                return true;
            }
            if rate.due() {
                let Counts {
                    read,
                    scored,
                    dead_lettered,
                } = Counts::of(&snapshots);
                let rate = rate.update(read);
                progress.show(read, || {
                    format!(
                        "  {:>6.1} s  {read:>10} events  {rate:>9.0} events/s  {scored} scored  \
                         {dead_lettered} dead-lettered",
                        started.elapsed().as_secs_f64()
                    )
                });
            }
            false
        },
        || None,
    )
    .await;
    progress.finish();
    let snapshots = region.agent.snapshots().await;
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
