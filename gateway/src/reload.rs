//! The configuration watcher: re-reads the file every `reload_interval_ms` and swaps in a
//! changed, valid version; a broken one is logged once and ignored.

use std::time::Duration;

use crate::state::{Reloaded, WeakGateway};

/// How long to wait before looking again when polling is off (`reload_interval_ms = 0`): a
/// SIGHUP reload may turn it on.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// Polls until the gateway is dropped.
pub(crate) async fn run(weak: WeakGateway) {
    loop {
        let interval = match weak.upgrade() {
            None => return,
            Some(gateway) => gateway.runtime().file.reload_interval_ms,
        };
        if interval == 0 {
            tokio::time::sleep(IDLE_RECHECK).await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(interval)).await;
        let Some(gateway) = weak.upgrade() else {
            return;
        };
        log_outcome(gateway.reload().await);
    }
}

/// Logs what a reload did.
pub fn log_outcome(outcome: Result<Reloaded, crate::config::ConfigFileError>) {
    match outcome {
        Ok(Reloaded::Unchanged) => {}
        Ok(Reloaded::Applied) => tracing::info!("configuration reloaded"),
        Err(error) => tracing::error!(
            error = %crate::proxy::error_chain(&error),
            "new configuration refused; the running one stays"
        ),
    }
}
