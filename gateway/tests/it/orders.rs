//! The gateway in front of the real order-service and stock-service (PostgreSQL, Redis):
//! an order POST the gateway retries after a dropped connection still makes one order.

use serde_json::{Value, json};

use crate::common::{Config, TestGateway, expect_problem, http, read, services, unique};
use crate::upstreams::{Mode, TestUpstream};

fn shop_config(orders_pool: &str, stock_pool: &str) -> Config {
    Config::new(
        &format!("orders = [\"{orders_pool}\"]\nstock = [\"{stock_pool}\"]"),
        r#"
[[routes]]
name = "orders"
prefix = "/api/orders"
rewrite = "/orders"
pool = "orders"
auth = "user"
timeout_ms = 8000
retries = 2

[[routes]]
name = "stock"
prefix = "/api/stock"
rewrite = "/stock"
pool = "stock"
auth = "admin"
methods = { GET = "public", HEAD = "public" }
timeout_ms = 5000
"#,
    )
    .upstream_setting("eject_after_failures", "10")
}

#[tokio::test]
async fn a_retried_order_post_makes_exactly_one_order() {
    let (stock_url, orders_url) = services("seckill_stock_test", "seckill_order_test", None).await;
    // In front of the order-service: forwards the first attempt, then drops the connection
    // before the gateway sees the answer (the order *was* made).
    let flaky = TestUpstream::start(
        "flaky",
        Mode::Forward {
            target: orders_url.clone(),
            drop_first: 1,
        },
    )
    .await;
    let gw = TestGateway::start(&shop_config(&flaky.url(), &stock_url)).await;
    let sku = unique("sku");
    let alice = unique("alice");
    let token = gw.token(&alice).await;
    let admin = gw.admin_token().await;

    // Stock writes need the admin token; reads are public.
    let put = |token: &str| {
        gw.http
            .put(gw.url(&format!("/api/stock/{sku}")))
            .bearer_auth(token)
            .json(&json!({"total": 10, "segments": 2}))
            .send()
    };
    expect_problem(put(&token).await.expect("put"), 403).await;
    let (status, _, _) = read(put(&admin).await.expect("put")).await;
    assert_eq!(status, 200);
    let (status, _, item) = read(gw.get(&format!("/api/stock/{sku}"), None).await).await;
    assert_eq!(status, 200, "{item}");

    // The order: attempt 1 reaches the order-service and its answer is lost; the gateway
    // retries (POST with Idempotency-Key) and the client gets the order's 201, replayed.
    let response = gw
        .http
        .post(gw.url("/api/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "order-1")
        .header("x-user-id", "somebody-else")
        .json(&json!({"sku": sku, "qty": 1}))
        .send()
        .await
        .expect("post");
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, headers, order) = read(response).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(
        replayed.as_deref(),
        Some("true"),
        "the retry was answered by a replay"
    );
    assert_eq!(order["status"], "reserved");
    assert!(headers.contains_key("location"));
    assert_eq!(flaky.hits(), 2, "the gateway retried once");

    // Exactly one order exists, and it is alice's (the forged x-user-id was stripped).
    let (status, _, list) = read(gw.get("/api/orders", Some(&token)).await).await;
    assert_eq!(status, 200);
    let list = list.as_array().expect("list").clone();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["order_id"], order["order_id"]);
    let direct: Value = http()
        .get(format!("{orders_url}/orders"))
        .header("x-user-id", "somebody-else")
        .send()
        .await
        .expect("direct")
        .json()
        .await
        .expect("json");
    assert!(
        direct
            .as_array()
            .expect("list")
            .iter()
            .all(|o| o["order_id"] != order["order_id"])
    );

    // One unit deducted, books balanced.
    let (_, _, audit) = read(gw.get(&format!("/api/stock/{sku}/audit"), None).await).await;
    assert_eq!(audit["ok"], true, "{audit}");
    let (_, _, item) = read(gw.get(&format!("/api/stock/{sku}"), None).await).await;
    assert_eq!(item["available"], 9, "{item}");
}

#[tokio::test]
async fn bad_order_input_gets_4xx_from_the_service_through_the_gateway() {
    let (stock_url, orders_url) = services("seckill_stock_test", "seckill_order_test", None).await;
    let gw = TestGateway::start(&shop_config(&orders_url, &stock_url)).await;
    let token = gw.token(&unique("bob")).await;
    let post = |key: Option<&str>, body: &str| {
        let mut request = gw
            .http
            .post(gw.url("/api/orders"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(k) = key {
            request = request.header("idempotency-key", k);
        }
        request.send()
    };
    let problem = expect_problem(
        post(None, r#"{"sku":"x","qty":1}"#).await.expect("post"),
        400,
    )
    .await;
    assert_eq!(problem["type"], "/problems/idempotency-key-missing");
    expect_problem(post(Some("k"), "{").await.expect("post"), 400).await;
    expect_problem(
        post(Some("k2"), r#"{"sku":"x","qty":0}"#)
            .await
            .expect("post"),
        422,
    )
    .await;
    // Without a token the order-service is never asked.
    let r = gw
        .http
        .post(gw.url("/api/orders"))
        .header("x-user-id", "mallory")
        .header("idempotency-key", "k3")
        .json(&json!({"sku": "x", "qty": 1}))
        .send()
        .await
        .expect("post");
    expect_problem(r, 401).await;
}
