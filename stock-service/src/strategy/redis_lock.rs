//! `redis-lock`: one watchdog lock per item (`<prefix>:<sku>`) around the read-modify-write,
//! whatever segment it touches, and fenced writes. The segments buy no parallelism.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::Strategy;
use super::concurrency::{Concurrency, Next, Refused};
use super::fenced;
use crate::engine::{Stock, StockError};
use crate::locking::Held;
use crate::store::{SegmentRow, WriteGuard};

/// One lock for the whole item.
#[derive(Debug)]
pub(crate) struct RedisLock;

impl Concurrency for RedisLock {
    fn strategy(&self) -> Strategy {
        Strategy::RedisLock
    }

    fn lock_name(&self, stock: &Stock, sku: &str, _segment: i32) -> Option<String> {
        Some(stock.item_lock(sku))
    }

    fn item_wide(&self) -> bool {
        true
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
