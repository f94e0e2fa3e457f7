//! Everything the gateway itself can answer with, as problem+json responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use service_kit::Problem;

use crate::auth::TokenError;
use crate::rate_limit::Limited;

/// The realm in `WWW-Authenticate` challenges.
const REALM: &str = "seckill";

/// A request the gateway answers itself instead of forwarding (or after forwarding failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The path has `.`/`..` segments or is not absolute: 400.
    #[error("the request path is not acceptable")]
    BadPath,
    /// No route matches: 404.
    #[error("no route for this path")]
    NoRoute,
    /// No valid bearer token: 401 with `WWW-Authenticate: Bearer`.
    #[error(transparent)]
    Unauthenticated(#[from] TokenError),
    /// A valid token without the admin role on an admin route: 403.
    #[error("this route needs the admin role")]
    Forbidden,
    /// A rate limit refused the request: 429 with `Retry-After`.
    #[error("rate limit exceeded")]
    RateLimited(Limited),
    /// The body is over the limit: 413.
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The body could not be read: 400.
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// Every upstream of the pool is ejected: 503 with `Retry-After`.
    #[error("no healthy upstream in pool {0}")]
    NoHealthyUpstream(String),
    /// No upstream could be connected to (the request reached none): 503 with `Retry-After`.
    #[error("no upstream of pool {0} accepted a connection")]
    UpstreamUnavailable(String),
    /// The upstream connection failed after the request was sent, and a retry was not safe: 502.
    #[error("the upstream connection failed before it answered")]
    UpstreamBroken,
    /// The route's deadline passed: 504.
    #[error("the upstream did not answer within {0} ms")]
    UpstreamTimeout(u128),
    /// Login with a malformed user id: 422.
    #[error("{0}")]
    BadLogin(&'static str),
    /// Login with wrong credentials: 401.
    #[error("wrong credentials")]
    LoginRefused,
    /// A bug or an impossible state: 500 (the cause is logged, not sent).
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadPath | Self::BodyUnreadable => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Unauthenticated(_) | Self::LoginRefused => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoHealthyUpstream(_) | Self::UpstreamUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamBroken => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadLogin(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem_type(&self) -> &'static str {
        match self {
            Self::BadPath => "/problems/bad-path",
            Self::NoRoute => "/problems/no-route",
            Self::Unauthenticated(_) => "/problems/unauthenticated",
            Self::Forbidden => "/problems/forbidden",
            Self::RateLimited(_) => "/problems/rate-limited",
            Self::BodyTooLarge(_) => "/problems/body-too-large",
            Self::BodyUnreadable => "/problems/bad-body",
            Self::NoHealthyUpstream(_) => "/problems/no-healthy-upstream",
            Self::UpstreamUnavailable(_) => "/problems/upstream-unavailable",
            Self::UpstreamBroken => "/problems/bad-gateway",
            Self::UpstreamTimeout(_) => "/problems/upstream-timeout",
            Self::BadLogin(_) => "/problems/bad-login",
            Self::LoginRefused => "/problems/login-refused",
            Self::Internal => "about:blank",
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut problem = Problem::new(self.status())
            .with_detail(self.to_string())
            .with_type(self.problem_type());
        if let Self::RateLimited(limited) = &self {
            problem = problem.with_extension("scope", limited.scope.as_str());
        }
        let mut response = problem.into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthenticated(TokenError::Missing) | Self::LoginRefused => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"seckill\""),
                );
            }
            Self::Unauthenticated(reason) => {
                let challenge = format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{reason}\""
                );
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            Self::RateLimited(limited) => {
                headers.insert(header::RETRY_AFTER, limited.retry_after_secs.into());
            }
            Self::NoHealthyUpstream(_) | Self::UpstreamUnavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
