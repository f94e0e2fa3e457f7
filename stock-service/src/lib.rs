//! The stock-service: owns flash-sale inventory. An item's stock is split into segments in
//! PostgreSQL (the source of truth); deductions run a read-modify-write under the configured
//! strategy's concurrency control (by default a distributed lock per segment, see `rlock`),
//! and locked writes carry a fencing token the database checks, so a holder whose lock
//! expired can never write. docs/strategies.md compares the strategies.

pub mod api;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod group;
mod home;
pub mod locking;
pub mod metrics;
pub mod oversold;
mod section;
pub mod shape;
pub mod store;
pub mod strategy;

use anyhow::Context as _;
use axum::Router;
use rlock::{LockClient, LockConfig, RedLock, RedLockConfig};
use service_kit::{health, layers};

pub use config::StockConfig;
pub use engine::{Stock, StockChange, StockError};
pub use strategy::Strategy;

/// Service name, as reported by `/healthz` and in logs.
pub const SERVICE_NAME: &str = env!("CARGO_PKG_NAME");

/// Service version, as reported by `/healthz`.
pub const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Port listened on when `BIND_ADDR` is not set.
pub const DEFAULT_PORT: u16 = StockConfig::DEFAULT_PORT;

/// How often the oversold gauge of recently changed items is recomputed from the database.
pub const OVERSOLD_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long an instance trusts an item's segment count without reading it again.
pub const SHAPE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Connect to PostgreSQL (applying migrations) and Redis, and build the engine.
pub async fn connect(config: StockConfig) -> anyhow::Result<Stock> {
    let pool = service_kit::postgres::connect(
        &config.database_url,
        config.db_max_connections,
        &store::MIGRATOR,
    )
    .await?;
    let locks = LockClient::connect(&config.redis_url, LockConfig::default())
        .await
        .with_context(|| service_kit::config::redis_unreachable(&config.redis_url))?;
    let redlock = if config.redlock_urls.is_empty() {
        None
    } else {
        Some(
            RedLock::new(&config.redlock_urls, RedLockConfig::default())
                .context("bad REDLOCK_URLS")?,
        )
    };
    let cache = cache::StockCache::start(
        redis_nodes(&config.redis_url)?,
        locks.connection(),
        &config.key_prefix,
        config.sold_out_ttl,
    )
    .await
    .context("cannot subscribe to stock events")?;
    let metrics = metrics::StockMetrics::new(&opentelemetry::global::meter("stock-service"));
    let oversold = oversold::OversoldWatch::default();
    let groups = std::sync::Arc::new(group::Groups::new(config.batch_max));
    let shapes = std::sync::Arc::new(shape::ShapeCache::new(SHAPE_TTL));
    oversold.spawn(pool.clone(), metrics.clone(), OVERSOLD_CHECK_INTERVAL);
    let starved = strategy::redis_atomic::reconcile::Starved::default();
    starved.spawn(
        pool.clone(),
        cache.clone(),
        metrics.clone(),
        config.counter_reconcile,
    );
    Ok(Stock {
        pool,
        locks,
        redlock,
        cache,
        concurrency: config.strategy.concurrency(),
        config,
        metrics,
        oversold,
        starved,
        groups,
        shapes,
        home: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(rand::random())),
    })
}

/// The HTTP application (request metrics by route included; the binary adds `/metrics`): the stock API and `/healthz`, with the shared middleware.
pub fn app(stock: Stock) -> Router {
    let body_limit = stock.config.service.body_limit_bytes;
    let router = api::routes(stock).merge(health::router(SERVICE_NAME, SERVICE_VERSION));
    layers::with_common_layers(service_kit::metrics::with_http_metrics(router), body_limit)
}

/// The servers behind `REDIS_URL`: the one Redis, or the seed nodes of a cluster
/// (`redis+cluster://h1:p1,h2:p2/` or comma-separated `redis://` URLs).
fn redis_nodes(url: &str) -> redis::RedisResult<Vec<redis::Client>> {
    match rlock::RedisTarget::parse(url) {
        rlock::RedisTarget::Single(url) => Ok(vec![redis::Client::open(url)?]),
        rlock::RedisTarget::Cluster(nodes) => nodes
            .iter()
            .map(|n| redis::Client::open(n.as_str()))
            .collect(),
    }
}
