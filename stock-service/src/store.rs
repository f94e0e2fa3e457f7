//! PostgreSQL access: items, segments, the movement ledger, and the audit. The database is the
//! source of truth; every write a strategy makes goes through here.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Row};

use crate::strategy::Strategy;

/// Embedded migrations (`stock-service/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// One segment as read inside a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRow {
    /// Segment number.
    pub segment: i32,
    /// Units left.
    pub available: i64,
    /// Fencing token of the last fenced write.
    pub last_fence: i64,
    /// Write counter (optimistic strategy).
    pub version: i64,
}

/// How much of an order came from (or went back to) one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Part {
    /// Segment number.
    pub segment: i32,
    /// Units.
    pub qty: i64,
}

/// Kind of a ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovementKind {
    /// Stock taken for an order.
    Deduct,
    /// Stock put back for an order.
    Release,
    /// Units added to the item by an admin (keyed by the restock id).
    Restock,
}

impl MovementKind {
    fn as_str(self) -> &'static str {
        match self {
            MovementKind::Deduct => "deduct",
            MovementKind::Release => "release",
            MovementKind::Restock => "restock",
        }
    }
}

/// A ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Movement {
    /// The order.
    pub order_id: String,
    /// The item.
    pub sku: String,
    /// Units in total.
    pub qty: i64,
    /// Units per segment.
    pub parts: Vec<Part>,
    /// Strategy of the instance that wrote it.
    pub strategy: String,
    /// Item generation it applied to.
    pub generation: i64,
}

/// An item with its segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemStock {
    /// The item.
    pub sku: String,
    /// Units the item was (re)stocked with.
    pub total: i64,
    /// Units left, over all segments.
    pub available: i64,
    /// Increases on every reset.
    pub generation: i64,
    /// Segments in order.
    pub segments: Vec<SegmentStock>,
}

/// One segment's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SegmentStock {
    /// Segment number.
    pub segment: i32,
    /// Units the segment started with.
    pub initial: i64,
    /// Units left.
    pub available: i64,
    /// Fencing token of the last fenced write.
    pub last_fence: i64,
}

/// Split `total` evenly over `segments` (the first `total % segments` get one more).
pub fn even_split(total: i64, segments: i32) -> Vec<i64> {
    let n = i64::from(segments.max(1));
    (0..n)
        .map(|i| total / n + i64::from(i < total % n))
        .collect()
}

/// Create or reset an item: new generation, segments refilled evenly.
pub async fn reset_item(
    pool: &PgPool,
    sku: &str,
    total: i64,
    segments: i32,
) -> sqlx::Result<ItemStock> {
    let mut tx = pool.begin().await?;
    let generation: i64 = sqlx::query_scalar(
        "INSERT INTO items (sku, total, segments) VALUES ($1, $2, $3)
         ON CONFLICT (sku) DO UPDATE SET total = $2, segments = $3,
             generation = items.generation + 1, updated_at = now()
         RETURNING generation",
    )
    .bind(sku)
    .bind(total)
    .bind(segments)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM stock_segments WHERE sku = $1")
        .bind(sku)
        .execute(&mut *tx)
        .await?;
    let split = even_split(total, segments);
    let numbers: Vec<i32> = (0..segments).collect();
    sqlx::query(
        "INSERT INTO stock_segments (sku, segment, initial, available)
         SELECT $1, s, n, n FROM UNNEST($2::int[], $3::bigint[]) AS t(s, n)",
    )
    .bind(sku)
    .bind(&numbers)
    .bind(&split)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ItemStock {
        sku: sku.to_owned(),
        total,
        available: total,
        generation,
        segments: numbers
            .iter()
            .zip(&split)
            .map(|(&segment, &n)| SegmentStock {
                segment,
                initial: n,
                available: n,
                last_fence: 0,
            })
            .collect(),
    })
}

/// The item and its segments, or `None` for an unknown SKU.
pub async fn item(pool: &PgPool, sku: &str) -> sqlx::Result<Option<ItemStock>> {
    let Some(head) = sqlx::query("SELECT total, generation FROM items WHERE sku = $1")
        .bind(sku)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let segments: Vec<SegmentStock> = sqlx::query(
        "SELECT segment, initial, available, last_fence FROM stock_segments
         WHERE sku = $1 ORDER BY segment",
    )
    .bind(sku)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| SegmentStock {
        segment: r.get(0),
        initial: r.get(1),
        available: r.get(2),
        last_fence: r.get(3),
    })
    .collect();
    Ok(Some(ItemStock {
        sku: sku.to_owned(),
        total: head.get(0),
        available: segments.iter().map(|s| s.available).sum(),
        generation: head.get(1),
        segments,
    }))
}

/// One segment and its item's generation, read at the start of a group's transaction (one
/// round trip). `for_update` locks the segment row (db-pessimistic). `None` when the item or
/// the segment is gone (reset to fewer segments meanwhile).
pub async fn group_segment(
    conn: &mut PgConnection,
    sku: &str,
    segment: i32,
    for_update: bool,
) -> sqlx::Result<Option<(SegmentRow, i64)>> {
    let sql = if for_update {
        "SELECT s.segment, s.available, s.last_fence, s.version, i.generation
         FROM stock_segments s JOIN items i ON i.sku = s.sku
         WHERE s.sku = $1 AND s.segment = $2 FOR UPDATE OF s"
    } else {
        "SELECT s.segment, s.available, s.last_fence, s.version, i.generation
         FROM stock_segments s JOIN items i ON i.sku = s.sku
         WHERE s.sku = $1 AND s.segment = $2"
    };
    let row: Option<(i32, i64, i64, i64, i64)> = sqlx::query_as(sql)
        .bind(sku)
        .bind(segment)
        .fetch_optional(conn)
        .await?;
    Ok(
        row.map(|(segment, available, last_fence, version, generation)| {
            (
                SegmentRow {
                    segment,
                    available,
                    last_fence,
                    version,
                },
                generation,
            )
        }),
    )
}

/// A restock's bookkeeping beside the segment writes: the segment's `initial` (units it was
/// given) and the item's `total` grow by what was added, in the restocking transaction. False
/// when the item is no longer at `generation` (reset meanwhile).
pub async fn record_restock(
    conn: &mut PgConnection,
    sku: &str,
    generation: i64,
    parts: &[Part],
) -> sqlx::Result<bool> {
    let segments: Vec<i32> = parts.iter().map(|p| p.segment).collect();
    let units: Vec<i64> = parts.iter().map(|p| p.qty).collect();
    let total: i64 = units.iter().sum();
    let item = sqlx::query(
        "UPDATE items SET total = total + $3, updated_at = now()
         WHERE sku = $1 AND generation = $2",
    )
    .bind(sku)
    .bind(generation)
    .bind(total)
    .execute(&mut *conn)
    .await?;
    if item.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE stock_segments s SET initial = s.initial + p.qty
         FROM UNNEST($2::int[], $3::bigint[]) AS p(segment, qty)
         WHERE s.sku = $1 AND s.segment = p.segment",
    )
    .bind(sku)
    .bind(&segments)
    .bind(&units)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Generation and segment count of an item.
pub async fn item_shape(conn: &mut PgConnection, sku: &str) -> sqlx::Result<Option<(i64, i32)>> {
    sqlx::query_as("SELECT generation, segments FROM items WHERE sku = $1")
        .bind(sku)
        .fetch_optional(conn)
        .await
}

/// What a deduction needs before it starts, in one round trip: the item's generation and
/// segment count, and the deduction `order_id` already has (of any item). `None` for an
/// unknown item.
pub async fn deduction_context(
    pool: &PgPool,
    sku: &str,
    order_id: &str,
) -> sqlx::Result<Option<(i64, i32, Option<Movement>)>> {
    let row = sqlx::query(
        "SELECT i.generation, i.segments, m.sku, m.qty, m.parts, m.strategy, m.generation
         FROM items i
         LEFT JOIN stock_movements m ON m.order_id = $2 AND m.kind = 'deduct'
         WHERE i.sku = $1",
    )
    .bind(sku)
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let movement = match r.get::<Option<String>, _>(2) {
        None => None,
        Some(moved_sku) => Some(Movement {
            order_id: order_id.to_owned(),
            sku: moved_sku,
            qty: r.get(3),
            parts: decode_parts(r.get(4))?,
            strategy: r.get(5),
            generation: r.get(6),
        }),
    };
    Ok(Some((r.get(0), r.get(1), movement)))
}

/// Read segments (all of them when `only` is empty) in segment order, optionally locking the
/// rows (`FOR UPDATE`, in that same order, so two lockers cannot deadlock).
pub async fn read_segments(
    conn: &mut PgConnection,
    sku: &str,
    only: &[i32],
    for_update: bool,
) -> sqlx::Result<Vec<SegmentRow>> {
    let sql = if for_update {
        "SELECT segment, available, last_fence, version FROM stock_segments
         WHERE sku = $1 AND (cardinality($2::int[]) = 0 OR segment = ANY($2))
         ORDER BY segment FOR UPDATE"
    } else {
        "SELECT segment, available, last_fence, version FROM stock_segments
         WHERE sku = $1 AND (cardinality($2::int[]) = 0 OR segment = ANY($2))
         ORDER BY segment"
    };
    Ok(sqlx::query(sql)
        .bind(sku)
        .bind(only)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|r| SegmentRow {
            segment: r.get(0),
            available: r.get(1),
            last_fence: r.get(2),
            version: r.get(3),
        })
        .collect())
}

/// How a segment write proves it is still entitled to write.
#[derive(Debug, Clone, Copy)]
pub enum WriteGuard {
    /// No check (naive; rows locked with `FOR UPDATE`).
    None,
    /// The version read must still be there (optimistic).
    Version(i64),
    /// Fenced: the row must be exactly as read (`seen` fence and `version`: nobody wrote
    /// since), and `token` must be larger than its fence — or, for a lock tenure that wrote
    /// already (`continuing`: a group worker keeping its lock across groups), equal to it. A
    /// holder's first write therefore still needs a token above every fence the row has seen,
    /// so a holder whose lock expired can never write after a newer one did. The version is
    /// needed because a continuing write leaves the fence as it was: a check of the fence
    /// alone would let a newer holder's write from an older read overwrite it.
    Fence {
        /// `last_fence` as read.
        seen: i64,
        /// `version` as read.
        version: i64,
        /// This holder's token.
        token: i64,
        /// Whether this tenure wrote with `token` before.
        continuing: bool,
    },
}

/// Write a segment's new availability under `guard`. False when the guard refused it.
pub async fn write_segment(
    conn: &mut PgConnection,
    sku: &str,
    segment: i32,
    available: i64,
    guard: WriteGuard,
) -> sqlx::Result<bool> {
    let done =
        match guard {
            WriteGuard::None => {
                sqlx::query(
                    "UPDATE stock_segments SET available = $3, version = version + 1
                 WHERE sku = $1 AND segment = $2",
                )
                .bind(sku)
                .bind(segment)
                .bind(available)
                .execute(conn)
                .await?
            }
            WriteGuard::Version(seen) => {
                sqlx::query(
                    "UPDATE stock_segments SET available = $3, version = version + 1
                 WHERE sku = $1 AND segment = $2 AND version = $4",
                )
                .bind(sku)
                .bind(segment)
                .bind(available)
                .bind(seen)
                .execute(conn)
                .await?
            }
            WriteGuard::Fence {
                seen,
                version,
                token,
                continuing,
            } => sqlx::query(
                "UPDATE stock_segments SET available = $3, last_fence = $5, version = version + 1
                 WHERE sku = $1 AND segment = $2 AND last_fence = $4 AND version = $6
                   AND (last_fence < $5 OR ($7 AND last_fence = $5))",
            )
            .bind(sku)
            .bind(segment)
            .bind(available)
            .bind(seen)
            .bind(token)
            .bind(version)
            .bind(continuing)
            .execute(conn)
            .await?,
        };
    Ok(done.rows_affected() == 1)
}

/// Atomic relative change (`available + delta`, never below zero), for the redis-atomic
/// strategy whose gate is in Redis. The new availability, or `None` when the row did not have
/// enough.
pub async fn add_to_segment(
    conn: &mut PgConnection,
    sku: &str,
    segment: i32,
    delta: i64,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "UPDATE stock_segments SET available = available + $3, version = version + 1
         WHERE sku = $1 AND segment = $2 AND available + $3 >= 0
         RETURNING available",
    )
    .bind(sku)
    .bind(segment)
    .bind(delta)
    .fetch_optional(conn)
    .await
}

/// Record a movement. False when the order already has one of this kind (a concurrent
/// duplicate won): the caller must roll back and replay that one.
pub async fn insert_movement(
    conn: &mut PgConnection,
    kind: MovementKind,
    m: &Movement,
    strategy: Strategy,
) -> sqlx::Result<bool> {
    let parts = serde_json::to_value(&m.parts).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let done = sqlx::query(
        "INSERT INTO stock_movements (order_id, kind, sku, generation, qty, parts, strategy)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(&m.order_id)
    .bind(kind.as_str())
    .bind(&m.sku)
    .bind(m.generation)
    .bind(m.qty)
    .bind(parts)
    .bind(strategy.as_str())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Record several movements of one kind in one statement (a group's ledger rows). Returns
/// which were recorded: an order that already has a movement of this kind is skipped (its
/// request is a replay). Rows go in in order-id order, so that two groups inserting the same
/// ids in a different order wait for each other instead of deadlocking.
pub async fn insert_movements(
    conn: &mut PgConnection,
    kind: MovementKind,
    movements: &[Movement],
    strategy: Strategy,
) -> sqlx::Result<HashSet<String>> {
    let mut order_ids = Vec::with_capacity(movements.len());
    let mut skus = Vec::with_capacity(movements.len());
    let mut generations = Vec::with_capacity(movements.len());
    let mut qtys = Vec::with_capacity(movements.len());
    let mut parts = Vec::with_capacity(movements.len());
    for m in movements {
        order_ids.push(m.order_id.as_str());
        skus.push(m.sku.as_str());
        generations.push(m.generation);
        qtys.push(m.qty);
        parts.push(serde_json::to_string(&m.parts).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
    }
    let recorded: Vec<String> = sqlx::query_scalar(
        "INSERT INTO stock_movements (order_id, kind, sku, generation, qty, parts, strategy)
         SELECT o, $2, s, g, q, p::jsonb, $7
         FROM UNNEST($1::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[])
              AS t(o, s, g, q, p)
         ORDER BY o
         ON CONFLICT DO NOTHING
         RETURNING order_id",
    )
    .bind(&order_ids)
    .bind(kind.as_str())
    .bind(&skus)
    .bind(&generations)
    .bind(&qtys)
    .bind(&parts)
    .bind(strategy.as_str())
    .fetch_all(conn)
    .await?;
    Ok(recorded.into_iter().collect())
}

/// The movement of `kind` recorded for `order_id`, if any.
pub async fn movement(
    conn: &mut PgConnection,
    order_id: &str,
    kind: MovementKind,
) -> sqlx::Result<Option<Movement>> {
    let row = sqlx::query(
        "SELECT sku, qty, parts, strategy, generation FROM stock_movements
         WHERE order_id = $1 AND kind = $2",
    )
    .bind(order_id)
    .bind(kind.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(Movement {
            order_id: order_id.to_owned(),
            sku: r.get(0),
            qty: r.get(1),
            parts: decode_parts(r.get(2))?,
            strategy: r.get(3),
            generation: r.get(4),
        })
    })
    .transpose()
}

/// A movement's `parts` column.
fn decode_parts(parts: serde_json::Value) -> sqlx::Result<Vec<Part>> {
    serde_json::from_value(parts).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Largest fence any segment of the item carries (to re-seed fencing counters).
pub async fn max_fence(
    conn: &mut PgConnection,
    sku: &str,
    segment: Option<i32>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(MAX(last_fence), 0) FROM stock_segments
         WHERE sku = $1 AND ($2::int IS NULL OR segment = $2)",
    )
    .bind(sku)
    .bind(segment)
    .fetch_one(conn)
    .await
}

/// Units sold beyond the item's stock in its current generation: ledger deducted − released −
/// initial, at least 0 (`None` for an unknown item). One indexed aggregate; the oversold
/// gauge's background check runs it for recently changed items.
pub async fn oversold(pool: &PgPool, sku: &str) -> sqlx::Result<Option<i64>> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT (COALESCE((SELECT SUM(CASE WHEN m.kind = 'deduct' THEN m.qty ELSE -m.qty END)
                           FROM stock_movements m
                           WHERE m.sku = i.sku AND m.generation = i.generation), 0)
                 - COALESCE((SELECT SUM(s.initial) FROM stock_segments s WHERE s.sku = i.sku), 0)
                )::bigint
         FROM items i WHERE i.sku = $1",
    )
    .bind(sku)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(units,)| units.max(0)))
}

/// Result of an audit: do the books balance?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Audit {
    /// The item.
    pub sku: String,
    /// Generation audited.
    pub generation: i64,
    /// True when every check passed.
    pub ok: bool,
    /// Units the item was stocked with.
    pub initial: i64,
    /// Units left now.
    pub available: i64,
    /// Units deducted (ledger).
    pub deducted: i64,
    /// Units released (ledger).
    pub released: i64,
    /// `deducted - released - (initial - available)`: units sold that the segments do not
    /// account for (> 0 means oversold).
    pub oversold: i64,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

/// Check `initial = available + deducted - released`, overall and per segment, and that no
/// segment is negative.
pub async fn audit(pool: &PgPool, sku: &str) -> sqlx::Result<Option<Audit>> {
    let mut tx = pool.begin().await?;
    // One consistent snapshot of segments and ledger.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let Some((generation, _)) = item_shape(&mut tx, sku).await? else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "WITH moved AS (
             SELECT (p->>'segment')::int AS segment,
                    SUM(CASE WHEN kind = 'deduct' THEN (p->>'qty')::bigint ELSE 0 END) AS deducted,
                    SUM(CASE WHEN kind = 'release' THEN (p->>'qty')::bigint ELSE 0 END) AS released
             FROM stock_movements, jsonb_array_elements(parts) AS p
             WHERE sku = $1 AND generation = $2
             GROUP BY 1)
         SELECT s.segment, s.initial, s.available,
                COALESCE(m.deducted, 0)::bigint, COALESCE(m.released, 0)::bigint
         FROM stock_segments s LEFT JOIN moved m ON m.segment = s.segment
         WHERE s.sku = $1 ORDER BY s.segment",
    )
    .bind(sku)
    .bind(generation)
    .fetch_all(&mut *tx)
    .await?;
    let ledger_qty: Option<(i64, i64)> = sqlx::query_as(
        "SELECT COALESCE(SUM(qty) FILTER (WHERE kind = 'deduct'), 0)::bigint,
                COALESCE(SUM(qty) FILTER (WHERE kind = 'release'), 0)::bigint
         FROM stock_movements WHERE sku = $1 AND generation = $2",
    )
    .bind(sku)
    .bind(generation)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;

    let segments: Vec<SegmentBooks> = rows
        .iter()
        .map(|r| SegmentBooks {
            segment: r.get(0),
            initial: r.get(1),
            available: r.get(2),
            deducted: r.get(3),
            released: r.get(4),
        })
        .collect();
    Ok(Some(balance(
        sku,
        generation,
        &segments,
        ledger_qty.unwrap_or((0, 0)),
    )))
}

/// One segment's books as the audit reads them: its numbers and what the ledger's parts say
/// went out of it and came back.
#[derive(Debug, Clone, Copy)]
struct SegmentBooks {
    segment: i32,
    initial: i64,
    available: i64,
    deducted: i64,
    released: i64,
}

/// Check the books: per segment and overall `initial = available + deducted - released`, no
/// segment negative, and the ledger's totals (`ledger`: deducted, released) equal to its parts.
fn balance(sku: &str, generation: i64, segments: &[SegmentBooks], ledger: (i64, i64)) -> Audit {
    let mut a = Audit {
        sku: sku.to_owned(),
        generation,
        ok: true,
        initial: 0,
        available: 0,
        deducted: 0,
        released: 0,
        oversold: 0,
        problems: Vec::new(),
    };
    for &SegmentBooks {
        segment,
        initial,
        available,
        deducted,
        released,
    } in segments
    {
        a.initial += initial;
        a.available += available;
        a.deducted += deducted;
        a.released += released;
        if available < 0 {
            a.problems
                .push(format!("segment {segment} is negative: {available}"));
        }
        if initial != available + deducted - released {
            a.problems.push(format!(
                "segment {segment}: initial {initial} != available {available} + deducted {deducted} - released {released}"
            ));
        }
    }
    let (ledger_deducted, ledger_released) = ledger;
    if (ledger_deducted, ledger_released) != (a.deducted, a.released) {
        a.problems.push(format!(
            "ledger totals ({ledger_deducted} deducted, {ledger_released} released) disagree with its parts ({}, {})",
            a.deducted, a.released
        ));
    }
    a.oversold = (a.deducted - a.released) - (a.initial - a.available);
    if a.initial != a.available + a.deducted - a.released {
        a.problems.push(format!(
            "initial {} != available {} + deducted {} - released {}",
            a.initial, a.available, a.deducted, a.released
        ));
    }
    a.ok = a.problems.is_empty();
    a
}
