//! A critical section under the strategy's guard: take (or keep) the lock(s), run the section
//! with the tokens it must write with, and handle a refused write as the strategy says
//! ([`crate::strategy::concurrency::Concurrency::after_refusal`]); the read that opens a
//! section (row locks for `db-pessimistic`).

use std::future::Future;

use tracing::Instrument as _;

use crate::engine::{Rmw, Stock, StockError, db_span};
use crate::locking::{Kept, Tokens};
use crate::store::{self, SegmentRow};
use crate::strategy::concurrency::{Next, Refused};

/// A critical section's outcome, as far as [`Stock::attempt`]'s retry policy cares: did the
/// write guard refuse a write, and of which row under which token.
pub(crate) trait Refusal {
    /// The refused row and the token it was written with, if a write was refused.
    fn refused(&self) -> Option<(SegmentRow, Option<i64>)>;

    /// Whether the section wrote a segment under its token (a kept lock's next section may
    /// then find the row carrying that token: see [`store::WriteGuard::Fence`]).
    fn wrote(&self) -> bool;
}

impl Refusal for Rmw {
    fn refused(&self) -> Option<(SegmentRow, Option<i64>)> {
        match self {
            Rmw::Rejected { row, token } => Some((*row, *token)),
            _ => None,
        }
    }

    fn wrote(&self) -> bool {
        matches!(self, Rmw::Done { .. })
    }
}

impl Stock {
    /// Take the strategy's lock(s), run the critical `section` with the tokens it must write
    /// with, handle a refused write, release the lock(s). See [`Stock::attempt_keeping`].
    pub(crate) async fn attempt<R, F, Fut>(
        &self,
        sku: &str,
        segments: &[i32],
        operation: &'static str,
        section: F,
    ) -> Result<R, StockError>
    where
        R: Refusal,
        F: Fn(Tokens) -> Fut,
        Fut: Future<Output = Result<R, StockError>>,
    {
        let mut kept = None;
        let outcome = self
            .attempt_keeping(sku, segments, operation, &mut kept, section)
            .await;
        self.let_go(kept, segments).await;
        outcome
    }

    /// [`Stock::attempt`] for a group worker that keeps its lock across the groups it drains:
    /// a valid lock in `kept` (taken recently enough) is used instead of taking it again, and
    /// the lock the section ran under is left in `kept` when it succeeded. On a refusal or an
    /// error the lock is released.
    ///
    /// A refused write: the optimistic strategy retries; a fenced strategy whose lock is
    /// still valid but whose token is below the row's fence (Redis lost its counter) re-seeds
    /// the counter above the database's fences and retries once; any other fenced refusal is
    /// a lost lock.
    pub(crate) async fn attempt_keeping<R, F, Fut>(
        &self,
        sku: &str,
        segments: &[i32],
        operation: &'static str,
        kept: &mut Option<Kept>,
        section: F,
    ) -> Result<R, StockError>
    where
        R: Refusal,
        F: Fn(Tokens) -> Fut,
        Fut: Future<Output = Result<R, StockError>>,
    {
        let mut refusals = 0;
        let mut reseeded = false;
        loop {
            let mut tenure = self.tenure(sku, segments, kept.take()).await?;
            let tokens = self.tokens(sku, segments, &tenure);
            let outcome = self
                .hold(segments, tenure.locks(), async {
                    // Created inside `lock.hold`, so the transaction is its child.
                    section(tokens).instrument(db_span(operation, sku)).await
                })
                .await;
            let valid = tenure.still_valid();
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(err) => {
                    self.let_go(Some(tenure), segments).await;
                    return Err(err);
                }
            };
            let Some((row, token)) = outcome.refused() else {
                tenure.wrote |= outcome.wrote();
                *kept = Some(tenure);
                return Ok(outcome);
            };
            self.let_go(Some(tenure), segments).await;
            refusals += 1;
            let refused = Refused {
                row,
                token,
                lock_valid: valid,
                refusals,
                reseeded,
            };
            match self.concurrency.after_refusal(self, &refused) {
                Next::Retry(pause) => tokio::time::sleep(pause).await,
                Next::Reseed => {
                    self.reseed_fences(sku, segments).await?;
                    reseeded = true;
                }
                Next::Fail(err) => return Err(err),
            }
        }
    }

    /// Read `segments` inside `tx`. db-pessimistic locks the rows (`SELECT … FOR UPDATE`): the
    /// wait is a `lock.wait` span and a lock-wait observation, and the second value is when
    /// the row locks were granted (they are held until the transaction ends).
    pub(crate) async fn read_for_write(
        &self,
        tx: &mut sqlx::PgConnection,
        sku: &str,
        segments: &[i32],
    ) -> Result<(Vec<SegmentRow>, Option<tokio::time::Instant>), StockError> {
        let locks_rows = self.concurrency.locks_rows();
        let (rows, row_locked) = self
            .reading(
                sku,
                segments,
                store::read_segments(tx, sku, segments, locks_rows),
            )
            .await;
        Ok((rows?, row_locked))
    }

    /// Run the `read` of `segments` at the start of a critical section. db-pessimistic's read
    /// locks the rows (`SELECT … FOR UPDATE`): its wait is a `lock.wait` span and a lock-wait
    /// observation (a long one moves the instance's home), and the second value is when the
    /// row locks were granted (they are held until the transaction ends).
    pub(crate) async fn reading<T>(
        &self,
        sku: &str,
        segments: &[i32],
        read: impl Future<Output = T>,
    ) -> (T, Option<tokio::time::Instant>) {
        if !self.concurrency.locks_rows() {
            return (read.await, None);
        }
        let strategy = self.strategy();
        let labels = self.lock_labels(segments);
        let span = tracing::info_span!(
            "lock.wait",
            strategy = strategy.as_str(),
            segment = labels.join(","),
            acquired = true,
            lock.kind = "row",
        );
        let started = tokio::time::Instant::now();
        let out = read.instrument(span).await;
        self.waited(sku, segments, &labels, started.elapsed(), true);
        (out, Some(tokio::time::Instant::now()))
    }

    /// The configured pause between read and write (demos and tests widen the race window).
    pub(crate) async fn rmw_pause(&self) {
        if !self.config.rmw_delay.is_zero() {
            tokio::time::sleep(self.config.rmw_delay).await;
        }
    }
}
