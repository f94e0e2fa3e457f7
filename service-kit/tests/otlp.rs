//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans really leave the process: a tiny OTLP/HTTP
//! receiver gets `POST /v1/traces` with a protobuf body once the guard flushes.
//!
//! Its own test binary: `init_from` installs the process-wide subscriber.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use service_kit::config::Env;
use service_kit::telemetry;

#[derive(Debug, Clone)]
struct Received {
    content_type: String,
    bytes: usize,
    service_name_seen: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_posted_to_the_configured_otlp_endpoint() {
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let sink = Arc::clone(&received);
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let content_type = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                // The protobuf carries strings verbatim: the service name must be in there.
                let service_name_seen = body.windows(9).any(|w| w == b"otlp-test");
                sink.lock().expect("lock").push(Received {
                    content_type,
                    bytes: body.len(),
                    service_name_seen,
                });
                StatusCode::OK
            }
        }),
    );
    let addr = service_kit::server::spawn_on_loopback(app)
        .await
        .expect("serve");

    let env = Env::from_pairs([
        (
            telemetry::OTEL_EXPORTER_OTLP_ENDPOINT,
            format!("http://{addr}"),
        ),
        (telemetry::OTEL_SERVICE_NAME, "otlp-test".to_owned()),
        (telemetry::RUST_LOG, "info".to_owned()),
    ]);
    let guard = telemetry::init_from(&env, "default-name").expect("init");
    assert!(guard.is_exporting());
    {
        let span = tracing::info_span!("checkout", order = 42);
        let _entered = span.enter();
        tracing::info!("inside the span");
    }
    assert!(
        received.lock().expect("lock").is_empty(),
        "batched, not sent per span"
    );
    // Shutdown flushes the batch; it blocks, so not on a runtime worker.
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .expect("shutdown");

    let got = received.lock().expect("lock").clone();
    assert!(!got.is_empty(), "the receiver got no export request");
    assert_eq!(got[0].content_type, "application/x-protobuf");
    assert!(got[0].bytes > 0);
    assert!(got.iter().any(|r| r.service_name_seen), "{got:?}");
}
