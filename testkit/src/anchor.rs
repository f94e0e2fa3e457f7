//! The machine's hot-row anchor: how many transactions per second one PostgreSQL row can take
//! when every transaction sells one unit, the way a flash sale without grouping must.
//!
//! Benchmarks measure it in the same run as what they compare and print every result as a
//! ratio to it, so that a figure means the same on a faster or slower machine. The transaction
//! is the one a lock-free, group-free deduction makes: `SELECT … FOR UPDATE` of the row, an
//! `UPDATE` by one, a ledger `INSERT`, `COMMIT`, from `clients` concurrent connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgPoolOptions;

/// What the anchor measured.
#[derive(Debug, Clone, Copy)]
pub struct HotRow {
    /// Committed transactions (units) per second.
    pub tx_per_s: f64,
    /// Concurrent clients.
    pub clients: usize,
    /// How long it ran.
    pub duration: Duration,
}

impl std::fmt::Display for HotRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} tx/s (one unit per transaction on one hot row: SELECT … FOR UPDATE + UPDATE + \
             ledger INSERT + COMMIT, {} clients, {:.1} s)",
            self.tx_per_s,
            self.clients,
            self.duration.as_secs_f64()
        )
    }
}

/// Run the anchor against `database_url` (tables `anchor_row` and `anchor_ledger` there are
/// created or emptied) for `duration` with `clients` connections.
pub async fn hot_row(
    database_url: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<HotRow> {
    let clients = clients.max(1);
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(clients).unwrap_or(u32::MAX))
        .connect(database_url)
        .await
        .with_context(|| format!("hot-row anchor: cannot connect to {database_url}"))?;
    prepare(&pool).await?;
    let done = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (pool, done) = (pool.clone(), Arc::clone(&done));
        tasks.spawn(async move {
            let mut n: u64 = 0;
            while tokio::time::Instant::now() < deadline {
                sell_one(&pool, &format!("{client}-{n}")).await?;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("hot-row anchor client panicked")??;
    }
    let elapsed = started.elapsed();
    pool.close().await;
    Ok(HotRow {
        tx_per_s: done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        clients,
        duration: elapsed,
    })
}

async fn prepare(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    for sql in [
        "CREATE TABLE IF NOT EXISTS anchor_row (id INT PRIMARY KEY, available BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS anchor_ledger (order_id TEXT PRIMARY KEY, qty BIGINT NOT NULL)",
        "TRUNCATE anchor_ledger",
        "INSERT INTO anchor_row VALUES (1, 1000000000)
         ON CONFLICT (id) DO UPDATE SET available = EXCLUDED.available",
    ] {
        sqlx::query(sql)
            .execute(pool)
            .await
            .with_context(|| format!("hot-row anchor: {sql}"))?;
    }
    Ok(())
}

/// One unit, one transaction.
async fn sell_one(pool: &sqlx::PgPool, order_id: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let available: i64 =
        sqlx::query_scalar("SELECT available FROM anchor_row WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("UPDATE anchor_row SET available = $1 WHERE id = 1")
        .bind(available - 1)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO anchor_ledger (order_id, qty) VALUES ($1, 1)")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
