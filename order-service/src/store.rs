//! PostgreSQL access for orders, idempotency keys and purchase totals.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::group::claim::{ClaimRequest, ClaimTerms, Claimed, claim_group};

/// Embedded migrations (`order-service/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// An order as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Order {
    /// Order id (UUID v7).
    pub order_id: Uuid,
    /// `pending`, `reserved`, `paid`, `cancelled` or `rejected`.
    pub status: String,
    /// The item.
    pub sku: String,
    /// Units.
    pub qty: i64,
    /// Pay before this, or the order is cancelled (reserved orders).
    pub pay_by: Option<DateTime<Utc>>,
    /// Why the order was rejected or cancelled.
    pub reason: Option<String>,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub(crate) user_id: String,
}

pub(crate) fn order_from(r: &PgRow) -> Order {
    Order {
        order_id: r.get("id"),
        status: r.get("status"),
        sku: r.get("sku"),
        qty: r.get("qty"),
        pay_by: r.get("pay_by"),
        reason: r.get("reason"),
        created_at: r.get("created_at"),
        user_id: r.get("user_id"),
    }
}

pub(crate) const ORDER_COLUMNS: &str = "id, user_id, sku, qty, status, reason, pay_by, created_at";

/// A stored idempotency key.
#[derive(Debug, Clone)]
pub struct KeyRow {
    /// The canonical request it was first used with.
    pub fingerprint: String,
    /// The order it made.
    pub order_id: Uuid,
    /// True once the response is stored.
    pub done: bool,
    /// Stored response status.
    pub status: Option<i32>,
    /// Stored response body.
    pub body: Option<Value>,
    /// Stored `Location` header.
    pub location: Option<String>,
}

/// Result of claiming an idempotency key.
#[derive(Debug)]
pub enum Claim {
    /// The key is new: a pending order was created and this request owns it.
    New {
        /// The new order.
        order_id: Uuid,
        /// The purchase limit refused it (the order is already rejected).
        over_limit: bool,
    },
    /// The key was used before.
    Existing(KeyRow),
}

/// Claim `(user, key)` and create the pending order, in one transaction; enforce the
/// purchase limit in the same transaction (the `purchase_totals` row lock serializes one
/// user's concurrent orders of one item). A group of one ([`claim_group`]); the order-service
/// itself claims in groups.
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    pool: &PgPool,
    user: &str,
    key: &str,
    fingerprint: &str,
    sku: &str,
    qty: i64,
    ttl: Duration,
    lease: Duration,
    limit: i64,
) -> sqlx::Result<Claim> {
    let request = ClaimRequest {
        user: user.to_owned(),
        key: key.to_owned(),
        fingerprint: fingerprint.to_owned(),
        sku: sku.to_owned(),
        qty,
    };
    let terms = ClaimTerms { ttl, lease, limit };
    match claim_group(pool, std::slice::from_ref(&request), terms)
        .await?
        .pop()
    {
        Some(Claimed::New(order)) => Ok(Claim::New {
            order_id: order.order_id,
            over_limit: order.status == "rejected",
        }),
        _ => existing(pool, user, key).await.map(Claim::Existing),
    }
}

/// A key claimed before: its row. `RowNotFound` when it was deleted since the claim saw it
/// (expired or abandoned): a conflict the client can retry.
pub async fn existing(pool: &PgPool, user: &str, key: &str) -> sqlx::Result<KeyRow> {
    let mut conn = pool.acquire().await?;
    key_row(&mut conn, user, key)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The stored key.
pub async fn key_row(
    conn: &mut PgConnection,
    user: &str,
    key: &str,
) -> sqlx::Result<Option<KeyRow>> {
    let row = sqlx::query(
        "SELECT fingerprint, order_id, state, status, body, location FROM idempotency_keys
         WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| KeyRow {
        fingerprint: r.get(0),
        order_id: r.get(1),
        done: r.get::<String, _>(2) == "done",
        status: r.get(3),
        body: r.get(4),
        location: r.get(5),
    }))
}

/// The idempotency key that made `order_id`, if it is still stored.
pub async fn key_of_order(pool: &PgPool, order_id: Uuid) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as("SELECT user_id, key FROM idempotency_keys WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await
}

/// Take over a pending order whose lease has run out. The order if this caller now owns it.
pub async fn take_over(
    pool: &PgPool,
    order_id: Uuid,
    lease: Duration,
) -> sqlx::Result<Option<Order>> {
    let sql = format!(
        "UPDATE orders SET locked_until = now() + $2 * interval '1 millisecond'
         WHERE id = $1 AND status = 'pending' AND locked_until < now()
         RETURNING {ORDER_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .bind(millis(lease))
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(order_from))
}

/// Give up ownership of a pending order now (its outcome is unknown; a retry or the worker
/// takes it over).
pub async fn release_lease(pool: &PgPool, order_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE orders SET locked_until = now() WHERE id = $1 AND status = 'pending'")
        .bind(order_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The final response to store for a key.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// `Location` header, if any.
    pub location: Option<String>,
}

/// Record the stored response of a key whose order was already final (limit rejections, orders
/// the worker settled). `false` when the key already had a response: a concurrent request
/// stored it first, and that one stands.
pub async fn store_response(
    pool: &PgPool,
    order_id: Uuid,
    response: &StoredResponse,
) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE idempotency_keys SET state = 'done', status = $2, body = $3, location = $4 WHERE order_id = $1 AND state <> 'done'")
        .bind(order_id)
        .bind(i32::from(response.status))
        .bind(&response.body)
        .bind(&response.location)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The stock-service certainly did not deduct and cannot now: reject the order and forget
/// the key, so a retry with it starts afresh. Nothing is left half-done.
#[tracing::instrument(name = "db.transaction", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "TRANSACTION", order.operation = "abandon"))]
pub async fn abandon(pool: &PgPool, order_id: Uuid, reason: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "UPDATE orders SET status = 'rejected', reason = $2, updated_at = now()
         WHERE id = $1 AND status = 'pending' RETURNING user_id, sku, qty",
    )
    .bind(order_id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = row {
        give_back_total(&mut tx, row.get(0), row.get(1), row.get(2)).await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE order_id = $1")
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Forget an order entirely (its request was invalid, e.g. an unknown item): the key, the
/// order and its purchase total go, as if the request had never come.
#[tracing::instrument(name = "db.transaction", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "TRANSACTION", order.operation = "discard"))]
pub async fn discard(pool: &PgPool, order_id: Uuid) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM idempotency_keys WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query("DELETE FROM orders WHERE id = $1 AND status IN ('pending', 'rejected') RETURNING user_id, sku, qty, status")
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = row
        && row.get::<String, _>(3) == "pending"
    {
        give_back_total(&mut tx, row.get(0), row.get(1), row.get(2)).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn give_back_total(
    conn: &mut PgConnection,
    user: String,
    sku: String,
    qty: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE purchase_totals SET qty = GREATEST(qty - $3, 0) WHERE user_id = $1 AND sku = $2",
    )
    .bind(user)
    .bind(sku)
    .bind(qty)
    .execute(conn)
    .await?;
    Ok(())
}

/// One order of `user`.
pub async fn order(pool: &PgPool, order_id: Uuid) -> sqlx::Result<Option<Order>> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(order_from))
}

/// The newest orders of `user`.
pub async fn orders_of(pool: &PgPool, user: &str, limit: i64) -> sqlx::Result<Vec<Order>> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 ORDER BY created_at DESC LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(order_from).collect())
}

/// `reserved` -> `paid` within the payment window. The order after the attempt.
pub async fn pay(pool: &PgPool, order_id: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE orders SET status = 'paid', updated_at = now()
         WHERE id = $1 AND status = 'reserved' AND pay_by > now()",
    )
    .bind(order_id)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// `reserved` -> `cancelled` (stock release still to do). True if it changed.
#[tracing::instrument(name = "db.transaction", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "TRANSACTION", order.operation = "cancel"))]
pub async fn cancel(pool: &PgPool, order_id: Uuid, reason: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "UPDATE orders SET status = 'cancelled', reason = $2, stock_released = false, updated_at = now()
         WHERE id = $1 AND status = 'reserved' RETURNING user_id, sku, qty",
    )
    .bind(order_id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let changed = row.is_some();
    if let Some(row) = row {
        give_back_total(&mut tx, row.get(0), row.get(1), row.get(2)).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// The stock of a cancelled order is back.
pub async fn mark_released(pool: &PgPool, order_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE orders SET stock_released = true WHERE id = $1")
        .bind(order_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The recovery worker's statement cancelling reserved orders past their payment window and
/// giving their units back to the purchase totals (`$1`: how many); public so that a test can
/// check its plan (index `orders_unpaid`).
pub const EXPIRE_UNPAID_SQL: &str = "WITH expired AS (
             UPDATE orders SET status = 'cancelled', reason = 'payment-timeout', stock_released = false,
                 updated_at = now()
             WHERE id IN (SELECT id FROM orders WHERE status = 'reserved' AND pay_by <= now()
                          ORDER BY pay_by LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING user_id, sku, qty),
         per_user AS (SELECT user_id, sku, SUM(qty) AS qty FROM expired GROUP BY 1, 2)
         UPDATE purchase_totals t SET qty = GREATEST(t.qty - p.qty, 0)
         FROM per_user p WHERE t.user_id = p.user_id AND t.sku = p.sku";

/// Cancel reserved orders whose payment window closed; returns how many.
pub async fn expire_unpaid(pool: &PgPool, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(EXPIRE_UNPAID_SQL)
        .bind(limit)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// The recovery worker's query for cancelled orders whose stock is not yet released (`$1`:
/// how many); public so that a test can check its plan (index `orders_unreleased`).
pub const UNRELEASED_SQL: &str =
    "SELECT id, sku FROM orders WHERE status = 'cancelled' AND NOT stock_released
         ORDER BY updated_at LIMIT $1";

/// Cancelled orders whose stock is not yet confirmed released.
pub async fn unreleased(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as(UNRELEASED_SQL)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Pending orders nobody owns, older than `grace`: take their lease for the worker.
pub async fn stuck_pending(
    pool: &PgPool,
    grace: Duration,
    lease: Duration,
    limit: i64,
) -> sqlx::Result<Vec<Order>> {
    let sql = format!(
        "UPDATE orders SET locked_until = now() + $2 * interval '1 millisecond'
         WHERE id IN (SELECT id FROM orders WHERE status = 'pending' AND locked_until < now()
                        AND updated_at < now() - $1 * interval '1 millisecond'
                      ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING {ORDER_COLUMNS}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(millis(grace))
        .bind(millis(lease))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(order_from).collect())
}

/// Delete expired keys; returns how many.
pub async fn prune_keys(pool: &PgPool) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < now() AND state = 'done'")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// Orders and units in one status.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Tally {
    /// Orders.
    pub count: i64,
    /// Units.
    pub qty: i64,
}

/// Orders by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StatusTallies {
    /// Placed, stock not yet settled.
    pub pending: Tally,
    /// Stock deducted, awaiting payment.
    pub reserved: Tally,
    /// Paid.
    pub paid: Tally,
    /// Cancelled (by the buyer or the payment timeout).
    pub cancelled: Tally,
    /// Refused (sold out, insufficient stock, purchase limit).
    pub rejected: Tally,
}

/// What the order books say about one item: the facts a load test checks against the
/// stock-service's ledger (`GET /orders/audit/{sku}`, admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OrderAudit {
    /// The item.
    pub sku: String,
    /// Only orders of users whose id starts with this were counted (all when absent).
    pub user_prefix: Option<String>,
    /// Orders and units by status.
    pub orders: StatusTallies,
    /// Cancelled orders whose stock release is not confirmed yet (the worker retries).
    pub cancelled_unreleased: Tally,
    /// Units that hold stock: reserved + paid + cancelled-but-not-yet-released. Equals the
    /// stock-service's `deducted - released` once nothing is pending.
    pub holding_stock_qty: i64,
    /// `(user, Idempotency-Key)` pairs that made more than one order (must be 0).
    pub keys_with_several_orders: i64,
    /// Reserved or paid orders with no idempotency key (must be 0 while keys are within
    /// their TTL).
    pub orders_without_key: i64,
    /// Distinct users with an order of the item.
    pub users: i64,
    /// Users holding more than `purchase_limit` units in pending, reserved or paid orders
    /// (must be 0).
    pub users_over_limit: i64,
    /// The instance's `PURCHASE_LIMIT`.
    pub purchase_limit: i64,
}

/// Audit the orders of `sku` (of users whose id starts with `user_prefix`, if given).
pub async fn audit(
    pool: &PgPool,
    sku: &str,
    user_prefix: Option<&str>,
    purchase_limit: i64,
) -> sqlx::Result<OrderAudit> {
    let mut tx = pool.begin().await?;
    // One consistent snapshot for all the counts.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let orders = status_tallies(&mut tx, sku, user_prefix).await?;
    let (count, qty) = scoped_pair(
        &mut tx,
        "SELECT COUNT(*), COALESCE(SUM(o.qty), 0)::bigint FROM orders o
         WHERE {MINE} AND o.status = 'cancelled' AND NOT o.stock_released",
        sku,
        user_prefix,
    )
    .await?;
    let cancelled_unreleased = Tally { count, qty };
    let (keys_with_several_orders, _) = scoped_pair(
        &mut tx,
        "SELECT COUNT(*), 0::bigint FROM (
             SELECT k.user_id, k.key FROM idempotency_keys k JOIN orders o ON o.id = k.order_id
             WHERE {MINE} GROUP BY k.user_id, k.key HAVING COUNT(DISTINCT k.order_id) > 1) t",
        sku,
        user_prefix,
    )
    .await?;
    let (orders_without_key, _) = scoped_pair(
        &mut tx,
        "SELECT COUNT(*), 0::bigint FROM orders o WHERE {MINE} AND o.status IN ('reserved', 'paid')
           AND NOT EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.order_id = o.id)",
        sku,
        user_prefix,
    )
    .await?;
    let (users, users_over_limit) = users_over(&mut tx, sku, user_prefix, purchase_limit).await?;
    tx.commit().await?;
    Ok(OrderAudit {
        sku: sku.to_owned(),
        user_prefix: user_prefix.map(str::to_owned),
        holding_stock_qty: orders.reserved.qty + orders.paid.qty + cancelled_unreleased.qty,
        orders,
        cancelled_unreleased,
        keys_with_several_orders,
        orders_without_key,
        users,
        users_over_limit,
        purchase_limit,
    })
}

/// The audit's scope in SQL: the item (`$1`) and, when `$2` is set, the users whose id starts
/// with it (one load-test run).
const AUDIT_SCOPE: &str = "o.sku = $1 AND ($2::text IS NULL OR starts_with(o.user_id, $2))";

/// Orders and units per status, within the audit's scope.
async fn status_tallies(
    tx: &mut PgConnection,
    sku: &str,
    user_prefix: Option<&str>,
) -> sqlx::Result<StatusTallies> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT o.status, COUNT(*), COALESCE(SUM(o.qty), 0)::bigint FROM orders o
         WHERE {AUDIT_SCOPE} GROUP BY o.status"
    )))
    .bind(sku)
    .bind(user_prefix)
    .fetch_all(&mut *tx)
    .await?;
    let mut orders = StatusTallies::default();
    for row in &rows {
        let tally = Tally {
            count: row.get(1),
            qty: row.get(2),
        };
        match row.get::<String, _>(0).as_str() {
            "pending" => orders.pending = tally,
            "reserved" => orders.reserved = tally,
            "paid" => orders.paid = tally,
            "cancelled" => orders.cancelled = tally,
            _ => orders.rejected = tally,
        }
    }
    Ok(orders)
}

/// The two numbers `sql` selects, with `{MINE}` standing for the audit's scope.
async fn scoped_pair(
    tx: &mut PgConnection,
    sql: &str,
    sku: &str,
    user_prefix: Option<&str>,
) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(sqlx::AssertSqlSafe(sql.replace("{MINE}", AUDIT_SCOPE)))
        .bind(sku)
        .bind(user_prefix)
        .fetch_one(&mut *tx)
        .await
}

/// Users with orders in the scope, and those holding more than `purchase_limit` units.
async fn users_over(
    tx: &mut PgConnection,
    sku: &str,
    user_prefix: Option<&str>,
    purchase_limit: i64,
) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE held > $3) FROM (
             SELECT o.user_id, COALESCE(SUM(o.qty) FILTER
                        (WHERE o.status IN ('pending', 'reserved', 'paid')), 0) AS held
             FROM orders o WHERE {AUDIT_SCOPE} GROUP BY o.user_id) t"
    )))
    .bind(sku)
    .bind(user_prefix)
    .bind(purchase_limit)
    .fetch_one(&mut *tx)
    .await
}
