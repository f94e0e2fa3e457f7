//! Live reconciliation of redis-atomic's counters. A request that took units from the Redis
//! counters and died before its database write leaves the counters too low: those units are
//! in PostgreSQL but Redis never hands them out again, and buyers are told "sold out" while the
//! database still has stock. Raising a counter is always safe — PostgreSQL's guarded decrement
//! refuses what it does not have, and the units go back — so the only question is when a gap is
//! stale rather than a write in flight.
//!
//! A request that finds Redis empty while the database still has units notes its item
//! ([`Starved`]). Every `COUNTER_RECONCILE_MS` the reconciler samples the noted items' counters
//! and segments; when two samples in a row are identical (nothing was taken or written in
//! between, so nothing is in flight) and a counter is below its segment, it raises that counter
//! to the segment — compare-and-set, so a take in the meantime makes it wait for the next round.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::AsyncCommands;

use crate::cache::StockCache;
use crate::metrics::StockMetrics;
use crate::store;

/// Set field ARGV[3i+1] to ARGV[3i+3] where it still holds ARGV[3i+2]. KEYS[1] counters.
/// Returns how many were raised.
static RAISE_IF_UNCHANGED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local raised = 0
for i = 1, #ARGV, 3 do
  if tonumber(redis.call('hget', KEYS[1], ARGV[i]) or '-1') == tonumber(ARGV[i + 1]) then
    redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 2])
    raised = raised + 1
  end
end
return raised",
    )
});

/// How many rounds an item is watched for a stable gap before it is dropped (it is noted again
/// by the next starved request).
const WATCH_ROUNDS: u32 = 30;

/// Items whose Redis counters ran dry while the database still had units.
#[derive(Debug, Clone, Default)]
pub struct Starved {
    noted: Arc<Mutex<HashSet<String>>>,
}

impl Starved {
    /// Note that `sku`'s counters refused while its segments had units.
    pub(crate) fn note(&self, sku: &str) {
        let mut noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        if !noted.contains(sku) {
            noted.insert(sku.to_owned());
        }
    }

    /// Start the reconciler (every `interval`; none when zero); it stops when every clone of
    /// this set is dropped.
    pub(crate) fn spawn(
        &self,
        pool: sqlx::PgPool,
        cache: StockCache,
        metrics: StockMetrics,
        interval: Duration,
    ) {
        if interval.is_zero() {
            return;
        }
        let noted = Arc::downgrade(&self.noted);
        tokio::spawn(reconcile(noted, pool, cache, metrics, interval));
    }
}

/// Counters and segments of one item, as sampled.
#[derive(Debug, PartialEq, Eq)]
struct Sample {
    counters: Vec<(i32, i64)>,
    segments: Vec<(i32, i64)>,
}

async fn reconcile(
    noted: Weak<Mutex<HashSet<String>>>,
    pool: sqlx::PgPool,
    cache: StockCache,
    metrics: StockMetrics,
    interval: Duration,
) {
    let mut watching: HashMap<String, (Sample, u32)> = HashMap::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(noted) = noted.upgrade() else {
            return;
        };
        let fresh = std::mem::take(&mut *noted.lock().unwrap_or_else(PoisonError::into_inner));
        drop(noted);
        let mut skus: HashSet<String> = watching.keys().cloned().collect();
        skus.extend(fresh);
        for sku in skus {
            let previous = watching.remove(&sku);
            match round(&pool, &cache, &sku, previous).await {
                Ok(Round::Raised(n)) => {
                    metrics.counters_reconciled(n);
                    tracing::info!(%sku, segments = n, "redis-atomic counters raised to the database's units");
                }
                Ok(Round::Watch(sample, rounds)) if rounds < WATCH_ROUNDS => {
                    watching.insert(sku, (sample, rounds + 1));
                }
                Ok(Round::Watch(..) | Round::Settled) => {}
                Err(error) => tracing::debug!(%sku, %error, "counter reconciliation failed"),
            }
        }
    }
}

/// What one look at an item came to.
enum Round {
    /// No counter below its segment: nothing to do.
    Settled,
    /// A gap, not yet known to be stale: look again next round.
    Watch(Sample, u32),
    /// This many counters were raised.
    Raised(usize),
}

async fn round(
    pool: &sqlx::PgPool,
    cache: &StockCache,
    sku: &str,
    previous: Option<(Sample, u32)>,
) -> anyhow::Result<Round> {
    let key = cache.keys(sku).counters;
    let mut conn = cache.conn.clone();
    let counters: HashMap<i32, i64> = conn.hgetall(&key).await?;
    let mut db = pool.acquire().await?;
    let rows = store::read_segments(&mut db, sku, &[], false).await?;
    drop(db);
    let mut sample = Sample {
        counters: counters.into_iter().collect(),
        segments: rows.iter().map(|r| (r.segment, r.available)).collect(),
    };
    sample.counters.sort_unstable();
    let low: Vec<(i32, i64, i64)> = sample
        .segments
        .iter()
        .filter_map(|&(segment, units)| {
            let counter = sample
                .counters
                .iter()
                .find(|(s, _)| *s == segment)
                .map(|(_, c)| *c)?;
            (counter < units).then_some((segment, counter, units))
        })
        .collect();
    if low.is_empty() {
        return Ok(Round::Settled);
    }
    match previous {
        Some((before, _)) if before == sample => {
            let mut script = RAISE_IF_UNCHANGED.key(&key);
            for (segment, counter, units) in &low {
                script.arg(segment).arg(counter).arg(units);
            }
            let raised: usize = script.invoke_async(&mut conn).await?;
            Ok(Round::Raised(raised))
        }
        Some((_, rounds)) => Ok(Round::Watch(sample, rounds)),
        None => Ok(Round::Watch(sample, 0)),
    }
}
