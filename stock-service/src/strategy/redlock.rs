//! `redlock`: `segmented` with each segment lock a RedLock over independent Redis masters
//! (`REDLOCK_URLS`): a majority must grant it, with a fixed lease (`LOCK_LEASE_MS`, default
//! 5 s) and no watchdog. Several segments are taken one by one in name order within the wait.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::Strategy;
use super::fenced::FencedLock;
use crate::engine::{Stock, StockError};
use crate::locking::Held;

/// RedLock's lease when `LOCK_LEASE_MS` is not set: it has no watchdog.
const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// A RedLock per segment.
#[derive(Debug)]
pub(crate) struct Redlock;

impl FencedLock for Redlock {
    fn strategy(&self) -> Strategy {
        Strategy::Redlock
    }

    fn lock_name(&self, stock: &Stock, sku: &str, segment: i32) -> String {
        stock.segment_lock(sku, segment)
    }
    fn acquire<'a>(
        &'a self,
        stock: &'a Stock,
        names: &'a [String],
        wait: Duration,
        since: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Option<Held>, StockError>> {
        Box::pin(async move {
            let rl = stock.redlock.as_ref().ok_or_else(|| {
                StockError::Invalid("redlock strategy without REDLOCK_URLS".into())
            })?;
            let lease = stock.config.lock_lease.unwrap_or(DEFAULT_LEASE);
            let deadline = since + wait;
            let mut guards = Vec::with_capacity(names.len());
            for name in names {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match rl.try_acquire(name, left, lease).await? {
                    Some(g) => guards.push(g),
                    None => {
                        Held::Red(guards).release().await;
                        return Ok(None);
                    }
                }
            }
            Ok(Some(Held::Red(guards)))
        })
    }

    fn raise_fences<'a>(
        &'a self,
        stock: &'a Stock,
        names: &'a [String],
        floor: u64,
    ) -> BoxFuture<'a, Result<(), StockError>> {
        Box::pin(async move {
            let rl = stock.redlock.as_ref().ok_or_else(|| {
                StockError::Invalid("redlock strategy without REDLOCK_URLS".into())
            })?;
            for name in names {
                rl.raise_fence(name, floor).await?;
            }
            Ok(())
        })
    }
}
