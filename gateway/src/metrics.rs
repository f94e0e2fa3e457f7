//! The gateway's instruments (OpenTelemetry meter API, global meter `gateway`).
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `http.server.request.duration` (s) | histogram | `http.route`, `http.request.method`, `http.response.status_code` |
//! | `gateway.upstream.errors` | counter | `http.route`, `pool`, `upstream`, `error.type` (`connect`, `broken`, `timeout`) |
//! | `gateway.rate_limited` | counter | `http.route`, `scope` (`user`, `global`) |
//! | `gateway.retries` | counter | `http.route`, `pool` |
//! | `gateway.upstream.ejections` | counter | `upstream` |
//!
//! Requests per second by status are the histogram's count over time. The buckets are
//! service-kit's, as for the other services' `http.server.request.duration`. The binary
//! installs service-kit's Prometheus exporter as the global provider and serves `/metrics` on
//! `METRICS_ADDR`.

use axum::http::Method;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{KeyValue, StringValue, Value};

/// The instruments.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    duration: Histogram<f64>,
    upstream_errors: Counter<u64>,
    rate_limited: Counter<u64>,
    retries: Counter<u64>,
    ejections: Counter<u64>,
}

impl GatewayMetrics {
    /// Creates the instruments on `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            duration: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Gateway request duration by route, method and status")
                .with_boundaries(service_kit::metrics::duration_buckets())
                .build(),
            upstream_errors: meter
                .u64_counter("gateway.upstream.errors")
                .with_description("Failed upstream attempts (connect, broken, timeout)")
                .build(),
            rate_limited: meter
                .u64_counter("gateway.rate_limited")
                .with_description("Requests refused with 429")
                .build(),
            retries: meter
                .u64_counter("gateway.retries")
                .with_description("Upstream attempts after the first")
                .build(),
            ejections: meter
                .u64_counter("gateway.upstream.ejections")
                .with_description("Upstreams ejected after consecutive failures")
                .build(),
        }
    }

    /// Creates the instruments on the global meter `gateway`.
    pub fn global() -> Self {
        Self::new(&opentelemetry::global::meter("gateway"))
    }

    /// Records one request: `route` is the route label, `status` the answer's status.
    pub(crate) fn request(&self, route: StringValue, method: &Method, status: u16, seconds: f64) {
        self.duration.record(
            seconds,
            &[
                KeyValue::new("http.route", Value::String(route)),
                KeyValue::new("http.request.method", Value::String(method_label(method))),
                KeyValue::new("http.response.status_code", i64::from(status)),
            ],
        );
    }

    pub(crate) fn upstream_error(
        &self,
        route: &str,
        pool: &str,
        upstream: &str,
        kind: &'static str,
    ) {
        self.upstream_errors.add(
            1,
            &[
                KeyValue::new("http.route", route.to_owned()),
                KeyValue::new("pool", pool.to_owned()),
                KeyValue::new("upstream", upstream.to_owned()),
                KeyValue::new("error.type", kind),
            ],
        );
    }

    pub(crate) fn rate_limited(&self, route: &str, scope: &'static str) {
        self.rate_limited.add(
            1,
            &[
                KeyValue::new("http.route", route.to_owned()),
                KeyValue::new("scope", scope),
            ],
        );
    }

    pub(crate) fn retry(&self, route: &str, pool: &str) {
        self.retries.add(
            1,
            &[
                KeyValue::new("http.route", route.to_owned()),
                KeyValue::new("pool", pool.to_owned()),
            ],
        );
    }

    pub(crate) fn ejected(&self, upstream: &str) {
        self.ejections
            .add(1, &[KeyValue::new("upstream", upstream.to_owned())]);
    }
}

/// The method as a metric label, without allocating for the standard ones.
fn method_label(method: &Method) -> StringValue {
    let name: &'static str = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return StringValue::from(method.as_str().to_owned()),
    };
    StringValue::from(name)
}
