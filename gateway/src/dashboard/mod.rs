//! The built-in live dashboard: `GET /dashboard`, a page of four panels for people without
//! Grafana, fed by `GET /dashboard/data`.
//!
//! * **Requests per second** through the gateway by outcome class (2xx, 409, 429, 5xx, other),
//!   counted in-process by a middleware around the proxy and the login (see
//!   [`RequestCounters`]).
//! * **Lock wait** p50/p99 by strategy (and per segment when the stock-service exports the
//!   `segment` label), from the deltas of `stock_lock_wait_duration_seconds_bucket` between two
//!   scrapes, summed over every instance.
//! * **Stock** left per SKU and segment (`stock_available`).
//! * **Oversold** units (`stock_oversold_units`, summed over SKUs; missing counts as 0).
//!
//! A background [sampler] (started only when `[dashboard] enabled`) reads the counters and
//! scrapes `/metrics` on every upstream of every pool each `sample_interval_ms`, keeps
//! `history_secs` of points and renders the JSON once per sample; requests for the data only
//! copy those bytes. The page and its chart library (uPlot, vendored under `gateway/assets/`)
//! are compiled into the binary. docs/gateway.md describes the panels and the JSON.

mod assets;
pub mod prom;
pub(crate) mod sampler;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use crate::Gateway;

/// Path of the dashboard page; the gateway reserves it and everything below it.
pub const DASHBOARD_PATH: &str = "/dashboard";

/// Path of the dashboard's JSON data.
pub const DATA_PATH: &str = "/dashboard/data";

/// The outcome classes the requests panel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any 2xx.
    Success,
    /// 409: sold out, or a conflicting/in-progress request.
    Conflict,
    /// 429: rate-limited.
    RateLimited,
    /// Any 5xx.
    ServerError,
    /// Everything else (other 4xx, 1xx, 3xx).
    Other,
}

impl Outcome {
    /// The class of `status`.
    pub fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Self::Success,
            409 => Self::Conflict,
            429 => Self::RateLimited,
            500..=599 => Self::ServerError,
            _ => Self::Other,
        }
    }
}

/// Requests answered by the proxy and the login, by [`Outcome`] (monotonic counters).
#[derive(Debug, Default)]
pub struct RequestCounters {
    success: AtomicU64,
    conflict: AtomicU64,
    rate_limited: AtomicU64,
    server_error: AtomicU64,
    other: AtomicU64,
}

/// A reading of [`RequestCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// 2xx answers.
    pub success: u64,
    /// 409 answers.
    pub conflict: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// 5xx answers.
    pub server_error: u64,
    /// Other answers.
    pub other: u64,
}

impl RequestCounters {
    /// Counts one answer with `status`.
    pub fn record(&self, status: StatusCode) {
        let counter = match Outcome::of(status) {
            Outcome::Success => &self.success,
            Outcome::Conflict => &self.conflict,
            Outcome::RateLimited => &self.rate_limited,
            Outcome::ServerError => &self.server_error,
            Outcome::Other => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            success: self.success.load(Ordering::Relaxed),
            conflict: self.conflict.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            server_error: self.server_error.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

/// The dashboard's shared state: the request counters and the latest rendered data.
#[derive(Debug)]
pub struct Dashboard {
    counters: RequestCounters,
    data: ArcSwap<Bytes>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Dashboard {
    /// Empty counters and empty data (until the sampler's first sample).
    pub fn new() -> Self {
        Self {
            counters: RequestCounters::default(),
            data: ArcSwap::from_pointee(sampler::empty_data()),
        }
    }

    /// The request counters.
    pub fn counters(&self) -> &RequestCounters {
        &self.counters
    }

    /// The latest data, as served at [`DATA_PATH`].
    pub fn data(&self) -> Bytes {
        self.data.load().as_ref().clone()
    }

    pub(crate) fn publish(&self, data: Bytes) {
        self.data.store(Arc::new(data));
    }
}

/// Wraps `router` (the proxy and the login) so every answer is counted by outcome.
pub fn count_requests(router: Router, dashboard: Arc<Dashboard>) -> Router {
    router.layer(from_fn_with_state(dashboard, count))
}

async fn count(State(dashboard): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    dashboard.counters.record(response.status());
    response
}

/// The dashboard's routes: the page, its data and its assets.
pub fn router(gateway: Gateway) -> Router {
    let dashboard = Arc::clone(gateway.dashboard());
    let mut router = Router::new()
        .route(DASHBOARD_PATH, get(assets::page))
        .route("/dashboard/", get(assets::page))
        .route(DATA_PATH, get(data).with_state(dashboard));
    for asset in &assets::ASSETS {
        router = router.route(
            asset.path,
            get(move |request: Request| assets::serve(asset, request)),
        );
    }
    router
}

async fn data(State(dashboard): State<Arc<Dashboard>>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        dashboard.data(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_into_their_classes() {
        let counters = RequestCounters::default();
        for status in [200, 201, 204, 409, 409, 429, 500, 503, 504, 400, 404, 302] {
            counters.record(StatusCode::from_u16(status).unwrap());
        }
        assert_eq!(
            counters.snapshot(),
            RequestCounts {
                success: 3,
                conflict: 2,
                rate_limited: 1,
                server_error: 3,
                other: 3,
            }
        );
    }
}
