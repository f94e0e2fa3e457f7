//! `db-optimistic`: no lock; the write is conditional on the row's version as read, and a
//! refused write is retried after a short random pause, a bounded number of times
//! (`OPTIMISTIC_RETRIES`).

use std::time::Duration;

use rand::Rng;

use super::Strategy;
use super::concurrency::{Concurrency, Next, Refused};
use crate::engine::{Stock, StockError};
use crate::store::{SegmentRow, WriteGuard};

/// Compare-and-set on the version column, with retries.
#[derive(Debug)]
pub(crate) struct DbOptimistic;

impl Concurrency for DbOptimistic {
    fn strategy(&self) -> Strategy {
        Strategy::DbOptimistic
    }

    fn write_guard(
        &self,
        row: &SegmentRow,
        _token: Option<i64>,
        _continuing: bool,
    ) -> Result<WriteGuard, StockError> {
        Ok(WriteGuard::Version(row.version))
    }

    fn after_refusal(&self, stock: &Stock, refused: &Refused) -> Next {
        stock.metrics.optimistic_conflict();
        if refused.refusals > stock.config.optimistic_retries {
            return Next::Fail(StockError::Conflict);
        }
        // Jitter grows with the conflicts, so the losers of one race spread out.
        let jitter = rand::rng().random_range(0..=refused.refusals.min(10));
        Next::Retry(Duration::from_millis(u64::from(jitter)))
    }
}
