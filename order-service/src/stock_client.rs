//! Calls to the stock-service. Every call carries the order id, so retrying one is safe —
//! on the same instance or another; each has a timeout, and retries back off. Answers are
//! classified by what they prove: a refused connection or a 503 means nothing was deducted; a
//! timeout means "unknown".
//!
//! The instances (`STOCK_URL`, a list) form a [`Pool`] shared in kind with the gateway's
//! (`service_kit::upstream`): round robin over the healthy ones; a transport failure or a
//! timeout counts against an instance and `STOCK_EJECT_AFTER` in a row eject it; any answer,
//! or a passing `/healthz` probe (every `STOCK_HEALTH_INTERVAL_MS`), takes it back. A retry
//! goes to an instance the call has not tried yet when there is one, at once; only when every
//! instance was tried does it back off.
//!
//! Tracing: each call is a span (`stock.deduct`, `stock.has_deduction`, `stock.release`) and
//! each HTTP attempt a client span inside it whose W3C `traceparent` goes with the request, so
//! the stock-service's spans join the order's trace.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument as _;
use tracing::field::Empty;

use service_kit::upstream::{self, Balance, HealthChange, Pool, Upstream};

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

/// How the client reaches the stock-service instances.
#[derive(Debug, Clone)]
pub struct StockSettings {
    /// Base URLs of the instances (`http://host:port`).
    pub urls: Vec<String>,
    /// Timeout of one call.
    pub timeout: Duration,
    /// Retries of a call.
    pub retries: u32,
    /// Consecutive failures that eject an instance.
    pub eject_after: u32,
    /// Between two rounds of health checks (zero: none).
    pub health_interval: Duration,
}

/// Client of the stock-service API, over every instance.
#[derive(Debug, Clone)]
pub struct StockClient {
    http: reqwest::Client,
    pool: Arc<Pool>,
    retries: u32,
    eject_after: u32,
    _health: Option<Arc<AbortOnDrop>>,
}

/// Stops the health checks when the last clone of the client goes.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Timeout of one health probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
struct ProblemBody {
    #[serde(rename = "type", default)]
    type_: String,
    #[serde(default)]
    detail: String,
}

impl StockClient {
    /// A client of the stock-service instances in `settings`, health-checking them in the
    /// background (must be called inside a Tokio runtime).
    pub fn new(settings: &StockSettings) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(1)))
            .no_proxy()
            .build()?;
        let upstreams = settings
            .urls
            .iter()
            .map(|u| Arc::new(Upstream::new(u.trim_end_matches('/'))))
            .collect();
        let pool = Arc::new(Pool::new("stock", upstreams, Balance::RoundRobin));
        let health = (!settings.health_interval.is_zero()).then(|| {
            let task = tokio::spawn(check_health(
                http.clone(),
                Arc::clone(&pool),
                settings.eject_after,
                settings.health_interval,
            ));
            Arc::new(AbortOnDrop(task.abort_handle()))
        });
        Ok(StockClient {
            http,
            pool,
            retries: settings.retries,
            eject_after: settings.eject_after,
            _health: health,
        })
    }

    /// The instances and their state (ejected or not).
    pub fn instances(&self) -> &[Arc<Upstream>] {
        self.pool.upstreams()
    }

    /// Deduct `qty` of `sku` for `order_id`, retrying what is worth retrying.
    #[tracing::instrument(name = "stock.deduct", skip(self), fields(attempts = Empty))]
    pub async fn deduct(&self, sku: &str, order_id: &str, qty: i64) -> Deducted {
        let path = format!("/stock/{sku}/deductions");
        let body = json!({"order_id": order_id, "qty": qty});
        let mut last = Deducted::NotNow("no attempt".into());
        let mut uncertain = false;
        let mut tried = Vec::new();
        for attempt in 0..=self.retries {
            let instance = self.next(&mut tried, attempt).await;
            tracing::Span::current().record("attempts", attempt + 1);
            let url = format!("{}{path}", instance.base);
            last = match self
                .send(
                    &instance,
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
        let path = format!("/stock/{sku}/deductions/{order_id}");
        let mut tried = Vec::new();
        for attempt in 0..=self.retries {
            let instance = self.next(&mut tried, attempt).await;
            let url = format!("{}{path}", instance.base);
            match self
                .send(
                    &instance,
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
        let path = format!("/stock/{sku}/releases");
        let body = json!({"order_id": order_id});
        let mut last = Released::Failed("no attempt".into());
        let mut tried = Vec::new();
        for attempt in 0..=self.retries {
            let instance = self.next(&mut tried, attempt).await;
            let url = format!("{}{path}", instance.base);
            last = match self
                .send(
                    &instance,
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
    /// The instance for attempt number `attempt` of a call that has tried `tried`: a healthy
    /// one it has not tried, at once; else (every instance tried, or all ejected) the next in
    /// turn after a back-off.
    async fn next(&self, tried: &mut Vec<Arc<Upstream>>, attempt: u32) -> Arc<Upstream> {
        if let Some(fresh) = self.pool.pick(tried) {
            tried.push(Arc::clone(&fresh));
            return fresh;
        }
        if attempt > 0 {
            backoff(attempt).await;
        }
        tried.clear();
        let any = self.pool.pick(&[]).unwrap_or_else(|| {
            // Every instance is ejected: try them anyway, in turn (one may be back).
            let all = self.pool.upstreams();
            Arc::clone(&all[usize::try_from(attempt).unwrap_or(0) % all.len()])
        });
        tried.push(Arc::clone(&any));
        any
    }

    /// Record what an attempt at `instance` showed: any answer is a success; a transport
    /// failure or a timeout counts towards ejecting it.
    fn record(&self, instance: &Upstream, answered: bool) {
        let change = if answered {
            instance.record_success()
        } else {
            instance.record_failure(self.eject_after)
        };
        log_change(instance, change, "call");
    }

    /// Send one attempt in an HTTP client span (OpenTelemetry semantic attributes) whose trace
    /// context goes with the request as `traceparent`.
    async fn send(
        &self,
        instance: &Arc<Upstream>,
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
        let _in_flight = instance.start_request();
        let result = request
            .headers(headers)
            .send()
            .instrument(span.clone())
            .await;
        self.record(instance, result.is_ok());
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

/// Log an instance leaving or rejoining the pool.
fn log_change(instance: &Upstream, change: HealthChange, by: &str) {
    match change {
        HealthChange::Ejected => {
            tracing::warn!(instance = %instance.base, by, "stock-service instance ejected");
        }
        HealthChange::Readmitted => {
            tracing::info!(instance = %instance.base, by, "stock-service instance back");
        }
        HealthChange::None => {}
    }
}

/// Probe every instance's `/healthz` every `interval`, for as long as the client lives.
async fn check_health(
    http: reqwest::Client,
    pool: Arc<Pool>,
    eject_after: u32,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let changes = upstream::check_all(pool.upstreams(), eject_after, |instance| {
            let request = http
                .get(format!("{}/healthz", instance.base))
                .timeout(PROBE_TIMEOUT)
                .send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        for (instance, change) in changes {
            log_change(&instance, change, "health check");
        }
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
