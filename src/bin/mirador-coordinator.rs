//! `mirador-coordinator`: a coordinator node, a member of a region's Raft group serving
//! executors and the admin API. A binary of its own so that it never links libtorch;
//! `mirador coordinator` runs it.

use std::process::ExitCode;

use clap::Parser;
use mirador_coordinator::node::{self, CoordinatorArgs};

#[derive(Parser, Debug)]
#[command(
    name = "mirador-coordinator",
    version,
    about = "A Mirador coordinator node: a member of a region's Raft group, serving executors and the admin API"
)]
struct Cli {
    #[command(flatten)]
    args: CoordinatorArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIRADOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(node::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
