//! A PostgreSQL pool with the service's migrations applied (feature `postgres`).

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::redact_password;

/// Why the database could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// No connection within the acquire timeout.
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        /// The URL, its password replaced by `***` (compose puts one in `DATABASE_URL`).
        url: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connect a pool of at most `max_connections` to `url` and run `migrator` (migrations take
/// an advisory lock, so several instances starting at once are fine).
pub async fn connect(
    url: &str,
    max_connections: u32,
    migrator: &Migrator,
) -> Result<PgPool, DbError> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|source| DbError::Connect {
            url: redact_password(url),
            source,
        })?;
    migrator.run(&pool).await?;
    Ok(pool)
}
