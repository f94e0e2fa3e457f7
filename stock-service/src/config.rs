//! Stock-service settings from the environment, with defaults that run against a local Redis
//! and PostgreSQL.

use std::time::Duration;

use service_kit::ServiceConfig;
use service_kit::config::{ConfigError, Env};

use crate::strategy::Strategy;

/// Everything the stock-service reads from its environment.
#[derive(Debug, Clone)]
pub struct StockConfig {
    /// Bind address and body limit (`BIND_ADDR`, `BODY_LIMIT_BYTES`).
    pub service: ServiceConfig,
    /// PostgreSQL (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`).
    pub database_url: String,
    /// Pool size (`DB_MAX_CONNECTIONS`, default 16).
    pub db_max_connections: u32,
    /// Redis for locks, fencing counters and the availability cache (`REDIS_URL`,
    /// default `redis://127.0.0.1:6379/`).
    pub redis_url: String,
    /// Deduction strategy (`STOCK_STRATEGY`, default `segmented`).
    pub strategy: Strategy,
    /// RedLock masters, comma-separated (`REDLOCK_URLS`); required by `redlock`.
    pub redlock_urls: Vec<String>,
    /// How long to wait for a lock before giving up on a segment (`LOCK_WAIT_MS`, default
    /// 2000).
    pub lock_wait: Duration,
    /// Fixed lock lease (`LOCK_LEASE_MS`); unset means a watchdog-renewed lease. RedLock
    /// always uses a fixed lease (default 5000 ms when unset).
    pub lock_lease: Option<Duration>,
    /// Pause between reading a segment and writing it back (`RMW_DELAY_MS`, default 0): widens
    /// the race window for demos and tests, for every strategy alike.
    pub rmw_delay: Duration,
    /// Conflict retries of the optimistic strategy (`OPTIMISTIC_RETRIES`, default 50).
    pub optimistic_retries: u32,
    /// Prefix of the service's own Redis keys (`STOCK_KEY_PREFIX`, default `stock`).
    pub key_prefix: String,
    /// How long an instance trusts its local sold-out flag before asking Redis again
    /// (`SOLD_OUT_TTL_MS`, default 1000).
    pub sold_out_ttl: Duration,
    /// redis-atomic: how often counters left too low are reconciled with the database
    /// (`COUNTER_RECONCILE_MS`, default 1000; 0 turns it off).
    pub counter_reconcile: Duration,
    /// Most deductions of one segment applied in one transaction (`STOCK_BATCH_MAX`, default
    /// 64, 1 to 1000); 1 turns combining off.
    pub batch_max: usize,
}

impl StockConfig {
    /// Port when `BIND_ADDR` is unset.
    pub const DEFAULT_PORT: u16 = 8082;

    /// Largest `STOCK_BATCH_MAX`: a group's ledger rows go in one statement.
    pub const MAX_BATCH: usize = 1000;

    /// Read the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env::process())
    }

    /// Read `env` (tests pass fixed pairs).
    pub fn from_source(env: &Env) -> Result<Self, ConfigError> {
        let strategy: Strategy = env.parse_or("STOCK_STRATEGY", Strategy::Segmented)?;
        let redlock_urls: Vec<String> = env
            .raw("REDLOCK_URLS")?
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if strategy == Strategy::Redlock && redlock_urls.is_empty() {
            return Err(ConfigError::Invalid {
                name: "REDLOCK_URLS".into(),
                value: String::new(),
                reason: "the redlock strategy needs at least one master URL".into(),
            });
        }
        let batch_max = env.parse_within("STOCK_BATCH_MAX", 64, 1..=Self::MAX_BATCH)?;
        Ok(StockConfig {
            service: ServiceConfig::from_source(env, Self::DEFAULT_PORT)?,
            database_url: env.string_or(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            )?,
            db_max_connections: env.parse_or("DB_MAX_CONNECTIONS", 16)?,
            redis_url: env.string_or("REDIS_URL", "redis://127.0.0.1:6379/")?,
            strategy,
            redlock_urls,
            lock_wait: env.millis("LOCK_WAIT_MS", 2000)?,
            lock_lease: env
                .parse::<u64>("LOCK_LEASE_MS")?
                .map(Duration::from_millis),
            rmw_delay: env.millis("RMW_DELAY_MS", 0)?,
            optimistic_retries: env.parse_or("OPTIMISTIC_RETRIES", 50)?,
            key_prefix: env
                .raw("STOCK_KEY_PREFIX")?
                .unwrap_or_else(|| "stock".into()),
            sold_out_ttl: env.millis("SOLD_OUT_TTL_MS", 1000)?,
            counter_reconcile: env.millis("COUNTER_RECONCILE_MS", 1000)?,
            batch_max,
        })
    }
}
