//! The goose scenarios: `flash-sale` buyers and `browse` readers.
//!
//! Every goose user logs in once (`on_start`) as a user of its own, so the gateway's
//! per-user rate limits and the order-service's purchase limit apply per simulated buyer.
//! Expected answers of a flash sale (409 sold out, 409 purchase limit, 409 in flight, 429)
//! are marked goose successes with `set_success`; 5xx, transport errors and any answer the
//! contract does not allow stay failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use goose::goose::GooseResponse;
use goose::metrics::GooseRequestMetric;
use goose::prelude::*;
use rand::Rng as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::record::{Outcome, Recorder};
use crate::shop::retry_after;

/// What the transactions share.
#[derive(Debug)]
pub struct Context {
    /// The hot item.
    pub sku: String,
    /// Prefix of every user id of this run (`<prefix>-<run id>-`).
    pub user_prefix: String,
    /// Share of created orders resent with the same key.
    pub retry_share: f64,
    /// Share of created orders paid.
    pub pay_share: f64,
    /// Share of created orders cancelled.
    pub cancel_share: f64,
    /// Where answers go.
    pub recorder: Arc<Recorder>,
}

/// A user's login, kept as goose session data.
#[derive(Debug, Clone)]
struct Session {
    user: String,
    token: Option<String>,
}

/// How long a user keeps trying to log in through 429s.
const LOGIN_DEADLINE: Duration = Duration::from_secs(60);

/// Goose request names (the rows of goose's reports).
const LOGIN: &str = "POST /api/login";
const ORDER: &str = "POST /api/orders";
const RESEND: &str = "POST /api/orders (resend)";
const PAY: &str = "POST /api/orders/{id}/pay";
const CANCEL: &str = "POST /api/orders/{id}/cancel";
const BROWSE: &str = "GET /api/stock/{sku}";
const HEALTHZ: &str = "GET /healthz";

/// The buyers' scenario.
pub fn flash_sale(ctx: &Arc<Context>) -> Scenario {
    scenario!("flash-sale")
        .register_transaction(login_transaction(ctx, 'b'))
        .register_transaction(transaction(ctx, "order", |c, u| Box::pin(buy(c, u))))
}

/// The readers' scenario.
pub fn browse(ctx: &Arc<Context>) -> Scenario {
    scenario!("browse")
        .register_transaction(login_transaction(ctx, 'v'))
        .register_transaction(transaction(ctx, "browse", |c, u| {
            Box::pin(read_stock(c, u))
        }))
}

/// The `trivial` scenario: the gateway's own `GET /healthz`, no login and no upstream.
pub fn trivial(ctx: &Arc<Context>) -> Scenario {
    scenario!("trivial")
        .register_transaction(transaction(ctx, "healthz", |c, u| Box::pin(healthz(c, u))))
}

type Step = for<'r> fn(
    Arc<Context>,
    &'r mut GooseUser,
) -> std::pin::Pin<Box<dyn Future<Output = TransactionResult> + Send + 'r>>;

fn transaction(ctx: &Arc<Context>, name: &str, step: Step) -> Transaction {
    let ctx = Arc::clone(ctx);
    Transaction::new(Arc::new(move |user| step(Arc::clone(&ctx), user))).set_name(name)
}

fn login_transaction(ctx: &Arc<Context>, role: char) -> Transaction {
    let ctx = Arc::clone(ctx);
    Transaction::new(Arc::new(move |user| {
        let ctx = Arc::clone(&ctx);
        Box::pin(async move { login(ctx, user, role).await })
    }))
    .set_name("login")
    .set_on_start()
}

/// Log in as `<prefix>b<n>` (buyers) or `<prefix>v<n>` (browsers), waiting out 429s.
async fn login(ctx: Arc<Context>, user: &mut GooseUser, role: char) -> TransactionResult {
    let name = format!("{}{role}{}", ctx.user_prefix, user.weighted_users_index);
    user.set_session_data(Session {
        user: name.clone(),
        token: None,
    });
    let deadline = Instant::now() + LOGIN_DEADLINE;
    loop {
        let builder = user
            .get_request_builder(&GooseMethod::Post, "/api/login")?
            .json(&json!({ "user": name }));
        let (mut request, latency, answer) = send(user, builder, LOGIN).await?;
        match answer.status {
            Some(StatusCode::OK) => {
                ctx.recorder.outcome(Outcome::LoggedIn, latency);
                let token = answer.body["access_token"].as_str().map(str::to_owned);
                if token.is_none() {
                    return fail(
                        &ctx,
                        user,
                        &mut request,
                        latency,
                        "login",
                        "no access_token",
                    );
                }
                user.set_session_data(Session { user: name, token });
                return Ok(());
            }
            Some(StatusCode::TOO_MANY_REQUESTS) if Instant::now() < deadline => {
                ctx.recorder.outcome(Outcome::RateLimited, latency);
                user.set_success(&mut request)?;
                let jitter = rand::rng().random_range(0..100);
                tokio::time::sleep(answer.wait + Duration::from_millis(jitter)).await;
            }
            _ => {
                return fail(
                    &ctx,
                    user,
                    &mut request,
                    latency,
                    "login",
                    &answer.describe(),
                );
            }
        }
    }
}

/// The user's id and token, logging in (again) first if the `on_start` login failed; a
/// failed login pauses the user a little so a dead gateway is not hammered in a hot loop.
async fn ensure_session(
    ctx: &Arc<Context>,
    user: &mut GooseUser,
    role: char,
) -> Result<(String, String), Box<TransactionError>> {
    let current = |user: &GooseUser| {
        let s = user.get_session_data::<Session>()?;
        Some((s.user.clone(), s.token.clone()?))
    };
    if let Some(found) = current(user) {
        return Ok(found);
    }
    if let Err(e) = login(Arc::clone(ctx), user, role).await {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return Err(e);
    }
    current(user).ok_or_else(|| Box::new(TransactionError::Custom("not logged in".into())))
}

/// One buyer iteration: a new key, an order, maybe a resend, maybe pay or cancel.
async fn buy(ctx: Arc<Context>, user: &mut GooseUser) -> TransactionResult {
    let (name, token) = ensure_session(&ctx, user, 'b').await?;
    let key = uuid::Uuid::new_v4().simple().to_string();
    let body = json!({ "sku": ctx.sku, "qty": 1 });
    let first = Order {
        name: &name,
        key: &key,
        resend: false,
    };
    let Some(order_id) = place(&ctx, user, &token, &first, &body).await? else {
        return Ok(());
    };
    let (resend, roll) = {
        let mut rng = rand::rng();
        (
            rng.random_bool(ctx.retry_share.clamp(0.0, 1.0)),
            rng.random::<f64>(),
        )
    };
    if resend {
        let again = Order {
            resend: true,
            ..first
        };
        place(&ctx, user, &token, &again, &body).await?;
    }
    if roll < ctx.pay_share {
        transition(&ctx, user, &token, &order_id, "pay").await?;
    } else if roll < ctx.pay_share + ctx.cancel_share {
        transition(&ctx, user, &token, &order_id, "cancel").await?;
    }
    Ok(())
}

/// Which order request: the buyer, its Idempotency-Key, and whether it is the key's resend.
#[derive(Debug, Clone, Copy)]
struct Order<'a> {
    name: &'a str,
    key: &'a str,
    resend: bool,
}

/// The 409 types that are a final refusal of the order (not "try again").
fn is_refusal(kind: &str) -> bool {
    matches!(
        kind,
        "/problems/sold-out" | "/problems/insufficient-stock" | "/problems/purchase-limit"
    )
}

/// `POST /api/orders` with the order's key; the order id when the answer is an order (201).
async fn place(
    ctx: &Context,
    user: &mut GooseUser,
    token: &str,
    order: &Order<'_>,
    body: &Value,
) -> Result<Option<String>, Box<TransactionError>> {
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/api/orders")?
        .bearer_auth(token)
        .header("idempotency-key", order.key)
        .json(body);
    ctx.recorder.order_sent(order.resend);
    let name = if order.resend { RESEND } else { ORDER };
    let (mut request, latency, answer) = send(user, builder, name).await?;
    let kind = answer.body["type"].as_str().unwrap_or_default();
    match answer.status {
        Some(StatusCode::CREATED) => created(ctx, user, &mut request, latency, &answer, order),
        Some(StatusCode::CONFLICT) if is_refusal(kind) => {
            refused(ctx, user, &mut request, latency, kind, order)?;
            Ok(None)
        }
        Some(StatusCode::CONFLICT) if kind == "/problems/request-in-progress" => {
            ctx.recorder.outcome(Outcome::InFlight, latency);
            user.set_success(&mut request)?;
            Ok(None)
        }
        Some(StatusCode::TOO_MANY_REQUESTS) => {
            ctx.recorder.outcome(Outcome::RateLimited, latency);
            user.set_success(&mut request)?;
            Ok(None)
        }
        _ => {
            let detail = answer.describe();
            if order.resend && answer.status.is_some() {
                ctx.recorder.replay_mismatch(format!(
                    "key {} of {}: order, then {detail}",
                    order.key, order.name
                ));
            }
            fail(ctx, user, &mut request, latency, "order", &detail)?;
            Ok(None)
        }
    }
}

/// A 201: the order id, unless the key was already answered with another order (a
/// duplicate, recorded as an error) or the body has none.
fn created(
    ctx: &Context,
    user: &mut GooseUser,
    request: &mut GooseRequestMetric,
    latency: Duration,
    answer: &Answer,
    order: &Order<'_>,
) -> Result<Option<String>, Box<TransactionError>> {
    let Some(order_id) = answer.body["order_id"].as_str().map(str::to_owned) else {
        fail(ctx, user, request, latency, "order", "201 without order_id")?;
        return Ok(None);
    };
    let (name, key) = (order.name, order.key);
    if !ctx.recorder.order_seen(name, key, &order_id) {
        ctx.recorder.outcome(Outcome::Error, latency);
        ctx.recorder.error_sample(
            "duplicate-order",
            format!("key {key} of {name} answered with a second order {order_id}"),
        );
        user.set_failure("key answered with another order", request, None, None)?;
        return Ok(None);
    }
    if order.resend && !answer.replayed {
        ctx.recorder.replay_unmarked();
    }
    let outcome = if order.resend || answer.replayed {
        Outcome::Replayed
    } else {
        Outcome::Created
    };
    ctx.recorder.outcome(outcome, latency);
    Ok(Some(order_id))
}

/// A final refusal (sold out, not enough, over the limit). For a resend it is an error: a key
/// whose first answer was an order must replay that order, never a rejection (the sold-out
/// fast path must not shadow a stored response).
fn refused(
    ctx: &Context,
    user: &mut GooseUser,
    request: &mut GooseRequestMetric,
    latency: Duration,
    kind: &str,
    order: &Order<'_>,
) -> TransactionResult {
    if order.resend {
        ctx.recorder.outcome(Outcome::Error, latency);
        ctx.recorder.replay_mismatch(format!(
            "key {} of {}: order, then {kind}",
            order.key, order.name
        ));
        return user.set_failure("resend answered with a rejection", request, None, None);
    }
    let outcome = if kind == "/problems/purchase-limit" {
        Outcome::PurchaseLimit
    } else {
        Outcome::SoldOut
    };
    ctx.recorder.outcome(outcome, latency);
    user.set_success(request)
}

/// `POST /api/orders/{id}/pay` or `/cancel`.
async fn transition(
    ctx: &Context,
    user: &mut GooseUser,
    token: &str,
    order_id: &str,
    action: &str,
) -> TransactionResult {
    let builder = user
        .get_request_builder(
            &GooseMethod::Post,
            &format!("/api/orders/{order_id}/{action}"),
        )?
        .bearer_auth(token);
    let name = if action == "pay" { PAY } else { CANCEL };
    let (mut request, latency, answer) = send(user, builder, name).await?;
    let expected = if action == "pay" { "paid" } else { "cancelled" };
    match answer.status {
        Some(StatusCode::OK) if answer.body["status"] == expected => {
            if action == "pay" {
                ctx.recorder.paid(order_id);
                ctx.recorder.outcome(Outcome::Paid, latency);
            } else {
                ctx.recorder.cancelled(order_id);
                ctx.recorder.outcome(Outcome::Cancelled, latency);
            }
            Ok(())
        }
        Some(StatusCode::TOO_MANY_REQUESTS) => {
            ctx.recorder.outcome(Outcome::RateLimited, latency);
            user.set_success(&mut request)
        }
        _ => fail(ctx, user, &mut request, latency, action, &answer.describe()),
    }
}

/// One reader iteration: the item's stock.
async fn read_stock(ctx: Arc<Context>, user: &mut GooseUser) -> TransactionResult {
    let (_, token) = ensure_session(&ctx, user, 'v').await?;
    let builder = user
        .get_request_builder(&GooseMethod::Get, &format!("/api/stock/{}", ctx.sku))?
        .bearer_auth(token);
    let (mut request, latency, answer) = send(user, builder, BROWSE).await?;
    match answer.status {
        Some(StatusCode::OK) if answer.body["available"].is_i64() => {
            ctx.recorder.outcome(Outcome::Browsed, latency);
            Ok(())
        }
        Some(StatusCode::TOO_MANY_REQUESTS) => {
            ctx.recorder.outcome(Outcome::RateLimited, latency);
            user.set_success(&mut request)
        }
        _ => fail(
            &ctx,
            user,
            &mut request,
            latency,
            "browse",
            &answer.describe(),
        ),
    }
}

async fn healthz(ctx: Arc<Context>, user: &mut GooseUser) -> TransactionResult {
    let builder = user.get_request_builder(&GooseMethod::Get, "/healthz")?;
    let (mut request, latency, answer) = send(user, builder, HEALTHZ).await?;
    match answer.status {
        Some(StatusCode::OK) => {
            ctx.recorder.outcome(Outcome::Healthz, latency);
            Ok(())
        }
        _ => fail(
            &ctx,
            user,
            &mut request,
            latency,
            "healthz",
            &answer.describe(),
        ),
    }
}

/// An answer, read.
#[derive(Debug)]
struct Answer {
    /// None: no HTTP answer (transport error).
    status: Option<StatusCode>,
    /// `Idempotent-Replayed: true`.
    replayed: bool,
    /// The wait a 429 asks for.
    wait: Duration,
    /// The JSON body (Null if none or not JSON).
    body: Value,
    /// The transport error, if any.
    error: Option<String>,
}

impl Answer {
    fn describe(&self) -> String {
        match (&self.status, &self.error) {
            (Some(s), _) => format!("HTTP {} {}", s.as_u16(), self.body),
            (None, Some(e)) => format!("no answer: {e}"),
            (None, None) => "no answer".into(),
        }
    }
}

/// Send through goose (so its reports count the request) and read the answer; the latency
/// runs until the body is read.
async fn send(
    user: &mut GooseUser,
    builder: reqwest::RequestBuilder,
    name: &'static str,
) -> Result<(GooseRequestMetric, Duration, Answer), Box<TransactionError>> {
    let request = GooseRequest::builder()
        .set_request_builder(builder)
        .name(name)
        .build();
    let started = Instant::now();
    let GooseResponse { request, response } = user.request(request).await?;
    let answer = match response {
        Ok(response) => {
            let status = response.status();
            let replayed = response
                .headers()
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok())
                == Some("true");
            let wait = retry_after(response.headers());
            match response.text().await {
                Ok(text) => Answer {
                    status: Some(status),
                    replayed,
                    wait,
                    body: serde_json::from_str(&text).unwrap_or(Value::Null),
                    error: None,
                },
                Err(e) => Answer {
                    status: None,
                    replayed,
                    wait,
                    body: Value::Null,
                    error: Some(format!("reading the body: {e}")),
                },
            }
        }
        Err(e) => Answer {
            status: None,
            replayed: false,
            wait: Duration::ZERO,
            body: Value::Null,
            error: Some(e.to_string()),
        },
    };
    Ok((request, started.elapsed(), answer))
}

/// A genuine error: recorded, sampled, and a goose failure (the transaction ends).
fn fail(
    ctx: &Context,
    user: &mut GooseUser,
    request: &mut GooseRequestMetric,
    latency: Duration,
    kind: &str,
    detail: &str,
) -> TransactionResult {
    ctx.recorder.outcome(Outcome::Error, latency);
    ctx.recorder.error_sample(kind, detail.to_owned());
    user.set_failure(kind, request, None, None)
}
