//! Test harness: real PostgreSQL and Redis, real HTTP, several service instances in one
//! process (each with its own pool, lock client and cache), unique SKUs per test.

#![allow(dead_code)]

use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::{Value, json};
use service_kit::config::Env;
use stock_service::{Stock, StockConfig};

/// A running instance.
pub struct Instance {
    pub addr: SocketAddr,
    pub stock: Stock,
}

impl Instance {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A database of its own for these tests.
pub async fn database_url() -> String {
    testkit::database("seckill_stock_test")
        .await
        .expect("test database")
}

/// Start an instance with `vars` on top of test defaults.
pub async fn instance(vars: &[(&str, &str)]) -> Instance {
    instance_on(&testkit::redis_url(), vars).await
}

/// Start an instance whose Redis is `redis_url`.
pub async fn instance_on(redis_url: &str, vars: &[(&str, &str)]) -> Instance {
    let db = database_url().await;
    let mut pairs: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db),
        ("REDIS_URL".into(), redis_url.to_owned()),
        ("BIND_ADDR".into(), "127.0.0.1:0".into()),
        ("LOCK_WAIT_MS".into(), "30000".into()),
        ("DB_MAX_CONNECTIONS".into(), "12".into()),
    ];
    for (k, v) in vars {
        pairs.retain(|(name, _)| name != k);
        pairs.push(((*k).to_owned(), (*v).to_owned()));
    }
    let config = StockConfig::from_source(&Env::from_pairs(pairs)).expect("config");
    let stock = stock_service::connect(config).await.expect("connect");
    let addr = service_kit::server::spawn_on_loopback(stock_service::app(stock.clone()))
        .await
        .expect("serve");
    Instance { addr, stock }
}

/// A SKU no other test uses.
pub fn sku() -> String {
    format!("t-{}", uuid::Uuid::new_v4().simple())
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

pub async fn put_stock(
    c: &reqwest::Client,
    i: &Instance,
    sku: &str,
    total: i64,
    segments: i32,
) -> Value {
    let r = c
        .put(i.url(&format!("/stock/{sku}")))
        .json(&json!({"total": total, "segments": segments}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("json")
}

pub async fn deduct(
    c: &reqwest::Client,
    i: &Instance,
    sku: &str,
    order_id: &str,
    qty: i64,
) -> (StatusCode, Value) {
    let r = c
        .post(i.url(&format!("/stock/{sku}/deductions")))
        .json(&json!({"order_id": order_id, "qty": qty}))
        .send()
        .await
        .expect("post");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Send a deduction in the background; its status and body.
pub fn spawn_deduct(
    c: &reqwest::Client,
    i: &Instance,
    sku: &str,
    order_id: &str,
    qty: i64,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let (c, url) = (c.clone(), i.url(&format!("/stock/{sku}/deductions")));
    let body = json!({"order_id": order_id, "qty": qty});
    tokio::spawn(async move {
        let r = c.post(url).json(&body).send().await.expect("post");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    })
}

/// The tests' database, read directly (not through a service).
pub async fn db() -> sqlx::PgPool {
    sqlx::PgPool::connect(&database_url().await)
        .await
        .expect("connect to the test database")
}

/// Ledger rows (any kind) of these orders, read from the database.
pub async fn ledger_rows(db: &sqlx::PgPool, order_ids: &[String]) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM stock_movements WHERE order_id = ANY($1)")
        .bind(order_ids)
        .fetch_one(db)
        .await
        .expect("count ledger rows")
}

/// Units left of `sku` over all its segments, read from the database.
pub async fn available(db: &sqlx::PgPool, sku: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(available), 0)::bigint FROM stock_segments WHERE sku = $1",
    )
    .bind(sku)
    .fetch_one(db)
    .await
    .expect("sum of segments")
}

pub async fn get_json(c: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let r = c.get(url).send().await.expect("get");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn audit(c: &reqwest::Client, i: &Instance, sku: &str) -> Value {
    let (status, body) = get_json(c, i.url(&format!("/stock/{sku}/audit"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Outcome counts of a flash sale.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: usize,
    pub sold_out: usize,
    pub other: Vec<(u16, String)>,
}

/// `n` concurrent deductions of qty 1 over `instances` (round robin), `parallel` in flight.
pub async fn flash_sale(instances: &[&Instance], sku: &str, n: usize, parallel: usize) -> Tally {
    use futures_util::StreamExt;
    let c = http();
    let results: Vec<(StatusCode, Value)> = futures_util::stream::iter(0..n)
        .map(|k| {
            let c = c.clone();
            let inst = instances[k % instances.len()];
            let url = inst.url(&format!("/stock/{sku}/deductions"));
            async move {
                let r = c
                    .post(url)
                    .json(&json!({"order_id": format!("o-{k}-{}", uuid::Uuid::new_v4().simple()), "qty": 1}))
                    .send()
                    .await
                    .expect("post");
                let status = r.status();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut t = Tally::default();
    for (status, body) in results {
        match status.as_u16() {
            200 => t.ok += 1,
            409 if body["type"] == "/problems/sold-out" => t.sold_out += 1,
            s => t.other.push((s, body.to_string())),
        }
    }
    t
}
