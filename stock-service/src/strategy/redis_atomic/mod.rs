//! `redis-atomic`: no lock. A Lua script takes the units from per-segment counters in Redis
//! (the gate), then a guarded SQL decrement and the ledger row are written (the guard); whatever
//! the database refuses goes back to Redis. The counters' scripts are in `cache.rs`; the grouped
//! database write is in `group.rs`. docs/stock-service.md#redis-atomic says why its safety rests
//! on the SQL guard.

mod counters;
mod group;
pub mod reconcile;

use futures_util::future::BoxFuture;
use tracing::Instrument as _;

use crate::engine::{Rmw, Stock, StockChange, StockError, commit_movement, db_span};
use crate::group::Want;
use crate::locking::Kept;
use crate::store::{self, Movement, MovementKind, Part};
use crate::strategy::Strategy;
use crate::strategy::concurrency::{Applied, Concurrency, Deduction};

/// Rounds of redis-atomic's take-then-write before answering 503.
const ATOMIC_ROUNDS: usize = 5;

/// Counters in Redis as the gate, a guarded decrement in PostgreSQL as the guard; no lock.
#[derive(Debug)]
pub(crate) struct RedisAtomic;

impl Concurrency for RedisAtomic {
    fn strategy(&self) -> Strategy {
        Strategy::RedisAtomic
    }

    fn deduct<'a>(
        &'a self,
        stock: &'a Stock,
        d: Deduction<'a>,
    ) -> BoxFuture<'a, Result<StockChange, StockError>> {
        Box::pin(stock.deduct_atomic(d.sku, d.order_id, d.qty, d.generation, d.segments))
    }

    fn release<'a>(
        &'a self,
        stock: &'a Stock,
        deduction: &'a Movement,
        _generation: i64,
    ) -> BoxFuture<'a, Result<Applied, StockError>> {
        Box::pin(async move {
            stock
                .release_atomic(&deduction.sku, deduction)
                .instrument(db_span("release", &deduction.sku))
                .await
        })
    }

    fn restock<'a>(
        &'a self,
        stock: &'a Stock,
        sku: &'a str,
        restock_id: &'a str,
        parts: &'a [Part],
        generation: i64,
    ) -> BoxFuture<'a, Result<Applied, StockError>> {
        Box::pin(async move {
            stock
                .restock_atomic(sku, restock_id, parts, generation)
                .instrument(db_span("restock", sku))
                .await
        })
    }

    /// The group is the database write of units Redis handed out (`group.rs`).
    fn apply_group<'a>(
        &'a self,
        stock: &'a Stock,
        sku: &'a str,
        segment: i32,
        wants: &'a [Want],
        _kept: &'a mut Option<Kept>,
    ) -> BoxFuture<'a, Vec<Result<Rmw, StockError>>> {
        Box::pin(stock.write_group(sku, segment, wants))
    }
}

impl Stock {
    /// redis-atomic: a Lua script takes the units from Redis counters (the gate), then a
    /// guarded SQL decrement and the movement are written; anything the database refuses is
    /// given back to Redis.
    async fn deduct_atomic(
        &self,
        sku: &str,
        order_id: &str,
        qty: i64,
        generation: Option<i64>,
        segments: i32,
    ) -> Result<StockChange, StockError> {
        // A few rounds: a round ends early when the database refuses units Redis handed out
        // (Redis over-counted, e.g. after re-seeding while writes were in flight); the
        // counters are corrected from the database and the next round asks Redis again.
        for _ in 0..ATOMIC_ROUNDS {
            let start = self.first_segment(segments);
            let parts = match self.cache.take(sku, qty, start, segments).await? {
                Some(p) => p,
                None => {
                    // Redis lost the counters: re-seed from the database and try again.
                    let values = self.segment_values(sku).await?;
                    self.cache.seed_counters(sku, &values).await?;
                    self.metrics.counters_reseeded();
                    self.cache
                        .take(sku, qty, start, segments)
                        .await?
                        .unwrap_or_default()
                }
            };
            if parts.is_empty() {
                // Redis, the gate, says no. The database tells sold out from not enough;
                // units Redis handed out that the database has not recorded yet are in
                // flight (they commit, or come back to Redis if their write fails). A
                // combined request has not looked at the ledger yet: a recorded order replays.
                if generation.is_none()
                    && let Some(m) = self.recorded(order_id).await?
                {
                    return self.replay(sku, m);
                }
                let epoch = self.cache.epoch(sku).await?;
                let total: i64 = self.segment_values(sku).await?.iter().map(|(_, a)| a).sum();
                if total < qty {
                    return Err(self.not_enough(sku, &epoch, total, qty).await);
                }
                // The database has the units but Redis handed them all out: in flight, or
                // taken by a request that died before writing (see `reconcile.rs`).
                self.starved.note(sku);
                self.metrics.outcome(self.strategy(), "sold_out");
                return Err(StockError::SoldOut(sku.to_owned()));
            }
            self.rmw_pause().await;
            let outcome = self.write_taken(sku, order_id, generation, &parts).await;
            if let Ok(Rmw::Done { movement, after }) = outcome {
                return Ok(self.done(sku, movement, &after).await);
            }
            // The units were not written: give them back to Redis.
            if let Err(err) = self.cache.give_back(sku, &parts).await {
                tracing::warn!(%sku, error = %err, "could not give units back to Redis (drift)");
            }
            match outcome? {
                Rmw::Duplicate => return self.replay_after_race(sku, order_id).await,
                Rmw::Insufficient(seen) => {
                    // The database had less than Redis handed out: correct those counters.
                    self.cache.correct_counters(sku, &seen).await?;
                    self.metrics.atomic_drift();
                }
                Rmw::Done { .. } | Rmw::Rejected { .. } => return Err(StockError::Conflict),
            }
        }
        Err(StockError::Conflict)
    }

    /// Every segment's availability, from the database.
    async fn segment_values(&self, sku: &str) -> Result<Vec<(i32, i64)>, StockError> {
        let mut conn = self.pool.acquire().await?;
        let rows = store::read_segments(&mut conn, sku, &[], false).await?;
        Ok(rows.iter().map(|r| (r.segment, r.available)).collect())
    }

    /// redis-atomic: write the units Redis handed out. From one segment and combining: with
    /// the concurrent writes of that segment in one transaction (`group.rs` here).
    /// Otherwise alone.
    async fn write_taken(
        &self,
        sku: &str,
        order_id: &str,
        generation: Option<i64>,
        parts: &[(i32, i64)],
    ) -> Result<Rmw, StockError> {
        if let (None, [(segment, qty)]) = (generation, parts) {
            return self.deduct_in_group(sku, *segment, order_id, *qty).await;
        }
        let generation = self.generation(sku, generation).await?;
        self.write_atomic(sku, order_id, generation, parts)
            .instrument(db_span("deduct", sku))
            .await
    }

    pub(crate) async fn write_atomic(
        &self,
        sku: &str,
        order_id: &str,
        generation: i64,
        parts: &[(i32, i64)],
    ) -> Result<Rmw, StockError> {
        let mut tx = self.pool.begin().await?;
        let mut after = Vec::with_capacity(parts.len());
        for &(segment, qty) in parts {
            match store::add_to_segment(&mut tx, sku, segment, -qty).await? {
                Some(value) => after.push((segment, value)),
                None => {
                    tx.rollback().await?;
                    let mut conn = self.pool.acquire().await?;
                    let rows = store::read_segments(&mut conn, sku, &[segment], false).await?;
                    return Ok(Rmw::Insufficient(
                        rows.iter().map(|r| (r.segment, r.available)).collect(),
                    ));
                }
            }
        }
        let movement = Movement {
            order_id: order_id.to_owned(),
            sku: sku.to_owned(),
            qty: parts.iter().map(|p| p.1).sum(),
            parts: parts
                .iter()
                .map(|&(segment, qty)| Part { segment, qty })
                .collect(),
            strategy: Strategy::RedisAtomic.as_str().to_owned(),
            generation,
        };
        if !commit_movement(tx, MovementKind::Deduct, &movement, Strategy::RedisAtomic).await? {
            return Ok(Rmw::Duplicate);
        }
        Ok(Rmw::Done { movement, after })
    }

    /// Add the units in PostgreSQL (unconditional increments, the segments' `initial` and the
    /// item's `total`, the restock row, one transaction), then to the Redis counters.
    async fn restock_atomic(
        &self,
        sku: &str,
        restock_id: &str,
        parts: &[Part],
        generation: i64,
    ) -> Result<Applied, StockError> {
        let mut tx = self.pool.begin().await?;
        let mut after = Vec::with_capacity(parts.len());
        for p in parts {
            let value = store::add_to_segment(&mut tx, sku, p.segment, p.qty)
                .await?
                .ok_or(StockError::Conflict)?;
            after.push((p.segment, value));
        }
        if !store::record_restock(&mut tx, sku, generation, parts).await? {
            tx.rollback().await?;
            return Err(StockError::ResetSince(sku.to_owned()));
        }
        let movement = Movement {
            order_id: restock_id.to_owned(),
            sku: sku.to_owned(),
            qty: parts.iter().map(|p| p.qty).sum(),
            parts: parts.to_vec(),
            strategy: Strategy::RedisAtomic.as_str().to_owned(),
            generation,
        };
        if !commit_movement(tx, MovementKind::Restock, &movement, Strategy::RedisAtomic).await? {
            let mut conn = self.pool.acquire().await?;
            return store::movement(&mut conn, restock_id, MovementKind::Restock)
                .await?
                .map(Applied::Already)
                .ok_or(StockError::Conflict);
        }
        let added: Vec<(i32, i64)> = parts.iter().map(|p| (p.segment, p.qty)).collect();
        self.cache.give_back(sku, &added).await?;
        self.written(sku, &after).await;
        Ok(Applied::Now(movement))
    }

    /// Put the units back in PostgreSQL (an unconditional increment and the release row, one
    /// transaction), then in Redis.
    async fn release_atomic(&self, sku: &str, deduction: &Movement) -> Result<Applied, StockError> {
        let mut tx = self.pool.begin().await?;
        let mut after = Vec::new();
        for p in &deduction.parts {
            let value = store::add_to_segment(&mut tx, sku, p.segment, p.qty)
                .await?
                .ok_or(StockError::Conflict)?;
            after.push((p.segment, value));
        }
        let movement = Movement {
            strategy: Strategy::RedisAtomic.as_str().to_owned(),
            ..deduction.clone()
        };
        if !commit_movement(tx, MovementKind::Release, &movement, Strategy::RedisAtomic).await? {
            let mut conn = self.pool.acquire().await?;
            return store::movement(&mut conn, &deduction.order_id, MovementKind::Release)
                .await?
                .map(Applied::Already)
                .ok_or(StockError::Conflict);
        }
        let parts: Vec<(i32, i64)> = deduction.parts.iter().map(|p| (p.segment, p.qty)).collect();
        self.cache.give_back(sku, &parts).await?;
        self.cache.set_availability(sku, &after).await;
        self.metrics.segment_levels(sku, &after);
        Ok(Applied::Now(movement))
    }
}
