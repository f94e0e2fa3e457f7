//! Forwarding: route, authenticate, rate-limit, then send the request to a pool with safe
//! retries under the route's deadline.
//!
//! Retry rules (an attempt goes to an upstream not tried yet when the pool has one):
//!
//! * a **connect error** means the request never reached an upstream, so it is always retried;
//! * any other failure (connection reset, closed before the response) may have reached the
//!   upstream: it is retried only for GET, HEAD and OPTIONS, or a POST carrying an
//!   `Idempotency-Key` (the order-service answers a repeated key with the first response);
//! * a response, whatever its status, is never retried: the upstream decided;
//! * the route's `timeout_ms` bounds all attempts together; when it passes the answer is 504
//!   and nothing is retried.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{Full, LengthLimitError};
use hyper::body::{Frame, Incoming, SizeHint};
use opentelemetry::StringValue;
use tokio::time::Instant;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::Gateway;
use crate::auth::{Identity, Role};
use crate::config::Access;
use crate::error::GatewayError;
use crate::forward_headers;
use crate::routes::{Route, is_clean_path};
use crate::runtime::Runtime;
use crate::upstream::{HealthChange, InFlight, Upstream};

/// Header whose presence makes a POST safe to repeat.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What the access log and metrics record about one request.
#[derive(Debug, Default)]
struct Outcome {
    route: Option<Arc<str>>,
    user: Option<String>,
    upstream: Option<String>,
    attempts: u32,
    canary: bool,
}

/// The fallback handler: every request that is not `/healthz` or `/api/login`.
pub(crate) async fn proxy(State(gateway): State<Gateway>, request: Request) -> Response {
    let started = Instant::now();
    let runtime = gateway.runtime();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut outcome = Outcome::default();
    let response = match forward(&gateway, &runtime, request, started, &mut outcome).await {
        Ok(response) => response,
        Err(error) => {
            if let GatewayError::RateLimited(limited) = &error {
                gateway.metrics().rate_limited(
                    outcome.route.as_deref().unwrap_or("unmatched"),
                    limited.scope.as_str(),
                );
            }
            error.into_response()
        }
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let label = outcome
        .route
        .clone()
        .map_or_else(|| StringValue::from("unmatched"), StringValue::from);
    gateway
        .metrics()
        .request(label, &method, status, elapsed.as_secs_f64());
    let route = outcome.route.as_deref().unwrap_or("unmatched");
    tracing::info!(
        target: "gateway::access",
        %method,
        path,
        route,
        status,
        user = outcome.user.as_deref().unwrap_or("-"),
        upstream = outcome.upstream.as_deref().unwrap_or("-"),
        attempts = outcome.attempts,
        canary = outcome.canary,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "access"
    );
    response
}

async fn forward(
    gateway: &Gateway,
    runtime: &Runtime,
    request: Request,
    started: Instant,
    outcome: &mut Outcome,
) -> Result<Response, GatewayError> {
    let (parts, body) = request.into_parts();
    let (route, identity, client_ip) = admit(runtime, &parts, outcome)?;
    let body = read_body(body, gateway.settings().service.body_limit_bytes).await?;
    let (pool, canary) = route.choose_pool(&parts.headers, outcome.user.as_deref());
    outcome.canary = canary;
    let call = Call {
        method: &parts.method,
        path: route.upstream_path(parts.uri.path(), parts.uri.query()),
        headers: forward_headers::to_upstream(&parts.headers, identity.as_ref(), client_ip),
        body,
        replay_safe: is_replay_safe(&parts.method, &parts.headers),
        deadline: started + route.timeout,
    };
    send(gateway, runtime, route, pool, &call, outcome).await
}

/// Who may pass: a clean path with a route, a caller allowed on it (a presented token must be
/// valid, even on a public route), within the rate limits. The route, the caller and the
/// client's address.
fn admit<'r>(
    runtime: &'r Runtime,
    parts: &axum::http::request::Parts,
    outcome: &mut Outcome,
) -> Result<(&'r Route, Option<Identity>, Option<std::net::IpAddr>), GatewayError> {
    let path = parts.uri.path();
    if !is_clean_path(path) {
        return Err(GatewayError::BadPath);
    }
    let route = runtime.routes.find(path).ok_or(GatewayError::NoRoute)?;
    outcome.route = Some(Arc::clone(&route.name));
    let identity = runtime.tokens.authenticate(&parts.headers)?;
    outcome.user = identity.as_ref().map(|i| i.user.clone());
    authorize(route.access(&parts.method), identity.as_ref())?;
    let client_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if runtime.limits.is_active() {
        let key = match (&identity, client_ip) {
            (Some(id), _) => format!("user:{}", id.user),
            (None, Some(ip)) => format!("ip:{ip}"),
            (None, None) => "ip:unknown".to_owned(),
        };
        runtime
            .limits
            .check(&key)
            .map_err(GatewayError::RateLimited)?;
    }
    Ok((route, identity, client_ip))
}

/// One proxied request, as every attempt sends it.
struct Call<'a> {
    method: &'a Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    replay_safe: bool,
    deadline: Instant,
}

/// Send `call` to the pool's upstreams: an upstream not tried yet first (a pool of one
/// retries the same instance), again after a failure while the route's retries last and the
/// failure is safe to repeat (the connection was refused, or the request can be replayed).
async fn send(
    gateway: &Gateway,
    runtime: &Runtime,
    route: &Route,
    pool: &Arc<crate::upstream::Pool>,
    call: &Call<'_>,
    outcome: &mut Outcome,
) -> Result<Response, GatewayError> {
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    let mut last_error = None;
    loop {
        let Some(upstream) = pool.pick(&tried).or_else(|| pool.pick(&[])) else {
            return Err(last_error.unwrap_or_else(|| {
                tracing::warn!(pool = %pool.name, route = %route.name, "no healthy upstream");
                GatewayError::NoHealthyUpstream(pool.name.clone())
            }));
        };
        if !tried.is_empty() {
            gateway.metrics().retry(&route.name, &pool.name);
        }
        tried.push(Arc::clone(&upstream));
        outcome.attempts += 1;
        outcome.upstream = Some(upstream.base.clone());
        let failure = match attempt(
            gateway,
            runtime,
            route,
            &pool.name,
            &upstream,
            call,
            outcome.attempts,
        )
        .await?
        {
            Ok(response) => return Ok(response),
            Err(failure) => failure,
        };
        let connect = failure.is_connect();
        let error = if connect {
            GatewayError::UpstreamUnavailable(pool.name.clone())
        } else {
            GatewayError::UpstreamBroken
        };
        let attempts_left = outcome.attempts <= route.retries;
        if !(attempts_left && (connect || call.replay_safe)) {
            return Err(error);
        }
        last_error = Some(error);
    }
}

/// One attempt at `upstream`, in a client span of its own (the upstream's spans become its
/// children). `Ok(Ok(response))` answered; `Ok(Err(failure))` failed before answering
/// (recorded against the upstream); `Err` ends the request (timeout, or no URI).
async fn attempt(
    gateway: &Gateway,
    runtime: &Runtime,
    route: &Route,
    pool_name: &str,
    upstream: &Arc<Upstream>,
    call: &Call<'_>,
    number: u32,
) -> Result<Result<Response, hyper_util::client::legacy::Error>, GatewayError> {
    let threshold = runtime.file.upstreams.eject_after_failures;
    let uri: Uri = format!("{}{}", upstream.base, call.path)
        .parse()
        .map_err(|error| {
            tracing::error!(%error, upstream = %upstream.base, "cannot build the upstream URI");
            GatewayError::Internal
        })?;
    let attempt_span = tracing::info_span!(
        "upstream",
        otel.name = format!("{} {}", call.method, route.name),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = %call.method,
        url.full = %uri,
        http.response.status_code = Empty,
        error.type = Empty,
        gateway.route = %route.name,
        gateway.pool = %pool_name,
        gateway.attempt = number,
    );
    let mut upstream_request = hyper::Request::new(Full::new(call.body.clone()));
    *upstream_request.method_mut() = call.method.clone();
    *upstream_request.uri_mut() = uri;
    *upstream_request.headers_mut() = call.headers.clone();
    service_kit::telemetry::inject_span(&attempt_span, upstream_request.headers_mut());

    let in_flight = upstream.start_request();
    let sent = tokio::time::timeout_at(call.deadline, runtime.client.request(upstream_request))
        .instrument(attempt_span.clone())
        .await;
    record_attempt(&attempt_span, &sent);
    match sent {
        Ok(Ok(response)) => {
            if upstream.record_success() == HealthChange::Readmitted {
                tracing::info!(upstream = %upstream.base, "upstream answered again; re-admitted");
            }
            Ok(Ok(into_client_response(response, in_flight)))
        }
        Ok(Err(failure)) => {
            drop(in_flight);
            let kind = if failure.is_connect() {
                "connect"
            } else {
                "broken"
            };
            record_failure(gateway, route, pool_name, upstream, threshold, kind);
            tracing::warn!(
                upstream = %upstream.base,
                route = %route.name,
                kind,
                error = %error_chain(&failure),
                "upstream attempt failed"
            );
            Ok(Err(failure))
        }
        Err(_elapsed) => {
            record_failure(gateway, route, pool_name, upstream, threshold, "timeout");
            tracing::warn!(upstream = %upstream.base, route = %route.name, "upstream timed out");
            Err(GatewayError::UpstreamTimeout(route.timeout.as_millis()))
        }
    }
}

/// Records an attempt's status (or error kind) on its span.
fn record_attempt<T, E>(
    span: &tracing::Span,
    attempt: &Result<Result<hyper::Response<T>, E>, tokio::time::error::Elapsed>,
) {
    match attempt {
        Ok(Ok(response)) => {
            span.record("http.response.status_code", response.status().as_u16());
            if response.status().is_server_error() {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", response.status().as_str());
            }
        }
        Ok(Err(_)) => {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", "upstream_error");
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", "timeout");
        }
    }
}

/// Checks the caller may use a route with `access`.
fn authorize(access: Access, identity: Option<&Identity>) -> Result<(), GatewayError> {
    match (access, identity) {
        (Access::Public, _) => Ok(()),
        (_, None) => Err(GatewayError::Unauthenticated(
            crate::auth::TokenError::Missing,
        )),
        (Access::Admin, Some(id)) if id.role != Role::Admin => Err(GatewayError::Forbidden),
        _ => Ok(()),
    }
}

/// Whether a request may be sent again after it possibly reached an upstream.
pub fn is_replay_safe(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || (*method == Method::POST && headers.contains_key(IDEMPOTENCY_KEY))
}

fn record_failure(
    gateway: &Gateway,
    route: &Route,
    pool: &str,
    upstream: &Upstream,
    threshold: u32,
    kind: &'static str,
) {
    gateway
        .metrics()
        .upstream_error(&route.name, pool, &upstream.base, kind);
    if upstream.record_failure(threshold) == HealthChange::Ejected {
        gateway.metrics().ejected(&upstream.base);
        tracing::warn!(upstream = %upstream.base, kind, "upstream ejected after consecutive failures");
    }
}

/// Buffers the request body (so it can be replayed); the limit layer caps its size.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if e.is::<LengthLimitError>() {
                return GatewayError::BodyTooLarge(limit);
            }
            source = e.source();
        }
        tracing::debug!(%error, "cannot read the request body");
        GatewayError::BodyUnreadable
    })
}

fn into_client_response(response: hyper::Response<Incoming>, in_flight: InFlight) -> Response {
    let (mut parts, body) = response.into_parts();
    forward_headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(
        parts,
        Body::new(TrackedBody {
            inner: body,
            _in_flight: in_flight,
        }),
    )
}

/// An upstream response body that counts as in flight until it is finished or dropped.
struct TrackedBody {
    inner: Incoming,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An error and its sources, `: `-separated.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_requests_are_replayed() {
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, "k1".parse().unwrap());
        let none = HeaderMap::new();
        assert!(is_replay_safe(&Method::GET, &none));
        assert!(is_replay_safe(&Method::HEAD, &none));
        assert!(is_replay_safe(&Method::POST, &keyed));
        assert!(!is_replay_safe(&Method::POST, &none));
        assert!(!is_replay_safe(&Method::PUT, &none));
        assert!(!is_replay_safe(&Method::PATCH, &keyed));
        assert!(!is_replay_safe(&Method::DELETE, &none));
    }

    #[test]
    fn access_rules() {
        let user = Identity {
            user: "u".into(),
            role: Role::User,
        };
        let admin = Identity {
            user: "admin".into(),
            role: Role::Admin,
        };
        assert!(authorize(Access::Public, None).is_ok());
        assert!(matches!(
            authorize(Access::User, None),
            Err(GatewayError::Unauthenticated(_))
        ));
        assert!(authorize(Access::User, Some(&user)).is_ok());
        assert!(matches!(
            authorize(Access::Admin, Some(&user)),
            Err(GatewayError::Forbidden)
        ));
        assert!(authorize(Access::Admin, Some(&admin)).is_ok());
    }
}
