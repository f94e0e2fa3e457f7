//! Restocks: units added to a live item without a reset, under every kind of guard, while two
//! instances sell; the sold-out flags cleared everywhere; idempotent per restock id; bad input
//! changes nothing. And redis-atomic's counters, left too low by requests that died, reconciled
//! while the sale runs. The books are read back through the audit and straight from PostgreSQL.

mod common;

use common::{audit, db, flash_sale, http, instance, put_stock, sku};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn restock(
    c: &reqwest::Client,
    i: &common::Instance,
    sku: &str,
    id: &str,
    units: i64,
) -> (StatusCode, Value) {
    let r = c
        .post(i.url(&format!("/stock/{sku}/restocks")))
        .json(&json!({"restock_id": id, "units": units}))
        .send()
        .await
        .expect("post");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Sell out, restock, sell again: exactly the added units sell, on both instances.
async fn sell_restock_sell(strategy: &str) {
    let vars = [("STOCK_STRATEGY", strategy)];
    let a = instance(&vars).await;
    let b = instance(&vars).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 100, 4).await;
    let first = flash_sale(&[&a, &b], &sku, 150, 16).await;
    assert_eq!((first.ok, first.sold_out), (100, 50), "{:?}", first.other);

    let (status, added) = restock(&c, &b, &sku, &format!("{sku}-r1"), 61).await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(
        (added["qty"].clone(), added["replayed"].clone()),
        (json!(61), json!(false))
    );
    let parts: Vec<i64> = added["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|p| p["qty"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(
        parts,
        vec![16, 15, 15, 15],
        "spread evenly, the remainder first"
    );
    // A retried restock adds nothing.
    let (status, again) = restock(&c, &a, &sku, &format!("{sku}-r1"), 61).await;
    assert_eq!(
        (status, again["replayed"].clone()),
        (StatusCode::OK, json!(true))
    );

    // Both instances sell again (their sold-out flags were cleared), exactly the 61 units.
    let second = flash_sale(&[&a, &b], &sku, 120, 16).await;
    assert_eq!(second.ok, 61, "{:?}", second.other);
    assert!(second.other.is_empty(), "{:?}", second.other);
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        (report["initial"].clone(), report["deducted"].clone()),
        (json!(161), json!(161))
    );
    let pool = db().await;
    let total: i64 = sqlx::query_scalar("SELECT total FROM items WHERE sku = $1")
        .bind(&sku)
        .fetch_one(&pool)
        .await
        .expect("total");
    assert_eq!(total, 161);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_segmented_item_restocked_sells_exactly_the_added_units() {
    sell_restock_sell("segmented").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_atomic_item_restocked_sells_exactly_the_added_units() {
    sell_restock_sell("redis-atomic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_db_pessimistic_item_restocked_sells_exactly_the_added_units() {
    sell_restock_sell("db-pessimistic").await;
}

/// A restock while a sale runs on both instances: nothing oversold, exactly stock + restock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restock_in_the_middle_of_a_sale_is_sold_exactly() {
    let vars = [("RMW_DELAY_MS", "2")];
    let a = instance(&vars).await;
    let b = instance(&vars).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 100, 4).await;
    let sale = {
        let sku = sku.clone();
        tokio::spawn(async move {
            let t = flash_sale(&[&a, &b], &sku, 300, 32).await;
            (t, a, b)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let r = instance(&vars).await;
    let (status, body) = restock(&c, &r, &sku, &format!("{sku}-mid"), 40).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (t, a, b) = sale.await.expect("sale");
    assert!(t.other.iter().all(|(s, _)| *s == 503), "{:?}", t.other);
    let rest = flash_sale(&[&a, &b], &sku, 100, 16).await;
    assert_eq!(t.ok + rest.ok, 140, "{t:?} {rest:?}");
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["oversold"], 0);
}

#[tokio::test]
async fn bad_restocks_get_a_problem_and_change_nothing() {
    let a = instance(&[]).await;
    let c = http();
    let sku = sku();
    let other = format!("{sku}-other");
    put_stock(&c, &a, &sku, 10, 2).await;
    put_stock(&c, &a, &other, 10, 2).await;
    for (units, id) in [
        (0, "ok-id"),
        (-5, "ok-id"),
        (2_000_000_000, "ok-id"),
        (5, ""),
        (5, "bad id"),
    ] {
        let (status, body) = restock(&c, &a, &sku, id, units).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{units} {id:?}: {body}"
        );
        assert_eq!(body["type"], "/problems/invalid-input", "{body}");
    }
    let (status, body) = restock(&c, &a, &format!("{sku}-missing"), "r-x", 5).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = restock(&c, &a, &sku, &format!("{sku}-once"), 5).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = restock(&c, &a, &other, &format!("{sku}-once"), 5).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "/problems/restock-id-reused", "{body}");
    let report = audit(&c, &a, &other).await;
    assert_eq!(
        (report["ok"].clone(), report["available"].clone()),
        (json!(true), json!(10))
    );
    let report = audit(&c, &a, &sku).await;
    assert_eq!(
        (report["ok"].clone(), report["available"].clone()),
        (json!(true), json!(15))
    );
}

/// redis-atomic: requests that took units from the Redis counters and died before writing them
/// (simulated by taking 5 units off the counter directly) leave the counter too low; buyers are
/// told "sold out" while the database has the units. The reconciler raises the counter while
/// the sale runs, and exactly the stock sells.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_atomic_counters_left_too_low_are_reconciled_while_the_sale_runs() {
    let a = instance(&[
        ("STOCK_STRATEGY", "redis-atomic"),
        ("COUNTER_RECONCILE_MS", "150"),
    ])
    .await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 20, 1).await;
    let key = a.stock.cache.keys(&sku).counters;
    let mut redis = redis::Client::open(testkit::redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: i64 = redis::cmd("HINCRBY")
        .arg(&key)
        .arg(0)
        .arg(-5)
        .query_async(&mut redis)
        .await
        .expect("take 5 behind the service's back");
    let first = flash_sale(&[&a], &sku, 30, 4).await;
    assert_eq!(
        first.ok, 15,
        "Redis hands out only what it counts: {first:?}"
    );
    // The database still has 5: the reconciler raises the counter (two equal samples).
    let mut sold = first.ok;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        sold += flash_sale(&[&a], &sku, 5, 2).await.ok;
        if sold >= 20 {
            break;
        }
    }
    assert_eq!(
        sold, 20,
        "the 5 units the counter lost sold after reconciliation"
    );
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        (report["available"].clone(), report["oversold"].clone()),
        (json!(0), json!(0))
    );
}
