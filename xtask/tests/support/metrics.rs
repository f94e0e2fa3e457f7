//! The Prometheus metrics the services export: the one list the dashboard check
//! (`tests/compose.rs`) holds PromQL against, and that a scrape of the running services can
//! be compared with.

/// The type of a metric, which decides the series names it exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<name>` (counters end in `_total` already).
    Counter,
    /// `<name>`.
    Gauge,
    /// `<name>_bucket`, `<name>_count` and `<name>_sum`.
    Histogram,
}

/// Every metric, by base name, with its labels.
pub const METRICS: &[(&str, Kind, &[&str])] = &[
    // All services (service-kit's HTTP layer).
    (
        "http_server_request_duration_seconds",
        Kind::Histogram,
        &[
            "http_route",
            "http_request_method",
            "http_response_status_code",
        ],
    ),
    // stock-service.
    (
        "stock_lock_wait_duration_seconds",
        Kind::Histogram,
        &["strategy", "segment", "acquired"],
    ),
    (
        "stock_lock_hold_duration_seconds",
        Kind::Histogram,
        &["strategy", "segment"],
    ),
    (
        "stock_operations_total",
        Kind::Counter,
        &["strategy", "outcome"],
    ),
    ("stock_fence_rejections_total", Kind::Counter, &["strategy"]),
    ("stock_available", Kind::Gauge, &["sku", "segment"]),
    ("stock_oversold_units", Kind::Gauge, &["sku"]),
    // order-service.
    ("orders_outcomes_total", Kind::Counter, &["outcome"]),
    ("orders_idempotency_total", Kind::Counter, &["result"]),
    // rlock (inside the stock-service).
    (
        "rlock_acquisitions_total",
        Kind::Counter,
        &["lock_kind", "outcome"],
    ),
    ("rlock_renewals_total", Kind::Counter, &["result"]),
    ("rlock_lost_total", Kind::Counter, &[]),
    (
        "rlock_wait_duration_seconds",
        Kind::Histogram,
        &["lock_kind", "outcome"],
    ),
    // gateway.
    (
        "gateway_rate_limited_total",
        Kind::Counter,
        &["http_route", "scope"],
    ),
    (
        "gateway_upstream_errors_total",
        Kind::Counter,
        &["http_route", "pool", "upstream", "error_type"],
    ),
    (
        "gateway_retries_total",
        Kind::Counter,
        &["http_route", "pool"],
    ),
];

/// Labels every scraped series carries besides its own: Prometheus' target labels, and `le`
/// on histogram buckets.
pub const TARGET_LABELS: &[&str] = &["job", "instance", "le"];

/// The base metric and its kind for a series name (`foo_bucket` → `foo`), if it is known.
pub fn lookup(series: &str) -> Option<(&'static str, Kind, &'static [&'static str])> {
    METRICS.iter().copied().find(|(name, kind, _)| {
        series == *name
            || (*kind == Kind::Histogram
                && ["_bucket", "_count", "_sum"]
                    .iter()
                    .any(|suffix| series.strip_suffix(suffix) == Some(name)))
    })
}
