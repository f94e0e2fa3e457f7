//! What the fenced strategies (`redis-lock`, `segmented`, `redlock`) share: a Redis lock
//! around the critical section, and a write that carries the lock's fencing token, which
//! PostgreSQL refuses once a newer holder wrote (see [`WriteGuard::Fence`]). A refusal is
//! either a lost lock or a fencing counter that went backwards (Redis lost its data), which is
//! repaired once by re-seeding the counter. Each strategy says only which lock it takes
//! ([`FencedLock`]); [`Fenced`] makes it a [`Concurrency`].

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::Strategy;
use super::concurrency::{Concurrency, Next, Refused};
use crate::engine::{Stock, StockError};
use crate::locking::Held;
use crate::store::{SegmentRow, WriteGuard};

/// The lock of a fenced strategy. Taking and re-seeding default to `rlock` locks on the main
/// Redis (one lock, or a MultiLock over several).
pub(crate) trait FencedLock: Send + Sync + fmt::Debug {
    /// The strategy.
    fn strategy(&self) -> Strategy;

    /// The lock covering `segment` of `sku`.
    fn lock_name(&self, stock: &Stock, sku: &str, segment: i32) -> String;

    /// Whether one lock covers the whole item.
    fn item_wide(&self) -> bool {
        false
    }

    /// Take the locks `names` within `wait` (from `since`); `None` when it ran out.
    fn acquire<'a>(
        &'a self,
        stock: &'a Stock,
        names: &'a [String],
        wait: Duration,
        _since: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Option<Held>, StockError>> {
        Box::pin(stock.acquire_rlocks(names, wait))
    }

    /// Raise the fencing counters of `names` above `floor`.
    fn raise_fences<'a>(
        &'a self,
        stock: &'a Stock,
        names: &'a [String],
        floor: u64,
    ) -> BoxFuture<'a, Result<(), StockError>> {
        Box::pin(stock.raise_rlock_fences(names, floor))
    }
}

/// A fenced strategy: its lock, and the fence.
#[derive(Debug)]
pub(crate) struct Fenced<L>(pub(crate) L);

impl<L: FencedLock> Concurrency for Fenced<L> {
    fn strategy(&self) -> Strategy {
        self.0.strategy()
    }

    fn lock_name(&self, stock: &Stock, sku: &str, segment: i32) -> Option<String> {
        Some(self.0.lock_name(stock, sku, segment))
    }

    fn item_wide(&self) -> bool {
        self.0.item_wide()
    }

    fn acquire<'a>(
        &'a self,
        stock: &'a Stock,
        names: &'a [String],
        wait: Duration,
        since: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Option<Held>, StockError>> {
        self.0.acquire(stock, names, wait, since)
    }

    fn raise_fences<'a>(
        &'a self,
        stock: &'a Stock,
        names: &'a [String],
        floor: u64,
    ) -> BoxFuture<'a, Result<(), StockError>> {
        self.0.raise_fences(stock, names, floor)
    }

    /// The fenced write of `row` under `token`; without a token (the lock was not held)
    /// there is nothing to write with.
    fn write_guard(
        &self,
        row: &SegmentRow,
        token: Option<i64>,
        continuing: bool,
    ) -> Result<WriteGuard, StockError> {
        let token = token.ok_or(StockError::FenceRejected)?;
        Ok(WriteGuard::Fence {
            seen: row.last_fence,
            version: row.version,
            token,
            continuing,
        })
    }

    /// A lock still valid whose token is not above the row's fence: the counter went
    /// backwards; re-seed it and retry, once. Anything else: the lock was lost, and the write
    /// is refused for good (503 `lock-lost`).
    fn after_refusal(&self, stock: &Stock, refused: &Refused) -> Next {
        let stale_token = refused.token.is_some_and(|t| refused.row.last_fence >= t);
        if refused.lock_valid && stale_token && !refused.reseeded {
            return Next::Reseed;
        }
        let strategy = self.0.strategy();
        stock.metrics.fence_rejected(strategy);
        tracing::warn!(segment = refused.row.segment, token = ?refused.token,
            fence = refused.row.last_fence, %strategy, "fenced write refused: the lock was lost");
        Next::Fail(StockError::FenceRejected)
    }
}
