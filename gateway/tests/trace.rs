//! One order placed through the gateway is one trace across gateway → order-service →
//! stock-service, with the right parent links, and the stock-service's lock and transaction
//! spans inside it. The real services run in-process on PostgreSQL and Redis; spans go to an
//! in-memory exporter through the same `tracing-opentelemetry` layer the binaries install.
//!
//! Its own test binary: it installs the process-wide subscriber.

#[allow(dead_code)]
#[path = "it/common.rs"]
mod common;

use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use common::{Config, TestGateway, eventually, http, unique};

/// The client's own trace context: the gateway's server span must continue it.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == Key::new(key.to_owned()))
        .map(|kv| &kv.value)
}

fn attr_str(span: &SpanData, key: &str) -> String {
    attr(span, key).map(Value::to_string).unwrap_or_default()
}

/// The one span of `kind` named `name` (whose `key` attribute, if given, is `value`).
fn find<'a>(
    spans: &'a [SpanData],
    name: &str,
    kind: SpanKind,
    filter: Option<(&str, &str)>,
) -> &'a SpanData {
    let found: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == name && s.span_kind == kind)
        .filter(|s| filter.is_none_or(|(k, v)| attr_str(s, k) == v))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind:?} span {name:?} {filter:?}, got {}; all spans:\n{}",
        found.len(),
        describe(spans)
    );
    found[0]
}

fn describe(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {} span={} parent={}",
                s.span_context.trace_id(),
                s.span_kind,
                s.name,
                s.span_context.span_id(),
                s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_child(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} should be a child of {}",
        child.name,
        parent.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_through_the_gateway_is_one_trace_across_the_services() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("trace-test")))
        .init();

    let (stock_url, orders_url) =
        common::services("seckill_stock_test", "seckill_order_test", None).await;
    let config = Config::new(
        &format!("orders = [\"{orders_url}\"]\nstock = [\"{stock_url}\"]"),
        r#"
[[routes]]
name = "orders"
prefix = "/api/orders"
rewrite = "/orders"
pool = "orders"
auth = "user"
timeout_ms = 8000
"#,
    );
    let gw = TestGateway::start(&config).await;
    let sku = unique("trace");
    let c = http();
    let put = c
        .put(format!("{stock_url}/stock/{sku}"))
        .json(&json!({"total": 10, "segments": 2}))
        .send()
        .await
        .expect("put stock");
    assert_eq!(put.status(), 200);
    let token = gw.token(&unique("buyer")).await;
    exporter.reset();

    let response = c
        .post(gw.url("/api/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", unique("key"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"sku": sku, "qty": 1}))
        .send()
        .await
        .expect("order");
    assert_eq!(response.status(), 201);
    let _ = response.text().await;

    // The server spans end when their response bodies are done: wait for the gateway's.
    let done = eventually(Duration::from_secs(5), || async {
        exporter.get_finished_spans().is_ok_and(|spans| {
            spans.iter().any(|s| {
                s.span_kind == SpanKind::Server && attr_str(s, "url.path") == "/api/orders"
            })
        })
    })
    .await;
    let spans = exporter.get_finished_spans().expect("spans");
    assert!(done, "no gateway server span:\n{}", describe(&spans));

    let trace = TraceId::from_hex(CLIENT_TRACE).expect("trace id");
    let client_span = SpanId::from_hex(CLIENT_SPAN).expect("span id");
    let in_trace: Vec<SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .cloned()
        .collect();

    // gateway
    let gw_server = find(
        &in_trace,
        "POST",
        SpanKind::Server,
        Some(("url.path", "/api/orders")),
    );
    assert_eq!(gw_server.parent_span_id, client_span);
    assert!(gw_server.parent_span_is_remote);
    let gw_upstream = find(&in_trace, "POST orders", SpanKind::Client, None);
    assert_child(gw_upstream, gw_server);
    assert_eq!(attr_str(gw_upstream, "http.response.status_code"), "201");
    // order-service
    let order_server = find(&in_trace, "POST /orders", SpanKind::Server, None);
    assert_child(order_server, gw_upstream);
    assert!(order_server.parent_span_is_remote);
    let claim = find(
        &in_trace,
        "db.transaction",
        SpanKind::Client,
        Some(("order.operation", "claim")),
    );
    assert_child(claim, order_server);
    assert_eq!(attr_str(claim, "db.system.name"), "postgresql");
    let finish = find(
        &in_trace,
        "db.transaction",
        SpanKind::Client,
        Some(("order.operation", "finish")),
    );
    assert_child(finish, order_server);
    let deduct_call = find(&in_trace, "stock.deduct", SpanKind::Internal, None);
    assert_child(deduct_call, order_server);
    let stock_client = find(
        &in_trace,
        "POST /stock/{sku}/deductions",
        SpanKind::Client,
        None,
    );
    assert_child(stock_client, deduct_call);
    // stock-service
    let stock_server = find(
        &in_trace,
        "POST /stock/{sku}/deductions",
        SpanKind::Server,
        None,
    );
    assert_child(stock_server, stock_client);
    assert!(stock_server.parent_span_is_remote);
    assert_eq!(attr_str(stock_server, "http.response.status_code"), "200");
    let wait = find(&in_trace, "lock.wait", SpanKind::Internal, None);
    assert_child(wait, stock_server);
    assert_eq!(attr_str(wait, "strategy"), "segmented");
    assert_eq!(attr_str(wait, "acquired"), "true");
    assert!(
        ["0", "1"].contains(&attr_str(wait, "segment").as_str()),
        "segment {}",
        attr_str(wait, "segment")
    );
    let hold = find(&in_trace, "lock.hold", SpanKind::Internal, None);
    assert_child(hold, stock_server);
    assert_eq!(attr_str(hold, "segment"), attr_str(wait, "segment"));
    let tx = find(
        &in_trace,
        "db.transaction",
        SpanKind::Client,
        Some(("stock.operation", "deduct")),
    );
    assert_child(tx, hold);
    assert_eq!(attr_str(tx, "db.system.name"), "postgresql");
    assert!(
        wait.end_time <= hold.start_time,
        "hold starts after the wait"
    );

    // Nothing of this request ended up in another trace.
    let strays: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() != trace)
        .filter(|s| ["lock.wait", "lock.hold", "stock.deduct"].contains(&s.name.as_ref()))
        .collect();
    assert!(strays.is_empty(), "spans outside the trace: {strays:?}");
}
