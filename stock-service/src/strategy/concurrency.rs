//! What the engine asks of a strategy. The engine (`engine.rs`, `locking.rs`, `group/`) runs the
//! same steps for every strategy — pick a segment, take the locks, read, plan, write under a
//! guard, record — and asks the strategy's [`Concurrency`] at each step that differs, so that
//! it never matches on which strategy runs. One implementation per module of `strategy/`.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::engine::{Rmw, Stock, StockChange, StockError};
use crate::group::Want;
use crate::locking::{Held, Kept};
use crate::store::{Movement, Part, SegmentRow, WriteGuard};
use crate::strategy::Strategy;

/// One deduction as the engine hands it to the strategy's path, after validation, the
/// sold-out fast path and the replay look-up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deduction<'a> {
    pub(crate) sku: &'a str,
    pub(crate) order_id: &'a str,
    pub(crate) qty: i64,
    /// The item's segment count.
    pub(crate) segments: i32,
    /// The item's generation, with the ledger already checked for this order; `None` when
    /// combining (the group reads the generation and finds a recorded order itself).
    pub(crate) generation: Option<i64>,
}

/// What a release or a restock did.
#[derive(Debug)]
pub(crate) enum Applied {
    /// Units went back (or in) now.
    Now(Movement),
    /// A concurrent request with the same id won; its record.
    Already(Movement),
}

/// A write the guard refused, as [`Concurrency::after_refusal`] sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused {
    /// The row as the critical section read it.
    pub(crate) row: SegmentRow,
    /// The token the write carried.
    pub(crate) token: Option<i64>,
    /// Whether the lock was still held when the section ended.
    pub(crate) lock_valid: bool,
    /// Refusals so far in this attempt, this one included.
    pub(crate) refusals: u32,
    /// Whether the fencing counters were re-seeded in this attempt already.
    pub(crate) reseeded: bool,
}

/// What [`Stock::attempt`] does after a refused write.
#[derive(Debug)]
pub(crate) enum Next {
    /// Run the critical section again after a pause.
    Retry(Duration),
    /// Raise the fencing counters above the database's fences, then run it again.
    Reseed,
    /// Give up with this error.
    Fail(StockError),
}

/// A strategy's concurrency control. The defaults are those of a strategy with no lock, an
/// unguarded write and the lock path (`naive`); each strategy overrides what it does
/// differently.
pub(crate) trait Concurrency: Send + Sync + fmt::Debug {
    /// The strategy this is (its name in config, the ledger and metrics).
    fn strategy(&self) -> Strategy;

    /// Whether concurrent single-segment deductions of an instance are combined into groups
    /// (when `STOCK_BATCH_MAX` is above 1).
    fn combines(&self) -> bool {
        true
    }

    /// The name of the Redis lock that covers `segment` of `sku`, if the strategy takes one.
    fn lock_name(&self, _stock: &Stock, _sku: &str, _segment: i32) -> Option<String> {
        None
    }

    /// Whether one lock covers the whole item (its `segment` metric label is `all`).
    fn item_wide(&self) -> bool {
        false
    }

    /// Take the locks `names` (sorted, without repeats), waiting at most `wait` from `since`.
    /// `None` when the wait ran out.
    fn acquire<'a>(
        &'a self,
        _stock: &'a Stock,
        _names: &'a [String],
        _wait: Duration,
        _since: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Option<Held>, StockError>> {
        Box::pin(async { Ok(Some(Held::Nothing)) })
    }

    /// Raise the fencing counters of the locks `names` above `floor` (never lowers them).
    fn raise_fences<'a>(
        &'a self,
        _stock: &'a Stock,
        _names: &'a [String],
        _floor: u64,
    ) -> BoxFuture<'a, Result<(), StockError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether the read at the start of a critical section locks the rows (`FOR UPDATE`).
    fn locks_rows(&self) -> bool {
        false
    }

    /// How a write of `row` proves it is still entitled to write, under `token` (`continuing`:
    /// the lock tenure wrote with it before).
    fn write_guard(
        &self,
        _row: &SegmentRow,
        _token: Option<i64>,
        _continuing: bool,
    ) -> Result<WriteGuard, StockError> {
        Ok(WriteGuard::None)
    }

    /// What to do after the write guard refused a write.
    fn after_refusal(&self, _stock: &Stock, _refused: &Refused) -> Next {
        Next::Fail(StockError::Conflict)
    }

    /// Deduct: by default the lock path (a segment, then all of them under a MultiLock).
    fn deduct<'a>(
        &'a self,
        stock: &'a Stock,
        d: Deduction<'a>,
    ) -> BoxFuture<'a, Result<StockChange, StockError>> {
        Box::pin(stock.deduct_locked(d))
    }

    /// Put `deduction`'s units back (the order's deduction of the item's current
    /// `generation`): by default a read-modify-write under the locks of its segments.
    fn release<'a>(
        &'a self,
        stock: &'a Stock,
        deduction: &'a Movement,
        generation: i64,
    ) -> BoxFuture<'a, Result<Applied, StockError>> {
        Box::pin(stock.release_locked(deduction, generation))
    }

    /// Add `parts` to the item's segments for the restock `restock_id` (the item's current
    /// `generation`): by default a read-modify-write under the locks of those segments.
    fn restock<'a>(
        &'a self,
        stock: &'a Stock,
        sku: &'a str,
        restock_id: &'a str,
        parts: &'a [Part],
        generation: i64,
    ) -> BoxFuture<'a, Result<Applied, StockError>> {
        Box::pin(stock.restock_locked(sku, restock_id, parts, generation))
    }

    /// Apply one group of combined deductions of `segment`; one outcome per request. By
    /// default under the segment's lock, kept in `kept` from one group to the next.
    fn apply_group<'a>(
        &'a self,
        stock: &'a Stock,
        sku: &'a str,
        segment: i32,
        wants: &'a [Want],
        kept: &'a mut Option<Kept>,
    ) -> BoxFuture<'a, Vec<Result<Rmw, StockError>>> {
        Box::pin(stock.deduct_group(sku, segment, wants, kept))
    }
}
