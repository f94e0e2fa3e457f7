//! The shop's admin side, through the gateway: admin login, seeding the item, the two
//! audits. Rate-limited answers (429) are waited out and retried.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Why a call to the shop failed.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// No HTTP answer (connection refused, timeout, DNS).
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
    /// An answer, but not the expected one.
    #[error("{what}: HTTP {status}: {body}")]
    Refused {
        /// What was attempted.
        what: String,
        /// The status.
        status: u16,
        /// The body (truncated).
        body: String,
    },
    /// A 2xx answer whose body is not what the API documents.
    #[error("{what}: unexpected answer: {detail}")]
    BadAnswer {
        /// What was attempted.
        what: String,
        /// Why it was not understood.
        detail: String,
    },
}

/// `GET /api/stock/{sku}/audit` of the stock-service: `initial = available + deducted -
/// released`, per segment and overall.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAudit {
    /// True when every check of the stock-service passed.
    pub ok: bool,
    /// Units the item was stocked with.
    pub initial: i64,
    /// Units left.
    pub available: i64,
    /// Units deducted (ledger).
    pub deducted: i64,
    /// Units released (ledger).
    pub released: i64,
    /// Units sold that the segments do not account for (> 0: oversold).
    pub oversold: i64,
    /// What is wrong, one line each.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Orders and units in one status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Orders.
    pub count: i64,
    /// Units.
    pub qty: i64,
}

/// Orders by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusTallies {
    /// Not settled yet.
    pub pending: Tally,
    /// Stock deducted, unpaid.
    pub reserved: Tally,
    /// Paid.
    pub paid: Tally,
    /// Cancelled.
    pub cancelled: Tally,
    /// Refused.
    pub rejected: Tally,
}

/// `GET /api/orders/audit/{sku}` of the order-service (admin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAudit {
    /// Orders and units by status.
    pub orders: StatusTallies,
    /// Cancelled orders whose release is not confirmed yet.
    pub cancelled_unreleased: Tally,
    /// Units holding stock: reserved + paid + cancelled-unreleased.
    pub holding_stock_qty: i64,
    /// `(user, key)` pairs with more than one order.
    pub keys_with_several_orders: i64,
    /// Reserved or paid orders without a key.
    pub orders_without_key: i64,
    /// Distinct users with an order.
    pub users: i64,
    /// Users holding more than the purchase limit.
    pub users_over_limit: i64,
    /// The order-service's `PURCHASE_LIMIT`.
    pub purchase_limit: i64,
}

/// A client of the shop's gateway for the admin calls.
#[derive(Debug, Clone)]
pub struct Shop {
    http: reqwest::Client,
    base: String,
}

/// Attempts of a call answered 429 before giving up.
const RATE_LIMIT_ATTEMPTS: u32 = 50;

impl Shop {
    /// A client of the gateway at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, ShopError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|source| ShopError::Unreachable {
                url: base.to_owned(),
                source,
            })?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /healthz` of the gateway.
    pub async fn health(&self) -> Result<(), ShopError> {
        let url = format!("{}/healthz", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ShopError::Unreachable { url, source })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(refused("gateway health check", response).await)
        }
    }

    /// Log in as `user` (with `password` for `admin`); returns the bearer token.
    pub async fn login(&self, user: &str, password: Option<&str>) -> Result<String, ShopError> {
        let mut body = json!({ "user": user });
        if let Some(p) = password {
            body["password"] = json!(p);
        }
        let what = format!("login as {user}");
        let answer: Value = self
            .call(Method::POST, "/api/login", None, Some(&body), &what)
            .await?;
        answer["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ShopError::BadAnswer {
                what,
                detail: "no access_token".into(),
            })
    }

    /// Stock (or restock) `sku` with `total` units over `segments` (admin).
    pub async fn seed(
        &self,
        admin: &str,
        sku: &str,
        total: i64,
        segments: i32,
    ) -> Result<Value, ShopError> {
        self.call(
            Method::PUT,
            &format!("/api/stock/{sku}"),
            Some(admin),
            Some(&json!({ "total": total, "segments": segments })),
            &format!("seeding {sku}"),
        )
        .await
    }

    /// The stock-service's audit of `sku`.
    pub async fn stock_audit(&self, sku: &str) -> Result<StockAudit, ShopError> {
        self.call(
            Method::GET,
            &format!("/api/stock/{sku}/audit"),
            None,
            None,
            "stock audit",
        )
        .await
    }

    /// The order-service's audit of `sku`, counting users whose id starts with `prefix`.
    pub async fn order_audit(
        &self,
        admin: &str,
        sku: &str,
        prefix: &str,
    ) -> Result<OrderAudit, ShopError> {
        self.call(
            Method::GET,
            &format!("/api/orders/audit/{sku}?user_prefix={prefix}"),
            Some(admin),
            None,
            "order audit (GET /api/orders/audit/{sku}, admin)",
        )
        .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        what: &str,
    ) -> Result<T, ShopError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), &url);
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            if let Some(b) = body {
                request = request.json(b);
            }
            let response = request
                .send()
                .await
                .map_err(|source| ShopError::Unreachable {
                    url: url.clone(),
                    source,
                })?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS && attempt < RATE_LIMIT_ATTEMPTS {
                tokio::time::sleep(retry_after(response.headers())).await;
                continue;
            }
            // Reads are safe to repeat: ride out a busy or briefly ejected upstream.
            if method == Method::GET
                && matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                )
                && attempt < READ_ATTEMPTS
            {
                tracing::warn!(%status, what, attempt, "retrying a read");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            if !status.is_success() {
                return Err(refused(what, response).await);
            }
            let text = response.text().await.map_err(|e| ShopError::BadAnswer {
                what: what.to_owned(),
                detail: e.to_string(),
            })?;
            return serde_json::from_str(&text).map_err(|e| ShopError::BadAnswer {
                what: what.to_owned(),
                detail: format!("{e}: {}", truncate(&text)),
            });
        }
    }
}

/// Attempts of a read (`GET`) answered 502, 503 or 504.
const READ_ATTEMPTS: u32 = 3;

/// How long a 429 asks to wait (`Retry-After` seconds, capped at 2 s; 200 ms without it).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_millis(200), |s| {
            Duration::from_secs_f64(s.min(2.0))
        })
}

async fn refused(what: &str, response: reqwest::Response) -> ShopError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    ShopError::Refused {
        what: what.to_owned(),
        status,
        body: truncate(&body),
    }
}

fn truncate(text: &str) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
