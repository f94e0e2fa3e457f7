//! Claiming many idempotency keys in one transaction.
//!
//! Each request's rows are decided on their own, by the same conditions as a lone claim:
//! its key is new or not (`INSERT … ON CONFLICT DO NOTHING RETURNING`), its purchase total
//! stays within the limit or not (the conditional upsert). Rows go in sorted by their primary
//! keys, so two groups touching the same keys or totals wait for each other instead of
//! deadlocking.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::store::{ORDER_COLUMNS, Order, order_from};

/// One request's claim: a key of a user, for an order of `qty` of `sku`.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The user (from the gateway).
    pub user: String,
    /// The Idempotency-Key.
    pub key: String,
    /// The canonical request.
    pub fingerprint: String,
    /// The item.
    pub sku: String,
    /// Units.
    pub qty: i64,
}

/// How long claims last and what they may hold.
#[derive(Debug, Clone, Copy)]
pub struct ClaimTerms {
    /// Key lifetime.
    pub ttl: Duration,
    /// The claiming request's ownership of the pending order.
    pub lease: Duration,
    /// Units one user may hold of one item.
    pub limit: i64,
}

/// What a claim came to.
#[derive(Debug, Clone)]
pub enum Claimed {
    /// The key was new: the order was created, pending and owned by this request, or already
    /// rejected by the purchase limit.
    New(Order),
    /// The key was there before (or taken by an earlier request of the same group): read it.
    Taken,
}

/// Claim every request's key and create its order, in one transaction. One outcome per
/// request, in order.
#[tracing::instrument(name = "db.transaction", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "TRANSACTION", order.operation = "claim", order.group = claims.len()))]
pub async fn claim_group(
    pool: &PgPool,
    claims: &[ClaimRequest],
    terms: ClaimTerms,
) -> sqlx::Result<Vec<Claimed>> {
    let mut tx = pool.begin().await?;
    forget_expired_keys(&mut tx, claims).await?;
    // Repeats of a key within the group are taken by its first occurrence.
    let mut seen = HashSet::new();
    let firsts: Vec<usize> = (0..claims.len())
        .filter(|&i| seen.insert((&claims[i].user, &claims[i].key)))
        .collect();
    let ids: Vec<Uuid> = firsts.iter().map(|_| Uuid::now_v7()).collect();
    let mut orders = insert_pending(&mut tx, claims, &firsts, &ids, terms.lease).await?;
    let new = insert_keys(&mut tx, claims, &firsts, &ids, terms.ttl).await?;
    let losers: Vec<Uuid> = ids.iter().copied().filter(|id| !new.contains(id)).collect();
    if !losers.is_empty() {
        sqlx::query("DELETE FROM orders WHERE id = ANY($1)")
            .bind(&losers)
            .execute(&mut *tx)
            .await?;
    }
    let winners: Vec<usize> = firsts
        .iter()
        .zip(&ids)
        .filter(|(_, id)| new.contains(id))
        .map(|(&i, _)| i)
        .collect();
    let within = add_to_totals(&mut tx, claims, &winners, terms.limit).await?;
    let over: Vec<Uuid> = firsts
        .iter()
        .zip(&ids)
        .filter(|&(i, id)| new.contains(id) && !within.contains(i))
        .map(|(_, id)| *id)
        .collect();
    if !over.is_empty() {
        sqlx::query(
            "UPDATE orders SET status = 'rejected', reason = 'purchase-limit', updated_at = now()
             WHERE id = ANY($1)",
        )
        .bind(&over)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let mut outcomes = vec![Claimed::Taken; claims.len()];
    for (&i, id) in firsts.iter().zip(&ids) {
        if let Some(mut order) = orders.remove(id) {
            if over.contains(id) {
                order.status = "rejected".into();
                order.reason = Some("purchase-limit".into());
            }
            if new.contains(id) {
                outcomes[i] = Claimed::New(order);
            }
        }
    }
    Ok(outcomes)
}

/// An expired key counts as new: delete the group's expired, finished keys.
async fn forget_expired_keys(tx: &mut PgConnection, claims: &[ClaimRequest]) -> sqlx::Result<()> {
    let users: Vec<&str> = claims.iter().map(|c| c.user.as_str()).collect();
    let keys: Vec<&str> = claims.iter().map(|c| c.key.as_str()).collect();
    sqlx::query(
        "DELETE FROM idempotency_keys k USING UNNEST($1::text[], $2::text[]) AS t(u, k)
         WHERE k.user_id = t.u AND k.key = t.k AND k.expires_at < now() AND k.state = 'done'",
    )
    .bind(&users)
    .bind(&keys)
    .execute(tx)
    .await?;
    Ok(())
}

/// A pending order, owned for `lease`, for each of `firsts` (ids in the same order).
async fn insert_pending(
    tx: &mut PgConnection,
    claims: &[ClaimRequest],
    firsts: &[usize],
    ids: &[Uuid],
    lease: Duration,
) -> sqlx::Result<std::collections::HashMap<Uuid, Order>> {
    let users: Vec<&str> = firsts.iter().map(|&i| claims[i].user.as_str()).collect();
    let skus: Vec<&str> = firsts.iter().map(|&i| claims[i].sku.as_str()).collect();
    let qtys: Vec<i64> = firsts.iter().map(|&i| claims[i].qty).collect();
    let sql = format!(
        "INSERT INTO orders (id, user_id, sku, qty, status, locked_until)
         SELECT id, u, s, q, 'pending', now() + $5 * interval '1 millisecond'
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[]) AS t(id, u, s, q)
         RETURNING {ORDER_COLUMNS}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .bind(&users)
        .bind(&skus)
        .bind(&qtys)
        .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
        .fetch_all(tx)
        .await?;
    Ok(rows
        .iter()
        .map(order_from)
        .map(|o| (o.order_id, o))
        .collect())
}

/// Claim the keys of `firsts` for their orders; the ids of the orders whose key was new.
async fn insert_keys(
    tx: &mut PgConnection,
    claims: &[ClaimRequest],
    firsts: &[usize],
    ids: &[Uuid],
    ttl: Duration,
) -> sqlx::Result<HashSet<Uuid>> {
    let users: Vec<&str> = firsts.iter().map(|&i| claims[i].user.as_str()).collect();
    let keys: Vec<&str> = firsts.iter().map(|&i| claims[i].key.as_str()).collect();
    let fingerprints: Vec<&str> = firsts
        .iter()
        .map(|&i| claims[i].fingerprint.as_str())
        .collect();
    let rows = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, order_id, state, expires_at)
         SELECT u, k, f, id, 'in_progress', now() + $5 * interval '1 second'
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[]) AS t(u, k, f, id)
         ORDER BY u, k
         ON CONFLICT DO NOTHING
         RETURNING order_id",
    )
    .bind(&users)
    .bind(&keys)
    .bind(&fingerprints)
    .bind(ids)
    .bind(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
    .fetch_all(tx)
    .await?;
    Ok(rows.iter().map(|r| r.get::<Uuid, _>(0)).collect())
}

/// Add each winner's units to its user's purchase total where that stays within `limit`;
/// the winners (positions in `claims`) that fit. A user with several orders in the group is
/// served in arrival order, one upsert round per repeat (one conditional upsert cannot touch
/// a row twice).
async fn add_to_totals(
    tx: &mut PgConnection,
    claims: &[ClaimRequest],
    winners: &[usize],
    limit: i64,
) -> sqlx::Result<HashSet<usize>> {
    let mut within = HashSet::new();
    let mut left: Vec<usize> = winners
        .iter()
        .copied()
        .filter(|&i| claims[i].qty <= limit)
        .collect();
    while !left.is_empty() {
        let mut seen = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = left
            .into_iter()
            .partition(|&i| seen.insert((&claims[i].user, &claims[i].sku)));
        within.extend(upsert_totals(tx, claims, &round, limit).await?);
        left = later;
    }
    Ok(within)
}

/// One conditional upsert over `round` (distinct users and items); the positions that fit.
async fn upsert_totals(
    tx: &mut PgConnection,
    claims: &[ClaimRequest],
    round: &[usize],
    limit: i64,
) -> sqlx::Result<Vec<usize>> {
    let users: Vec<&str> = round.iter().map(|&i| claims[i].user.as_str()).collect();
    let skus: Vec<&str> = round.iter().map(|&i| claims[i].sku.as_str()).collect();
    let qtys: Vec<i64> = round.iter().map(|&i| claims[i].qty).collect();
    // (user, sku) is unique within a round, so RETURNING it identifies the request.
    let rows = sqlx::query(
        "INSERT INTO purchase_totals (user_id, sku, qty)
         SELECT u, s, q FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t(u, s, q)
         ORDER BY u, s
         ON CONFLICT (user_id, sku) DO UPDATE SET qty = purchase_totals.qty + EXCLUDED.qty
         WHERE purchase_totals.qty + EXCLUDED.qty <= $4
         RETURNING user_id, sku",
    )
    .bind(&users)
    .bind(&skus)
    .bind(&qtys)
    .bind(limit)
    .fetch_all(tx)
    .await?;
    let fitted: HashSet<(String, String)> = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect();
    Ok(round
        .iter()
        .copied()
        .filter(|&i| fitted.contains(&(claims[i].user.clone(), claims[i].sku.clone())))
        .collect())
}
