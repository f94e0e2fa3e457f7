//! RFC 9457 "Problem Details for HTTP APIs" error responses.
//!
//! Every error a service returns to a client should be a [`Problem`]: it
//! serializes to an `application/problem+json` body such as
//!
//! ```json
//! {"type":"about:blank","title":"Conflict","status":409,"detail":"sold out"}
//! ```
//!
//! Handlers return `Result<T, Problem>` (or an error type that converts into
//! one) and axum turns it into a response via [`IntoResponse`].

use std::fmt;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Media type of a problem details body, as registered by RFC 9457.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The default problem type: the problem has no semantics beyond its status code.
pub const ABOUT_BLANK: &str = "about:blank";

/// An RFC 9457 problem details object.
///
/// With the default type [`ABOUT_BLANK`] the `title` is the status code's
/// canonical reason phrase (as the RFC recommends) and the specifics go into
/// `detail`. `detail` is shown to clients verbatim: never put secrets or
/// internal error chains into it — log those instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// URI reference identifying the problem type (serialized as `"type"`).
    #[serde(rename = "type", default = "about_blank")]
    pub type_: String,
    /// Short, human-readable summary of the problem type.
    pub title: String,
    /// HTTP status code of the response (serialized as a number).
    #[serde(with = "status_code")]
    pub status: StatusCode,
    /// Human-readable explanation specific to this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// URI reference identifying this specific occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Extension members (RFC 9457 §3.2), flattened into the top-level object.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

fn about_blank() -> String {
    ABOUT_BLANK.to_owned()
}

impl Problem {
    /// A problem of type `about:blank` whose title is `status`'s reason phrase.
    pub fn new(status: StatusCode) -> Self {
        Self {
            type_: about_blank(),
            title: status
                .canonical_reason()
                .unwrap_or("Unknown Status")
                .to_owned(),
            status,
            detail: None,
            instance: None,
            extensions: serde_json::Map::new(),
        }
    }

    /// `400 Bad Request` with the given detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST).with_detail(detail)
    }

    /// `404 Not Found` with the given detail.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND).with_detail(detail)
    }

    /// `409 Conflict` with the given detail.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT).with_detail(detail)
    }

    /// `413 Content Too Large` with the given detail.
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE).with_detail(detail)
    }

    /// `415 Unsupported Media Type` with the given detail.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE).with_detail(detail)
    }

    /// `422 Unprocessable Content` with the given detail.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail(detail)
    }

    /// `429 Too Many Requests` with the given detail.
    pub fn too_many_requests(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS).with_detail(detail)
    }

    /// `503 Service Unavailable` with the given detail.
    pub fn service_unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE).with_detail(detail)
    }

    /// `500 Internal Server Error` with the given detail.
    ///
    /// The detail reaches the client: keep it generic and log the cause.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR).with_detail(detail)
    }

    /// Sets `detail`.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets `title`.
    #[must_use]
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the problem `type` URI.
    #[must_use]
    pub fn with_type(mut self, type_: impl Into<String>) -> Self {
        self.type_ = type_.into();
        self
    }

    /// Sets `instance`.
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Adds an extension member. Keys that collide with the standard members
    /// (`type`, `title`, `status`, `detail`, `instance`) are ignored.
    #[must_use]
    pub fn with_extension(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        let key = key.into();
        if !matches!(
            key.as_str(),
            "type" | "title" | "status" | "detail" | "instance"
        ) {
            self.extensions.insert(key, value.into());
        }
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = match serde_json::to_vec(&self) {
            Ok(body) => body,
            Err(error) => {
                // Unreachable in practice (all members are plain JSON values),
                // but never panic while producing an error response.
                tracing::error!(%error, "failed to serialize problem details");
                serde_json::json!({
                    "type": ABOUT_BLANK,
                    "title": self.title,
                    "status": status.as_u16(),
                })
                .to_string()
                .into_bytes()
            }
        };
        (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response()
    }
}

/// Maps axum's JSON extractor rejections onto problems, keeping axum's
/// status choice: syntax errors are 400, a missing `Content-Type:
/// application/json` is 415, well-formed JSON of the wrong shape is 422 and
/// a body over the size limit is 413.
impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        Self::new(rejection.status()).with_detail(rejection.body_text())
    }
}

/// Maps axum's path extractor rejections onto problems (400 for bad
/// parameters, 500 for routing bugs).
impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Self::new(rejection.status()).with_detail(rejection.body_text())
    }
}

/// Maps axum's query extractor rejections onto problems (400).
impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status()).with_detail(rejection.body_text())
    }
}

/// Serde adapter storing a [`StatusCode`] as its numeric value.
mod status_code {
    use axum::http::StatusCode;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(status.as_u16())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StatusCode, D::Error> {
        let code = u16::deserialize(d)?;
        StatusCode::from_u16(code).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_standard_members_and_extensions() {
        let problem = Problem::conflict("sold out").with_extension("sku", "A-1");
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "about:blank",
                "title": "Conflict",
                "status": 409,
                "detail": "sold out",
                "sku": "A-1",
            })
        );
    }

    #[test]
    fn round_trips_through_json() {
        let problem = Problem::not_found("no such order")
            .with_instance("/orders/42")
            .with_type("https://example.com/probs/missing");
        let text = serde_json::to_string(&problem).unwrap();
        let back: Problem = serde_json::from_str(&text).unwrap();
        assert_eq!(back, problem);
    }

    #[test]
    fn deserializing_defaults_type_to_about_blank() {
        let back: Problem = serde_json::from_str(r#"{"title":"Not Found","status":404}"#).unwrap();
        assert_eq!(back.type_, ABOUT_BLANK);
        assert_eq!(back.status, StatusCode::NOT_FOUND);
        assert!(back.detail.is_none());
    }

    #[test]
    fn extensions_cannot_shadow_standard_members() {
        let problem = Problem::internal("boom").with_extension("status", 200);
        assert!(problem.extensions.is_empty());
    }

    #[test]
    fn display_includes_status_and_detail() {
        assert_eq!(
            Problem::bad_request("bad sku").to_string(),
            "400 Bad Request: bad sku"
        );
    }
}
