//! `gateway` binary: reads settings from the environment and the configuration file, then
//! serves [`gateway::app`] until Ctrl-C or SIGTERM. SIGHUP reloads the configuration file.
//! Prometheus `/metrics` is served on `METRICS_ADDR` when set, never on the public port.

use anyhow::Context as _;
use gateway::settings::EXAMPLE_CONFIG;
use gateway::{Gateway, GatewaySettings, SERVICE_NAME, SERVICE_VERSION, app, reload};
use service_kit::metrics::Metrics;
use service_kit::telemetry;

/// mimalloc instead of glibc malloc: request handling allocates and frees many small
/// buffers on every worker thread, where glibc's arenas and consolidation cost a tenth of the
/// CPU under load (docs/strategies.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init(SERVICE_NAME).context("failed to initialise telemetry")?;
    let settings = GatewaySettings::from_env().context("invalid environment")?;
    // Before the gateway creates its instruments on the global meter.
    let metrics = Metrics::install(SERVICE_NAME).context("cannot set up metrics")?;
    let gateway = Gateway::start(settings).context("invalid gateway configuration")?;
    let settings = gateway.settings();
    tracing::info!(
        service = SERVICE_NAME,
        version = SERVICE_VERSION,
        config = %settings
            .config_path
            .as_ref()
            .map_or_else(|| "built-in example".to_owned(), |p| p.display().to_string()),
        "starting"
    );
    warn_about_example_secret(&gateway);
    spawn_sighup_reload(gateway.clone());
    if let Some(metrics_addr) = gateway.settings().metrics_addr {
        let router = metrics.router();
        tokio::spawn(async move {
            if let Err(error) =
                service_kit::server::serve(router, metrics_addr, "gateway-metrics").await
            {
                let error = anyhow::Error::new(error);
                tracing::error!(error = format!("{error:#}"), "the metrics listener stopped");
            }
        });
    }
    let addr = gateway.bind_addr();
    service_kit::server::serve(app(gateway), addr, SERVICE_NAME).await?;
    metrics.shutdown();
    // Flush the spans still queued for export.
    telemetry.shutdown();
    Ok(())
}

/// Warns when the JWT secret is the example file's (anyone could mint tokens).
fn warn_about_example_secret(gateway: &Gateway) {
    let example_secret = gateway::FileConfig::parse(EXAMPLE_CONFIG)
        .ok()
        .and_then(|c| c.auth.jwt_secret);
    let runtime = gateway.runtime();
    let in_use = gateway
        .settings()
        .jwt_secret
        .as_ref()
        .or(runtime.file.auth.jwt_secret.as_ref());
    if in_use.is_some() && in_use == example_secret.as_ref() {
        tracing::warn!("the JWT secret is the example's; set JWT_SECRET outside development");
    }
}

#[cfg(unix)]
fn spawn_sighup_reload(gateway: Gateway) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reload::log_outcome(gateway.reload().await);
                }
            });
        }
        Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP; reload by polling only"),
    }
}

#[cfg(not(unix))]
fn spawn_sighup_reload(_gateway: Gateway) {}
