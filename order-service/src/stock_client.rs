//! Calls to the stock-service. Every call carries the order id, so retrying one is safe;
//! each has a timeout, and retries back off. Answers are classified by what they prove: a
//! refused connection or a 503 means nothing was deducted; a timeout means "unknown".
//!
//! Tracing: each call is a span (`stock.deduct`, `stock.has_deduction`, `stock.release`) and
//! each HTTP attempt a client span inside it whose W3C `traceparent` goes with the request, so
//! the stock-service's spans join the order's trace.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument as _;
use tracing::field::Empty;

/// What a deduction call established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deducted {
    /// The stock is taken for this order.
    Yes,
    /// The stock-service refused, for good (sold out, not enough, unknown item).
    Refused {
        /// Problem type slug from the stock-service (`sold-out`, `insufficient-stock`, …).
        reason: String,
        /// Its explanation.
        detail: String,
    },
    /// Certainly not deducted, but only because the stock-service could not be reached or was
    /// busy: worth trying again later.
    NotNow(String),
    /// The call may or may not have deducted (timeout, broken connection, server error).
    Unknown(String),
}

/// Outcome of a release call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The order's stock is back (now or earlier).
    Yes,
    /// The order never had a deduction: nothing to put back.
    NothingToRelease,
    /// Try again later.
    Failed(String),
}

/// Client of the stock-service API.
#[derive(Debug, Clone)]
pub struct StockClient {
    http: reqwest::Client,
    base: String,
    retries: u32,
}

#[derive(Debug, Deserialize)]
struct ProblemBody {
    #[serde(rename = "type", default)]
    type_: String,
    #[serde(default)]
    detail: String,
}

impl StockClient {
    /// A client of the stock-service at `base` (e.g. `http://127.0.0.1:8082`).
    pub fn new(base: &str, timeout: Duration, retries: u32) -> reqwest::Result<Self> {
        Ok(StockClient {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(1)))
                .no_proxy()
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            retries,
        })
    }

    /// Deduct `qty` of `sku` for `order_id`, retrying what is worth retrying.
    #[tracing::instrument(name = "stock.deduct", skip(self), fields(attempts = Empty))]
    pub async fn deduct(&self, sku: &str, order_id: &str, qty: i64) -> Deducted {
        let url = format!("{}/stock/{sku}/deductions", self.base);
        let body = json!({"order_id": order_id, "qty": qty});
        let mut last = Deducted::NotNow("no attempt".into());
        let mut uncertain = false;
        for attempt in 0..=self.retries {
            if attempt > 0 {
                backoff(attempt).await;
            }
            tracing::Span::current().record("attempts", attempt + 1);
            last = match self
                .send(
                    self.http.post(&url).json(&body),
                    "POST",
                    "/stock/{sku}/deductions",
                    &url,
                )
                .await
            {
                Ok(r) => {
                    classify_deduction(r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
                }
                Err(e) if e.is_connect() => {
                    Deducted::NotNow(format!("stock-service unreachable: {e}"))
                }
                Err(e) => Deducted::Unknown(format!("stock-service call failed: {e}")),
            };
            match &last {
                Deducted::Yes => return last,
                // After an attempt whose outcome is unknown, a refusal may come from the
                // sold-out fast path although that attempt succeeded: ask what was recorded.
                Deducted::Refused { .. } if uncertain => {
                    return match self.has_deduction(sku, order_id).await {
                        Some(true) => Deducted::Yes,
                        Some(false) => last,
                        None => Deducted::Unknown(
                            "could not confirm a refusal after a lost reply".into(),
                        ),
                    };
                }
                Deducted::Refused { .. } => return last,
                Deducted::Unknown(_) => uncertain = true,
                Deducted::NotNow(_) => {}
            }
        }
        if uncertain && matches!(last, Deducted::NotNow(_)) {
            // An earlier attempt may have gone through.
            return Deducted::Unknown("an earlier attempt's outcome is unknown".into());
        }
        last
    }

    /// Did the stock-service record a deduction for `order_id`? `Some(true)` yes, `Some(false)`
    /// no, `None` when it cannot be asked.
    #[tracing::instrument(name = "stock.has_deduction", skip(self))]
    pub async fn has_deduction(&self, sku: &str, order_id: &str) -> Option<bool> {
        let url = format!("{}/stock/{sku}/deductions/{order_id}", self.base);
        for attempt in 0..=self.retries {
            if attempt > 0 {
                backoff(attempt).await;
            }
            match self
                .send(
                    self.http.get(&url),
                    "GET",
                    "/stock/{sku}/deductions/{order_id}",
                    &url,
                )
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => return Some(true),
                Ok(r) if r.status() == StatusCode::NOT_FOUND => return Some(false),
                _ => continue,
            }
        }
        None
    }

    /// Put `order_id`'s stock back (idempotent).
    #[tracing::instrument(name = "stock.release", skip(self))]
    pub async fn release(&self, sku: &str, order_id: &str) -> Released {
        let url = format!("{}/stock/{sku}/releases", self.base);
        let body = json!({"order_id": order_id});
        let mut last = Released::Failed("no attempt".into());
        for attempt in 0..=self.retries {
            if attempt > 0 {
                backoff(attempt).await;
            }
            last = match self
                .send(
                    self.http.post(&url).json(&body),
                    "POST",
                    "/stock/{sku}/releases",
                    &url,
                )
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => return Released::Yes,
                Ok(r) if r.status() == StatusCode::NOT_FOUND => {
                    let p: ProblemBody = r.json().await.unwrap_or(ProblemBody {
                        type_: String::new(),
                        detail: String::new(),
                    });
                    if p.type_ == "/problems/no-deduction" {
                        return Released::NothingToRelease;
                    }
                    Released::Failed(format!("release: 404 {}", p.detail))
                }
                Ok(r) => Released::Failed(format!("release: {}", r.status())),
                Err(e) => Released::Failed(format!("release: {e}")),
            };
        }
        last
    }
}

impl StockClient {
    /// Send one attempt in an HTTP client span (OpenTelemetry semantic attributes) whose trace
    /// context goes with the request as `traceparent`.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        method: &'static str,
        template: &'static str,
        url: &str,
    ) -> reqwest::Result<reqwest::Response> {
        let span = tracing::info_span!(
            "stock-service call",
            otel.name = format!("{method} {template}"),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = method,
            url.full = url,
            url.template = template,
            http.response.status_code = Empty,
            error.type = Empty,
        );
        let mut headers = HeaderMap::new();
        service_kit::telemetry::inject_span(&span, &mut headers);
        let result = request
            .headers(headers)
            .send()
            .instrument(span.clone())
            .await;
        match &result {
            Ok(response) => {
                span.record("http.response.status_code", response.status().as_u16());
                if response.status().is_server_error() {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", response.status().as_str());
                }
            }
            Err(error) => {
                span.record("otel.status_code", "ERROR");
                span.record(
                    "error.type",
                    if error.is_timeout() {
                        "timeout"
                    } else if error.is_connect() {
                        "connect"
                    } else {
                        "request"
                    },
                );
            }
        }
        result
    }
}

async fn backoff(attempt: u32) {
    let ms = 50u64 << attempt.min(5);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn classify_deduction(status: StatusCode, body: Value) -> Deducted {
    let problem: ProblemBody = serde_json::from_value(body).unwrap_or(ProblemBody {
        type_: String::new(),
        detail: String::new(),
    });
    let slug = problem.type_.trim_start_matches("/problems/").to_owned();
    match status {
        StatusCode::OK => Deducted::Yes,
        StatusCode::CONFLICT | StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY => {
            Deducted::Refused {
                reason: if slug.is_empty() {
                    status.as_u16().to_string()
                } else {
                    slug
                },
                detail: problem.detail,
            }
        }
        // The stock-service guarantees a 503 changed nothing.
        StatusCode::SERVICE_UNAVAILABLE => {
            Deducted::NotNow(format!("stock-service busy: {}", problem.detail))
        }
        other => Deducted::Unknown(format!("stock-service answered {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_what_they_prove() {
        assert_eq!(
            classify_deduction(StatusCode::OK, Value::Null),
            Deducted::Yes
        );
        assert!(matches!(
            classify_deduction(StatusCode::CONFLICT, json!({"type": "/problems/sold-out", "detail": "x"})),
            Deducted::Refused { reason, .. } if reason == "sold-out"
        ));
        assert!(matches!(
            classify_deduction(StatusCode::SERVICE_UNAVAILABLE, Value::Null),
            Deducted::NotNow(_)
        ));
        assert!(matches!(
            classify_deduction(StatusCode::BAD_GATEWAY, Value::Null),
            Deducted::Unknown(_)
        ));
    }
}
