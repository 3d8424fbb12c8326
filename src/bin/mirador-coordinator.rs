//! `mirador-coordinator`: a coordinator node, a member of a region's Raft group serving
//! executors and the admin API. A binary of its own so that it never links libtorch;
//! `mirador coordinator` runs it.

use std::process::ExitCode;

use clap::Parser;
use mirador_connectors::registry;
use mirador_coordinator::node::{self, CoordinatorArgs, SpecConnectors};

// Logging, the runtime and errors, as the `mirador` binary has them.
#[path = "../entry.rs"]
mod entry;

#[derive(Parser, Debug)]
#[command(
    name = "mirador-coordinator",
    version,
    about = "A Mirador coordinator node: a member of a region's Raft group, serving executors and the admin API"
)]
struct Cli {
    #[command(flatten)]
    args: CoordinatorArgs,
    /// How log lines are written: `text`, or `json` (one object a line).
    #[arg(long, value_enum, default_value_t = entry::LogFormat::Text)]
    log_format: entry::LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    entry::run(cli.log_format, async {
        node::run(
            cli.args,
            SpecConnectors::new(registry::count_partitions, registry::move_source),
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
#[path = "../help_check.rs"]
mod help_check;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_help_text() {
        let missing = super::help_check::undocumented(&super::Cli::command());
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
