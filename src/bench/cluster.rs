//! `mirador bench-cluster`: the benchmark pipeline run directly, then through a region in
//! this process.

use std::sync::Arc;
use std::time::Duration;

use mirador_executor::infer::InferencePool;
use mirador_executor::pipeline::Counts;
use mirador_executor::PipelineSpec;

use crate::region::LocalRegion;

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
