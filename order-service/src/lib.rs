//! The order-service: turns a stock deduction into an order a buyer can pay for or cancel,
//! safely under retries, duplicates and crashes. `POST /orders` takes an `Idempotency-Key`
//! (one key, one order); orders move pending → reserved → paid, or → cancelled (stock
//! released) or → rejected; a recovery worker settles whatever a crash left pending.
//! docs/orders.md describes the contract.

pub mod api;
pub mod config;
pub mod group;
pub mod idempotency;
pub mod metrics;
pub mod orders;
pub mod recovery;
pub mod stock_client;
pub mod store;

use anyhow::Context as _;
use axum::Router;
use service_kit::{health, layers};

pub use config::OrderConfig;
pub use orders::{OrderError, Orders};

/// Service name, as reported by `/healthz` and in logs.
pub const SERVICE_NAME: &str = env!("CARGO_PKG_NAME");

/// Service version, as reported by `/healthz`.
pub const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Port listened on when `BIND_ADDR` is not set.
pub const DEFAULT_PORT: u16 = OrderConfig::DEFAULT_PORT;

/// Connect to PostgreSQL (applying migrations) and Redis, and build the engine.
pub async fn connect(config: OrderConfig) -> anyhow::Result<Orders> {
    let pool = service_kit::postgres::connect(
        &config.database_url,
        config.db_max_connections,
        &store::MIGRATOR,
    )
    .await?;
    let redis = rlock::RedisConnection::open(
        &config.redis_url,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(1),
    )
    .await
    .with_context(|| service_kit::config::redis_unreachable(&config.redis_url))?;
    let stock = stock_client::StockClient::new(&stock_client::StockSettings {
        urls: config.stock_urls.clone(),
        timeout: config.stock_timeout,
        retries: config.stock_retries,
        eject_after: config.stock_eject_after,
        health_interval: config.stock_health_interval,
    })?;
    let replay = idempotency::ReplayCache::new(
        redis,
        config.idempotency_ttl,
        &config.stock_key_prefix,
        &config.order_key_prefix,
    )
    .with_marker_replicas(config.marker_replicas, config.marker_replica_wait);
    let groups = std::sync::Arc::new(group::Groups::new(config.batch_max));
    let orders = Orders {
        groups,
        pool,
        stock,
        replay,
        config,
        metrics: metrics::OrderMetrics::new(&opentelemetry::global::meter("order-service")),
    };
    if let Err(err) = orders.replay.ensure_complete(&orders.pool).await {
        tracing::warn!(error = %err, "replay records not rebuilt at start; the worker retries");
    }
    Ok(orders)
}

/// The HTTP application (request metrics by route included; the binary adds `/metrics`): the order API and `/healthz`, with the shared middleware.
pub fn app(orders: Orders) -> Router {
    let body_limit = orders.config.service.body_limit_bytes;
    let router = api::routes(orders).merge(health::router(SERVICE_NAME, SERVICE_VERSION));
    layers::with_common_layers(service_kit::metrics::with_http_metrics(router), body_limit)
}
