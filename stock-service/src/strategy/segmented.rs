//! `segmented` (the default): one watchdog lock per segment (`<prefix>:<sku>:<n>`), several
//! segments under a MultiLock (all or nothing, canonical order), fenced writes. Deductions of
//! different segments run in parallel.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::Strategy;
use super::concurrency::{Concurrency, Next, Refused};
use super::fenced;
use crate::engine::{Stock, StockError};
use crate::locking::Held;
use crate::store::{SegmentRow, WriteGuard};

/// A lock per segment.
#[derive(Debug)]
pub(crate) struct Segmented;

impl Concurrency for Segmented {
    fn strategy(&self) -> Strategy {
        Strategy::Segmented
    }

    fn lock_name(&self, stock: &Stock, sku: &str, segment: i32) -> Option<String> {
        Some(stock.segment_lock(sku, segment))
    }

    fn acquire<'a>(
        &'a self,
        stock: &'a Stock,
        names: &'a [String],
        wait: Duration,
        _since: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Option<Held>, StockError>> {
        Box::pin(stock.acquire_rlocks(names, wait))
    }

    fn raise_fences<'a>(
        &'a self,
        stock: &'a Stock,
        names: &'a [String],
        floor: u64,
    ) -> BoxFuture<'a, Result<(), StockError>> {
        Box::pin(stock.raise_rlock_fences(names, floor))
    }

    fn write_guard(
        &self,
        row: &SegmentRow,
        token: Option<i64>,
        continuing: bool,
    ) -> Result<WriteGuard, StockError> {
        fenced::write_guard(row, token, continuing)
    }

    fn after_refusal(&self, stock: &Stock, refused: &Refused) -> Next {
        fenced::after_refusal(stock, refused)
    }
}
