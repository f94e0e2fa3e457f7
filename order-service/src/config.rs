//! Order-service settings from the environment.

use std::time::Duration;

use service_kit::ServiceConfig;
use service_kit::config::{ConfigError, Env};

/// Everything the order-service reads from its environment.
#[derive(Debug, Clone)]
pub struct OrderConfig {
    /// Bind address and body limit (`BIND_ADDR`, `BODY_LIMIT_BYTES`).
    pub service: ServiceConfig,
    /// PostgreSQL (`DATABASE_URL`).
    pub database_url: String,
    /// Pool size (`DB_MAX_CONNECTIONS`, default 16).
    pub db_max_connections: u32,
    /// Redis: replay records and the stock-service's sold-out flags (`REDIS_URL`).
    pub redis_url: String,
    /// Base URLs of the stock-service instances (`STOCK_URL`, comma-separated, default
    /// `http://127.0.0.1:8082`), balanced round robin, failed ones ejected.
    pub stock_urls: Vec<String>,
    /// Active health checks of the stock-service instances (`STOCK_HEALTH_INTERVAL_MS`,
    /// default 1000; 0: off).
    pub stock_health_interval: Duration,
    /// Consecutive failures (calls or health checks) that eject a stock-service instance
    /// (`STOCK_EJECT_AFTER`, default 3).
    pub stock_eject_after: u32,
    /// Timeout of one call to the stock-service (`STOCK_TIMEOUT_MS`, default 2000).
    pub stock_timeout: Duration,
    /// Retries of a call to the stock-service (`STOCK_RETRIES`, default 3).
    pub stock_retries: u32,
    /// How long a reserved order waits for payment (`PAYMENT_TIMEOUT_SECS`, default 900).
    pub payment_timeout: Duration,
    /// How long idempotency keys are kept (`IDEMPOTENCY_TTL_SECS`, default 86400).
    pub idempotency_ttl: Duration,
    /// Units of one item one user may hold (`PURCHASE_LIMIT`, default 1).
    pub purchase_limit: i64,
    /// How long a request or the worker owns a pending order (`ORDER_LEASE_MS`, default 10000).
    pub order_lease: Duration,
    /// Interval of the recovery worker (`RECOVERY_INTERVAL_MS`, default 1000; 0 disables it).
    pub recovery_interval: Duration,
    /// Prefix of the stock-service's Redis keys (`STOCK_KEY_PREFIX`, default `stock`), to read
    /// its sold-out flags.
    pub stock_key_prefix: String,
    /// Prefix of this service's own Redis keys (`ORDER_KEY_PREFIX`, default `orders`): replay
    /// records, in-flight markers and the completeness marker. Shops sharing one Redis need
    /// different prefixes.
    pub order_key_prefix: String,
    /// Most concurrent claims (and settles) of one item in one transaction
    /// (`ORDER_BATCH_MAX`, default 64, 1 to 1000; 1: each order alone).
    pub batch_max: usize,
    /// Replicas that must acknowledge a key's in-flight marker before its claim is made
    /// (`REDIS_MARKER_REPLICAS`, default 0: no wait), within `marker_replica_wait`
    /// (`REDIS_MARKER_WAIT_MS`, default 100). With replicas and failover, a marker the promoted
    /// replica never received is a marker lost (docs/reliability.md).
    pub marker_replicas: usize,
    /// See `marker_replicas`.
    pub marker_replica_wait: Duration,
}

impl OrderConfig {
    /// Port when `BIND_ADDR` is unset.
    pub const DEFAULT_PORT: u16 = 8081;

    /// Read the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env::process())
    }

    /// Read `env`.
    pub fn from_source(env: &Env) -> Result<Self, ConfigError> {
        let purchase_limit: i64 = env.parse_or("PURCHASE_LIMIT", 1)?;
        if purchase_limit < 1 {
            return Err(ConfigError::Invalid {
                name: "PURCHASE_LIMIT".into(),
                value: purchase_limit.to_string(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(OrderConfig {
            service: ServiceConfig::from_source(env, Self::DEFAULT_PORT)?,
            database_url: env.string_or(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            )?,
            db_max_connections: env.parse_or("DB_MAX_CONNECTIONS", 16)?,
            redis_url: env.string_or("REDIS_URL", "redis://127.0.0.1:6379/")?,
            stock_urls: stock_urls(env.raw("STOCK_URL")?.as_deref())?,
            stock_health_interval: env.millis("STOCK_HEALTH_INTERVAL_MS", 1000)?,
            stock_eject_after: env.parse_within("STOCK_EJECT_AFTER", 3, 1..=100)?,
            stock_timeout: env.millis("STOCK_TIMEOUT_MS", 2000)?,
            stock_retries: env.parse_or("STOCK_RETRIES", 3)?,
            payment_timeout: env.secs("PAYMENT_TIMEOUT_SECS", 900)?,
            idempotency_ttl: env.secs("IDEMPOTENCY_TTL_SECS", 86_400)?,
            purchase_limit,
            order_lease: env.millis("ORDER_LEASE_MS", 10_000)?,
            recovery_interval: env.millis("RECOVERY_INTERVAL_MS", 1000)?,
            stock_key_prefix: env
                .raw("STOCK_KEY_PREFIX")?
                .unwrap_or_else(|| "stock".into()),
            order_key_prefix: env
                .raw("ORDER_KEY_PREFIX")?
                .unwrap_or_else(|| "orders".into()),
            batch_max: env.parse_within("ORDER_BATCH_MAX", 64, 1..=1000)?,
            marker_replicas: env.parse_within("REDIS_MARKER_REPLICAS", 0, 0..=16)?,
            marker_replica_wait: env.millis("REDIS_MARKER_WAIT_MS", 100)?,
        })
    }
}

/// `STOCK_URL`: one or more `http(s)://host:port` base URLs, comma-separated.
fn stock_urls(raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let raw = raw.unwrap_or("http://127.0.0.1:8082");
    let urls: Vec<String> = raw
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let bad = urls
        .iter()
        .find(|u| !(u.starts_with("http://") || u.starts_with("https://")));
    if urls.is_empty() || bad.is_some() {
        return Err(ConfigError::Invalid {
            name: "STOCK_URL".into(),
            value: raw.to_owned(),
            reason: "expected one or more http:// base URLs, comma-separated".into(),
        });
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_url_takes_a_list() {
        assert_eq!(
            stock_urls(Some("http://a:1/, http://b:2")).ok(),
            Some(vec!["http://a:1".to_owned(), "http://b:2".to_owned()])
        );
        assert_eq!(
            stock_urls(None).ok(),
            Some(vec!["http://127.0.0.1:8082".to_owned()])
        );
        assert!(stock_urls(Some("a:1")).is_err());
        assert!(stock_urls(Some(" , ")).is_err());
    }
}
