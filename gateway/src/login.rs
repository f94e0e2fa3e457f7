//! `POST /api/login`: a demo identity provider issuing gateway tokens.
//!
//! `{"user": "alice"}` gets a `user` token for any well-formed user id (1–64 characters of
//! `A-Z a-z 0-9 . _ - @`); `{"user": "admin", "password": "…"}` gets an `admin` token when
//! the password matches `ADMIN_PASSWORD` (compared in constant time). Logins are rate-limited
//! by client IP like anonymous requests. With `auth.login = false` (a real identity provider
//! issues the tokens) the route answers 404.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use service_kit::extract::Json;
use tokio::time::Instant;

use crate::Gateway;
use crate::auth::{Role, constant_time_eq, is_valid_user_id};
use crate::error::GatewayError;

/// Path of the login endpoint.
pub const LOGIN_PATH: &str = "/api/login";

/// The user name that can log in as admin.
pub const ADMIN_USER: &str = "admin";

/// Route name of the login endpoint in metrics and logs.
const ROUTE: &str = "login";

/// Body of `POST /api/login`.
#[derive(Debug, Clone, Deserialize)]
pub struct LoginRequest {
    /// The user id.
    pub user: String,
    /// Only for `admin`.
    #[serde(default)]
    pub password: Option<String>,
}

/// Answer of `POST /api/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The signed JWT, for `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The user id.
    pub user: String,
    /// The role granted.
    pub role: Role,
}

pub(crate) async fn login(
    State(gateway): State<Gateway>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<LoginRequest>, service_kit::Problem>,
) -> Response {
    let started = Instant::now();
    let runtime = gateway.runtime();
    let ip = connect.map(|c| c.0.0.ip());
    let key = ip.map_or_else(|| "ip:unknown".to_owned(), |ip| format!("ip:{ip}"));
    let response = match runtime.limits.check(&key) {
        Err(limited) => {
            gateway
                .metrics()
                .rate_limited(ROUTE, limited.scope.as_str());
            GatewayError::RateLimited(limited).into_response()
        }
        // The demo login switched off: as if the route did not exist.
        Ok(()) if !runtime.file.auth.login => GatewayError::NoRoute.into_response(),
        Ok(()) => match body {
            Err(problem) => problem.into_response(),
            Ok(Json(request)) => match issue(&gateway, &request) {
                Ok(answer) => Json(answer).into_response(),
                Err(error) => {
                    tracing::info!(user = %request.user, %error, "login refused");
                    error.into_response()
                }
            },
        },
    };
    gateway.metrics().request(
        ROUTE.into(),
        &axum::http::Method::POST,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

fn issue(gateway: &Gateway, request: &LoginRequest) -> Result<LoginResponse, GatewayError> {
    let runtime = gateway.runtime();
    if !is_valid_user_id(&request.user) {
        return Err(GatewayError::BadLogin(
            "user must be 1-64 characters of A-Z a-z 0-9 . _ - @",
        ));
    }
    let role = if request.user == ADMIN_USER {
        let expected = runtime
            .admin_password
            .as_ref()
            .ok_or(GatewayError::LoginRefused)?;
        let given = request.password.as_deref().unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
            return Err(GatewayError::LoginRefused);
        }
        Role::Admin
    } else {
        Role::User
    };
    let token = runtime.tokens.issue(&request.user, role).map_err(|error| {
        tracing::error!(%error, "cannot issue a token");
        GatewayError::Internal
    })?;
    tracing::info!(user = %request.user, role = role.as_str(), "token issued");
    Ok(LoginResponse {
        access_token: token,
        token_type: "Bearer".to_owned(),
        expires_in: runtime.tokens.ttl_secs(),
        user: request.user.clone(),
        role,
    })
}
