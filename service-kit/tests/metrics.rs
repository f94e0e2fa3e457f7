//! `/metrics` exposes OpenTelemetry instruments, including request duration by route and
//! status, in Prometheus text format.

use axum::Router;
use axum::routing::get;
use service_kit::metrics::{Metrics, with_http_metrics};

#[tokio::test]
async fn metrics_endpoint_shows_request_duration_by_route_and_status() {
    let metrics = Metrics::install("metrics-test").expect("install");
    let counter = opentelemetry::global::meter("test")
        .u64_counter("widgets.sold")
        .build();
    counter.add(3, &[]);
    let app = with_http_metrics(Router::new().route("/items/{id}", get(|| async { "ok" })))
        .merge(metrics.router());
    let addr = service_kit::server::spawn_on_loopback(app)
        .await
        .expect("serve");
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    for id in 1..=3 {
        let r = c
            .get(format!("http://{addr}/items/{id}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
    }
    let text = c
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count")
                && l.contains("http_route=\"/items/{id}\"")
        })
        .unwrap_or_else(|| panic!("no request duration for the route in:\n{text}"));
    assert!(line.contains("http_response_status_code=\"200\""), "{line}");
    assert!(line.ends_with(" 3"), "three requests: {line}");
    assert!(
        text.contains("le=\"0.0005\""),
        "exponential buckets from 0.5 ms"
    );
    assert!(
        text.contains("widgets_sold_total"),
        "global instruments are exported"
    );
}
