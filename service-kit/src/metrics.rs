//! Metrics: OpenTelemetry instruments exported in Prometheus text format at `GET /metrics`,
//! and HTTP server metrics per route.
//!
//! [`Metrics::install`] sets the process-wide meter provider, so every instrument created
//! through `opentelemetry::global::meter` (the lock library's, the services' own) shows up
//! on `/metrics`. [`with_http_metrics`] records `http.server.request.duration` (seconds,
//! exported as `http_server_request_duration_seconds`) with the OpenTelemetry semantic
//! convention attributes `http.route`, `http.request.method` and
//! `http.response.status_code`: request rate and latency by route and status.

use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};

/// Path of the metrics endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// Latency buckets in seconds: exponential from 0.5 ms, doubling, up to ~33 s.
pub fn duration_buckets() -> Vec<f64> {
    (0..17).map(|i| 0.0005 * f64::from(1u32 << i)).collect()
}

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Prometheus exporter: {0}")]
pub struct MetricsError(String);

/// The installed meter provider and the registry `/metrics` reads.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    provider: SdkMeterProvider,
}

impl Metrics {
    /// Build a meter provider exporting to a Prometheus registry and make it the global one.
    pub fn install(service_name: &'static str) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| MetricsError(e.to_string()))?;
        let provider = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_resource(Resource::builder().with_service_name(service_name).build())
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Ok(Metrics { registry, provider })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| MetricsError(e.to_string()))?;
        String::from_utf8(out).map_err(|e| MetricsError(e.to_string()))
    }

    /// A router serving `GET /metrics`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let metrics = self.clone();
        Router::new().route(
            METRICS_PATH,
            get(move || async move {
                match metrics.render() {
                    Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
                        .into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }),
        )
    }

    /// Flush and stop the provider (at shutdown).
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::debug!(error = %err, "meter provider shutdown");
        }
    }
}

fn request_duration() -> &'static Histogram<f64> {
    static H: OnceLock<Histogram<f64>> = OnceLock::new();
    H.get_or_init(|| {
        opentelemetry::global::meter("http")
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP server requests")
            .with_boundaries(duration_buckets())
            .build()
    })
}

async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    request_duration().record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new("http.route", route),
            KeyValue::new("http.request.method", method),
            KeyValue::new(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            ),
        ],
    );
    response
}

/// Record request duration, by route, method and status, for every route of `router` (call it
/// after the routes are added; `/metrics` itself is better merged afterwards).
pub fn with_http_metrics<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.route_layer(axum::middleware::from_fn(record))
}
