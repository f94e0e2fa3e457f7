//! Settling many pending orders in one transaction.
//!
//! Each order is settled on its own condition, as alone: only a pending order moves (`… WHERE
//! status = 'pending'`), a rejected one gives its units back to its user's purchase total, and
//! its key gets the stored response. Rows are touched in primary-key order.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::store::StoredResponse;

/// One pending order's final state and the response to store under its key.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The order.
    pub order_id: Uuid,
    /// `reserved` or `rejected`.
    pub status: String,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Pay before this (reserved orders).
    pub pay_by: Option<DateTime<Utc>>,
    /// What its key answers from now on.
    pub response: StoredResponse,
}

/// Settle every order that is still pending; for each request, whether its order moved
/// (false: it was not pending, or an earlier request of the group settled it).
#[tracing::instrument(name = "db.transaction", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "TRANSACTION", order.operation = "finish", order.group = finishes.len()))]
pub async fn finish_group(pool: &PgPool, finishes: &[Finish]) -> sqlx::Result<Vec<bool>> {
    let mut seen = HashSet::new();
    let firsts: Vec<usize> = (0..finishes.len())
        .filter(|&i| seen.insert(finishes[i].order_id))
        .collect();
    let mut tx = pool.begin().await?;
    let moved = move_orders(&mut tx, finishes, &firsts).await?;
    give_back(&mut tx, &moved).await?;
    let done: Vec<usize> = firsts
        .iter()
        .copied()
        .filter(|&i| moved.contains_key(&finishes[i].order_id))
        .collect();
    store_responses(&mut tx, finishes, &done).await?;
    tx.commit().await?;
    let mut outcomes = vec![false; finishes.len()];
    for i in done {
        outcomes[i] = true;
    }
    Ok(outcomes)
}

/// What a moved order held: its user, item and units, and whether it was rejected.
struct Moved {
    user: String,
    sku: String,
    qty: i64,
    rejected: bool,
}

/// Move the pending orders of `firsts` to their final state.
async fn move_orders(
    tx: &mut PgConnection,
    finishes: &[Finish],
    firsts: &[usize],
) -> sqlx::Result<HashMap<Uuid, Moved>> {
    let ids: Vec<Uuid> = firsts.iter().map(|&i| finishes[i].order_id).collect();
    let statuses: Vec<&str> = firsts
        .iter()
        .map(|&i| finishes[i].status.as_str())
        .collect();
    let reasons: Vec<Option<&str>> = firsts
        .iter()
        .map(|&i| finishes[i].reason.as_deref())
        .collect();
    let pay_bys: Vec<Option<DateTime<Utc>>> = firsts.iter().map(|&i| finishes[i].pay_by).collect();
    let rows = sqlx::query(
        "UPDATE orders o SET status = t.st, reason = t.r, pay_by = t.p, updated_at = now(),
                locked_until = now()
         FROM (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
               AS u(id, st, r, p) ORDER BY id) t
         WHERE o.id = t.id AND o.status = 'pending'
         RETURNING o.id, o.user_id, o.sku, o.qty, o.status",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&pay_bys)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<Uuid, _>(0),
                Moved {
                    user: r.get(1),
                    sku: r.get(2),
                    qty: r.get(3),
                    rejected: r.get::<String, _>(4) == "rejected",
                },
            )
        })
        .collect())
}

/// Rejected orders give their units back to their users' purchase totals.
async fn give_back(tx: &mut PgConnection, moved: &HashMap<Uuid, Moved>) -> sqlx::Result<()> {
    let mut back: HashMap<(&str, &str), i64> = HashMap::new();
    for m in moved.values().filter(|m| m.rejected) {
        *back.entry((m.user.as_str(), m.sku.as_str())).or_default() += m.qty;
    }
    if back.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<((&str, &str), i64)> = back.into_iter().collect();
    rows.sort_unstable();
    let users: Vec<&str> = rows.iter().map(|((u, _), _)| *u).collect();
    let skus: Vec<&str> = rows.iter().map(|((_, s), _)| *s).collect();
    let qtys: Vec<i64> = rows.iter().map(|(_, q)| *q).collect();
    sqlx::query(
        "UPDATE purchase_totals p SET qty = GREATEST(p.qty - t.q, 0)
         FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t(u, s, q)
         WHERE p.user_id = t.u AND p.sku = t.s",
    )
    .bind(&users)
    .bind(&skus)
    .bind(&qtys)
    .execute(tx)
    .await?;
    Ok(())
}

/// Each settled order's key gets its response.
async fn store_responses(
    tx: &mut PgConnection,
    finishes: &[Finish],
    done: &[usize],
) -> sqlx::Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = done.iter().map(|&i| finishes[i].order_id).collect();
    let statuses: Vec<i32> = done
        .iter()
        .map(|&i| i32::from(finishes[i].response.status))
        .collect();
    let bodies: Vec<&serde_json::Value> =
        done.iter().map(|&i| &finishes[i].response.body).collect();
    let locations: Vec<Option<&str>> = done
        .iter()
        .map(|&i| finishes[i].response.location.as_deref())
        .collect();
    sqlx::query(
        "UPDATE idempotency_keys k SET state = 'done', status = t.st, body = t.b, location = t.l
         FROM (SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::jsonb[], $4::text[])
               AS u(id, st, b, l) ORDER BY id) t
         WHERE k.order_id = t.id",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&bodies)
    .bind(&locations)
    .execute(tx)
    .await?;
    Ok(())
}
