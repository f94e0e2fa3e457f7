//! The order-service talks to every stock-service instance (`STOCK_URL` is a list): a dead
//! instance (nothing listening) or a stalled one (it accepts connections and never answers,
//! like a paused process) is ejected after a few failed calls or health checks, the orders go
//! on through the others, and a deduction retried on another instance stays one deduction
//! because it carries the order id. Real stock-service, PostgreSQL and Redis; the databases'
//! books are checked at the end.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;

use common::{http, orders, place, put_stock, stock, stock_audit, unique};

/// A port with nothing listening on it (a dead instance): connections are refused.
fn dead_instance() -> String {
    let port = testkit::free_port().expect("port");
    format!("http://127.0.0.1:{port}")
}

/// A listener that accepts connections and never answers (a paused instance); counts them.
async fn stalled_instance() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (format!("http://{addr}"), accepted)
}

async fn sell_sequentially(base: &str, sku: &str, n: usize) -> Vec<common::Answer> {
    let c = http();
    let mut answers = Vec::new();
    for _ in 0..n {
        let a = place(
            &c,
            base,
            &unique("u"),
            Some("k"),
            json!({"sku": sku, "qty": 1}),
        )
        .await;
        answers.push(a);
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_stock_instance_is_skipped_and_ejected() {
    let redis = testkit::redis_url();
    let s = stock(&redis, &[]).await;
    let urls = format!("{},{}", dead_instance(), s.url(""));
    let o = orders(
        &redis,
        "http://unused",
        &[("STOCK_URL", &urls), ("STOCK_HEALTH_INTERVAL_MS", "0")],
    )
    .await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 100, 4).await;

    let answers = sell_sequentially(&o.url(""), &sku, 12).await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
    }
    let instances = o.engine.stock.instances();
    assert!(instances[0].is_ejected(), "the dead instance is ejected");
    assert!(!instances[1].is_ejected());
    let audit = stock_audit(&c, &s.url(""), &sku).await;
    assert_eq!(audit["deducted"], 12, "{audit}");
    assert_eq!(audit["ok"], true, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_stock_instance_costs_a_few_timeouts_then_none() {
    let redis = testkit::redis_url();
    let s = stock(&redis, &[]).await;
    let (stalled, accepted) = stalled_instance().await;
    let urls = format!("{stalled},{}", s.url(""));
    let o = orders(
        &redis,
        "http://unused",
        &[
            ("STOCK_URL", &urls),
            ("STOCK_TIMEOUT_MS", "500"),
            ("STOCK_EJECT_AFTER", "2"),
            ("STOCK_HEALTH_INTERVAL_MS", "0"),
        ],
    )
    .await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 100, 4).await;

    let answers = sell_sequentially(&o.url(""), &sku, 12).await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
    }
    // Two timed-out calls ejected it; no order went there after that.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert!(o.engine.stock.instances()[0].is_ejected());
    // A deduction whose call timed out at the stalled instance was retried on the live one:
    // one deduction per order, nothing lost or doubled.
    let audit = stock_audit(&c, &s.url(""), &sku).await;
    assert_eq!(audit["deducted"], 12, "{audit}");
    assert_eq!(audit["ok"], true, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_checks_eject_a_dead_instance_and_take_it_back_when_it_serves() {
    let redis = testkit::redis_url();
    let s = stock(&redis, &[]).await;
    // The port of an instance that is down now and starts later.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let later = format!("http://127.0.0.1:{port}");
    let urls = format!("{later},{}", s.url(""));
    let o = orders(
        &redis,
        "http://unused",
        &[
            ("STOCK_URL", &urls),
            ("STOCK_HEALTH_INTERVAL_MS", "100"),
            ("STOCK_EJECT_AFTER", "2"),
        ],
    )
    .await;
    let first = Arc::clone(&o.engine.stock.instances()[0]);
    let eventually = |want: bool| {
        let first = Arc::clone(&first);
        async move {
            for _ in 0..50 {
                if first.is_ejected() == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(
        eventually(true).await,
        "health checks eject the dead instance"
    );
    // The instance starts (the real stock-service app on that port): it comes back.
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    let app = stock_service::app(s.engine.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert!(
        eventually(false).await,
        "a passing health check takes it back"
    );
}
