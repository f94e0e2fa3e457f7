//! Liveness endpoint: `GET /healthz`.

use axum::Router;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::extract::Json;

/// Path of the liveness endpoint.
pub const HEALTHZ_PATH: &str = "/healthz";

/// Body of a `/healthz` response, e.g.
/// `{"status":"ok","service":"stock-service","version":"0.1.0"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` when the process can answer at all.
    pub status: String,
    /// Service name.
    pub service: String,
    /// Service version (normally the crate's `CARGO_PKG_VERSION`).
    pub version: String,
}

/// A router serving `GET /healthz` for the named service.
///
/// Pass the *calling* crate's metadata, e.g.
/// `health::router(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))`;
/// service-kit cannot know the service's version itself. Generic over the
/// state so it merges into any service's `Router<S>`.
pub fn router<S>(service: &'static str, version: &'static str) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new().route(
        HEALTHZ_PATH,
        get(move || async move {
            Json(Health {
                status: "ok".to_owned(),
                service: service.to_owned(),
                version: version.to_owned(),
            })
        }),
    )
}
