//! `order-service` binary: reads configuration from the environment, connects to PostgreSQL
//! and Redis, runs the recovery worker and serves [`order_service::app`] until Ctrl-C or
//! SIGTERM.

use anyhow::Context as _;
use order_service::{OrderConfig, SERVICE_NAME, SERVICE_VERSION, app, connect, recovery};
use service_kit::metrics::Metrics;
use service_kit::{server, telemetry};

/// mimalloc instead of glibc malloc: request handling allocates and frees many small
/// buffers on every worker thread, where glibc's arenas and consolidation cost a tenth of the
/// CPU under load (docs/strategies.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init(SERVICE_NAME).context("failed to initialise telemetry")?;
    let metrics = Metrics::install(SERVICE_NAME)?;
    let config = OrderConfig::from_env().context("invalid configuration")?;
    tracing::info!(service = SERVICE_NAME, version = SERVICE_VERSION, stock = %config.stock_urls.join(","), "starting");
    let addr = config.service.bind_addr;
    let interval = config.recovery_interval;
    let orders = connect(config).await?;
    if !interval.is_zero() {
        tokio::spawn(recovery::run(orders.clone(), interval));
    }
    server::serve(app(orders).merge(metrics.router()), addr, SERVICE_NAME).await?;
    metrics.shutdown();
    // Flush the spans still queued for export.
    telemetry.shutdown();
    Ok(())
}
