//! Real Redis and PostgreSQL for tests, never mocks.
//!
//! Integration tests either use the shared instances named by [`redis_url`] and
//! [`database_url`] (exported by `cargo xtask test`), or start their own
//! throwaway server with [`RedisServer::start`] / [`PostgresServer::start`] when
//! they need to crash, restart or otherwise abuse it, or a [`RedisCluster`] of
//! several redis-servers when they need cluster semantics (slots, `MOVED`,
//! resharding). Throwaway servers run as child processes on free loopback ports,
//! keep their files in a private temporary directory and are stopped (by their
//! own pid) when dropped.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let mut redis = testkit::RedisServer::start()?;
//! let url = redis.url(); // "redis://127.0.0.1:PORT/"
//! redis.kill(); // simulate a crash
//! redis.restart()?; // same port, empty data set
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

pub mod anchor;
mod postgres_server;
mod redis_cluster;
mod redis_server;
mod util;

use std::net::{Ipv4Addr, TcpListener};

use anyhow::Context as _;

pub use postgres_server::PostgresServer;
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;

/// Default for [`redis_url`] when `$REDIS_URL` is not set.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Default for [`database_url`] when `$DATABASE_URL` is not set.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// URL of the shared Redis for tests: `$REDIS_URL` if set, else `"redis://127.0.0.1:6379/"`.
pub fn redis_url() -> String {
    env_or("REDIS_URL", DEFAULT_REDIS_URL)
}

/// URL of the shared PostgreSQL for tests: `$DATABASE_URL` if set, else
/// `"postgres://postgres@127.0.0.1:5432/postgres"`.
pub fn database_url() -> String {
    env_or("DATABASE_URL", DEFAULT_DATABASE_URL)
}

/// A free TCP port on 127.0.0.1 (bind to :0, read the port, drop the listener).
///
/// Another process may grab the port before the caller binds it; the throwaway
/// servers of this crate retry on a new port when that happens.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free port")?;
    let port = listener
        .local_addr()
        .context("reading the address of a listener on 127.0.0.1:0")?
        .port();
    Ok(port)
}

/// The value of the environment variable `var` if it is set and not empty, else `default`.
fn env_or(var: &str, default: &str) -> String {
    pick_url(std::env::var(var).ok(), default)
}

fn pick_url(value: Option<String>, default: &str) -> String {
    value
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// URL of a database named `name` on the shared test PostgreSQL ([`database_url`]), created
/// if it does not exist yet. Several test processes may race to create it; that is fine.
/// `name` must be a plain identifier (letters, digits, `_`).
pub async fn database(name: &str) -> anyhow::Result<String> {
    database_on(&database_url(), name).await
}

/// URL of a database named `name` on the PostgreSQL server at `admin` (any database URL
/// of that server with rights to create databases), created if it does not exist yet.
/// `name` must be a plain identifier (letters, digits, `_`).
pub async fn database_on(admin: &str, name: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "database name {name:?} must be letters, digits and '_'"
    );
    let pool = sqlx::PgPool::connect(admin)
        .await
        .with_context(|| format!("cannot connect to the test PostgreSQL at {admin}"))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&pool)
            .await?;
    if !exists {
        // Losing a creation race to another test process is fine.
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await;
    }
    pool.close().await;
    let base = admin.split('?').next().unwrap_or(admin);
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_defaults_apply_when_unset_or_empty() {
        assert_eq!(pick_url(None, DEFAULT_REDIS_URL), "redis://127.0.0.1:6379/");
        assert_eq!(
            pick_url(Some(" ".into()), DEFAULT_REDIS_URL),
            DEFAULT_REDIS_URL
        );
        assert_eq!(
            pick_url(Some("redis://10.0.0.1:7000/".into()), DEFAULT_REDIS_URL),
            "redis://10.0.0.1:7000/"
        );
        assert_eq!(
            pick_url(None, DEFAULT_DATABASE_URL),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
    }

    #[test]
    fn url_functions_follow_the_environment() {
        match std::env::var("REDIS_URL") {
            Ok(v) if !v.trim().is_empty() => assert_eq!(redis_url(), v),
            _ => assert_eq!(redis_url(), DEFAULT_REDIS_URL),
        }
        match std::env::var("DATABASE_URL") {
            Ok(v) if !v.trim().is_empty() => assert_eq!(database_url(), v),
            _ => assert_eq!(database_url(), DEFAULT_DATABASE_URL),
        }
    }

    #[test]
    fn free_port_is_bindable() {
        // Inherently racy (another process may take the port in between), so
        // allow a few tries.
        let bound = (0..5).any(|_| {
            let port = free_port().unwrap();
            assert_ne!(port, 0);
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        });
        assert!(bound, "no port returned by free_port() could be bound");
    }
}
