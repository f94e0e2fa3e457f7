//! Test harness: the real stock-service and order-service in-process (each instance with its
//! own pools and Redis connections), real PostgreSQL and Redis, real HTTP.

#![allow(dead_code)]

use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::{Value, json};
use service_kit::config::Env;

/// A served app.
pub struct Served<T> {
    pub addr: SocketAddr,
    pub engine: T,
}

impl<T> Served<T> {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A database named `name` on the test PostgreSQL (created if missing).
pub async fn database(name: &str) -> String {
    testkit::database(name).await.expect("test database")
}

fn env(base: Vec<(String, String)>, vars: &[(&str, &str)]) -> Env {
    let mut pairs = base;
    for (k, v) in vars {
        pairs.retain(|(name, _)| name != k);
        pairs.push(((*k).to_owned(), (*v).to_owned()));
    }
    Env::from_pairs(pairs)
}

/// A stock-service instance on `redis`.
pub async fn stock(redis: &str, vars: &[(&str, &str)]) -> Served<stock_service::Stock> {
    let base = vec![
        ("DATABASE_URL".into(), database("seckill_stock_test").await),
        ("REDIS_URL".into(), redis.to_owned()),
        ("DB_MAX_CONNECTIONS".into(), "8".into()),
        ("LOCK_WAIT_MS".into(), "20000".into()),
    ];
    let config = stock_service::StockConfig::from_source(&env(base, vars)).expect("stock config");
    let engine = stock_service::connect(config).await.expect("stock connect");
    let addr = service_kit::server::spawn_on_loopback(stock_service::app(engine.clone()))
        .await
        .expect("serve");
    Served { addr, engine }
}

/// An order-service instance talking to `stock_url`, recovery worker off (tests run passes).
pub async fn orders(
    redis: &str,
    stock_url: &str,
    vars: &[(&str, &str)],
) -> Served<order_service::Orders> {
    let base = vec![
        ("DATABASE_URL".into(), database("seckill_order_test").await),
        ("REDIS_URL".into(), redis.to_owned()),
        ("STOCK_URL".into(), stock_url.to_owned()),
        ("DB_MAX_CONNECTIONS".into(), "8".into()),
        ("RECOVERY_INTERVAL_MS".into(), "0".into()),
        ("STOCK_TIMEOUT_MS".into(), "5000".into()),
    ];
    let config = order_service::OrderConfig::from_source(&env(base, vars)).expect("order config");
    let engine = order_service::connect(config).await.expect("order connect");
    let addr = service_kit::server::spawn_on_loopback(order_service::app(engine.clone()))
        .await
        .expect("serve");
    Served { addr, engine }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

pub async fn put_stock(c: &reqwest::Client, stock_url: &str, sku: &str, total: i64, segments: i32) {
    let r = c
        .put(format!("{stock_url}/stock/{sku}"))
        .json(&json!({"total": total, "segments": segments}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
}

/// A response: status, headers we care about, JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub replayed: bool,
    pub content_type: String,
    pub location: Option<String>,
    pub body: Value,
    pub raw: String,
}

pub async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status();
    let h = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let replayed = h("idempotent-replayed").as_deref() == Some("true");
    let content_type = h("content-type").unwrap_or_default();
    let location = h("location");
    let raw = r.text().await.unwrap_or_default();
    Answer {
        status,
        replayed,
        content_type,
        location,
        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
    }
}

/// POST /orders as `user` with `key` (None: no header).
pub async fn place(
    c: &reqwest::Client,
    base: &str,
    user: &str,
    key: Option<&str>,
    body: Value,
) -> Answer {
    let mut req = c
        .post(format!("{base}/orders"))
        .header("x-user-id", user)
        .json(&body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    answer(req.send().await.expect("post")).await
}

pub async fn call(c: &reqwest::Client, method: reqwest::Method, url: String, user: &str) -> Answer {
    answer(
        c.request(method, url)
            .header("x-user-id", user)
            .send()
            .await
            .expect("request"),
    )
    .await
}

pub async fn stock_audit(c: &reqwest::Client, stock_url: &str, sku: &str) -> Value {
    let r = c
        .get(format!("{stock_url}/stock/{sku}/audit"))
        .send()
        .await
        .expect("audit");
    r.json().await.expect("json")
}
