//! Group deduction: concurrent single-segment deductions of one instance applied by one leader
//! in one transaction.
//!
//! A request joins its segment's queue ([`service_kit::combine`]). The worker draining that queue
//! takes the segment's lock exactly as a lone request would (the strategy's lock, lease,
//! watchdog and fencing token; `attempt`'s retry policy), and in one transaction reads the
//! segment, decides who gets units ([`plan`]), inserts every ledger row in one statement, and
//! writes the segment once, by the sum, under the same write guard (the fence). Then each
//! request gets the outcome it would have got alone: done, short of units (its caller moves on
//! to the next segment), or a replay. A refused write or a failure fails the whole group and
//! changes nothing: the transaction is rolled back, every request gets the error.
//!
//! `redis-atomic` has no lock; its group is the database write of units Redis handed out
//! (`strategy/redis_atomic/group.rs`).

pub mod plan;

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{Instrument as _, Span};

use crate::engine::{Rmw, Stock, StockError};
use crate::locking::{Kept, Tokens};
use crate::section::Refusal;
use crate::store::{self, Movement, MovementKind, Part, SegmentRow};
use plan::{GroupPlan, Verdict};
use service_kit::combine::{Combiner, Worker};

/// A segment's queue key: item and segment.
pub type GroupKey = (String, i32);

/// The queues of one instance.
pub type Groups = Combiner<GroupKey, Want>;

/// One queued deduction and where its answer goes.
#[derive(Debug)]
pub struct Want {
    pub(crate) order_id: String,
    pub(crate) qty: i64,
    span: Span,
    reply: oneshot::Sender<Result<Rmw, StockError>>,
}

/// Where a group applies: the segment as read in its transaction, the item's generation, and
/// the token to write with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At<'a> {
    pub(crate) sku: &'a str,
    pub(crate) row: SegmentRow,
    pub(crate) generation: i64,
    pub(crate) token: Option<i64>,
    /// Whether the lock tenure wrote with `token` before (see [`crate::locking::Tokens`]).
    pub(crate) continuing: bool,
}

/// What a group's critical section came to.
enum GroupRmw {
    /// One outcome per request, in order.
    Done(Vec<Rmw>),
    /// The write guard refused the segment's write; nothing was written.
    Rejected { row: SegmentRow, token: Option<i64> },
}

impl Refusal for GroupRmw {
    fn refused(&self) -> Option<(SegmentRow, Option<i64>)> {
        match self {
            GroupRmw::Rejected { row, token } => Some((*row, *token)),
            GroupRmw::Done(_) => None,
        }
    }

    fn wrote(&self) -> bool {
        match self {
            GroupRmw::Done(outcomes) => outcomes.iter().any(Refusal::wrote),
            GroupRmw::Rejected { .. } => false,
        }
    }
}

impl Stock {
    /// Deduct `qty` of `sku` from `segment` for `order_id` together with whatever concurrent
    /// deductions of that segment queue up meanwhile.
    pub(crate) async fn deduct_in_group(
        &self,
        sku: &str,
        segment: i32,
        order_id: &str,
        qty: i64,
    ) -> Result<Rmw, StockError> {
        let (reply, answer) = oneshot::channel();
        let want = Want {
            order_id: order_id.to_owned(),
            qty,
            span: Span::current(),
            reply,
        };
        if let Some(worker) = self.groups.push((sku.to_owned(), segment), want) {
            // A task of its own: the caller may be cancelled (its client went away), the
            // group it leads must still finish and answer everyone in it.
            tokio::spawn(self.clone().drain(worker));
        }
        // The worker dropped the request without answering: it panicked. Nothing of a group
        // is written unless its transaction committed; a retry with the same order id replays.
        answer.await.unwrap_or(Err(StockError::Conflict))
    }

    /// Apply the queue's groups until it is empty. The segment's lock is kept from one group
    /// to the next while requests keep arriving (see [`Kept`]), and let go as soon as the queue
    /// is idle, before the worker finishes.
    async fn drain(self, mut worker: Worker<GroupKey, Want>) {
        let (sku, segment) = worker.key().clone();
        let mut kept: Option<Kept> = None;
        loop {
            if worker.is_idle() {
                self.let_go(kept.take(), &[segment]).await;
            }
            let wants = worker.next_batch();
            if wants.is_empty() {
                self.let_go(kept.take(), &[segment]).await;
                return;
            }
            self.metrics.group_size(self.config.strategy, wants.len());
            // The group's lock.wait, lock.hold and db.transaction spans go inside the first
            // request's span (its trace shows the critical section the others shared).
            let span = wants[0].span.clone();
            let outcomes = self
                .concurrency
                .apply_group(&self, &sku, segment, &wants, &mut kept)
                .instrument(span)
                .await;
            for (want, outcome) in wants.into_iter().zip(outcomes) {
                // A caller that went away no longer needs its answer; its deduction stands
                // and a retry replays it.
                let _ = want.reply.send(outcome);
            }
        }
    }

    /// The group under the segment's lock (kept from the previous group, or taken); one
    /// outcome per request.
    pub(crate) async fn deduct_group(
        &self,
        sku: &str,
        segment: i32,
        wants: &[Want],
        kept: &mut Option<Kept>,
    ) -> Vec<Result<Rmw, StockError>> {
        let segments = [segment];
        let outcome = self
            .attempt_keeping(sku, &segments, "deduct", kept, move |tokens| {
                self.group_rmw(sku, segment, wants, tokens)
            })
            .await;
        match outcome {
            Ok(GroupRmw::Done(outcomes)) => outcomes.into_iter().map(Ok).collect(),
            Ok(GroupRmw::Rejected { .. }) => {
                wants.iter().map(|_| Err(StockError::Conflict)).collect()
            }
            Err(err) => failed(err, wants.len()),
        }
    }

    /// One transaction: read the segment, plan, record the ledger rows, write the segment by
    /// the sum under the write guard, commit.
    async fn group_rmw(
        &self,
        sku: &str,
        segment: i32,
        wants: &[Want],
        tokens: Tokens,
    ) -> Result<GroupRmw, StockError> {
        let mut tx = self.pool.begin().await?;
        let locks_rows = self.concurrency.locks_rows();
        let (read, row_locked) = self
            .reading(
                sku,
                &[segment],
                store::group_segment(&mut tx, sku, segment, locks_rows),
            )
            .await;
        let outcome = match read? {
            Some((row, generation)) => {
                let at = At {
                    sku,
                    row,
                    generation,
                    token: tokens.of(segment),
                    continuing: tokens.continuing(),
                };
                self.apply_group(tx, &at, wants).await
            }
            // The item was reset to fewer segments (or removed) meanwhile: nothing here for
            // anyone.
            None => Ok(GroupRmw::Done(
                wants
                    .iter()
                    .map(|_| Rmw::Insufficient(Vec::new()))
                    .collect(),
            )),
        };
        if let Some(since) = row_locked {
            // db-pessimistic: the row lock was held until the transaction ended.
            self.held_since(since, &[segment]);
        }
        outcome
    }

    /// Plan the group over the segment read, record the ledger rows, write the segment by the
    /// sum under the write guard; commits `tx` when anything was taken.
    async fn apply_group(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        at: &At<'_>,
        wants: &[Want],
    ) -> Result<GroupRmw, StockError> {
        let At {
            sku,
            row,
            token,
            continuing,
            ..
        } = *at;
        self.rmw_pause().await;
        let (plan, recorded) = self.record_group(&mut tx, at, wants).await?;
        let left = plan.left();
        let after = vec![(row.segment, left)];
        if left == row.available {
            // Nothing taken: nothing to write.
            tx.rollback().await?;
        } else {
            let guard = self.concurrency.write_guard(&row, token, continuing)?;
            if !store::write_segment(&mut tx, sku, row.segment, left, guard).await? {
                tx.rollback().await?;
                return Ok(GroupRmw::Rejected { row, token });
            }
            tx.commit().await?;
            self.written(sku, &after).await;
        }
        Ok(GroupRmw::Done(answers(&plan, recorded, &after)))
    }

    /// Decide who gets units and insert their ledger rows: rounds of fit, insert, and (when an
    /// order turned out to be recorded already) give its units to the next that fits. The plan,
    /// and each request's recorded movement by position.
    pub(crate) async fn record_group(
        &self,
        tx: &mut sqlx::PgConnection,
        at: &At<'_>,
        wants: &[Want],
    ) -> Result<(GroupPlan, Vec<Option<Movement>>), StockError> {
        let mut plan = GroupPlan::new(
            wants.iter().map(|w| (w.order_id.as_str(), w.qty)),
            at.row.available,
        );
        let mut recorded: Vec<Option<Movement>> = wants.iter().map(|_| None).collect();
        loop {
            let picked = plan.fit();
            if picked.is_empty() {
                break;
            }
            let movements: Vec<Movement> = picked
                .iter()
                .map(|&i| self.movement(at, &wants[i]))
                .collect();
            let inserted =
                store::insert_movements(tx, MovementKind::Deduct, &movements, self.config.strategy)
                    .await?;
            let freed = plan.settle(&picked, |i| inserted.contains(&wants[i].order_id));
            for (i, movement) in picked.into_iter().zip(movements) {
                if inserted.contains(&movement.order_id) {
                    recorded[i] = Some(movement);
                }
            }
            if !freed {
                break;
            }
        }
        Ok((plan, recorded))
    }

    /// A group changed a segment to `after`: the availability cache and gauge learn it once for
    /// the group, not once per request (the requests' own `after` stays empty).
    pub(crate) async fn written(&self, sku: &str, after: &[(i32, i64)]) {
        self.cache.set_availability(sku, after).await;
        self.metrics.segment_levels(sku, after);
    }

    /// The ledger row of `want` taking its units from the segment `at`.
    fn movement(&self, at: &At<'_>, want: &Want) -> Movement {
        Movement {
            order_id: want.order_id.clone(),
            sku: at.sku.to_owned(),
            qty: want.qty,
            parts: vec![Part {
                segment: at.row.segment,
                qty: want.qty,
            }],
            strategy: self.config.strategy.as_str().to_owned(),
            generation: at.generation,
        }
    }
}

/// Each request's outcome: done with its recorded movement, a replay when its order was
/// recorded already (or by its first occurrence), or short of units (the segment as it is now,
/// `after`).
pub(crate) fn answers(
    plan: &GroupPlan,
    recorded: Vec<Option<Movement>>,
    after: &[(i32, i64)],
) -> Vec<Rmw> {
    plan.verdicts()
        .into_iter()
        .zip(recorded)
        .map(|(verdict, movement)| match (verdict, movement) {
            (_, Some(movement)) => Rmw::Done {
                movement,
                after: Vec::new(),
            },
            (Verdict::Take | Verdict::Duplicate, None) => Rmw::Duplicate,
            (Verdict::Short | Verdict::Pending, None) => Rmw::Insufficient(after.to_vec()),
        })
        .collect()
}

/// The group's failure, given to each of its `n` requests.
pub(crate) fn failed(err: StockError, n: usize) -> Vec<Result<Rmw, StockError>> {
    let shared = Arc::new(err);
    (0..n)
        .map(|_| Err(StockError::Shared(Arc::clone(&shared))))
        .collect()
}
