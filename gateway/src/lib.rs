//! The API gateway: the one public door of the shop.
//!
//! Routes `/api/orders…` and `/api/stock…` (from a TOML file, reloaded while running) to
//! pools of upstream instances, balanced round robin or by power of two choices, with
//! unhealthy instances ejected on errors and by active `/healthz` checks. It issues and checks
//! HS256 JWTs (`POST /api/login`), sets `x-user-id` for upstreams (and strips any a client
//! sends), rate-limits per user and overall, retries only what is safe to repeat within a
//! per-route deadline, and can send a share of a route to a canary pool. It also serves a
//! live dashboard at `/dashboard` ([`dashboard`]). docs/gateway.md describes it all.

pub mod auth;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod forward_headers;
mod health_check;
pub mod idp;
pub mod login;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod reload;
pub mod routes;
pub mod runtime;
pub mod settings;
pub mod state;

/// Upstreams and pools (shared with the order-service's stock-service pool).
pub use service_kit::upstream;

use axum::Router;
use axum::routing::post;
use service_kit::{health, layers};

pub use config::{ConfigFileError, FileConfig};
pub use settings::GatewaySettings;
pub use state::{Gateway, Reloaded};

/// Service name, as reported by `/healthz` and in logs.
pub const SERVICE_NAME: &str = env!("CARGO_PKG_NAME");

/// Service version, as reported by `/healthz`.
pub const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Port listened on when neither `BIND_ADDR` nor the file's `listen` is set.
pub const DEFAULT_PORT: u16 = 8080;

/// Builds the HTTP application: `GET /healthz`, `POST /api/login`, the dashboard
/// (`/dashboard…`, unless `[dashboard] enabled = false`) and the proxy for everything else,
/// wrapped in the shared middleware stack (request ids, tracing, the body limit, problem
/// bodies). Serve it with `service_kit::server::serve`, which gives handlers the client's address.
pub fn app(gateway: Gateway) -> Router {
    let body_limit = gateway.settings().service.body_limit_bytes;
    let dashboard_enabled = gateway.dashboard_enabled();
    let mut router = Router::new()
        .route(login::LOGIN_PATH, post(login::login))
        .fallback(proxy::proxy)
        .with_state(gateway.clone());
    if dashboard_enabled {
        router = dashboard::count_requests(router, std::sync::Arc::clone(gateway.dashboard()))
            .merge(dashboard::router(gateway));
    }
    let router = router.merge(health::router(SERVICE_NAME, SERVICE_VERSION));
    layers::with_common_layers(router, body_limit)
}
