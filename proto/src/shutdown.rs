//! The request to stop: SIGINT (Ctrl-C) or SIGTERM, what systemd, Docker and Kubernetes
//! send. Every Mirador process drains on either, the same way.

/// Resolves at the first SIGINT or SIGTERM. Keep one such future for the life of the
/// process (pinned across the loop that waits on it): a signal that arrives while no
/// future listens is not seen.
pub async fn requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C still drains");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
