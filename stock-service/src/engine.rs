//! Deductions and releases: validate, answer from the sold-out flag or the ledger when that
//! settles it, hand the rest to the strategy's path (`strategy/`, one module per strategy
//! behind one trait), and, for the lock strategies, pick segments (`home.rs`), run the
//! read-modify-write under the strategy's guard (`section.rs`, `locking.rs`) and record the
//! movement, all in one transaction. Group deduction is in `group/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rlock::{LockClient, RedLock};
use serde::Serialize;
use sqlx::PgPool;
use tracing::{Instrument as _, Span};

use crate::cache::StockCache;
use crate::config::StockConfig;
use crate::group::Groups;
use crate::locking::Tokens;
use crate::metrics::StockMetrics;
use crate::oversold::OversoldWatch;
use crate::shape::ShapeCache;
use crate::store::{self, ItemStock, Movement, MovementKind, Part, SegmentRow};
use crate::strategy::Strategy;
use crate::strategy::concurrency::{Applied, Concurrency, Deduction};
use crate::strategy::redis_atomic::reconcile::Starved;

/// Largest quantity one deduction may ask for.
pub const MAX_QTY: i64 = 10_000;
/// Largest item a reset may create.
pub const MAX_TOTAL: i64 = 1_000_000_000;
/// Most segments an item may have.
pub const MAX_SEGMENTS: i32 = 1024;

pub use crate::error::StockError;

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

/// The change a read-modify-write makes.
enum Op {
    Deduct(i64),
    Release(Vec<Part>),
    Restock(Vec<Part>),
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
    /// The configured strategy's concurrency control (`strategy/`).
    pub(crate) concurrency: Arc<dyn Concurrency>,
    /// Instruments.
    pub metrics: StockMetrics,
    /// Items whose oversold gauge needs a fresh look.
    pub oversold: OversoldWatch,
    /// redis-atomic: items whose counters ran dry while the database had units.
    pub(crate) starved: Starved,
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
        self.concurrency.strategy()
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
        let deduction = Deduction {
            sku,
            order_id,
            qty,
            segments: shape.segments,
            generation: shape.generation,
        };
        self.concurrency.deduct(self, deduction).await
    }

    /// The lock strategies' deduction: one segment that covers the quantity (skipping those
    /// the cache says cannot cover it), else several under one MultiLock.
    pub(crate) async fn deduct_locked(&self, d: Deduction<'_>) -> Result<StockChange, StockError> {
        let Deduction {
            sku,
            order_id,
            qty,
            segments,
            generation,
        } = d;
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
                .deduct_segment(sku, generation, segment, order_id, qty)
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
        self.deduct_across(sku, generation, order_id, qty).await
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

    /// Whether single-segment deductions are combined into groups.
    pub(crate) fn combining(&self) -> bool {
        self.config.batch_max > 1 && self.concurrency.combines()
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
        let movement = match self
            .concurrency
            .release(self, &deduction, generation)
            .await?
        {
            Applied::Now(movement) => movement,
            Applied::Already(movement) => return Ok(StockChange::from_movement(movement, true)),
        };
        self.oversold.touch(sku);
        self.cache.restocked(sku).await?;
        self.metrics.outcome(self.strategy(), "released");
        Ok(StockChange::from_movement(movement, false))
    }

    /// Add `units` to `sku` without a reset: spread over its segments (evenly, the remainder to
    /// the first ones), its generation and ledger kept, its sold-out flags cleared everywhere.
    /// Idempotent per `restock_id`: a repeat returns the first result and adds nothing.
    pub async fn restock(
        &self,
        sku: &str,
        restock_id: &str,
        units: i64,
    ) -> Result<StockChange, StockError> {
        validate_sku(sku)?;
        if !valid_id(restock_id, 128, b"-_.:") {
            return Err(StockError::Invalid(
                "restock_id must be 1-128 of letters, digits, '-', '_', '.', ':'".into(),
            ));
        }
        if !(1..=MAX_TOTAL).contains(&units) {
            return Err(StockError::Invalid(format!(
                "units must be between 1 and {MAX_TOTAL}"
            )));
        }
        let mut conn = self.pool.acquire().await?;
        if let Some(done) = store::movement(&mut conn, restock_id, MovementKind::Restock).await? {
            return self.replay_restock(sku, done);
        }
        let (generation, segments) = store::item_shape(&mut conn, sku)
            .await?
            .ok_or_else(|| StockError::NotFound(sku.to_owned()))?;
        drop(conn);
        let parts = spread(units, segments);
        let movement = match self
            .concurrency
            .restock(self, sku, restock_id, &parts, generation)
            .await?
        {
            Applied::Now(movement) => movement,
            Applied::Already(movement) => return self.replay_restock(sku, movement),
        };
        self.oversold.touch(sku);
        self.cache.restocked(sku).await?;
        self.metrics.outcome(self.strategy(), "restocked");
        Ok(StockChange::from_movement(movement, false))
    }

    /// A restock id used before: its first result, if it was for this item.
    fn replay_restock(&self, sku: &str, done: Movement) -> Result<StockChange, StockError> {
        if done.sku != sku {
            return Err(StockError::RestockIdReused {
                restock_id: done.order_id,
                other: done.sku,
            });
        }
        Ok(StockChange::from_movement(done, true))
    }

    /// The lock strategies' restock: the parts added under the locks of their segments, in
    /// one read-modify-write.
    pub(crate) async fn restock_locked(
        &self,
        sku: &str,
        restock_id: &str,
        parts: &[Part],
        generation: i64,
    ) -> Result<Applied, StockError> {
        let segments: Vec<i32> = parts.iter().map(|p| p.segment).collect();
        let op = Op::Restock(parts.to_vec());
        match self
            .attempt_one(&op, sku, generation, &segments, restock_id)
            .await?
        {
            Rmw::Done { movement, after } => {
                self.written(sku, &after).await;
                Ok(Applied::Now(movement))
            }
            Rmw::Duplicate => {
                let mut conn = self.pool.acquire().await?;
                store::movement(&mut conn, restock_id, MovementKind::Restock)
                    .await?
                    .map(Applied::Already)
                    .ok_or(StockError::Conflict)
            }
            Rmw::Insufficient(_) | Rmw::Rejected { .. } => Err(StockError::Conflict),
        }
    }

    /// The lock strategies' release: the deduction's parts added back under the locks of its
    /// segments, in one read-modify-write.
    pub(crate) async fn release_locked(
        &self,
        deduction: &Movement,
        generation: i64,
    ) -> Result<Applied, StockError> {
        let sku = deduction.sku.as_str();
        let order_id = deduction.order_id.as_str();
        let segments: Vec<i32> = deduction.parts.iter().map(|p| p.segment).collect();
        let op = Op::Release(deduction.parts.clone());
        match self
            .attempt_one(&op, sku, generation, &segments, order_id)
            .await?
        {
            Rmw::Done { movement, after } => {
                self.cache.set_availability(sku, &after).await;
                self.metrics.segment_levels(sku, &after);
                Ok(Applied::Now(movement))
            }
            Rmw::Duplicate => {
                let mut conn = self.pool.acquire().await?;
                store::movement(&mut conn, order_id, MovementKind::Release)
                    .await?
                    .map(Applied::Already)
                    .ok_or(StockError::Conflict)
            }
            Rmw::Insufficient(_) | Rmw::Rejected { .. } => Err(StockError::Conflict),
        }
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
            Op::Restock(_) => "restock",
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
            Op::Restock(parts) => (MovementKind::Restock, parts.clone(), 1),
        };
        self.rmw_pause().await;
        let mut after = Vec::with_capacity(parts.len());
        for part in &parts {
            let Some(row) = rows.iter().find(|r| r.segment == part.segment) else {
                return Err(StockError::Conflict);
            };
            let token = tokens.of(row.segment);
            let guard = self
                .concurrency
                .write_guard(row, token, tokens.continuing())?;
            let value = row.available + sign * part.qty;
            if !store::write_segment(&mut tx, sku, row.segment, value, guard).await? {
                tx.rollback().await?;
                return Ok(Rmw::Rejected { row: *row, token });
            }
            after.push((row.segment, value));
        }
        if kind == MovementKind::Restock
            && !store::record_restock(&mut tx, sku, generation, &parts).await?
        {
            tx.rollback().await?;
            return Err(StockError::ResetSince(sku.to_owned()));
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

/// `units` spread over `segments` segments: evenly, the remainder one each to the first ones;
/// segments that get nothing are left out.
fn spread(units: i64, segments: i32) -> Vec<Part> {
    let n = i64::from(segments.max(1));
    (0..segments.max(1))
        .map(|segment| Part {
            segment,
            qty: units / n + i64::from(i64::from(segment) < units % n),
        })
        .filter(|p| p.qty > 0)
        .collect()
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
