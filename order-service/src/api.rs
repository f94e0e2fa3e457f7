//! The HTTP API of the order-service.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use service_kit::Problem;
use service_kit::extract::{Json, Path};
use uuid::Uuid;

use crate::idempotency::parse_key;
use crate::orders::{KeyContext, OrderError, Orders, PlaceOrder, Reply};
use crate::store::{Order, OrderAudit, StatusTallies, Tally};

/// Header carrying the authenticated user, set by the gateway (which strips any value a client
/// sends). The order-service is not reachable from outside except through the gateway.
pub const USER_HEADER: &str = "x-user-id";

/// Header carrying the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Header set on a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";

/// Header carrying the authenticated user's role (`user` or `admin`), set by the gateway from
/// the verified token (it strips any value a client sends).
pub const ROLE_HEADER: &str = "x-user-role";

/// The caller, from [`USER_HEADER`].
#[derive(Debug, Clone)]
pub struct User(pub String);

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let user = parts
            .headers
            .get(USER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|u| {
                !u.is_empty()
                    && u.len() <= 64
                    && u.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
            });
        match user {
            Some(u) => Ok(User(u.to_owned())),
            None => Err(Problem::new(StatusCode::UNAUTHORIZED)
                .with_detail("no authenticated user (the gateway sets it)")
                .with_type("/problems/unauthenticated")),
        }
    }
}

/// An admin caller, from [`ROLE_HEADER`] (403 problem+json for anyone else).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let role = parts.headers.get(ROLE_HEADER).and_then(|v| v.to_str().ok());
        if role.map(str::trim) == Some("admin") {
            Ok(Admin)
        } else {
            Err(Problem::new(StatusCode::FORBIDDEN)
                .with_detail(
                    "the order audit is for admins (x-user-role: admin, set by the gateway)",
                )
                .with_type("/problems/forbidden"))
        }
    }
}

/// The Idempotency-Key of the request (400 when missing or malformed).
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Err(Problem::bad_request(
                "the Idempotency-Key header is required for POST /orders",
            )
            .with_type("/problems/idempotency-key-missing"));
        };
        let raw = value.to_str().map_err(|_| {
            Problem::bad_request("Idempotency-Key must be visible ASCII")
                .with_type("/problems/idempotency-key-invalid")
        })?;
        parse_key(raw)
            .map(IdempotencyKey)
            .map_err(|e| Problem::bad_request(e).with_type("/problems/idempotency-key-invalid"))
    }
}

/// The routes.
pub fn routes(orders: Orders) -> Router {
    Router::new()
        .route("/orders", post(place).get(list))
        .route("/orders/{id}", get(one))
        .route("/orders/{id}/pay", post(pay))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/orders/audit/{sku}", get(audit))
        .route("/openapi.json", get(openapi))
        // Behind an Arc: axum clones the state for every request.
        .with_state(Arc::new(orders))
}

/// Place an order. Requires `Idempotency-Key`; a repeat with the same key and body replays the
/// first response exactly (with `Idempotent-Replayed: true`).
#[utoipa::path(post, path = "/orders", request_body = PlaceOrder,
    params(("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters, scoped to the user"),
           ("x-user-id" = String, Header, description = "set by the gateway")),
    responses((status = 201, description = "Reserved: stock deducted, pay before `pay_by`", body = Order),
              (status = 400, description = "Idempotency-Key missing or malformed; malformed JSON", content_type = "application/problem+json"),
              (status = 401, description = "No user", content_type = "application/problem+json"),
              (status = 409, description = "Rejected (sold out, insufficient, purchase limit; has `order_id`), or a request with this key is in progress", content_type = "application/problem+json"),
              (status = 422, description = "Bad sku/qty, or the key was used with another body", content_type = "application/problem+json"),
              (status = 503, description = "Stock-service unavailable or outcome unknown: retry with the same key", content_type = "application/problem+json")))]
async fn place(
    State(orders): State<Arc<Orders>>,
    User(user): User,
    IdempotencyKey(key): IdempotencyKey,
    Json(req): Json<PlaceOrder>,
) -> Result<Response, ApiError> {
    let ctx = KeyContext {
        user,
        key,
        fingerprint: req.fingerprint(),
    };
    Ok(reply(orders.place(&ctx, &req).await?))
}

fn reply(r: Reply) -> Response {
    let status =
        StatusCode::from_u16(r.response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_client_error() || status.is_server_error() {
        service_kit::problem::PROBLEM_JSON
    } else {
        "application/json"
    };
    let mut response = (status, r.response.body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(location) = r
        .response
        .location
        .and_then(|l| HeaderValue::from_str(&l).ok())
    {
        headers.insert(header::LOCATION, location);
    }
    if r.replayed {
        headers.insert(
            HeaderName::from_static(REPLAYED),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// The caller's newest orders (up to 100).
#[utoipa::path(get, path = "/orders", responses((status = 200, body = [Order])))]
async fn list(
    State(orders): State<Arc<Orders>>,
    User(user): User,
) -> Result<Json<Vec<Order>>, ApiError> {
    Ok(Json(orders.list(&user).await?))
}

/// One of the caller's orders (404 for anyone else's).
#[utoipa::path(get, path = "/orders/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, content_type = "application/problem+json")))]
async fn one(
    State(orders): State<Arc<Orders>>,
    User(user): User,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(orders.get(&user, id).await?))
}

/// Pay a reserved order (idempotent; 409 from any other state or after `pay_by`).
#[utoipa::path(post, path = "/orders/{id}/pay", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, content_type = "application/problem+json"),
              (status = 409, description = "Illegal transition", content_type = "application/problem+json")))]
async fn pay(
    State(orders): State<Arc<Orders>>,
    User(user): User,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(orders.pay(&user, id).await?))
}

/// Cancel a reserved order and release its stock (idempotent; 409 from any other state).
#[utoipa::path(post, path = "/orders/{id}/cancel", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, content_type = "application/problem+json"),
              (status = 409, description = "Illegal transition", content_type = "application/problem+json")))]
async fn cancel(
    State(orders): State<Arc<Orders>>,
    User(user): User,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(orders.cancel(&user, id).await?))
}

/// Query of `GET /orders/audit/{sku}`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Count only orders of users whose id starts with this (a load test's run prefix).
    pub user_prefix: Option<String>,
}

/// Audit the orders of an item (admin): orders and units by status, keys that made more
/// than one order, users over the purchase limit. A load test compares it with the
/// stock-service's ledger (`GET /stock/{sku}/audit`).
#[utoipa::path(get, path = "/orders/audit/{sku}",
    params(("sku" = String, Path), AuditQuery,
           ("x-user-role" = String, Header, description = "must be `admin` (set by the gateway)")),
    responses((status = 200, body = OrderAudit),
              (status = 403, description = "Not an admin", content_type = "application/problem+json"),
              (status = 422, description = "Bad sku or query", content_type = "application/problem+json")))]
async fn audit(
    State(orders): State<Arc<Orders>>,
    _: Admin,
    Path(sku): Path<String>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<OrderAudit>, ApiError> {
    let Query(query) = query.map_err(|e| OrderError::Invalid(e.body_text()))?;
    if !crate::orders::valid_sku(&sku) {
        return Err(OrderError::Invalid(
            "sku must be 1-64 characters of letters, digits, '.', '_' or '-'".into(),
        )
        .into());
    }
    let prefix = query.user_prefix.as_deref().filter(|p| !p.is_empty());
    let audit = crate::store::audit(&orders.pool, &sku, prefix, orders.config.purchase_limit)
        .await
        .map_err(OrderError::from)?;
    Ok(Json(audit))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "order-service", description = "Idempotent flash-sale orders"),
    paths(place, list, one, pay, cancel, audit),
    components(schemas(PlaceOrder, Order, OrderAudit, StatusTallies, Tally))
)]
struct ApiDoc;

/// The OpenAPI document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

/// An [`OrderError`] as an HTTP response.
#[derive(Debug)]
pub struct ApiError(OrderError);

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = refusal(&self.0).unwrap_or_else(|| unavailable(&self.0));
        // 503s and a request still in progress are worth retrying with the same key.
        let retry = problem.status == StatusCode::SERVICE_UNAVAILABLE
            || matches!(self.0, OrderError::InFlight);
        let mut response = problem.into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A 4xx the client can act on, with the error's own text (which names nothing internal);
/// `None` for the failures that are 503s.
fn refusal(err: &OrderError) -> Option<Problem> {
    let detail = err.to_string();
    let (problem, slug) = match err {
        OrderError::Invalid(_) => (Problem::unprocessable(detail), "invalid-input"),
        OrderError::BadKey(_) => (Problem::bad_request(detail), "idempotency-key-invalid"),
        OrderError::KeyReused => (Problem::unprocessable(detail), "idempotency-key-reused"),
        OrderError::InFlight => (Problem::conflict(detail), "request-in-progress"),
        OrderError::SoldOut(_) => (Problem::conflict(detail), "sold-out"),
        OrderError::UnknownItem(_) => (Problem::not_found(detail), "unknown-item"),
        OrderError::NotFound => (Problem::not_found(detail), "no-such-order"),
        OrderError::IllegalTransition { .. } => (Problem::conflict(detail), "illegal-transition"),
        OrderError::StockUnavailable(_)
        | OrderError::Unknown(_)
        | OrderError::Db(_)
        | OrderError::GroupDb(_)
        | OrderError::Redis(_) => return None,
    };
    Some(problem.with_type(format!("/problems/{slug}")))
}

/// A 503. The cause (a database's or Redis's text, an address, a transport error) stays in
/// the log; the client gets what it can act on.
fn unavailable(err: &OrderError) -> Problem {
    let (detail, slug) = match err {
        OrderError::StockUnavailable(_) => (
            "the stock-service is unavailable; nothing was ordered; retry",
            "stock-unavailable",
        ),
        OrderError::Unknown(_) => (
            "the order's outcome is not known yet; retry with the same Idempotency-Key",
            "outcome-unknown",
        ),
        OrderError::Redis(_) => (
            "Redis failed; nothing was ordered; retry with the same Idempotency-Key",
            "dependency-failed",
        ),
        _ => (
            "the database failed; retry with the same Idempotency-Key",
            "dependency-failed",
        ),
    };
    if slug == "dependency-failed" {
        tracing::error!(error = %err, "order operation failed");
    } else {
        tracing::warn!(error = %err, "order not settled: {slug}");
    }
    Problem::service_unavailable(detail).with_type(format!("/problems/{slug}"))
}
