//! The HTTP API: JSON in and out, errors as problem+json.

use axum::Router;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use service_kit::Problem;
use service_kit::extract::{Json, Path};

use crate::engine::{Stock, StockChange, StockError};
use crate::store::{Audit, ItemStock};

/// Body of `PUT /stock/{sku}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Units to stock the item with.
    pub total: i64,
    /// Segments to split them over (evenly); default 8.
    #[serde(default = "default_segments")]
    pub segments: i32,
}

fn default_segments() -> i32 {
    8
}

/// Body of `POST /stock/{sku}/deductions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeductRequest {
    /// The order the units are for; a repeat with the same id replays the first result.
    pub order_id: String,
    /// Units, 1 to 10000.
    pub qty: i64,
}

/// Body of `POST /stock/{sku}/releases`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The order whose deduction is put back.
    pub order_id: String,
}

/// Body of `POST /stock/{sku}/restocks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    /// The admin's id for this restock (1-128 of letters, digits, '-', '_', '.', ':'): a
    /// retry with the same id adds nothing twice.
    pub restock_id: String,
    /// Units to add (1 to 1 000 000 000), spread evenly over the item's segments.
    pub units: i64,
}

/// The routes, on a shared [`Stock`].
pub fn routes(stock: Stock) -> Router {
    Router::new()
        .route("/stock/{sku}", put(reset).get(item))
        .route("/stock/{sku}/deductions", post(deduct))
        .route("/stock/{sku}/deductions/{order_id}", get(deduction))
        .route("/stock/{sku}/releases", post(release))
        .route("/stock/{sku}/restocks", post(restock))
        .route("/stock/{sku}/audit", get(audit))
        .route("/openapi.json", get(openapi))
        // Behind an Arc: axum clones the state for every request, and the engine is large.
        .with_state(Arc::new(stock))
}

/// Create or reset an item (admin).
#[utoipa::path(put, path = "/stock/{sku}", request_body = ResetRequest,
    params(("sku" = String, Path, description = "1-64 of letters, digits, '.', '_', '-'")),
    responses((status = 200, description = "The item as stocked", body = ItemStock),
              (status = 422, description = "Bad total or segments", content_type = "application/problem+json")))]
async fn reset(
    State(stock): State<Arc<Stock>>,
    Path(sku): Path<String>,
    Json(body): Json<ResetRequest>,
) -> Result<Json<ItemStock>, ApiError> {
    Ok(Json(stock.reset(&sku, body.total, body.segments).await?))
}

/// Stock of an item: total, available, per segment.
#[utoipa::path(get, path = "/stock/{sku}", params(("sku" = String, Path)),
    responses((status = 200, body = ItemStock), (status = 404, description = "Unknown item", content_type = "application/problem+json")))]
async fn item(
    State(stock): State<Arc<Stock>>,
    Path(sku): Path<String>,
) -> Result<Json<ItemStock>, ApiError> {
    Ok(Json(stock.item(&sku).await?))
}

/// Deduct stock for an order (idempotent per order id).
#[utoipa::path(post, path = "/stock/{sku}/deductions", request_body = DeductRequest, params(("sku" = String, Path)),
    responses((status = 200, description = "What was taken from which segments", body = StockChange),
              (status = 404, description = "Unknown item", content_type = "application/problem+json"),
              (status = 409, description = "Sold out or insufficient stock", content_type = "application/problem+json"),
              (status = 422, description = "Bad quantity or order id", content_type = "application/problem+json"),
              (status = 503, description = "Lock busy or lost; retry with the same order id", content_type = "application/problem+json")))]
async fn deduct(
    State(stock): State<Arc<Stock>>,
    Path(sku): Path<String>,
    Json(body): Json<DeductRequest>,
) -> Result<Json<StockChange>, ApiError> {
    Ok(Json(stock.deduct(&sku, &body.order_id, body.qty).await?))
}

/// The deduction recorded for an order, if any.
#[utoipa::path(get, path = "/stock/{sku}/deductions/{order_id}", params(("sku" = String, Path), ("order_id" = String, Path)),
    responses((status = 200, body = StockChange), (status = 404, description = "No deduction for this order", content_type = "application/problem+json")))]
async fn deduction(
    State(stock): State<Arc<Stock>>,
    Path((sku, order_id)): Path<(String, String)>,
) -> Result<Json<StockChange>, ApiError> {
    Ok(Json(stock.deduction(&sku, &order_id).await?))
}

/// Put an order's stock back where it came from (idempotent).
#[utoipa::path(post, path = "/stock/{sku}/releases", request_body = ReleaseRequest, params(("sku" = String, Path)),
    responses((status = 200, body = StockChange),
              (status = 404, description = "The order has no deduction of this item", content_type = "application/problem+json"),
              (status = 409, description = "The item was reset since", content_type = "application/problem+json")))]
async fn release(
    State(stock): State<Arc<Stock>>,
    Path(sku): Path<String>,
    Json(body): Json<ReleaseRequest>,
) -> Result<Json<StockChange>, ApiError> {
    Ok(Json(stock.release(&sku, &body.order_id).await?))
}

/// Add units to a live item without a reset (admin; idempotent per restock id).
#[utoipa::path(post, path = "/stock/{sku}/restocks", request_body = RestockRequest, params(("sku" = String, Path)),
    responses((status = 200, description = "What was added to which segments", body = StockChange),
              (status = 404, description = "Unknown item", content_type = "application/problem+json"),
              (status = 409, description = "The restock id was used for another item, or the item was reset meanwhile", content_type = "application/problem+json"),
              (status = 422, description = "Bad units or restock id", content_type = "application/problem+json"),
              (status = 503, description = "Lock busy or lost; retry with the same restock id", content_type = "application/problem+json")))]
async fn restock(
    State(stock): State<Arc<Stock>>,
    Path(sku): Path<String>,
    Json(body): Json<RestockRequest>,
) -> Result<Json<StockChange>, ApiError> {
    Ok(Json(
        stock.restock(&sku, &body.restock_id, body.units).await?,
    ))
}

/// Do the books balance? `initial = available + deducted - released`, per segment and overall.
#[utoipa::path(get, path = "/stock/{sku}/audit", params(("sku" = String, Path)),
    responses((status = 200, description = "The audit; `ok` says whether it passed", body = Audit),
              (status = 404, description = "Unknown item", content_type = "application/problem+json")))]
async fn audit(
    State(stock): State<Arc<Stock>>,
    Path(sku): Path<String>,
) -> Result<Json<Audit>, ApiError> {
    crate::engine::validate_sku(&sku)?;
    let audit = crate::store::audit(&stock.pool, &sku)
        .await
        .map_err(StockError::from)?
        .ok_or(StockError::NotFound(sku))?;
    Ok(Json(audit))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "stock-service",
        description = "Flash-sale stock: segmented, locked, fenced deductions"
    ),
    paths(reset, item, deduct, deduction, release, restock, audit),
    components(schemas(
        ResetRequest,
        DeductRequest,
        ReleaseRequest,
        RestockRequest,
        ItemStock,
        StockChange,
        Audit
    ))
)]
struct ApiDoc;

/// The OpenAPI document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

/// A [`StockError`] as an HTTP response.
#[derive(Debug)]
pub struct ApiError(StockError);

impl From<StockError> for ApiError {
    fn from(e: StockError) -> Self {
        ApiError(e)
    }
}

fn problem_type(slug: &str) -> String {
    format!("/problems/{slug}")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = self.0.to_string();
        let problem = match self.0.root() {
            StockError::Invalid(_) => {
                Problem::unprocessable(detail).with_type(problem_type("invalid-input"))
            }
            StockError::NotFound(_) => {
                Problem::not_found(detail).with_type(problem_type("unknown-item"))
            }
            StockError::NoDeduction { .. } => {
                Problem::not_found(detail).with_type(problem_type("no-deduction"))
            }
            StockError::SoldOut(_) => Problem::conflict(detail).with_type(problem_type("sold-out")),
            StockError::Insufficient { available, .. } => Problem::conflict(detail)
                .with_type(problem_type("insufficient-stock"))
                .with_extension("available", *available),
            StockError::OrderConflict { .. } => {
                Problem::conflict(detail).with_type(problem_type("order-id-reused"))
            }
            StockError::RestockIdReused { .. } => {
                Problem::conflict(detail).with_type(problem_type("restock-id-reused"))
            }
            StockError::ResetSince(_) => {
                Problem::conflict(detail).with_type(problem_type("item-reset"))
            }
            StockError::LockTimeout | StockError::Conflict => {
                Problem::service_unavailable(detail).with_type(problem_type("busy"))
            }
            StockError::FenceRejected => {
                Problem::service_unavailable(detail).with_type(problem_type("lock-lost"))
            }
            StockError::Db(_)
            | StockError::Redis(_)
            | StockError::Lock(_)
            | StockError::Shared(_) => {
                // The database's or Redis's own text stays in the log.
                tracing::error!(error = %self.0, "stock operation failed");
                Problem::service_unavailable(
                    "a dependency (database or Redis) failed; nothing changed, retry with the same order_id",
                )
                .with_type(problem_type("dependency-failed"))
            }
        };
        let retry = problem.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = problem.into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
