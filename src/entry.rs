//! What both binaries do around their work: logs to stderr filtered by `MIRADOR_LOG`
//! (default `warn`), a multi-threaded tokio runtime, and an error printed with its causes.

use std::future::Future;
use std::process::ExitCode;

/// Runs `work` on a new runtime, with logging set up; its error is printed.
pub fn run(work: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
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
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
