//! The `mirador` command: runs pipelines, the bundled demo, the benchmarks, and the
//! nodes of a cluster (coordinator, executor) with its admin client.

mod admin;
mod bench;
mod dead_letters;
mod demo;
mod dev;
mod entry;
mod region;

// Records are allocated on one thread and freed on another at high rates, which glibc's
// allocator handles poorly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bench::connectors::{run_connector_bench, ConnectorBenchOptions};
use bench::{run_bench, BenchOptions};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mirador_executor::connectors::bigtable::{create_table, load_features, BigtableSpec};
use mirador_executor::connectors::kafka::produce;
use mirador_executor::connectors::pubsub::publish;
use mirador_executor::infer::InferencePool;
use mirador_executor::{run_pipeline, PipelineResources, PipelineSpec, RunOptions};

#[derive(Parser)]
#[command(
    name = "mirador",
    version,
    about = "Real-time marketing-intelligence pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written: `text`, or `json` (one object a line).
    #[arg(long, global = true, value_enum, default_value_t = entry::LogFormat::Text)]
    log_format: entry::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bundled demo in one process, through a one-node coordinator and an executor:
    /// generator -> features -> demo model -> files.
    Dev(DevArgs),
    /// A coordinator node: a member of the region's Raft group, serving executors and
    /// the admin API. Runs the `mirador-coordinator` binary beside this one, which does
    /// not link libtorch (`mirador coordinator --help` for its settings).
    #[command(disable_help_flag = true)]
    Coordinator {
        /// The coordinator's own flags (`mirador coordinator --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// An executor node: runs the partitions the coordinators assign to it.
    Executor(mirador_executor::node::ExecutorArgs),
    /// The benchmark pipeline run directly and through a one-node region in this process.
    BenchCluster {
        /// Events of each run, all partitions together.
        #[arg(long, default_value_t = 6_000_000)]
        events: u64,
        /// Generator partitions.
        #[arg(long, default_value_t = 2)]
        partitions: u32,
    },
    /// How long a snapshot of a large region takes, and whether anything waits for it.
    BenchSnapshot {
        /// Pipelines in the region.
        #[arg(long, default_value_t = 1000)]
        pipelines: usize,
        /// Partitions of each pipeline.
        #[arg(long, default_value_t = 64)]
        partitions: u32,
        /// Snapshots taken.
        #[arg(long, default_value_t = 9)]
        runs: usize,
    },
    /// Manage a region through its coordinators' admin API.
    Admin {
        /// host:port of the region's coordinators (any of them), comma-separated.
        #[arg(long, default_value = "127.0.0.1:7001")]
        coordinators: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Run a pipeline spec on this node until its bounded source is exhausted.
    Run(RunArgs),
    /// Write synthetic events as JSON lines on stdout, as the generator source makes them.
    Generate(GenerateArgs),
    /// Measure Kafka, Bigtable and Pub/Sub against running services (`make services`).
    BenchConnectors(BenchConnectorsArgs),
    /// Create a Bigtable table on an emulator and load a feature CSV into it.
    BigtableLoad(BigtableLoadArgs),
    /// Check a pipeline spec without running it.
    Check {
        /// The pipeline spec, YAML.
        #[arg(long)]
        pipeline: PathBuf,
    },
    /// Measure the data path end to end and each stage alone.
    Bench(BenchArgs),
}

#[derive(Args)]
struct DevArgs {
    /// Stop after this many events (all partitions together); default: until Ctrl-C.
    #[arg(long)]
    events: Option<u64>,
    /// Partitions of the generator.
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Share of poison records, 0 to 1.
    #[arg(long, default_value_t = 0.01)]
    poison_ratio: f64,
    /// Events per second for all partitions together; default: as fast as it goes.
    #[arg(long)]
    rate: Option<f64>,
    /// Where the scored records, dead letters and checkpoints go.
    #[arg(long, default_value = "mirador-out")]
    out: PathBuf,
    /// Run through the services of `make services` instead: the events go to the Kafka
    /// topic `events`, features come from Bigtable, scores go to the topic `scored` and
    /// the Bigtable table `scores`, dead letters to the topic `dead-letter`.
    #[arg(long)]
    services: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The pipeline spec, YAML (docs/pipeline-spec.md).
    #[arg(long)]
    pipeline: PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Print the closing report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// How many events.
    #[arg(long)]
    events: u64,
    /// Share of poison records, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    poison_ratio: f64,
    /// Distinct customer ids, drawn with a Zipf skew.
    #[arg(long, default_value_t = 12_000)]
    customers: u64,
    /// Seed of the generator: one seed, one sequence.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Produce to this Kafka topic instead of writing to stdout.
    #[arg(long, requires = "brokers")]
    kafka_topic: Option<String>,
    /// host:port of the Kafka brokers, with --kafka-topic.
    #[arg(long)]
    brokers: Option<String>,
    /// Publish to this Pub/Sub topic instead of writing to stdout.
    #[arg(long, conflicts_with = "kafka_topic")]
    pubsub_topic: Option<String>,
    /// http://host:port of the Pub/Sub emulator, with --pubsub-topic; default:
    /// http:// + PUBSUB_EMULATOR_HOST.
    #[arg(long)]
    pubsub_endpoint: Option<String>,
    /// The Google Cloud project of --pubsub-topic.
    #[arg(long, default_value = "test-project")]
    project: String,
}

#[derive(Args)]
struct BenchConnectorsArgs {
    /// host:port of the Kafka brokers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// host:port of the Bigtable emulator with the `features` table loaded.
    #[arg(long, default_value = "127.0.0.1:8086")]
    bigtable: String,
    /// http://host:port of the Pub/Sub emulator; none: no Pub/Sub figures.
    #[arg(long)]
    pubsub: Option<String>,
    /// Events of each measurement.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BigtableLoadArgs {
    /// host:port of the emulator.
    #[arg(long, default_value = "127.0.0.1:8086")]
    endpoint: String,
    /// The Google Cloud project.
    #[arg(long, default_value = "test-project")]
    project: String,
    /// The Bigtable instance.
    #[arg(long, default_value = "test-instance")]
    instance: String,
    /// The table to create and load.
    #[arg(long, default_value = "features")]
    table: String,
    /// The column family of the features.
    #[arg(long, default_value = "f")]
    family: String,
    /// The CSV to load (customer id first); none: only create the table.
    #[arg(long)]
    csv: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Events of each end-to-end run.
    #[arg(long, default_value_t = 6_000_000)]
    events: u64,
    /// Events each stage is measured on alone.
    #[arg(long, default_value_t = 1_000_000)]
    stage_events: usize,
    /// Generator partitions of the end-to-end run.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Replaces this process with `mirador-coordinator` from the same folder, so that a
/// coordinator node never has libtorch loaded. Returns only on failure.
fn exec_coordinator(args: Vec<std::ffi::OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let binary = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("mirador-coordinator"),
        Err(error) => {
            eprintln!("error: cannot find this binary's folder: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Named as it was called: its help and errors say `mirador coordinator`.
    let error = std::process::Command::new(&binary)
        .arg0("mirador coordinator")
        .args(args)
        .exec();
    eprintln!(
        "error: cannot run {}: {error} (it is built with `cargo build --bin mirador-coordinator`)",
        binary.display()
    );
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Coordinator { mut args } = cli.command {
        if let Some(format) = cli.log_format.to_possible_value() {
            if cli.log_format != entry::LogFormat::Text {
                args.extend(["--log-format".into(), format.get_name().into()]);
            }
        }
        return exec_coordinator(args);
    }
    entry::run(cli.log_format, run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Coordinator { .. } => unreachable!("run by exec_coordinator"),
        Command::BenchCluster { events, partitions } => {
            bench::cluster::bench_cluster(events, partitions).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchSnapshot {
            pipelines,
            partitions,
            runs,
        } => {
            bench::snapshot::bench_snapshot(pipelines, partitions, runs).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Executor(args) => {
            mirador_executor::node::run_executor(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            coordinators,
            json,
            command,
        } => {
            let coordinators = coordinators
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            admin::run(coordinators, json, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(args) => dev(args).await,
        Command::Run(args) => run_spec(args).await,
        Command::Generate(args) => generate(args).await,
        Command::BenchConnectors(args) => bench_connectors(args).await,
        Command::BigtableLoad(args) => bigtable_load(args).await,
        Command::Check { pipeline } => {
            let spec = read_spec(&pipeline)?;
            println!("{}: pipeline {} is valid", pipeline.display(), spec.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => benchmark(args).await,
    }
}

/// `mirador dev`: the demo (or the services' pipeline) through a one-node region.
async fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let DevArgs {
        events,
        partitions,
        poison_ratio,
        rate,
        out,
        services,
    } = args;
    let yaml = if services {
        let events = events.unwrap_or(200_000);
        let payloads = demo::payloads(events, poison_ratio, 12_000, 7)?;
        let delivered = produce(demo::SERVICES_BROKERS, "events", payloads).await?;
        eprintln!("mirador dev: {delivered} events produced to the topic events");
        demo::services_spec(&out)?
    } else {
        eprintln!(
            "mirador dev: {} partitions, poison ratio {poison_ratio}, writing to {}",
            partitions,
            out.display()
        );
        demo::prepare(&out, events, partitions, poison_ratio, rate)?
    };
    let succeeded = dev::run_dev(&out, yaml).await?;
    if services {
        eprintln!("  scored records in the topic scored and the Bigtable table scores, dead letters in the topic dead-letter");
    } else {
        eprintln!(
            "  scored records in {}, dead letters in {}",
            out.join("scored.jsonl").display(),
            out.join("dead-letter.jsonl").display()
        );
    }
    Ok(exit_code(succeeded))
}

/// `mirador run`: a spec on this node until its bounded source is exhausted.
async fn run_spec(args: RunArgs) -> anyhow::Result<ExitCode> {
    let RunArgs {
        pipeline,
        quiet,
        json,
    } = args;
    let spec = read_spec(&pipeline)?;
    let pool = InferencePool::default();
    let resources = std::sync::Arc::new(PipelineResources::build(spec, &pool).await?);
    let options = RunOptions {
        progress: (!quiet).then_some(Duration::from_secs(1)),
        ..RunOptions::default()
    };
    let report = run_pipeline(resources, &options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !quiet {
        eprint!("{}", report.render());
    } else {
        // Quiet is no progress and no summary, never a silent failure.
        for failure in &report.failures {
            eprintln!("error: {failure}");
        }
    }
    Ok(exit_code(report.succeeded()))
}

/// `mirador generate`: synthetic events to stdout, a Kafka topic or a Pub/Sub topic.
async fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let GenerateArgs {
        events,
        poison_ratio,
        customers,
        seed,
        kafka_topic,
        brokers,
        pubsub_topic,
        pubsub_endpoint,
        project,
    } = args;
    let payloads = || {
        demo::payloads(events, poison_ratio, customers, seed)
            .map(|p| mirador_executor::progress::counted(p, events, "events"))
    };
    match (kafka_topic, brokers, pubsub_topic) {
        (Some(topic), Some(brokers), _) => {
            let delivered = produce(&brokers, &topic, payloads()?).await?;
            println!("{delivered} events produced to {topic}");
        }
        (_, _, Some(topic)) => {
            let endpoint = pubsub_endpoint
                .or_else(mirador_connectors::pubsub::emulator_from_env)
                .ok_or_else(|| {
                    anyhow::anyhow!("--pubsub-endpoint: needed (or PUBSUB_EMULATOR_HOST)")
                })?;
            let published = publish(&endpoint, &project, &topic, payloads()?).await?;
            println!("{published} events published to {topic}");
        }
        _ => demo::generate(events, poison_ratio, customers, seed)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `mirador bench-connectors`: Kafka, Bigtable and Pub/Sub figures against running services.
async fn bench_connectors(args: BenchConnectorsArgs) -> anyhow::Result<ExitCode> {
    let BenchConnectorsArgs {
        brokers,
        bigtable,
        pubsub,
        events,
        json,
    } = args;
    let report = in_scratch(1, |spec, scratch| async move {
        let options = ConnectorBenchOptions {
            brokers,
            bigtable,
            pubsub,
            events,
            model: spec.model.path.clone(),
            features: spec.enrichment.features.clone(),
        };
        run_connector_bench(&options, &scratch).await
    })
    .await?;
    print_report(&report, json, |r| r.render())
}

/// `mirador bigtable-load`: a table on an emulator, with a feature CSV loaded.
async fn bigtable_load(args: BigtableLoadArgs) -> anyhow::Result<ExitCode> {
    let BigtableLoadArgs {
        endpoint,
        project,
        instance,
        table,
        family,
        csv,
    } = args;
    let spec = BigtableSpec {
        project,
        instance,
        table,
        family,
        endpoint: Some(endpoint),
        channels: 1,
        timeout_ms: 10_000,
    };
    spec.validate("bigtable")?;
    create_table(&spec).await?;
    match csv {
        Some(csv) => {
            let rows = load_features(&spec, &csv).await?;
            println!("{}: {rows} rows loaded into {}", csv.display(), spec.table);
        }
        None => println!("table {} ready", spec.table),
    }
    Ok(ExitCode::SUCCESS)
}

/// `mirador bench`: the data path end to end and each stage alone.
async fn benchmark(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let BenchArgs {
        events,
        stage_events,
        partitions,
        json,
    } = args;
    let options = BenchOptions {
        events,
        stage_events,
        half_rate_secs: 5.0,
        repeats: 3,
    };
    let report = in_scratch(partitions, |spec, _| run_bench(spec, &options)).await?;
    print_report(&report, json, |r| r.render())
}

/// Runs `bench` on the benchmark spec of `partitions` partitions, in a scratch folder that
/// is removed afterwards.
async fn in_scratch<R, F: std::future::Future<Output = anyhow::Result<R>>>(
    partitions: u32,
    bench: impl FnOnce(PipelineSpec, PathBuf) -> F,
) -> anyhow::Result<R> {
    let scratch = std::env::temp_dir().join(format!("mirador-bench-{}", std::process::id()));
    let spec = demo::bench_spec(&scratch, partitions)?;
    let report = bench(spec, scratch.clone()).await;
    let _ = std::fs::remove_dir_all(&scratch);
    report
}

/// Reads a spec file. Relative paths inside it are relative to the working directory, like
/// every other path given to `mirador`.
fn read_spec(path: &std::path::Path) -> Result<PipelineSpec, mirador_executor::FieldError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        mirador_executor::FieldError::new(
            "pipeline",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    PipelineSpec::from_yaml(&text)
}

fn exit_code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints a benchmark's report: as JSON when asked, else as its rendered table.
fn print_report<R: serde::Serialize>(
    report: &R,
    json: bool,
    render: impl Fn(&R) -> String,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[path = "help_check.rs"]
mod help_check;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_subcommand_has_help_text() {
        let missing = super::help_check::undocumented(&super::Cli::command());
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
