//! The order-service against the real stock-service, PostgreSQL and Redis.

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::RedisServer;

use common::{call, http, orders, place, put_stock, stock, stock_audit, unique};

async fn shop(
    stock_vars: &[(&str, &str)],
    order_vars: &[(&str, &str)],
) -> (
    common::Served<stock_service::Stock>,
    common::Served<order_service::Orders>,
) {
    let redis = testkit::redis_url();
    let s = stock(&redis, stock_vars).await;
    let o = orders(&redis, &s.url(""), order_vars).await;
    (s, o)
}

#[tokio::test]
async fn a_key_replays_its_first_response_exactly_and_refuses_another_body() {
    let (s, o) = shop(&[], &[("PURCHASE_LIMIT", "5")]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 10, 2).await;
    let user = unique("u");
    let body = json!({"sku": sku, "qty": 2});
    let first = place(&c, &o.url(""), &user, Some("key-1"), body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.raw);
    assert_eq!(first.body["status"], "reserved");
    assert!(first.body["pay_by"].is_string());
    assert!(!first.replayed);
    let again = place(&c, &o.url(""), &user, Some("key-1"), body.clone()).await;
    assert_eq!(
        (again.status, again.raw.as_str(), again.location.as_deref()),
        (first.status, first.raw.as_str(), first.location.as_deref())
    );
    assert!(again.replayed);
    // Quoted (RFC 8941 string) form of the same key.
    let quoted = place(&c, &o.url(""), &user, Some("\"key-1\""), body.clone()).await;
    assert_eq!(quoted.raw, first.raw);
    let other = place(
        &c,
        &o.url(""),
        &user,
        Some("key-1"),
        json!({"sku": sku, "qty": 3}),
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["type"], "/problems/idempotency-key-reused");
    // The key is scoped to the user: another user's same key is a new order.
    let stranger = place(&c, &o.url(""), &unique("u"), Some("key-1"), body).await;
    assert_eq!(stranger.status, StatusCode::CREATED);
    assert_ne!(stranger.body["order_id"], first.body["order_id"]);
    assert_eq!(stock_audit(&c, &s.url(""), &sku).await["deducted"], 4);
}

#[tokio::test]
async fn a_key_still_in_progress_gets_409_and_can_be_retried() {
    let (s, o) = shop(&[("RMW_DELAY_MS", "800")], &[]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 5, 1).await;
    let user = unique("u");
    let body = json!({"sku": sku, "qty": 1});
    let first = {
        let (c, url, user, body) = (c.clone(), o.url(""), user.clone(), body.clone());
        tokio::spawn(async move { place(&c, &url, &user, Some("slow"), body).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = place(&c, &o.url(""), &user, Some("slow"), body.clone()).await;
    assert_eq!(second.status, StatusCode::CONFLICT, "{}", second.raw);
    assert_eq!(second.body["type"], "/problems/request-in-progress");
    let first = first.await.expect("first");
    assert_eq!(first.status, StatusCode::CREATED);
    let third = place(&c, &o.url(""), &user, Some("slow"), body).await;
    assert_eq!((third.status, third.raw), (StatusCode::CREATED, first.raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_requests_make_one_order() {
    let (s, o) = shop(&[("RMW_DELAY_MS", "20")], &[]).await;
    let o2 = orders(&testkit::redis_url(), &s.url(""), &[]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 100, 4).await;
    let user = unique("u");
    let tasks: Vec<_> = (0..50)
        .map(|k| {
            let url = if k % 2 == 0 { o.url("") } else { o2.url("") };
            let (c, user, sku) = (c.clone(), user.clone(), sku.clone());
            tokio::spawn(async move {
                place(&c, &url, &user, Some("same"), json!({"sku": sku, "qty": 1})).await
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut in_progress = 0;
    for t in tasks {
        let a = t.await.expect("task");
        match a.status {
            StatusCode::CREATED => created.push(a),
            StatusCode::CONFLICT if a.body["type"] == "/problems/request-in-progress" => {
                in_progress += 1
            }
            other => panic!("unexpected {other}: {}", a.raw),
        }
    }
    assert_eq!(created.len() + in_progress, 50);
    assert!(
        created
            .iter()
            .all(|a| a.body["order_id"] == created[0].body["order_id"]),
        "one order id"
    );
    assert_eq!(
        created.iter().filter(|a| !a.replayed).count(),
        1,
        "exactly one original response"
    );
    let mine = call(&c, Method::GET, o.url("/orders"), &user).await;
    assert_eq!(mine.body.as_array().map(Vec::len), Some(1), "{}", mine.raw);
    assert_eq!(stock_audit(&c, &s.url(""), &sku).await["deducted"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_orders_of_one_user_yield_exactly_the_limit() {
    let (s, o) = shop(&[("RMW_DELAY_MS", "5")], &[("PURCHASE_LIMIT", "2")]).await;
    let o2 = orders(
        &testkit::redis_url(),
        &s.url(""),
        &[("PURCHASE_LIMIT", "2")],
    )
    .await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 100, 4).await;
    let user = unique("u");
    let tasks: Vec<_> = (0..20)
        .map(|k| {
            let url = if k % 2 == 0 { o.url("") } else { o2.url("") };
            let (c, user, sku) = (c.clone(), user.clone(), sku.clone());
            tokio::spawn(async move {
                place(
                    &c,
                    &url,
                    &user,
                    Some(&format!("k{k}")),
                    json!({"sku": sku, "qty": 1}),
                )
                .await
            })
        })
        .collect();
    let mut reserved = 0;
    let mut limited = 0;
    for t in tasks {
        let a = t.await.expect("task");
        match (a.status, a.body["type"].as_str()) {
            (StatusCode::CREATED, _) => reserved += 1,
            (StatusCode::CONFLICT, Some("/problems/purchase-limit")) => {
                assert!(a.body["order_id"].is_string());
                limited += 1;
            }
            _ => panic!("unexpected: {}", a.raw),
        }
    }
    assert_eq!((reserved, limited), (2, 18));
    assert_eq!(stock_audit(&c, &s.url(""), &sku).await["deducted"], 2);
    // Cancelling one frees one unit of the limit.
    let mine = call(&c, Method::GET, o.url("/orders"), &user).await;
    let id = mine
        .body
        .as_array()
        .and_then(|a| a.iter().find(|o| o["status"] == "reserved"))
        .map(|o| o["order_id"].clone())
        .expect("a reserved order");
    let id = id.as_str().expect("id");
    assert_eq!(
        call(
            &c,
            Method::POST,
            o.url(&format!("/orders/{id}/cancel")),
            &user
        )
        .await
        .status,
        StatusCode::OK
    );
    let again = place(
        &c,
        &o.url(""),
        &user,
        Some("after-cancel"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.raw);
}

#[tokio::test]
async fn pay_and_cancel_are_idempotent_and_illegal_transitions_are_refused() {
    let (s, o) = shop(&[], &[("PURCHASE_LIMIT", "3")]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 10, 2).await;
    let user = unique("u");
    let order_url = |a: &common::Answer, what: &str| {
        o.url(&format!(
            "/orders/{}{what}",
            a.body["order_id"].as_str().unwrap_or("")
        ))
    };

    let a = place(
        &c,
        &o.url(""),
        &user,
        Some("a"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    let paid = call(&c, Method::POST, order_url(&a, "/pay"), &user).await;
    assert_eq!(
        (paid.status, paid.body["status"].clone()),
        (StatusCode::OK, json!("paid"))
    );
    let again = call(&c, Method::POST, order_url(&a, "/pay"), &user).await;
    assert_eq!(
        (again.status, again.body["status"].clone()),
        (StatusCode::OK, json!("paid"))
    );
    let cancel_paid = call(&c, Method::POST, order_url(&a, "/cancel"), &user).await;
    assert_eq!(
        (cancel_paid.status, cancel_paid.body["type"].clone()),
        (StatusCode::CONFLICT, json!("/problems/illegal-transition"))
    );

    let b = place(
        &c,
        &o.url(""),
        &user,
        Some("b"),
        json!({"sku": sku, "qty": 2}),
    )
    .await;
    let cancelled = call(&c, Method::POST, order_url(&b, "/cancel"), &user).await;
    assert_eq!(
        (cancelled.status, cancelled.body["status"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    let twice = call(&c, Method::POST, order_url(&b, "/cancel"), &user).await;
    assert_eq!(twice.status, StatusCode::OK);
    let pay_cancelled = call(&c, Method::POST, order_url(&b, "/pay"), &user).await;
    assert_eq!(pay_cancelled.status, StatusCode::CONFLICT);

    // Not yours: 404, and nothing changes.
    let stranger = unique("u");
    assert_eq!(
        call(&c, Method::GET, order_url(&a, ""), &stranger)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&c, Method::POST, order_url(&b, "/pay"), &stranger)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&c, Method::GET, order_url(&a, ""), &user).await.body["status"],
        "paid"
    );

    let audit = stock_audit(&c, &s.url(""), &sku).await;
    assert_eq!(audit["ok"], true, "{audit}");
    assert_eq!(
        (
            audit["deducted"].clone(),
            audit["released"].clone(),
            audit["available"].clone()
        ),
        (json!(3), json!(2), json!(9))
    );
}

#[tokio::test]
async fn an_unpaid_order_is_cancelled_after_the_timeout_and_its_stock_released() {
    let (s, o) = shop(&[], &[("PAYMENT_TIMEOUT_SECS", "1")]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 3, 1).await;
    let user = unique("u");
    let a = place(
        &c,
        &o.url(""),
        &user,
        Some("unpaid"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let late = call(
        &c,
        Method::POST,
        o.url(&format!(
            "/orders/{}/pay",
            a.body["order_id"].as_str().unwrap_or("")
        )),
        &user,
    )
    .await;
    assert_eq!(
        late.status,
        StatusCode::CONFLICT,
        "the payment window closed: {}",
        late.raw
    );
    // Worker passes (this test's; other tests' workers share the database and may get there
    // first) until the order is settled.
    let url = o.url(&format!(
        "/orders/{}",
        a.body["order_id"].as_str().unwrap_or("")
    ));
    for _ in 0..50 {
        order_service::recovery::run_once(&o.engine)
            .await
            .expect("pass");
        let now = call(&c, Method::GET, url.clone(), &user).await;
        let audit = stock_audit(&c, &s.url(""), &sku).await;
        if now.body["status"] == "cancelled" && audit["available"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = call(
        &c,
        Method::GET,
        o.url(&format!(
            "/orders/{}",
            a.body["order_id"].as_str().unwrap_or("")
        )),
        &user,
    )
    .await;
    assert_eq!(
        (now.body["status"].clone(), now.body["reason"].clone()),
        (json!("cancelled"), json!("payment-timeout"))
    );
    let audit = stock_audit(&c, &s.url(""), &sku).await;
    assert_eq!(
        (audit["ok"].clone(), audit["available"].clone()),
        (json!(true), json!(3)),
        "{audit}"
    );
}

/// A request that died after the stock was deducted but before the order was updated leaves
/// a pending order; once its lease runs out the worker settles it, and the key replays it.
#[tokio::test]
async fn the_worker_settles_an_order_whose_request_died_mid_way() {
    let (s, o) = shop(&[], &[("ORDER_LEASE_MS", "1000"), ("PURCHASE_LIMIT", "5")]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 5, 1).await;
    let user = unique("u");
    let cfg = &o.engine.config;
    let body = order_service::orders::PlaceOrder {
        sku: sku.clone(),
        qty: 2,
    };
    // The dead request's steps: claim (pending order) and the deduction, then nothing.
    let died_after = order_service::store::claim(
        &o.engine.pool,
        &user,
        "died-after",
        &body.fingerprint(),
        &sku,
        2,
        cfg.idempotency_ttl,
        cfg.order_lease,
        cfg.purchase_limit,
    )
    .await
    .expect("claim");
    let order_service::store::Claim::New { order_id, .. } = died_after else {
        panic!("new claim expected")
    };
    let r = c
        .post(s.url(&format!("/stock/{sku}/deductions")))
        .json(&json!({"order_id": order_id.to_string(), "qty": 2}))
        .send()
        .await
        .expect("deduct");
    assert_eq!(r.status(), StatusCode::OK);
    // And one that died before deducting.
    let died_before = order_service::store::claim(
        &o.engine.pool,
        &user,
        "died-before",
        &body.fingerprint(),
        &sku,
        2,
        cfg.idempotency_ttl,
        cfg.order_lease,
        cfg.purchase_limit,
    )
    .await
    .expect("claim");
    let order_service::store::Claim::New {
        order_id: before_id,
        ..
    } = died_before
    else {
        panic!("new claim expected")
    };

    // While the lease holds, a retry of the key is told to wait.
    let early = place(
        &c,
        &o.url(""),
        &user,
        Some("died-after"),
        json!({"sku": sku, "qty": 2}),
    )
    .await;
    assert_eq!(early.status, StatusCode::CONFLICT, "{}", early.raw);
    tokio::time::sleep(Duration::from_millis(2200)).await; // lease and grace over
    // Worker passes until both are settled (another test's worker, sharing the database,
    // may be the one that settles them).
    for _ in 0..50 {
        order_service::recovery::run_once(&o.engine)
            .await
            .expect("pass");
        let mut settled = 0;
        for id in [order_id, before_id] {
            let got = call(&c, Method::GET, o.url(&format!("/orders/{id}")), &user).await;
            settled += usize::from(got.body["status"] != "pending");
        }
        if settled == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (key, id) in [("died-after", order_id), ("died-before", before_id)] {
        let got = call(&c, Method::GET, o.url(&format!("/orders/{id}")), &user).await;
        assert_eq!(got.body["status"], "reserved", "{key}: {}", got.raw);
        let retry = place(
            &c,
            &o.url(""),
            &user,
            Some(key),
            json!({"sku": sku, "qty": 2}),
        )
        .await;
        assert_eq!(
            (retry.status, retry.replayed),
            (StatusCode::CREATED, true),
            "{key}: {}",
            retry.raw
        );
        assert_eq!(retry.body["order_id"], id.to_string());
    }
    let audit = stock_audit(&c, &s.url(""), &sku).await;
    assert_eq!(
        (audit["ok"].clone(), audit["deducted"].clone()),
        (json!(true), json!(4)),
        "deducted once per order: {audit}"
    );
}

#[tokio::test]
async fn stock_service_down_gives_503_and_leaves_nothing_half_done() {
    let redis = testkit::redis_url();
    let port = testkit::free_port().expect("port");
    let o = orders(
        &redis,
        &format!("http://127.0.0.1:{port}"),
        &[("STOCK_RETRIES", "1")],
    )
    .await;
    let c = http();
    let user = unique("u");
    let body = json!({"sku": unique("sku"), "qty": 1});
    let started = std::time::Instant::now();
    let a = place(&c, &o.url(""), &user, Some("down"), body.clone()).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.raw);
    assert_eq!(a.body["type"], "/problems/stock-unavailable");
    assert!(
        !a.raw.contains("127.0.0.1") && !a.raw.contains("error"),
        "no internal error text reaches the client: {}",
        a.raw
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a quick answer, not a hang"
    );
    // Nothing half-done: no pending order, no held limit, and the key can be used afresh.
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1 AND status = 'pending'")
            .bind(&user)
            .fetch_one(&o.engine.pool)
            .await
            .expect("count");
    let totals: Option<i64> =
        sqlx::query_scalar("SELECT qty FROM purchase_totals WHERE user_id = $1")
            .bind(&user)
            .fetch_optional(&o.engine.pool)
            .await
            .expect("totals");
    assert_eq!((pending, totals.unwrap_or(0)), (0, 0));
    let again = place(&c, &o.url(""), &user, Some("down"), body).await;
    assert_eq!(
        again.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a fresh attempt, not a replay: {}",
        again.raw
    );
}

#[tokio::test]
async fn bad_input_gets_4xx_and_changes_nothing() {
    let (s, o) = shop(&[], &[]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 5, 1).await;
    let user = unique("u");
    let url = o.url("/orders");
    let post = |key: Option<&'static str>, user: Option<&str>, body: String| {
        let mut r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        if let Some(u) = user {
            r = r.header("x-user-id", u.to_owned());
        }
        r.send()
    };
    let ok_body = json!({"sku": sku, "qty": 1}).to_string();
    let long_key: &'static str = Box::leak("k".repeat(256).into_boxed_str());
    /// What, key, user, body, expected status.
    type Case<'a> = (&'a str, Option<&'static str>, Option<&'a str>, String, u16);
    let cases: Vec<Case> = vec![
        ("no key", None, Some(&user), ok_body.clone(), 400),
        ("empty key", Some(""), Some(&user), ok_body.clone(), 400),
        (
            "key too long",
            Some(long_key),
            Some(&user),
            ok_body.clone(),
            400,
        ),
        (
            "key with a space",
            Some("a b"),
            Some(&user),
            ok_body.clone(),
            400,
        ),
        ("no user", Some("k1"), None, ok_body.clone(), 401),
        (
            "qty 0",
            Some("k2"),
            Some(&user),
            json!({"sku": sku, "qty": 0}).to_string(),
            422,
        ),
        (
            "negative qty",
            Some("k3"),
            Some(&user),
            json!({"sku": sku, "qty": -1}).to_string(),
            422,
        ),
        (
            "non-numeric qty",
            Some("k4"),
            Some(&user),
            json!({"sku": sku, "qty": "one"}).to_string(),
            422,
        ),
        (
            "bad sku",
            Some("k5"),
            Some(&user),
            json!({"sku": "a b", "qty": 1}).to_string(),
            422,
        ),
        (
            "malformed JSON",
            Some("k6"),
            Some(&user),
            "{\"sku\":".into(),
            400,
        ),
    ];
    for (what, key, who, body, expected) in cases {
        let r = common::answer(post(key, who, body).await.expect("post")).await;
        assert_eq!(r.status.as_u16(), expected, "{what}: {}", r.raw);
        assert_eq!(r.content_type, "application/problem+json", "{what}");
    }
    let unknown = common::place(
        &c,
        &o.url(""),
        &user,
        Some("k7"),
        json!({"sku": unique("nope"), "qty": 1}),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.body["type"].clone()),
        (StatusCode::NOT_FOUND, json!("/problems/unknown-item"))
    );
    let mine = call(&c, Method::GET, o.url("/orders"), &user).await;
    assert_eq!(
        mine.body.as_array().map(Vec::len),
        Some(0),
        "no order may be left: {}",
        mine.raw
    );
    let audit = stock_audit(&c, &s.url(""), &sku).await;
    assert_eq!(
        (audit["available"].clone(), audit["deducted"].clone()),
        (json!(5), json!(0))
    );
    let bad_id = call(&c, Method::GET, o.url("/orders/not-a-uuid"), &user).await;
    assert!(bad_id.status.is_client_error());
}

/// After the item sells out, new keys are refused from Redis alone, but a retried key whose
/// first attempt succeeded still gets its original success. When Redis loses its data the
/// fast path stays off until the worker has rebuilt the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sold_out_fast_path_never_breaks_a_replay() {
    let redis = RedisServer::start().expect("redis-server");
    let s = stock(&redis.url(), &[]).await;
    let o = orders(&redis.url(), &s.url(""), &[]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 1, 1).await;
    let lucky = unique("u");
    let won = place(
        &c,
        &o.url(""),
        &lucky,
        Some("win"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(won.status, StatusCode::CREATED);
    let late = place(
        &c,
        &o.url(""),
        &unique("u"),
        Some("late"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(late.body["type"], "/problems/sold-out", "{}", late.raw);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The fast path: a new buyer is refused without a database row.
    let newcomer = unique("u");
    let fast = place(
        &c,
        &o.url(""),
        &newcomer,
        Some("fast"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(
        (fast.status, fast.body["type"].clone()),
        (StatusCode::CONFLICT, json!("/problems/sold-out"))
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
        .bind(&newcomer)
        .fetch_one(&o.engine.pool)
        .await
        .expect("count");
    assert_eq!(rows, 0, "the fast path must not touch the database");
    // The winner's retry still replays the success.
    let retry = place(
        &c,
        &o.url(""),
        &lucky,
        Some("win"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(
        (retry.status, retry.raw.as_str(), retry.replayed),
        (StatusCode::CREATED, won.raw.as_str(), true)
    );

    // Redis loses everything; the stock-service marks the item sold out again.
    let mut conn = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flushall");
    let again = place(
        &c,
        &o.url(""),
        &unique("u"),
        Some("again"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let retry = place(
        &c,
        &o.url(""),
        &lucky,
        Some("win"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(
        (retry.status, retry.raw.as_str()),
        (StatusCode::CREATED, won.raw.as_str()),
        "replayed from the database"
    );
    // The worker rebuilds the records; the fast path is back and still replays.
    order_service::recovery::run_once(&o.engine)
        .await
        .expect("pass");
    let retry = place(
        &c,
        &o.url(""),
        &lucky,
        Some("win"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(
        (retry.status, retry.raw.as_str()),
        (StatusCode::CREATED, won.raw.as_str())
    );
}

#[tokio::test]
async fn expired_keys_are_pruned_and_then_make_a_new_order() {
    let (s, o) = shop(
        &[],
        &[("IDEMPOTENCY_TTL_SECS", "1"), ("PURCHASE_LIMIT", "5")],
    )
    .await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 5, 1).await;
    let user = unique("u");
    let body = json!({"sku": sku, "qty": 1});
    let first = place(&c, &o.url(""), &user, Some("short-lived"), body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    order_service::recovery::run_once(&o.engine)
        .await
        .expect("pass");
    // Pruned (by this pass or a concurrent test's worker pass).
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE user_id = $1")
        .bind(&user)
        .fetch_one(&o.engine.pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "the expired key must be pruned");
    let second = place(&c, &o.url(""), &user, Some("short-lived"), body).await;
    assert_eq!(
        (second.status, second.replayed),
        (StatusCode::CREATED, false),
        "{}",
        second.raw
    );
    assert_ne!(second.body["order_id"], first.body["order_id"]);
}

#[tokio::test]
async fn the_order_audit_counts_an_items_orders_for_admins_only() {
    let (s, o) = shop(&[], &[("PURCHASE_LIMIT", "1")]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 3, 1).await;
    let run = unique("run");
    let buyer = |n: u32| format!("{run}-b{n}");
    let buy = |user: String, key: &'static str| {
        let (c, url, sku) = (c.clone(), o.url(""), sku.clone());
        async move { place(&c, &url, &user, Some(key), json!({"sku": sku, "qty": 1})).await }
    };
    let audit_as = |role: Option<&'static str>, query: &'static str| {
        let (c, url) = (c.clone(), o.url(&format!("/orders/audit/{sku}{query}")));
        async move {
            let mut request = c.get(url).header("x-user-id", "admin");
            if let Some(role) = role {
                request = request.header("x-user-role", role);
            }
            common::answer(request.send().await.expect("audit")).await
        }
    };

    // b1 pays, b2 cancels (its unit goes back), b3 and b4 hold reservations, b1 again is over
    // the limit, b5 finds the item sold out; someone outside the run buys too.
    let b1 = buy(buyer(1), "k1").await;
    let paid = call(
        &c,
        Method::POST,
        o.url(&format!(
            "/orders/{}/pay",
            b1.body["order_id"].as_str().unwrap()
        )),
        &buyer(1),
    )
    .await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.raw);
    let b2 = buy(buyer(2), "k1").await;
    let cancelled = call(
        &c,
        Method::POST,
        o.url(&format!(
            "/orders/{}/cancel",
            b2.body["order_id"].as_str().unwrap()
        )),
        &buyer(2),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.raw);
    assert_eq!(buy(buyer(3), "k1").await.status, StatusCode::CREATED);
    assert_eq!(
        buy(buyer(1), "k2").await.body["type"],
        "/problems/purchase-limit"
    );
    assert_eq!(buy(buyer(4), "k1").await.status, StatusCode::CREATED);
    assert_eq!(buy(buyer(5), "k1").await.status, StatusCode::CONFLICT);
    assert_eq!(
        buy(unique("other"), "k1").await.status,
        StatusCode::CONFLICT
    );

    // Only admins (the gateway sets x-user-role from the verified token).
    for role in [None, Some("user"), Some("Admin ")] {
        let refused = audit_as(role, "").await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{role:?}: {}",
            refused.raw
        );
        assert_eq!(refused.content_type, "application/problem+json");
        assert_eq!(refused.body["type"], "/problems/forbidden");
    }
    let all = audit_as(Some("admin"), "").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.raw);
    assert!(all.body["users"].as_i64().unwrap() >= 5, "{}", all.raw);

    let query: &'static str = Box::leak(format!("?user_prefix={run}-").into_boxed_str());
    let audit = audit_as(Some("admin"), query).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.raw);
    let a = &audit.body;
    assert_eq!(a["sku"], json!(sku));
    assert_eq!(a["user_prefix"], json!(format!("{run}-")));
    assert_eq!(a["orders"]["paid"], json!({"count": 1, "qty": 1}), "{a}");
    assert_eq!(
        a["orders"]["cancelled"],
        json!({"count": 1, "qty": 1}),
        "{a}"
    );
    assert_eq!(
        a["orders"]["reserved"],
        json!({"count": 2, "qty": 2}),
        "{a}"
    );
    assert_eq!(a["orders"]["pending"], json!({"count": 0, "qty": 0}), "{a}");
    // b1's limit refusal at least; b5 may have been answered by the sold-out fast path.
    assert!(
        a["orders"]["rejected"]["count"].as_i64().unwrap() >= 1,
        "{a}"
    );
    assert_eq!(
        a["cancelled_unreleased"],
        json!({"count": 0, "qty": 0}),
        "{a}"
    );
    assert_eq!(a["users"], 5, "{a}");
    assert_eq!(
        (
            a["keys_with_several_orders"].clone(),
            a["orders_without_key"].clone(),
            a["users_over_limit"].clone(),
            a["purchase_limit"].clone(),
        ),
        (json!(0), json!(0), json!(0), json!(1)),
        "{a}"
    );
    let ledger = stock_audit(&c, &s.url(""), &sku).await;
    assert_eq!(
        a["holding_stock_qty"].as_i64().unwrap(),
        ledger["deducted"].as_i64().unwrap() - ledger["released"].as_i64().unwrap(),
        "{a} vs {ledger}"
    );

    // A second reservation slipped past the limit and the key table: the audit shows both.
    sqlx::query(
        "INSERT INTO orders (id, user_id, sku, qty, status) VALUES ($1, $2, $3, 1, 'reserved')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(buyer(3))
    .bind(&sku)
    .execute(&o.engine.pool)
    .await
    .unwrap();
    let audit = audit_as(Some("admin"), query).await;
    assert_eq!(
        (
            audit.body["users_over_limit"].clone(),
            audit.body["orders_without_key"].clone(),
            audit.body["orders"]["reserved"]["count"].clone(),
        ),
        (json!(1), json!(1), json!(3)),
        "{}",
        audit.raw
    );

    // Bad input is a problem, not a 500.
    let bad = audit_as(Some("admin"), "?user_prefix=a&user_prefix=b").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.raw);
    let bad_sku = common::answer(
        c.get(o.url("/orders/audit/no%20spaces"))
            .header("x-user-role", "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        bad_sku.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        bad_sku.raw
    );
}

/// Two shops on one Redis (their own databases, their own `ORDER_KEY_PREFIX`): the same user
/// and key make an order in each; neither replays the other's answer from Redis.
#[tokio::test]
async fn shops_sharing_a_redis_keep_their_replay_records_apart() {
    let redis = testkit::redis_url();
    let s = stock(&redis, &[]).await;
    let tag = unique("shop");
    let a = orders(
        &redis,
        &s.url(""),
        &[("ORDER_KEY_PREFIX", &format!("{tag}-a"))],
    )
    .await;
    let other_db = common::database("seckill_order_test_other").await;
    let b = orders(
        &redis,
        &s.url(""),
        &[
            ("ORDER_KEY_PREFIX", &format!("{tag}-b")),
            ("DATABASE_URL", &other_db),
        ],
    )
    .await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 10, 1).await;
    let user = unique("u");
    let body = json!({"sku": sku, "qty": 1});
    let in_a = place(&c, &a.url(""), &user, Some("same-key"), body.clone()).await;
    let in_b = place(&c, &b.url(""), &user, Some("same-key"), body).await;
    assert_eq!(
        (in_a.status, in_b.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert!(
        !in_b.replayed,
        "shop b replayed shop a's answer: {}",
        in_b.raw
    );
    assert_ne!(in_a.body["order_id"], in_b.body["order_id"]);
}
