//! Metrics per route: requests by status with latency, upstream errors, rate-limited count.

use std::collections::HashMap;

use gateway::metrics::GatewayMetrics;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};

use crate::common::{Config, TestGateway};
use crate::upstreams::{Mode, TestUpstream};

#[tokio::test]
async fn requests_errors_and_rate_limits_are_counted_per_route() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let metrics = GatewayMetrics::new(&provider.meter("gateway-test"));

    let up = TestUpstream::start("up", Mode::Echo).await;
    let mut down = TestUpstream::start("down", Mode::Echo).await;
    down.kill().await;
    let config = Config::new(
        &format!("up = [\"{}\"]\ndown = [\"{}\"]", up.url(), down.url()),
        r#"
[[routes]]
name = "app"
prefix = "/api/app"
pool = "up"
auth = "public"

[[routes]]
name = "dead"
prefix = "/api/dead"
pool = "down"
auth = "public"
retries = 0
"#,
    )
    .upstream_setting("eject_after_failures", "100")
    .rate_limit("per_user_per_second = 1\nper_user_burst = 3\nglobal_per_second = 0");
    let gw = TestGateway::start_with(&config, &[], Some(metrics)).await;

    assert_eq!(gw.get("/api/app/x", None).await.status(), 200);
    assert_eq!(gw.get("/api/app/x", None).await.status(), 200);
    assert_eq!(gw.get("/nowhere", None).await.status(), 404);
    assert_eq!(gw.get("/api/dead/x", None).await.status(), 503);
    assert_eq!(gw.get("/api/app/x", None).await.status(), 429);

    provider.force_flush().expect("flush");
    let mut counts: HashMap<String, u64> = HashMap::new();
    for resource in &exporter.get_finished_metrics().expect("metrics") {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics() {
                match metric.data() {
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for point in h.data_points() {
                            let attrs = attributes(point.attributes());
                            *counts
                                .entry(format!("{}{attrs}", metric.name()))
                                .or_default() += point.count();
                            assert!(point.sum() >= 0.0);
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Sum(s)) => {
                        for point in s.data_points() {
                            let attrs = attributes(point.attributes());
                            *counts
                                .entry(format!("{}{attrs}", metric.name()))
                                .or_default() += point.value();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let get = |key: &str| counts.get(key).copied().unwrap_or(0);
    let duration = "http.server.request.duration";
    assert_eq!(get(&format!("{duration}[app GET 200]")), 2, "{counts:#?}");
    assert_eq!(get(&format!("{duration}[app GET 429]")), 1, "{counts:#?}");
    assert_eq!(
        get(&format!("{duration}[unmatched GET 404]")),
        1,
        "{counts:#?}"
    );
    assert_eq!(get(&format!("{duration}[dead GET 503]")), 1, "{counts:#?}");
    assert_eq!(get("gateway.rate_limited[app user]"), 1, "{counts:#?}");
    assert_eq!(
        get(&format!(
            "gateway.upstream.errors[dead down {} connect]",
            down.url()
        )),
        1,
        "{counts:#?}"
    );
}

/// The attribute values in the order route, method/pool, status/upstream/scope, kind.
fn attributes<'a>(attrs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> String {
    let by_key: HashMap<String, String> = attrs
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect();
    let order = [
        "http.route",
        "http.request.method",
        "http.response.status_code",
        "pool",
        "upstream",
        "scope",
        "error.type",
    ];
    let values: Vec<&str> = order
        .iter()
        .filter_map(|k| by_key.get(*k).map(String::as_str))
        .collect();
    format!("[{}]", values.join(" "))
}
