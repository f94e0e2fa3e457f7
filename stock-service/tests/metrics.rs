//! The stock-service's Prometheus metrics, read from a real `/metrics` scrape after real
//! traffic (PostgreSQL, Redis): lock wait and hold by strategy and segment (`all` for an
//! item-wide lock, db-pessimistic's row locks included), operations, fence rejections,
//! availability, and the oversold gauge, which the naive strategy drives above 0 while
//! segmented keeps it at 0.
//!
//! Its own test binary: it installs the process-wide meter provider.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use service_kit::metrics::Metrics;

use common::{Instance, deduct, flash_sale, http, instance, put_stock, sku};

/// The sample lines of `metric` (exact name) carrying every `label="value"` in `labels`.
fn samples<'a>(text: &'a str, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect()
}

fn value(line: &str) -> f64 {
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn assert_has(text: &str, metric: &str, labels: &[(&str, &str)]) {
    assert!(
        !samples(text, metric, labels).is_empty(),
        "no {metric} with {labels:?} in:\n{}",
        relevant(text)
    );
}

/// The stock, rlock and http lines of a scrape (for failure messages).
fn relevant(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn scrape(metrics_url: &str) -> String {
    http()
        .get(metrics_url)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text")
}

async fn serve_metrics(metrics: &Metrics) -> String {
    let addr = service_kit::server::spawn_on_loopback(metrics.router())
        .await
        .expect("serve");
    format!("http://{addr}/metrics")
}

async fn release(c: &reqwest::Client, i: &Instance, sku: &str, order_id: &str) -> StatusCode {
    c.post(i.url(&format!("/stock/{sku}/releases")))
        .json(&json!({"order_id": order_id}))
        .send()
        .await
        .expect("release")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_operation_and_oversold_metrics_show_up_in_a_scrape() {
    // Before any instance creates its instruments on the global meter.
    let metrics = Metrics::install("stock-service").expect("metrics");
    let metrics_url = serve_metrics(&metrics).await;
    let c = http();

    // segmented: per-segment locks; sells exactly its stock.
    let seg = instance(&[("STOCK_STRATEGY", "segmented"), ("RMW_DELAY_MS", "2")]).await;
    let seg_sku = sku();
    put_stock(&c, &seg, &seg_sku, 40, 4).await;
    let sold = flash_sale(&[&seg], &seg_sku, 120, 16).await;
    assert_eq!(sold.ok, 40, "{:?}", sold.other);
    // A multi-segment deduction and a release.
    let multi_sku = sku();
    put_stock(&c, &seg, &multi_sku, 6, 3).await;
    let (status, _) = deduct(&c, &seg, &multi_sku, &format!("{multi_sku}-five"), 5).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        release(&c, &seg, &multi_sku, &format!("{multi_sku}-five")).await,
        StatusCode::OK
    );

    // naive under the same kind of load oversells (two instances, a race window).
    let vars = [("STOCK_STRATEGY", "naive"), ("RMW_DELAY_MS", "2")];
    let naive_a = instance(&vars).await;
    let naive_b = instance(&vars).await;
    let naive_sku = sku();
    put_stock(&c, &naive_a, &naive_sku, 100, 8).await;
    let naive = flash_sale(&[&naive_a, &naive_b], &naive_sku, 1000, 64).await;
    assert!(naive.ok > 100, "naive sold only {}", naive.ok);

    // redis-lock: one lock over the whole item.
    let item_lock = instance(&[("STOCK_STRATEGY", "redis-lock")]).await;
    let item_sku = sku();
    put_stock(&c, &item_lock, &item_sku, 10, 2).await;
    assert_eq!(flash_sale(&[&item_lock], &item_sku, 5, 2).await.ok, 5);

    // db-pessimistic: the row locks' wait and hold.
    let rows = instance(&[("STOCK_STRATEGY", "db-pessimistic")]).await;
    let rows_sku = sku();
    put_stock(&c, &rows, &rows_sku, 10, 2).await;
    assert_eq!(flash_sale(&[&rows], &rows_sku, 5, 2).await.ok, 5);

    // A fence rejection: a holder paused past its fixed lease while another one wrote.
    let slow = instance(&[("LOCK_LEASE_MS", "300"), ("RMW_DELAY_MS", "1200")]).await;
    let fast = instance(&[("LOCK_LEASE_MS", "300")]).await;
    let fence_sku = sku();
    put_stock(&c, &slow, &fence_sku, 10, 1).await;
    let paused = {
        let (c, url, order) = (
            c.clone(),
            slow.url(&format!("/stock/{fence_sku}/deductions")),
            format!("{fence_sku}-paused"),
        );
        tokio::spawn(async move {
            c.post(url)
                .json(&json!({"order_id": order, "qty": 1}))
                .send()
                .await
                .expect("post")
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _) = deduct(&c, &fast, &fence_sku, &format!("{fence_sku}-prompt"), 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(paused.await.expect("task"), StatusCode::SERVICE_UNAVAILABLE);

    // The oversold gauge is recomputed in the background about every second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&metrics_url).await;
        let naive_oversold = samples(&text, "stock_oversold_units", &[("sku", &naive_sku)]);
        let seg_oversold = samples(&text, "stock_oversold_units", &[("sku", &seg_sku)]);
        let ready =
            naive_oversold.first().is_some_and(|l| value(l) > 0.0) && !seg_oversold.is_empty();
        if ready || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let naive_line = samples(&text, "stock_oversold_units", &[("sku", &naive_sku)]);
    let oversold = naive_line.first().map_or(0.0, |l| value(l));
    assert_eq!(
        oversold,
        (naive.ok - 100) as f64,
        "naive oversold {} units: {naive_line:?}",
        naive.ok - 100
    );
    for clean in [&seg_sku, &multi_sku, &item_sku, &rows_sku, &fence_sku] {
        let line = samples(&text, "stock_oversold_units", &[("sku", clean)]);
        assert_eq!(line.len(), 1, "{clean}:\n{}", relevant(&text));
        assert_eq!(value(line[0]), 0.0, "{line:?}");
    }

    // Lock wait and hold, per segment; `all` for the item-wide lock.
    for metric in [
        "stock_lock_wait_duration_seconds_count",
        "stock_lock_hold_duration_seconds_count",
    ] {
        for segment in ["0", "1", "2", "3"] {
            assert_has(
                &text,
                metric,
                &[("strategy", "segmented"), ("segment", segment)],
            );
        }
        assert_has(
            &text,
            metric,
            &[("strategy", "redis-lock"), ("segment", "all")],
        );
        assert_has(&text, metric, &[("strategy", "db-pessimistic")]);
        // Strategies without a lock record none.
        assert!(samples(&text, metric, &[("strategy", "naive")]).is_empty());
    }
    assert_has(
        &text,
        "stock_lock_wait_duration_seconds_bucket",
        &[
            ("strategy", "segmented"),
            ("acquired", "true"),
            ("le", "0.0005"),
        ],
    );
    assert!(
        samples(&text, "stock_lock_hold_duration_seconds_count", &[])
            .iter()
            .all(|l| !l.contains("acquired=")),
        "hold has no acquired label"
    );
    // One lock wait per acquisition: a group of combined single-segment deductions takes
    // its segment's lock at most once (a worker whose queue stays busy keeps it for the next
    // group); the multi-segment deduction and its release observe one per segment. The 40
    // sales went through groups, and under 16 in flight on 4 segments with a 2 ms critical
    // section some groups held more than one deduction.
    let total = |metric: &str| -> f64 {
        samples(&text, metric, &[("strategy", "segmented")])
            .iter()
            .map(|l| value(l))
            .sum()
    };
    let seg_waits = total("stock_lock_wait_duration_seconds_count");
    let groups = total("stock_group_size_count");
    let grouped = total("stock_group_size_sum");
    assert!(
        grouped >= 40.0,
        "every sale went through a group: {grouped}"
    );
    assert!(
        grouped > groups,
        "groups larger than one were formed: {grouped} deductions in {groups} groups"
    );
    assert!(
        seg_waits > 6.0 && seg_waits <= groups + 6.0,
        "{seg_waits} waits, {groups} groups"
    );

    assert_has(
        &text,
        "stock_operations_total",
        &[("strategy", "segmented"), ("outcome", "ok")],
    );
    assert_has(
        &text,
        "stock_operations_total",
        &[("strategy", "segmented"), ("outcome", "released")],
    );
    assert_has(
        &text,
        "stock_operations_total",
        &[("strategy", "segmented"), ("outcome", "sold_out")],
    );
    assert_has(
        &text,
        "stock_fence_rejections_total",
        &[("strategy", "segmented")],
    );
    // Availability after deductions and the release: all of multi_sku is back.
    let available: f64 = samples(&text, "stock_available", &[("sku", &multi_sku)])
        .iter()
        .map(|l| value(l))
        .sum();
    assert_eq!(available, 6.0, "{}", relevant(&text));
    for segment in ["0", "1", "2"] {
        assert_has(
            &text,
            "stock_available",
            &[("sku", &multi_sku), ("segment", segment)],
        );
    }
    let seg_left: f64 = samples(&text, "stock_available", &[("sku", &seg_sku)])
        .iter()
        .map(|l| value(l))
        .sum();
    assert_eq!(seg_left, 0.0);
    // A reset sets the item's numbers afresh.
    put_stock(&c, &seg, &seg_sku, 8, 4).await;
    let text = scrape(&metrics_url).await;
    let refilled: f64 = samples(&text, "stock_available", &[("sku", &seg_sku)])
        .iter()
        .map(|l| value(l))
        .sum();
    assert_eq!(refilled, 8.0);

    // The lock library's own instruments, and request metrics.
    assert_has(&text, "rlock_wait_duration_seconds_count", &[]);
    assert_has(
        &text,
        "rlock_acquisitions_total",
        &[("outcome", "acquired")],
    );
    assert_has(
        &text,
        "http_server_request_duration_seconds_count",
        &[
            ("http_route", "/stock/{sku}/deductions"),
            ("http_request_method", "POST"),
            ("http_response_status_code", "200"),
        ],
    );
    println!("{}", relevant(&text));
}
