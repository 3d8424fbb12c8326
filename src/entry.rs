//! What both binaries do around their work: logs to stderr filtered by `MIRADOR_LOG`
//! (default `warn`), as text or one JSON object a line (`--log-format json`), a
//! multi-threaded tokio runtime, and an error printed with its causes.

use std::future::Future;
use std::process::ExitCode;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text each, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object each: `timestamp`, `level`, `target`, `fields` (with `message`)
    /// and the spans it was logged in.
    Json,
}

/// Runs `work` on a new runtime, with logging set up; its error is printed.
pub fn run(
    log_format: LogFormat,
    work: impl Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIRADOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
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
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
