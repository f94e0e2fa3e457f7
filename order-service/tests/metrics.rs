//! The order-service's Prometheus metrics from a real `/metrics` scrape after real orders:
//! outcomes, and every Idempotency-Key result (new, replayed, mismatch, in_flight).
//!
//! Its own test binary: it installs the process-wide meter provider.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use service_kit::metrics::Metrics;

use common::{http, orders, place, put_stock, stock, unique};

fn count(text: &str, metric: &str, label: (&str, &str)) -> f64 {
    let wanted = format!("{}=\"{}\"", label.0, label.1);
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&wanted))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_outcomes_and_idempotency_results_are_counted() {
    let metrics = Metrics::install("order-service").expect("metrics");
    let redis = testkit::redis_url();
    let s = stock(&redis, &[("RMW_DELAY_MS", "600")]).await;
    let o = orders(&redis, &s.url(""), &[]).await;
    let metrics_addr = service_kit::server::spawn_on_loopback(metrics.router())
        .await
        .expect("serve");
    let metrics_url = format!("http://{metrics_addr}/metrics");

    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 1, 1).await;
    let user = unique("u");
    let body = json!({"sku": sku, "qty": 1});
    // new (slow: the stock-service pauses), and meanwhile the same key again: in_flight.
    let first = {
        let (c, url, user, body) = (c.clone(), o.url(""), user.clone(), body.clone());
        tokio::spawn(async move { place(&c, &url, &user, Some("k1"), body).await })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    let busy = place(&c, &o.url(""), &user, Some("k1"), body.clone()).await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.raw);
    assert_eq!(first.await.expect("first").status, StatusCode::CREATED);
    // replayed, then mismatch (same key, other body).
    let again = place(&c, &o.url(""), &user, Some("k1"), body).await;
    assert!(again.replayed);
    let other = place(
        &c,
        &o.url(""),
        &user,
        Some("k1"),
        json!({"sku": sku, "qty": 2}),
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The last unit is gone: rejected.
    let late = place(
        &c,
        &o.url(""),
        &unique("u"),
        Some("k2"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.raw);

    let text = http()
        .get(&metrics_url)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let show = || {
        text.lines()
            .filter(|l| l.starts_with("orders_"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for result in ["new", "replayed", "mismatch", "in_flight"] {
        assert!(
            count(&text, "orders_idempotency_total", ("result", result)) >= 1.0,
            "{result}:\n{}",
            show()
        );
    }
    assert_eq!(
        count(&text, "orders_idempotency_total", ("result", "new")),
        2.0,
        "{}",
        show()
    );
    assert_eq!(
        count(&text, "orders_outcomes_total", ("outcome", "reserved")),
        1.0,
        "{}",
        show()
    );
    assert!(
        count(&text, "orders_outcomes_total", ("outcome", "rejected"))
            + count(&text, "orders_outcomes_total", ("outcome", "sold_out_fast"))
            >= 1.0,
        "{}",
        show()
    );
    assert!(
        count(
            &text,
            "http_server_request_duration_seconds_count",
            ("http_route", "/orders")
        ) >= 5.0,
        "{text}"
    );
}
