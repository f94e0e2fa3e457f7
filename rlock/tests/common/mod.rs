//! Shared helpers for the lock tests: real Redis (shared or throwaway), unique key prefixes
//! so tests running in parallel never see each other's locks.

#![allow(dead_code)]

pub mod proxy;

use std::time::Duration;

use rlock::{LockClient, LockConfig};

/// A config with a key prefix unique to this test.
pub fn config() -> LockConfig {
    LockConfig {
        key_prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
        ..LockConfig::default()
    }
}

/// A config with a short watchdog, for tests that wait several leases.
pub fn short_watchdog(ms: u64) -> LockConfig {
    LockConfig {
        watchdog_timeout: Duration::from_millis(ms),
        ..config()
    }
}

/// A client of the shared test Redis (`testkit::redis_url()`).
pub async fn client(config: LockConfig) -> LockClient {
    LockClient::connect(&testkit::redis_url(), config)
        .await
        .expect("connect to the test Redis (run through `cargo xtask test`)")
}

/// A plain connection to `url` for checks behind the library's back.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}
