//! Middleware every service applies: request ids, request tracing and a
//! request body size limit.

use axum::Router;
use axum::body::HttpBody as _;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use axum::extract::MatchedPath;
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing::field::Empty;

use crate::problem::{PROBLEM_JSON, Problem};

/// The request-id header: `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` in the shared middleware stack, outermost first:
///
/// 1. `x-request-id`: kept if the client sent one, otherwise a UUIDv4 is
///    generated; it is echoed on the response.
/// 2. A `tracing` span per request ([`request_span`]: `http` at INFO, with `method`, `uri`,
///    `request_id` and the OpenTelemetry HTTP server attributes), the child of the trace
///    context of an incoming `traceparent` header, plus an INFO event when the response is
///    ready (which also records the status on the span).
/// 3. A request body limit of `body_limit_bytes`. Bodies announced larger via
///    `Content-Length` are refused up front, streamed bodies fail when they
///    cross the limit; both become `413` problem+json responses. axum's own
///    2 MB default limit is disabled so this is the only limit in force.
/// 4. Error responses without a body (axum's 404 for unknown routes, 405,
///    handlers returning a bare `StatusCode`) get a problem+json body, so
///    every error a client sees has the same shape.
///
/// Apply it last, after all routes are added: like any
/// [`Router::layer`], it only wraps routes that already exist.
pub fn with_common_layers<S>(router: Router<S>, body_limit_bytes: usize) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(body_limit_bytes))
        .layer(map_response(move |response: Response| async move {
            problem_for_bare_error(response, body_limit_bytes)
        }))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_response),
        )
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
}

/// The span of one server request: named `http` for logs, `{method} {route}` (or `{method}`
/// for unmatched paths) for OpenTelemetry, with the semantic-convention attributes
/// `http.request.method`, `url.path`, `http.route` and (on response)
/// `http.response.status_code`; its parent is the trace context of the request's
/// `traceparent` header when it carries one (see [`crate::telemetry`]).
pub fn request_span(request: &Request) -> Span {
    let request_id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let method = request.method();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "http",
        method = %method,
        uri = %request.uri(),
        request_id,
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        url.path = request.uri().path(),
        http.route = route,
        http.response.status_code = Empty,
    );
    crate::telemetry::set_parent_from_headers(&span, request.headers());
    span
}

/// Records the status on the request span (an `ERROR` span status for 5xx) and logs the
/// response at INFO.
fn record_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    tracing::info!(
        status,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "finished processing request"
    );
}

/// Turns error responses that carry no problem body into problems:
///
/// * a `413` that is not already problem+json (tower-http's plain-text
///   "length limit exceeded") becomes a 413 problem stating the limit;
/// * any other 4xx/5xx with an empty body and no `Content-Type` (axum's
///   unmatched-route 404, its 405, a handler returning a bare
///   [`StatusCode`]) becomes a problem for that status.
///
/// Other headers (`allow`, `retry-after`, ...) are kept. Responses that
/// already have a body are left alone.
fn problem_for_bare_error(response: Response, limit: usize) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE);
    let is_problem =
        content_type.is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    let problem = if status == StatusCode::PAYLOAD_TOO_LARGE && !is_problem {
        Problem::payload_too_large(format!("request body exceeds the limit of {limit} bytes"))
    } else if content_type.is_none() && response.body().size_hint().exact() == Some(0) {
        Problem::new(status)
    } else {
        return response;
    };

    let original = response.headers().clone();
    let mut replacement = problem.into_response();
    for (name, value) in &original {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replacement
                .headers_mut()
                .append(name.clone(), value.clone());
        }
    }
    replacement
}
