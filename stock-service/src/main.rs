//! `stock-service` binary: reads configuration from the environment, connects to PostgreSQL
//! and Redis, and serves [`stock_service::app`] until Ctrl-C or SIGTERM.

use anyhow::Context as _;
use service_kit::metrics::Metrics;
use service_kit::{server, telemetry};
use stock_service::{SERVICE_NAME, SERVICE_VERSION, StockConfig, app, connect};

/// mimalloc instead of glibc malloc: request handling allocates and frees many small
/// buffers on every worker thread, where glibc's arenas and consolidation cost a tenth of the
/// CPU under load (docs/strategies.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init(SERVICE_NAME).context("failed to initialise telemetry")?;
    let metrics = Metrics::install(SERVICE_NAME)?;
    let config = StockConfig::from_env().context("invalid configuration")?;
    tracing::info!(service = SERVICE_NAME, version = SERVICE_VERSION, strategy = %config.strategy, "starting");
    let addr = config.service.bind_addr;
    let stock = connect(config).await?;
    server::serve(app(stock).merge(metrics.router()), addr, SERVICE_NAME).await?;
    metrics.shutdown();
    // Flush the spans still queued for export.
    telemetry.shutdown();
    Ok(())
}
