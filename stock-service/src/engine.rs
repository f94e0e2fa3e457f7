//! Deductions and releases: pick segments, take the strategy's lock, run the read-modify-write
//! with the strategy's write guard, record the movement, all in one transaction. The locks are
//! in `locking.rs`, group deduction in `group/`, redis-atomic in `strategy/redis_atomic/`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::Rng;
use rlock::{LockClient, LockError, RedLock};
use serde::Serialize;
use sqlx::PgPool;
use tracing::{Instrument as _, Span};

use crate::cache::StockCache;
use crate::config::StockConfig;
use crate::group::Groups;
use crate::locking::{Kept, Tokens};
use crate::metrics::{OversoldWatch, StockMetrics};
use crate::shape::ShapeCache;
use crate::store::{self, ItemStock, Movement, MovementKind, Part, SegmentRow, WriteGuard};
use crate::strategy::Strategy;

/// Largest quantity one deduction may ask for.
pub const MAX_QTY: i64 = 10_000;
/// Largest item a reset may create.
pub const MAX_TOTAL: i64 = 1_000_000_000;
/// Most segments an item may have.
pub const MAX_SEGMENTS: i32 = 1024;

/// What a deduction or release did (or, replayed, what it did the first time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StockChange {
    /// The order.
    pub order_id: String,
    /// The item.
    pub sku: String,
    /// Units in total.
    pub qty: i64,
    /// Units per segment.
    pub parts: Vec<Part>,
    /// Strategy of the instance that made the change.
    pub strategy: String,
    /// True when this answer repeats an earlier request's result.
    pub replayed: bool,
}

impl StockChange {
    fn from_movement(m: Movement, replayed: bool) -> Self {
        StockChange {
            order_id: m.order_id,
            sku: m.sku,
            qty: m.qty,
            parts: m.parts,
            strategy: m.strategy,
            replayed,
        }
    }
}

/// Why a stock operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    /// Bad input; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// No such item.
    #[error("unknown item {0:?}")]
    NotFound(String),
    /// Every segment is empty.
    #[error("item {0:?} is sold out")]
    SoldOut(String),
    /// Some stock left, but less than asked for.
    #[error("only {available} left of item {sku:?}, {requested} requested")]
    Insufficient {
        /// The item.
        sku: String,
        /// Units left.
        available: i64,
        /// Units asked for.
        requested: i64,
    },
    /// A release for an order that has no deduction of this item.
    #[error("order {order_id:?} has no deduction of item {sku:?}")]
    NoDeduction {
        /// The order.
        order_id: String,
        /// The item.
        sku: String,
    },
    /// The order id was already used for another item.
    #[error("order {order_id:?} was used for item {other:?}")]
    OrderConflict {
        /// The order.
        order_id: String,
        /// The item it was used for.
        other: String,
    },
    /// The item was reset after the order's deduction; its stock cannot go back.
    #[error("item {0:?} was reset after this order's deduction")]
    ResetSince(String),
    /// The lock could not be had within the configured wait.
    #[error("lock wait timed out")]
    LockTimeout,
    /// The database refused a fenced write: this holder's lock was lost.
    #[error("write refused by the fencing token: the lock was lost")]
    FenceRejected,
    /// The optimistic strategy kept losing the race.
    #[error("too many write conflicts")]
    Conflict,
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The lock failed.
    #[error("lock: {0}")]
    Lock(#[from] LockError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A failure of a whole group of combined deductions, given to each of its requests.
    #[error("{0}")]
    Shared(Arc<StockError>),
}

impl StockError {
    /// The error itself, looking through [`StockError::Shared`].
    pub fn root(&self) -> &StockError {
        match self {
            StockError::Shared(inner) => inner.root(),
            other => other,
        }
    }
}

/// What one locked read-modify-write came to.
#[derive(Debug)]
pub(crate) enum Rmw {
    Done {
        movement: Movement,
        after: Vec<(i32, i64)>,
    },
    /// Not enough stock in the segments read (their availability as read).
    Insufficient(Vec<(i32, i64)>),
    /// The write guard refused the write of `row`.
    Rejected { row: SegmentRow, token: Option<i64> },
    /// A concurrent request for the same order won.
    Duplicate,
}

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

/// The change a read-modify-write makes.
enum Op {
    Deduct(i64),
    Release(Vec<Part>),
}

/// The stock engine of one service instance.
#[derive(Debug, Clone)]
pub struct Stock {
    /// PostgreSQL pool.
    pub pool: PgPool,
    /// Lock client on the main Redis.
    pub locks: LockClient,
    /// RedLock masters (strategy `redlock` only).
    pub redlock: Option<RedLock>,
    /// Redis cache and sold-out flag.
    pub cache: StockCache,
    /// Settings.
    pub config: StockConfig,
    /// Instruments.
    pub metrics: StockMetrics,
    /// Items whose oversold gauge needs a fresh look.
    pub oversold: OversoldWatch,
    /// Queues of concurrent single-segment deductions, one per segment (group deduction).
    pub groups: Arc<Groups>,
    /// Items' segment counts, remembered for a moment (combined deductions).
    pub shapes: Arc<ShapeCache>,
    /// Where this instance's combined deductions start looking (modulo the segment count):
    /// random at start, moved on by one when the segment there runs empty.
    pub home: Arc<AtomicU32>,
}

/// What a deduction knows of its item before it starts.
struct Shape {
    segments: i32,
    /// The item's generation, with the ledger already checked for this order; `None` when
    /// combining: the group reads the generation and finds a recorded order in its own
    /// transaction.
    generation: Option<i64>,
}

/// How a deduction starts: on an item of this shape, or as a replay of the recorded one.
enum Start {
    Fresh(Shape),
    Recorded(Movement),
}

/// The span of one PostgreSQL transaction (`db.transaction`, OpenTelemetry database client
/// attributes) doing `operation` (`deduct`, `release`, `reset`) on `sku`.
pub(crate) fn db_span(operation: &'static str, sku: &str) -> Span {
    tracing::info_span!(
        "db.transaction",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "TRANSACTION",
        stock.operation = operation,
        stock.sku = sku,
    )
}

/// Check a SKU: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
pub fn validate_sku(sku: &str) -> Result<(), StockError> {
    valid_id(sku, 64, b"._-").then_some(()).ok_or_else(|| {
        StockError::Invalid(format!(
            "sku {sku:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"
        ))
    })
}

/// Check an order id: 1 to 128 characters of `A-Z a-z 0-9 . _ - :`.
pub fn validate_order_id(order_id: &str) -> Result<(), StockError> {
    valid_id(order_id, 128, b"._-:").then_some(()).ok_or_else(|| {
        StockError::Invalid(format!(
            "order_id {order_id:?} must be 1-128 characters of letters, digits, '.', '_', '-' or ':'"
        ))
    })
}

fn valid_id(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

impl Stock {
    pub(crate) fn strategy(&self) -> Strategy {
        self.config.strategy
    }

    /// Create or reset an item with `total` units over `segments` segments.
    pub async fn reset(
        &self,
        sku: &str,
        total: i64,
        segments: i32,
    ) -> Result<ItemStock, StockError> {
        validate_sku(sku)?;
        if !(0..=MAX_TOTAL).contains(&total) {
            return Err(StockError::Invalid(format!(
                "total must be between 0 and {MAX_TOTAL}"
            )));
        }
        if !(1..=MAX_SEGMENTS).contains(&segments) {
            return Err(StockError::Invalid(format!(
                "segments must be between 1 and {MAX_SEGMENTS}"
            )));
        }
        let item = store::reset_item(&self.pool, sku, total, segments)
            .instrument(db_span("reset", sku))
            .await?;
        let values: Vec<(i32, i64)> = item
            .segments
            .iter()
            .map(|s| (s.segment, s.available))
            .collect();
        self.shapes.forget(sku);
        self.cache.reset(sku, &values).await?;
        self.metrics.stock_level(&item);
        // A new generation has sold nothing yet.
        self.metrics.oversold(sku, 0);
        Ok(item)
    }

    /// The item's stock, or `NotFound`.
    pub async fn item(&self, sku: &str) -> Result<ItemStock, StockError> {
        validate_sku(sku)?;
        store::item(&self.pool, sku)
            .await?
            .ok_or_else(|| StockError::NotFound(sku.to_owned()))
    }

    /// The deduction recorded for `order_id` on `sku`, if any (how a caller whose request's
    /// outcome is unknown finds out what happened).
    pub async fn deduction(&self, sku: &str, order_id: &str) -> Result<StockChange, StockError> {
        validate_sku(sku)?;
        validate_order_id(order_id)?;
        let mut conn = self.pool.acquire().await?;
        match store::movement(&mut conn, order_id, MovementKind::Deduct).await? {
            Some(m) if m.sku == sku => Ok(StockChange::from_movement(m, true)),
            _ => Err(StockError::NoDeduction {
                order_id: order_id.to_owned(),
                sku: sku.to_owned(),
            }),
        }
    }

    /// Take `qty` units of `sku` for `order_id`. Idempotent per order id: a repeat returns the
    /// first result and changes nothing.
    pub async fn deduct(
        &self,
        sku: &str,
        order_id: &str,
        qty: i64,
    ) -> Result<StockChange, StockError> {
        validate_sku(sku)?;
        validate_order_id(order_id)?;
        if !(1..=MAX_QTY).contains(&qty) {
            return Err(StockError::Invalid(format!(
                "qty must be between 1 and {MAX_QTY}"
            )));
        }
        // The fast path: no lock, no database.
        if self.cache.is_sold_out(sku).await {
            self.metrics.sold_out_fast();
            return Err(StockError::SoldOut(sku.to_owned()));
        }
        let shape = match self.start(sku, order_id).await? {
            Start::Fresh(shape) => shape,
            Start::Recorded(m) => return self.replay(sku, m),
        };
        if self.strategy() == Strategy::RedisAtomic {
            return self
                .deduct_atomic(sku, order_id, qty, shape.generation, shape.segments)
                .await;
        }

        // One segment that covers the quantity, skipping those the cache says cannot cover it.
        let segments = shape.segments;
        let cached = if self.combining() {
            self.cache.seen_availability(sku)
        } else {
            self.cache.availability(sku).await
        };
        let home = self.home.load(Ordering::Relaxed);
        for (i, segment) in self.visit_order(segments, home).enumerate() {
            let at_home = i == 0 && self.combining();
            if cached.get(&segment).is_some_and(|&a| a < qty) {
                if at_home {
                    self.move_home(home, segments);
                }
                continue;
            }
            match self
                .deduct_segment(sku, shape.generation, segment, order_id, qty)
                .await?
            {
                Rmw::Done { movement, after } => return Ok(self.done(sku, movement, &after).await),
                Rmw::Insufficient(seen) => {
                    if at_home {
                        self.move_home(home, segments);
                    }
                    self.cache.set_availability(sku, &seen).await;
                }
                Rmw::Duplicate => return self.replay_after_race(sku, order_id).await,
                Rmw::Rejected { .. } => return Err(StockError::Conflict),
            }
        }
        self.deduct_across(sku, shape.generation, order_id, qty)
            .await
    }

    /// No single segment covers `qty`: the total decides (several segments under one
    /// MultiLock, or not enough). A combined request (`generation` unknown) has not looked at
    /// the ledger yet: an order that already has a deduction is replayed, not refused.
    async fn deduct_across(
        &self,
        sku: &str,
        generation: Option<i64>,
        order_id: &str,
        qty: i64,
    ) -> Result<StockChange, StockError> {
        let epoch = self.cache.epoch(sku).await?;
        if generation.is_none()
            && let Some(m) = self.recorded(order_id).await?
        {
            return self.replay(sku, m);
        }
        let mut conn = self.pool.acquire().await?;
        let rows = store::read_segments(&mut conn, sku, &[], false).await?;
        drop(conn);
        let total: i64 = rows.iter().map(|r| r.available).sum();
        if total < qty {
            return Err(self.not_enough(sku, &epoch, total, qty).await);
        }
        let nonempty: Vec<i32> = rows
            .iter()
            .filter(|r| r.available > 0)
            .map(|r| r.segment)
            .collect();
        let generation = self.generation(sku, generation).await?;
        match self
            .attempt_one(&Op::Deduct(qty), sku, generation, &nonempty, order_id)
            .await?
        {
            Rmw::Done { movement, after } => Ok(self.done(sku, movement, &after).await),
            Rmw::Insufficient(seen) => {
                self.cache.set_availability(sku, &seen).await;
                let total = seen.iter().map(|(_, a)| a).sum();
                Err(self.not_enough(sku, &epoch, total, qty).await)
            }
            Rmw::Duplicate => self.replay_after_race(sku, order_id).await,
            Rmw::Rejected { .. } => Err(StockError::Conflict),
        }
    }

    /// The order in which a deduction tries the segments. Alone: from a random one on, which
    /// spreads the lock contention. Combining: from this instance's home (`home`) on, the same
    /// for all of its requests, so that they queue up together and its groups are as large as
    /// they can be, while other instances, with other homes, mostly work on other segments.
    fn visit_order(&self, segments: i32, home: u32) -> impl Iterator<Item = i32> {
        let n = segments.max(1);
        let start = if self.combining() {
            i32::try_from(home % n.unsigned_abs()).unwrap_or(0)
        } else {
            rand::rng().random_range(0..n)
        };
        (0..n).map(move |i| (start + i) % n)
    }

    /// The home segment (as read: `seen`) had too little, or another instance holds its lock:
    /// move this instance's home, once however many requests found it so at the same time, to
    /// a random other segment of the `segments`. Random, not the next one: two instances whose
    /// homes met would otherwise walk on together, segment after segment, contending for each.
    pub(crate) fn move_home(&self, seen: u32, segments: i32) {
        let n = segments.max(1).unsigned_abs();
        if n < 2 {
            return;
        }
        let next = (seen % n + rand::rng().random_range(1..n)) % n;
        let _ = self
            .home
            .compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The instance's home is `segment` of `sku` and its lock was busy: another instance works
    /// there; move on (see [`Stock::move_home`]).
    pub(crate) fn leave_contended_home(&self, sku: &str, segment: i32) {
        let Some(segments) = self.shapes.segments(sku) else {
            return;
        };
        let home = self.home.load(Ordering::Relaxed);
        if self.visit_order(segments, home).next() == Some(segment) {
            self.move_home(home, segments);
        }
    }

    /// Where redis-atomic's take starts: the first segment of [`Stock::visit_order`].
    pub(crate) fn first_segment(&self, segments: i32) -> i32 {
        self.visit_order(segments, self.home.load(Ordering::Relaxed))
            .next()
            .unwrap_or(0)
    }

    /// Whether single-segment deductions are combined into groups.
    fn combining(&self) -> bool {
        self.config.batch_max > 1 && self.strategy().combines()
    }

    /// How the deduction starts. Combining: only the segment count, remembered for a moment
    /// (the group reads the generation and finds a recorded order in its own transaction, so a
    /// request costs the database nothing on its own). Alone: the generation, the segment count
    /// and the order's recorded deduction, in one round trip.
    async fn start(&self, sku: &str, order_id: &str) -> Result<Start, StockError> {
        if self.combining() {
            let segments = match self.shapes.segments(sku) {
                Some(segments) => segments,
                None => self.segments_of(sku, order_id).await?,
            };
            return Ok(Start::Fresh(Shape {
                segments,
                generation: None,
            }));
        }
        let Some((generation, segments, recorded)) =
            store::deduction_context(&self.pool, sku, order_id).await?
        else {
            return Err(self.unknown_item(sku, order_id).await);
        };
        Ok(match recorded {
            Some(m) => Start::Recorded(m),
            None => Start::Fresh(Shape {
                segments,
                generation: Some(generation),
            }),
        })
    }

    /// The item's segment count from the database, remembered for the next requests.
    async fn segments_of(&self, sku: &str, order_id: &str) -> Result<i32, StockError> {
        let mut conn = self.pool.acquire().await?;
        let Some((_, segments)) = store::item_shape(&mut conn, sku).await? else {
            drop(conn);
            return Err(self.unknown_item(sku, order_id).await);
        };
        self.shapes.remember(sku, segments);
        Ok(segments)
    }

    /// `known`, or the item's current generation from the database.
    pub(crate) async fn generation(
        &self,
        sku: &str,
        known: Option<i64>,
    ) -> Result<i64, StockError> {
        if let Some(generation) = known {
            return Ok(generation);
        }
        let mut conn = self.pool.acquire().await?;
        store::item_shape(&mut conn, sku)
            .await?
            .map(|(generation, _)| generation)
            .ok_or_else(|| StockError::NotFound(sku.to_owned()))
    }

    /// The answer for a deduction of an unknown item: the order's use of another item if it
    /// has one, else not found.
    async fn unknown_item(&self, sku: &str, order_id: &str) -> StockError {
        match self.recorded(order_id).await {
            Ok(Some(m)) => StockError::OrderConflict {
                order_id: m.order_id,
                other: m.sku,
            },
            Ok(None) => StockError::NotFound(sku.to_owned()),
            Err(err) => err,
        }
    }

    /// Sold out (and say so to every instance) or merely insufficient.
    pub(crate) async fn not_enough(
        &self,
        sku: &str,
        epoch: &str,
        total: i64,
        qty: i64,
    ) -> StockError {
        if total == 0 {
            if let Err(err) = self.cache.mark_sold_out(sku, epoch).await {
                tracing::warn!(%sku, error = %err, "could not set the sold-out flag");
            }
            self.metrics.outcome(self.strategy(), "sold_out");
            StockError::SoldOut(sku.to_owned())
        } else {
            self.metrics.outcome(self.strategy(), "insufficient");
            StockError::Insufficient {
                sku: sku.to_owned(),
                available: total,
                requested: qty,
            }
        }
    }

    pub(crate) async fn done(
        &self,
        sku: &str,
        movement: Movement,
        after: &[(i32, i64)],
    ) -> StockChange {
        self.oversold.touch(sku);
        self.cache.set_availability(sku, after).await;
        self.metrics.outcome(self.strategy(), "ok");
        self.metrics.segment_levels(sku, after);
        StockChange::from_movement(movement, false)
    }

    pub(crate) fn replay(&self, sku: &str, m: Movement) -> Result<StockChange, StockError> {
        if m.sku != sku {
            return Err(StockError::OrderConflict {
                order_id: m.order_id,
                other: m.sku,
            });
        }
        self.metrics.outcome(self.strategy(), "replayed");
        Ok(StockChange::from_movement(m, true))
    }

    pub(crate) async fn replay_after_race(
        &self,
        sku: &str,
        order_id: &str,
    ) -> Result<StockChange, StockError> {
        match self.recorded(order_id).await? {
            Some(m) => self.replay(sku, m),
            None => Err(StockError::Conflict),
        }
    }

    /// Put back the stock `order_id` took from `sku`, to the segments it came from.
    /// Idempotent: a repeat returns the first result.
    pub async fn release(&self, sku: &str, order_id: &str) -> Result<StockChange, StockError> {
        validate_sku(sku)?;
        validate_order_id(order_id)?;
        let mut conn = self.pool.acquire().await?;
        let no_deduction = || StockError::NoDeduction {
            order_id: order_id.to_owned(),
            sku: sku.to_owned(),
        };
        let deduction = store::movement(&mut conn, order_id, MovementKind::Deduct)
            .await?
            .filter(|m| m.sku == sku)
            .ok_or_else(no_deduction)?;
        if let Some(m) = store::movement(&mut conn, order_id, MovementKind::Release).await? {
            return Ok(StockChange::from_movement(m, true));
        }
        let (generation, _) = store::item_shape(&mut conn, sku)
            .await?
            .ok_or_else(|| StockError::NotFound(sku.to_owned()))?;
        drop(conn);
        if deduction.generation != generation {
            return Err(StockError::ResetSince(sku.to_owned()));
        }
        let result = if self.strategy() == Strategy::RedisAtomic {
            self.release_atomic(sku, &deduction)
                .instrument(db_span("release", sku))
                .await?
        } else {
            let segments: Vec<i32> = deduction.parts.iter().map(|p| p.segment).collect();
            let op = Op::Release(deduction.parts.clone());
            match self
                .attempt_one(&op, sku, generation, &segments, order_id)
                .await?
            {
                Rmw::Done { movement, after } => {
                    self.cache.set_availability(sku, &after).await;
                    self.metrics.segment_levels(sku, &after);
                    movement
                }
                Rmw::Duplicate => {
                    let mut conn = self.pool.acquire().await?;
                    let m = store::movement(&mut conn, order_id, MovementKind::Release)
                        .await?
                        .ok_or(StockError::Conflict)?;
                    return Ok(StockChange::from_movement(m, true));
                }
                Rmw::Insufficient(_) | Rmw::Rejected { .. } => return Err(StockError::Conflict),
            }
        };
        self.oversold.touch(sku);
        self.cache.restocked(sku).await?;
        self.metrics.outcome(self.strategy(), "released");
        Ok(StockChange::from_movement(result, false))
    }

    /// One request's read-modify-write under the strategy's lock(s).
    async fn attempt_one(
        &self,
        op: &Op,
        sku: &str,
        generation: i64,
        segments: &[i32],
        order_id: &str,
    ) -> Result<Rmw, StockError> {
        let operation = match op {
            Op::Deduct(_) => "deduct",
            Op::Release(_) => "release",
        };
        self.attempt(sku, segments, operation, move |tokens| {
            self.rmw(op, sku, generation, segments, order_id, tokens)
        })
        .await
    }

    /// Deduct `qty` from one segment: alone when the request already knows its generation
    /// (combining off), else combined with the concurrent deductions of that segment in this
    /// instance (one leader, one transaction).
    async fn deduct_segment(
        &self,
        sku: &str,
        generation: Option<i64>,
        segment: i32,
        order_id: &str,
        qty: i64,
    ) -> Result<Rmw, StockError> {
        match generation {
            Some(generation) => {
                let op = Op::Deduct(qty);
                self.attempt_one(&op, sku, generation, &[segment], order_id)
                    .await
            }
            None => self.deduct_in_group(sku, segment, order_id, qty).await,
        }
    }

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
        let mut conflicts = 0;
        let mut reseeded = false;
        loop {
            let mut tenure = self.tenure(sku, segments, kept.take()).await?;
            let tokens = self.tokens(sku, segments, &tenure);
            let outcome = self
                .hold(
                    segments,
                    section(tokens).instrument(db_span(operation, sku)),
                )
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
            match self.strategy() {
                Strategy::DbOptimistic => {
                    conflicts += 1;
                    self.metrics.optimistic_conflict();
                    if conflicts > self.config.optimistic_retries {
                        return Err(StockError::Conflict);
                    }
                    let jitter = rand::rng().random_range(0..=conflicts.min(10));
                    tokio::time::sleep(Duration::from_millis(u64::from(jitter))).await;
                }
                s if s.is_fenced() => {
                    let stale_token = token.is_some_and(|t| row.last_fence >= t);
                    if valid && stale_token && !reseeded {
                        self.reseed_fences(sku, segments).await?;
                        reseeded = true;
                        continue;
                    }
                    self.metrics.fence_rejected(self.strategy());
                    tracing::warn!(%sku, segment = row.segment, ?token, fence = row.last_fence,
                        "fenced write refused: the lock was lost");
                    return Err(StockError::FenceRejected);
                }
                _ => return Err(StockError::Conflict),
            }
        }
    }

    /// Read the segments, plan the change, write every touched segment under the strategy's
    /// guard and record the movement, in one transaction.
    async fn rmw(
        &self,
        op: &Op,
        sku: &str,
        generation: i64,
        segments: &[i32],
        order_id: &str,
        tokens: Tokens,
    ) -> Result<Rmw, StockError> {
        let mut tx = self.pool.begin().await?;
        let (rows, row_locked) = self.read_for_write(&mut tx, sku, segments).await?;
        let outcome = self
            .apply(tx, op, sku, generation, &rows, order_id, &tokens)
            .await;
        if let Some(since) = row_locked {
            // db-pessimistic: the row locks were held until the transaction ended.
            self.held_since(since, segments);
        }
        outcome
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
        let locks_rows = self.strategy() == Strategy::DbPessimistic;
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
        let strategy = self.strategy();
        if strategy != Strategy::DbPessimistic {
            return (read.await, None);
        }
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
        let waited = started.elapsed();
        self.metrics.lock_wait(strategy, &labels, waited, true);
        if let [segment] = segments
            && waited >= crate::locking::CONTENDED
        {
            self.leave_contended_home(sku, *segment);
        }
        (out, Some(tokio::time::Instant::now()))
    }

    /// How a write of `row` proves it is still entitled to write, under `token`.
    pub(crate) fn write_guard(
        &self,
        row: &SegmentRow,
        token: Option<i64>,
        continuing: bool,
    ) -> Result<WriteGuard, StockError> {
        match (self.strategy(), token) {
            (Strategy::DbOptimistic, _) => Ok(WriteGuard::Version(row.version)),
            (s, Some(token)) if s.is_fenced() => Ok(WriteGuard::Fence {
                seen: row.last_fence,
                version: row.version,
                token,
                continuing,
            }),
            (s, None) if s.is_fenced() => Err(StockError::FenceRejected),
            _ => Ok(WriteGuard::None),
        }
    }

    /// The configured pause between read and write (demos and tests widen the race window).
    pub(crate) async fn rmw_pause(&self) {
        if !self.config.rmw_delay.is_zero() {
            tokio::time::sleep(self.config.rmw_delay).await;
        }
    }

    /// Plan `op` over the `rows` read, write the touched segments and record the movement;
    /// commits `tx` when it did.
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        op: &Op,
        sku: &str,
        generation: i64,
        rows: &[SegmentRow],
        order_id: &str,
        tokens: &Tokens,
    ) -> Result<Rmw, StockError> {
        let seen: Vec<(i32, i64)> = rows.iter().map(|r| (r.segment, r.available)).collect();
        let (kind, parts, sign) = match op {
            Op::Deduct(qty) => match plan_deduction(rows, *qty) {
                Some(parts) => (MovementKind::Deduct, parts, -1),
                None => return Ok(Rmw::Insufficient(seen)),
            },
            Op::Release(parts) => (MovementKind::Release, parts.clone(), 1),
        };
        self.rmw_pause().await;
        let mut after = Vec::with_capacity(parts.len());
        for part in &parts {
            let Some(row) = rows.iter().find(|r| r.segment == part.segment) else {
                return Err(StockError::Conflict);
            };
            let token = tokens.of(row.segment);
            let guard = self.write_guard(row, token, tokens.continuing())?;
            let value = row.available + sign * part.qty;
            if !store::write_segment(&mut tx, sku, row.segment, value, guard).await? {
                tx.rollback().await?;
                return Ok(Rmw::Rejected { row: *row, token });
            }
            after.push((row.segment, value));
        }
        let movement = Movement {
            order_id: order_id.to_owned(),
            sku: sku.to_owned(),
            qty: parts.iter().map(|p| p.qty).sum(),
            parts,
            strategy: self.strategy().as_str().to_owned(),
            generation,
        };
        if !commit_movement(tx, kind, &movement, self.strategy()).await? {
            return Ok(Rmw::Duplicate);
        }
        Ok(Rmw::Done { movement, after })
    }

    /// The deduction recorded for `order_id` (of any item), if any.
    pub(crate) async fn recorded(&self, order_id: &str) -> Result<Option<Movement>, StockError> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::movement(&mut conn, order_id, MovementKind::Deduct).await?)
    }
}

/// Insert the movement and commit. `false` (rolled back) when a concurrent request for the
/// same order and kind won: the caller replays that one.
pub(crate) async fn commit_movement(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    kind: MovementKind,
    movement: &Movement,
    strategy: Strategy,
) -> Result<bool, StockError> {
    if !store::insert_movement(&mut tx, kind, movement, strategy).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// Which segments give how much: one segment when one covers `qty`, else greedily in segment
/// order. `None` when the rows together have less than `qty`.
fn plan_deduction(rows: &[SegmentRow], qty: i64) -> Option<Vec<Part>> {
    if let Some(row) = rows.iter().find(|r| r.available >= qty) {
        return Some(vec![Part {
            segment: row.segment,
            qty,
        }]);
    }
    let mut left = qty;
    let mut parts = Vec::new();
    for row in rows.iter().filter(|r| r.available > 0) {
        let take = row.available.min(left);
        parts.push(Part {
            segment: row.segment,
            qty: take,
        });
        left -= take;
        if left == 0 {
            return Some(parts);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(values: &[i64]) -> Vec<SegmentRow> {
        values
            .iter()
            .enumerate()
            .map(|(i, &available)| SegmentRow {
                segment: i32::try_from(i).unwrap_or(0),
                available,
                last_fence: 0,
                version: 0,
            })
            .collect()
    }

    #[test]
    fn one_segment_when_one_covers_it() {
        assert_eq!(
            plan_deduction(&rows(&[1, 5, 9]), 4),
            Some(vec![Part { segment: 1, qty: 4 }])
        );
    }

    #[test]
    fn several_segments_when_only_the_total_covers_it() {
        let plan = plan_deduction(&rows(&[2, 2, 2]), 5).expect("plan");
        assert_eq!(plan.iter().map(|p| p.qty).sum::<i64>(), 5);
        assert_eq!(plan.len(), 3);
        assert_eq!(plan_deduction(&rows(&[2, 2, 2]), 7), None);
        assert_eq!(plan_deduction(&rows(&[0, 0]), 1), None);
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_sku("phone-1.black_2").is_ok());
        assert!(validate_sku("").is_err());
        assert!(validate_sku("a{b}").is_err());
        assert!(validate_sku(&"x".repeat(65)).is_err());
        assert!(validate_order_id("0190f5a2-7b7c-7d41:2").is_ok());
        assert!(validate_order_id("a b").is_err());
    }
}
