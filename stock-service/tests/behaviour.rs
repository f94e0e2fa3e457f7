//! Stock-service behaviour against real PostgreSQL and Redis: idempotency, fencing, Redis
//! losing its data, multi-segment deductions, releases, the sold-out flag, bad input.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::RedisServer;

use common::{
    audit, deduct, flash_sale, get_json, http, instance, instance_on, put_stock, sku, spawn_deduct,
};

fn segments_of(item: &Value) -> Vec<i64> {
    item["segments"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["available"].as_i64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_repeated_deduction_replays_the_first_and_changes_nothing() {
    let i = instance(&[]).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &i, &sku, 10, 2).await;
    let (s1, first) = deduct(&c, &i, &sku, &format!("{sku}-order-1"), 3).await;
    let (s2, second) = deduct(&c, &i, &sku, &format!("{sku}-order-1"), 3).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first["replayed"], false);
    assert_eq!(second["replayed"], true);
    assert_eq!(first["parts"], second["parts"]);
    let (_, item) = get_json(&c, i.url(&format!("/stock/{sku}"))).await;
    assert_eq!(item["available"], 7);
    // Same order id, other quantity: still the first result (the order id is the key).
    let (_, third) = deduct(&c, &i, &sku, &format!("{sku}-order-1"), 5).await;
    assert_eq!(third["qty"], 3);
    let (status, found) =
        get_json(&c, i.url(&format!("/stock/{sku}/deductions/{sku}-order-1"))).await;
    assert_eq!((status, found["qty"].clone()), (StatusCode::OK, json!(3)));
    let (status, _) = get_json(&c, i.url(&format!("/stock/{sku}/deductions/never"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_of_one_order_deduct_once() {
    let a = instance(&[("RMW_DELAY_MS", "5")]).await;
    let b = instance(&[("RMW_DELAY_MS", "5")]).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 50, 4).await;
    let tasks: Vec<_> = (0..20)
        .map(|k| {
            let c = c.clone();
            let url = if k % 2 == 0 { a.url("") } else { b.url("") };
            let sku = sku.clone();
            tokio::spawn(async move {
                c.post(format!("{url}/stock/{sku}/deductions"))
                    .json(&json!({"order_id": format!("{sku}-dup"), "qty": 2}))
                    .send()
                    .await
                    .expect("post")
                    .status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["deducted"], 2, "one order, deducted once: {report}");
    assert_eq!(report["available"], 48);
}

/// A holder whose lock expired in the middle of its critical section (no watchdog, paused
/// past its lease while another holder wrote) has its write fenced out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_whose_lease_ran_out_is_fenced_out() {
    let slow = instance(&[("LOCK_LEASE_MS", "500"), ("RMW_DELAY_MS", "3000")]).await;
    let fast = instance(&[("LOCK_LEASE_MS", "500")]).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &slow, &sku, 10, 1).await;
    let paused = spawn_deduct(&c, &slow, &sku, &format!("{sku}-paused"), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await; // the slow holder's lease is over
    let (status, _) = deduct(&c, &fast, &sku, &format!("{sku}-prompt"), 1).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the lock expired, so the second holder gets it"
    );
    let (status, body) = paused.await.expect("task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["type"], "/problems/lock-lost");
    let report = audit(&c, &fast, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        report["available"], 9,
        "only the prompt holder's write counts: {report}"
    );
    let (status, _) = get_json(
        &c,
        fast.url(&format!("/stock/{sku}/deductions/{sku}-paused")),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the fenced-out deduction left no trace"
    );
}

/// FLUSHALL in the middle of a sale: locks, fencing counters, cache and flags are gone. No
/// oversell, and the service carries on (it re-seeds the counters above the database's
/// fences).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_losing_its_data_mid_sale_oversells_nothing_and_recovers() {
    flush_mid_sale("segmented").await;
}

/// redis-atomic's gate is in Redis: after the flush its counters are re-seeded from the
/// database, and the SQL guard keeps it from overselling whatever Redis says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_atomic_survives_redis_losing_its_counters() {
    flush_mid_sale("redis-atomic").await;
}

async fn flush_mid_sale(strategy: &str) {
    let redis = RedisServer::start().expect("redis-server");
    let vars = [("RMW_DELAY_MS", "2"), ("STOCK_STRATEGY", strategy)];
    let a = instance_on(&redis.url(), &vars).await;
    let b = instance_on(&redis.url(), &vars).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 300, 4).await;
    let before = flash_sale(&[&a, &b], &sku, 80, 16).await;
    assert_eq!(before.ok, 80, "{:?}", before.other);

    let mut conn = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    // Flush while a sale is running ...
    let during = {
        let sku = sku.clone();
        tokio::spawn(async move {
            let t = flash_sale(&[&a, &b], &sku, 150, 32).await;
            (t, a, b)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flushall");
    let (during, a, b) = during.await.expect("sale");
    // ... and keep selling: every fencing counter restarted below the database's fences, so
    // nothing more would sell unless the service re-seeds them.
    let after = flash_sale(&[&a, &b], &sku, 300, 32).await;

    // Requests in flight at the flush may be refused (lock lost), never oversold.
    for t in [&during, &after] {
        assert!(t.other.iter().all(|(s, _)| *s == 503), "{:?}", t.other);
    }
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["oversold"], 0);
    assert_eq!(report["deducted"], (80 + during.ok + after.ok) as i64);
    assert_eq!(
        80 + during.ok + after.ok,
        300,
        "the rest of the stock sold after the flush"
    );
    assert!(after.ok > 0);
}

#[tokio::test]
async fn a_deduction_spans_segments_when_no_single_one_covers_it() {
    for strategy in [
        "segmented",
        "redis-lock",
        "db-pessimistic",
        "db-optimistic",
        "redis-atomic",
        "naive",
    ] {
        let i = instance(&[("STOCK_STRATEGY", strategy)]).await;
        let c = http();
        let sku = sku();
        put_stock(&c, &i, &sku, 6, 3).await;
        let (status, body) = deduct(&c, &i, &sku, &format!("{sku}-five"), 5).await;
        assert_eq!(status, StatusCode::OK, "{strategy}: {body}");
        assert_eq!(
            body["parts"].as_array().map(Vec::len),
            Some(3),
            "{strategy}: {body}"
        );
        let (_, item) = get_json(&c, i.url(&format!("/stock/{sku}"))).await;
        assert_eq!(item["available"], 1, "{strategy}");

        let sku2 = common::sku();
        put_stock(&c, &i, &sku2, 6, 3).await;
        let (status, body) = deduct(&c, &i, &sku2, &format!("{sku2}-seven"), 7).await;
        assert_eq!(status, StatusCode::CONFLICT, "{strategy}: {body}");
        assert_eq!(body["type"], "/problems/insufficient-stock");
        assert_eq!(body["available"], 6);
        let (_, item) = get_json(&c, i.url(&format!("/stock/{sku2}"))).await;
        assert_eq!(
            segments_of(&item),
            [2, 2, 2],
            "{strategy}: nothing may change"
        );
        assert_eq!(audit(&c, &i, &sku2).await["ok"], true);
    }
}

#[tokio::test]
async fn release_puts_stock_back_once_and_only_for_deducted_orders() {
    release_once("segmented").await;
}

#[tokio::test]
async fn redis_atomic_release_puts_stock_back_once() {
    release_once("redis-atomic").await;
}

async fn release_once(strategy: &str) {
    let i = instance(&[("STOCK_STRATEGY", strategy)]).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &i, &sku, 4, 2).await;
    let (_, d) = deduct(&c, &i, &sku, &format!("{sku}-r-1"), 3).await;
    let release = |order: &'static str| {
        let c = c.clone();
        let order = format!("{sku}-{order}");
        let url = i.url(&format!("/stock/{sku}/releases"));
        async move {
            let r = c
                .post(url)
                .json(&json!({"order_id": order}))
                .send()
                .await
                .expect("post");
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, first) = release("r-1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["parts"], d["parts"], "back where it came from");
    let (status, again) = release("r-1").await;
    assert_eq!(
        (status, again["replayed"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (status, body) = release("never-deducted").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let report = audit(&c, &i, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        (report["available"].clone(), report["released"].clone()),
        (json!(4), json!(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_is_answered_fast_everywhere_and_cleared_everywhere_by_a_restock_or_release() {
    // A long local TTL: only the broadcasts can clear the flags in time.
    let vars = [("SOLD_OUT_TTL_MS", "60000")];
    let a = instance(&vars).await;
    let b = instance(&vars).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 1, 1).await;
    assert_eq!(
        deduct(&c, &a, &sku, &format!("{sku}-only"), 1).await.0,
        StatusCode::OK
    );
    let (status, body) = deduct(&c, &a, &sku, &format!("{sku}-late"), 1).await;
    assert_eq!(
        (status, body["type"].clone()),
        (StatusCode::CONFLICT, json!("/problems/sold-out"))
    );
    assert!(
        eventually(|| b.stock.cache.is_sold_out(&sku)).await,
        "b learned it from a's broadcast"
    );
    // A release on one instance clears the flag on the other.
    let r = c
        .post(a.url(&format!("/stock/{sku}/releases")))
        .json(&json!({"order_id": format!("{sku}-only")}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(eventually(|| async { !b.stock.cache.is_sold_out(&sku).await }).await);
    assert_eq!(
        deduct(&c, &b, &sku, &format!("{sku}-second"), 1).await.0,
        StatusCode::OK
    );
    // Sold out again, then a restock through b clears a.
    assert_eq!(
        deduct(&c, &b, &sku, &format!("{sku}-third"), 1).await.0,
        StatusCode::CONFLICT
    );
    assert!(eventually(|| a.stock.cache.is_sold_out(&sku)).await);
    put_stock(&c, &b, &sku, 5, 2).await;
    assert!(eventually(|| async { !a.stock.cache.is_sold_out(&sku).await }).await);
    assert_eq!(
        deduct(&c, &a, &sku, &format!("{sku}-fourth"), 1).await.0,
        StatusCode::OK
    );
}

/// Poll `check` for up to 3 s.
async fn eventually<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..60 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_changes_nothing() {
    let i = instance(&[]).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &i, &sku, 10, 2).await;
    let url = i.url(&format!("/stock/{sku}/deductions"));
    let cases: Vec<(&str, String, u16)> = vec![
        ("qty 0", json!({"order_id": "x", "qty": 0}).to_string(), 422),
        (
            "negative qty",
            json!({"order_id": "x", "qty": -3}).to_string(),
            422,
        ),
        (
            "huge qty",
            r#"{"order_id": "x", "qty": 100000000000000000000000}"#.into(),
            422,
        ),
        (
            "qty over the limit",
            json!({"order_id": "x", "qty": 10001}).to_string(),
            422,
        ),
        (
            "non-numeric qty",
            json!({"order_id": "x", "qty": "five"}).to_string(),
            422,
        ),
        ("missing qty", json!({"order_id": "x"}).to_string(), 422),
        (
            "unknown field",
            json!({"order_id": "x", "qty": 1, "price": 0}).to_string(),
            422,
        ),
        (
            "bad order id",
            json!({"order_id": "a b", "qty": 1}).to_string(),
            422,
        ),
        ("malformed JSON", r#"{"order_id": "x", "qty": "#.into(), 400),
        (
            "oversized body",
            json!({"order_id": "x".repeat(100_000), "qty": 1}).to_string(),
            413,
        ),
    ];
    for (what, body, expected) in cases {
        let r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), expected, "{what}");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert_eq!(ct, "application/problem+json", "{what}");
    }
    let (status, body) = deduct(&c, &i, "no-such-item", "x", 1).await;
    assert_eq!(
        (status, body["type"].clone()),
        (StatusCode::NOT_FOUND, json!("/problems/unknown-item"))
    );
    let (status, _) = get_json(&c, i.url("/stock/bad%7Bsku%7D")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = c
        .put(i.url(&format!("/stock/{sku}")))
        .json(&json!({"total": -1, "segments": 2}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = c
        .put(i.url(&format!("/stock/{sku}")))
        .json(&json!({"total": 5, "segments": 0}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let report = audit(&c, &i, &sku).await;
    assert_eq!(
        (
            report["ok"].clone(),
            report["available"].clone(),
            report["deducted"].clone()
        ),
        (json!(true), json!(10), json!(0))
    );
}

#[tokio::test]
async fn serves_its_openapi_document_and_healthz() {
    let i = instance(&[]).await;
    let c = http();
    let (status, doc) = get_json(&c, i.url("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/stock/{sku}",
        "/stock/{sku}/deductions",
        "/stock/{sku}/releases",
        "/stock/{sku}/audit",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let (status, health) = get_json(&c, i.url("/healthz")).await;
    assert_eq!(
        (status, health["service"].clone()),
        (StatusCode::OK, json!("stock-service"))
    );
}
