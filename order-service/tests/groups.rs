//! Grouped claims and settles against the real services: under a burst from many buyers over
//! two order-service instances, claims and settles go in groups larger than one, and every
//! guarantee holds row by row — one order per key (also for a key sent twice at once), the
//! purchase limit per user (several orders of one user in one group), no order without its
//! stock — read back from the database.

mod common;

use std::collections::HashMap;

use common::{database, http, orders, place, put_stock, stock, stock_audit, unique};
use reqwest::StatusCode;
use serde_json::json;

const USERS: usize = 40;
/// Orders per user, each with its own key; the limit lets two of them through.
const PER_USER: usize = 3;
const LIMIT: &str = "2";
/// Keys sent twice at the same moment.
const TWICE: usize = 20;
const STOCK: i64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_is_claimed_and_settled_in_groups_and_every_row_holds() {
    let redis = testkit::redis_url();
    let s = stock(&redis, &[]).await;
    let vars = [("PURCHASE_LIMIT", LIMIT)];
    let a = orders(&redis, &s.url(""), &vars).await;
    let b = orders(&redis, &s.url(""), &vars).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, STOCK, 4).await;
    let prefix = unique("g");

    // (user, key) of every request: each user's keys, and the first TWICE keys again.
    let mut sends: Vec<(String, String)> = (0..USERS)
        .flat_map(|u| (0..PER_USER).map(move |k| (u, k)))
        .map(|(u, k)| (format!("{prefix}-u{u}"), format!("k{k}")))
        .collect();
    sends.extend(sends[..TWICE].to_vec());
    let tasks: Vec<_> = sends
        .iter()
        .enumerate()
        .map(|(n, (user, key))| {
            let url = if n % 2 == 0 { a.url("") } else { b.url("") };
            let (c, user, key, sku) = (c.clone(), user.clone(), key.clone(), sku.clone());
            tokio::spawn(async move {
                let answer =
                    place(&c, &url, &user, Some(&key), json!({"sku": sku, "qty": 1})).await;
                (user, key, answer)
            })
        })
        .collect();
    let mut created: HashMap<(String, String), String> = HashMap::new();
    for t in tasks {
        let (user, key, answer) = t.await.expect("task");
        match (answer.status, answer.body["type"].as_str()) {
            (StatusCode::CREATED, _) => {
                let id = answer.body["order_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if let Some(first) = created.insert((user.clone(), key.clone()), id.clone()) {
                    assert_eq!(first, id, "{user}/{key}: two orders for one key");
                }
            }
            (StatusCode::CONFLICT, Some("/problems/purchase-limit" | "/problems/sold-out"))
            | (StatusCode::CONFLICT, Some("/problems/request-in-progress")) => {}
            _ => panic!("unexpected: {}", answer.raw),
        }
    }

    let stats = [
        a.engine.groups.claim_stats(),
        b.engine.groups.claim_stats(),
        a.engine.groups.finish_stats(),
        b.engine.groups.finish_stats(),
    ];
    let (claims, settles) = (
        stats[0].requests + stats[1].requests,
        stats[2].requests + stats[3].requests,
    );
    let (claim_groups, settle_groups) = (
        stats[0].batches + stats[1].batches,
        stats[2].batches + stats[3].batches,
    );
    assert!(
        claims > claim_groups,
        "claims in groups: {claims} in {claim_groups}"
    );
    assert!(
        settles > settle_groups,
        "settles in groups: {settles} in {settle_groups}"
    );

    // The database itself.
    let db = sqlx::PgPool::connect(&database("seckill_order_test").await)
        .await
        .expect("order database");
    let like = format!("{prefix}-%");
    let several: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT k.user_id, k.key FROM idempotency_keys k
           WHERE k.user_id LIKE $1 GROUP BY 1, 2 HAVING COUNT(*) > 1) t",
    )
    .bind(&like)
    .fetch_one(&db)
    .await
    .expect("keys");
    assert_eq!(several, 0);
    let orders_per_key: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM orders o WHERE o.user_id LIKE $1 AND o.sku = $2")
            .bind(&like)
            .bind(&sku)
            .fetch_one(&db)
            .await
            .expect("orders");
    assert!(
        orders_per_key <= (USERS * PER_USER) as i64,
        "{orders_per_key} orders for {} keys",
        USERS * PER_USER
    );
    let over: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT user_id FROM orders WHERE user_id LIKE $1 AND sku = $2
           AND status IN ('pending', 'reserved', 'paid') GROUP BY user_id HAVING SUM(qty) > $3) t",
    )
    .bind(&like)
    .bind(&sku)
    .bind(LIMIT.parse::<i64>().unwrap_or(2))
    .fetch_one(&db)
    .await
    .expect("limit");
    assert_eq!(over, 0, "users over the purchase limit");
    let totals_off: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM purchase_totals p WHERE p.user_id LIKE $1 AND p.sku = $2
           AND p.qty <> (SELECT COALESCE(SUM(o.qty), 0) FROM orders o WHERE o.user_id = p.user_id
                          AND o.sku = p.sku AND o.status IN ('pending', 'reserved', 'paid'))",
    )
    .bind(&like)
    .bind(&sku)
    .fetch_one(&db)
    .await
    .expect("totals");
    assert_eq!(
        totals_off, 0,
        "purchase totals agree with the orders holding units"
    );
    let reserved: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM orders WHERE user_id LIKE $1 AND sku = $2 AND status = 'reserved'",
    )
    .bind(&like)
    .bind(&sku)
    .fetch_one(&db)
    .await
    .expect("reserved");
    assert_eq!(
        reserved as usize,
        created.len(),
        "every 201 is a reserved order"
    );
    let deducted = stock_audit(&c, &s.url(""), &sku).await["deducted"].as_i64();
    assert_eq!(
        deducted,
        Some(reserved),
        "no reserved order without its stock"
    );
    assert!(reserved <= STOCK);
}
