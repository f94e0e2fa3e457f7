//! `stock-service` binary: reads configuration from the environment and serves
//! [`stock_service::app`] until Ctrl-C or SIGTERM.

use anyhow::Context as _;
use service_kit::{ServiceConfig, server, telemetry};
use stock_service::{DEFAULT_PORT, SERVICE_NAME, SERVICE_VERSION, app};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init().context("failed to initialise telemetry")?;
    let config = ServiceConfig::from_env(DEFAULT_PORT).context("invalid configuration")?;
    tracing::info!(
        service = SERVICE_NAME,
        version = SERVICE_VERSION,
        ?config,
        "starting"
    );
    server::serve(app(&config), config.bind_addr, SERVICE_NAME).await?;
    Ok(())
}
