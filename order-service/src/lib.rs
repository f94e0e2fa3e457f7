//! The order service: creates and tracks flash-sale orders.
//!
//! For now it only serves `GET /healthz`; the binary in `main.rs` wires it
//! to configuration, telemetry and the server.

use axum::Router;
use service_kit::{ServiceConfig, health, layers};

/// Service name, as reported by `/healthz` and in logs.
pub const SERVICE_NAME: &str = env!("CARGO_PKG_NAME");

/// Service version, as reported by `/healthz`.
pub const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Port listened on when `BIND_ADDR` is not set.
pub const DEFAULT_PORT: u16 = 8081;

/// Builds the HTTP application, wrapped in the shared middleware stack.
pub fn app(config: &ServiceConfig) -> Router {
    layers::with_common_layers(
        health::router(SERVICE_NAME, SERVICE_VERSION),
        config.body_limit_bytes,
    )
}
