//! Active health checks: every `health_check_interval_ms`, `GET health_check_path` on every
//! upstream. A 2xx within `health_check_timeout_ms` re-admits an ejected upstream; anything
//! else counts as a failure towards ejection. Also trims the per-user rate-limit table.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tokio::time::Instant;

use crate::Gateway;
use crate::runtime::{HttpClient, Runtime};
use crate::state::WeakGateway;
use crate::upstream::{self, HealthChange, Upstream};

/// How often the per-user rate-limit table is trimmed.
const LIMITER_HOUSEKEEPING: Duration = Duration::from_secs(60);

/// Runs the checks until the gateway is dropped.
pub(crate) async fn run(weak: WeakGateway) {
    let mut housekeeping = Instant::now();
    loop {
        let Some(gateway) = weak.upgrade() else {
            return;
        };
        let runtime = gateway.runtime();
        check_all(&gateway, &runtime).await;
        if housekeeping.elapsed() >= LIMITER_HOUSEKEEPING {
            runtime.limits.housekeeping();
            housekeeping = Instant::now();
        }
        let interval = runtime.file.upstreams.health_check_interval();
        drop(runtime);
        drop(gateway);
        tokio::time::sleep(interval).await;
    }
}

/// Probes every upstream of `runtime` once, concurrently, and records the results.
pub(crate) async fn check_all(gateway: &Gateway, runtime: &Runtime) {
    let settings = &runtime.file.upstreams;
    let changes = upstream::check_all(&runtime.upstreams, settings.eject_after_failures, |up| {
        probe(
            runtime.client.clone(),
            up,
            settings.health_check_path.clone(),
            settings.health_check_timeout(),
        )
    })
    .await;
    for (upstream, change) in changes {
        match change {
            HealthChange::Readmitted => {
                tracing::info!(upstream = %upstream.base, "health check passed; upstream re-admitted");
            }
            HealthChange::Ejected => {
                gateway.metrics().ejected(&upstream.base);
                tracing::warn!(upstream = %upstream.base, "health checks failed; upstream ejected");
            }
            HealthChange::None => {}
        }
    }
}

async fn probe(
    client: HttpClient,
    upstream: Arc<Upstream>,
    path: String,
    timeout: Duration,
) -> bool {
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("{}{path}", upstream.base))
        .header(header::USER_AGENT, "seckill-gateway-health-check")
        .body(Full::new(Bytes::new()));
    let Ok(request) = request else {
        return false;
    };
    tokio::time::timeout(timeout, async {
        let response = client.request(request).await.ok()?;
        let ok = response.status().is_success();
        // Read the body so the connection can be reused.
        response.into_body().collect().await.ok()?;
        Some(ok)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}
