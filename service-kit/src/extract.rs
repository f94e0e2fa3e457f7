//! Drop-in replacements for axum's [`axum::Json`] and [`axum::extract::Path`]
//! whose rejections are [`Problem`]s (`application/problem+json`) instead of
//! axum's plain-text bodies.
//!
//! ```
//! use serde::Deserialize;
//! use service_kit::extract::Json;
//! use service_kit::problem::Problem;
//!
//! #[derive(Deserialize)]
//! struct Reserve {
//!     sku: String,
//!     quantity: u32,
//! }
//!
//! async fn reserve(Json(body): Json<Reserve>) -> Result<Json<u32>, Problem> {
//!     if body.sku.is_empty() {
//!         return Err(Problem::unprocessable("sku must not be empty"));
//!     }
//!     Ok(Json(body.quantity))
//! }
//! # let _: axum::Router = axum::Router::new().route("/", axum::routing::post(reserve));
//! ```

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// JSON request extractor and response type.
///
/// As an extractor it behaves like [`axum::Json`] (requires
/// `Content-Type: application/json`) but rejects with a [`Problem`]:
/// 400 for malformed JSON, 415 for a missing/wrong content type, 422 for JSON
/// that does not match `T`, 413 for a body over the limit. As a response it
/// serializes `T` exactly like [`axum::Json`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path-parameter extractor like [`axum::extract::Path`], rejecting with a
/// [`Problem`] (usually 400) instead of plain text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}
