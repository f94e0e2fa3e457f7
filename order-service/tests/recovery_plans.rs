//! The recovery worker's queries read only their candidates, however many orders are kept.
//!
//! Every instance runs them every second. With 20 000 reserved orders still inside their
//! payment window and 20 000 cancelled orders already released, a pass has nothing to do, and
//! must find that out without visiting those rows (before migration `0003` it read all of
//! them through `orders_open`, on every pass).

use serde_json::Value;
use sqlx::PgPool;

/// Orders of each kind that a pass must not read.
const KEPT: i64 = 20_000;

async fn migrated_pool() -> PgPool {
    let url = testkit::database("order_recovery_plans")
        .await
        .expect("test database");
    let pool = service_kit::postgres::connect(&url, 2, &order_service::store::MIGRATOR)
        .await
        .expect("migrated database");
    sqlx::query("TRUNCATE orders, idempotency_keys, purchase_totals")
        .execute(&pool)
        .await
        .expect("empty tables");
    pool
}

/// `KEPT` reserved orders paid for within the next hour, `KEPT` released cancellations.
async fn fill(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO orders (id, user_id, sku, qty, status, pay_by, stock_released, updated_at)
         SELECT gen_random_uuid(), 'u' || i, 'phone', 1,
                CASE WHEN i % 2 = 0 THEN 'reserved' ELSE 'cancelled' END,
                now() + interval '1 hour', i % 2 = 1, now() - interval '1 minute'
         FROM generate_series(1, $1 * 2) AS i",
    )
    .bind(KEPT)
    .execute(pool)
    .await
    .expect("orders inserted");
    sqlx::query("ANALYZE orders")
        .execute(pool)
        .await
        .expect("analyze");
}

/// The plan of `sql` with `$1` = 500, run (in a transaction that is rolled back).
async fn executed_plan(pool: &PgPool, sql: &str) -> Value {
    let mut tx = pool.begin().await.expect("transaction");
    let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
    let (plan,): (Value,) = sqlx::query_as(sqlx::AssertSqlSafe(explain))
        .bind(500_i64)
        .fetch_one(&mut *tx)
        .await
        .expect("explain");
    tx.rollback().await.expect("rollback");
    plan
}

/// Rows every node of `plan` read or threw away, summed, and the indexes it used.
fn rows_visited(node: &Value, visited: &mut f64, indexes: &mut Vec<String>) {
    for field in [
        "Actual Rows",
        "Rows Removed by Filter",
        "Rows Removed by Index Recheck",
    ] {
        *visited +=
            node[field].as_f64().unwrap_or(0.0) * node["Actual Loops"].as_f64().unwrap_or(1.0);
    }
    if let Some(index) = node["Index Name"].as_str() {
        indexes.push(index.to_owned());
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        rows_visited(child, visited, indexes);
    }
}

async fn check(pool: &PgPool, what: &str, sql: &str, index: &str) {
    let plan = executed_plan(pool, sql).await;
    let (mut visited, mut indexes) = (0.0, Vec::new());
    rows_visited(&plan[0]["Plan"], &mut visited, &mut indexes);
    assert!(
        visited < 100.0,
        "{what} visited {visited} rows with nothing to do (indexes {indexes:?}): {plan:#}"
    );
    assert!(
        indexes.iter().any(|i| i == index),
        "{what} does not use {index} (indexes {indexes:?}): {plan:#}"
    );
}

#[tokio::test]
async fn recovery_passes_with_nothing_to_do_read_almost_nothing() {
    let pool = migrated_pool().await;
    fill(&pool).await;
    check(
        &pool,
        "expiring unpaid orders",
        order_service::store::EXPIRE_UNPAID_SQL,
        "orders_unpaid",
    )
    .await;
    check(
        &pool,
        "finding unreleased cancellations",
        order_service::store::UNRELEASED_SQL,
        "orders_unreleased",
    )
    .await;
    // And the worker itself finds nothing to do.
    assert_eq!(
        order_service::store::expire_unpaid(&pool, 500)
            .await
            .expect("expire"),
        0
    );
    assert!(
        order_service::store::unreleased(&pool, 200)
            .await
            .expect("unreleased")
            .is_empty()
    );
}
