//! The sale the chaos suite runs through the gateway: buyers on threads, each with its own
//! login, an order under an Idempotency-Key retried (same key, same body) until it gets a
//! final answer, some keys sent twice, some buyers trying a second key over the purchase limit,
//! half the orders paid and a tenth cancelled. Every key's last answer is kept, to be held
//! against the database afterwards.

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::{Value, json};

/// How long a client keeps retrying one request before it gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// What the sale looks like.
#[derive(Debug, Clone)]
pub struct Sale {
    /// The gateway's base URL.
    pub gateway: String,
    /// The item.
    pub sku: String,
    /// Buyers in all.
    pub buyers: usize,
    /// Threads the buyers are spread over.
    pub threads: usize,
    /// Pause between two buyers of one thread (paces the sale so that it lasts a while).
    pub pace: Duration,
    /// Prefix of the buyers' names, unique per scenario (the shops of a run share one Redis,
    /// where the order-services keep replay records by user and key).
    pub users: String,
}

/// What a client did with one key, and the last answer it got.
#[derive(Debug, Clone)]
pub struct KeyOutcome {
    /// The buyer.
    pub user: String,
    /// The Idempotency-Key.
    pub key: String,
    /// The last answer's status (0: no answer within [`GIVE_UP_AFTER`]).
    pub status: u16,
    /// Its problem type, for 4xx/5xx.
    pub problem: String,
    /// The order id of a 201.
    pub order_id: Option<String>,
    /// What the client then did to the order and whether it was confirmed.
    pub action: Action,
}

/// Pay or cancel after a 201.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Paid (200).
    Paid,
    /// Cancelled (200).
    Cancelled,
    /// Asked, but no final answer: the order's state is not asserted.
    Unconfirmed,
}

/// Answers that came back from a server error (5xx) or not at all, along the way.
#[derive(Debug, Default)]
pub struct Tally {
    /// Every key's outcome.
    pub keys: Vec<KeyOutcome>,
    /// 5xx answers seen (retried).
    pub server_errors: usize,
    /// When, after the sale began, the first sold-out answer came (the fault should land
    /// before it).
    pub first_refusal: Option<Duration>,
}

/// Run the sale; returns when every buyer is done.
pub fn run(sale: &Sale) -> Tally {
    let tally = Mutex::new(Tally::default());
    let began = Instant::now();
    let per_thread = sale.buyers.div_ceil(sale.threads.max(1));
    thread::scope(|scope| {
        for t in 0..sale.threads {
            let tally = &tally;
            scope.spawn(move || {
                let agent = agent();
                for b in 0..per_thread {
                    let n = t * per_thread + b;
                    if n >= sale.buyers {
                        break;
                    }
                    let (outcomes, errors) = buyer(&agent, sale, &format!("{}-{n}", sale.users));
                    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                    if tally.first_refusal.is_none()
                        && outcomes.iter().any(|o| o.problem == "/problems/sold-out")
                    {
                        tally.first_refusal = Some(began.elapsed());
                    }
                    tally.keys.extend(outcomes);
                    tally.server_errors += errors;
                    drop(tally);
                    thread::sleep(sale.pace);
                }
            });
        }
    });
    tally.into_inner().unwrap_or_else(|e| e.into_inner())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// One answer: status (0 when none), JSON body.
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    let body = if body.is_null() {
        String::new()
    } else {
        request = request.header("content-type", "application/json");
        body.to_string()
    };
    if !token.is_empty() {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(k) = key {
        request = request.header("idempotency-key", k);
    }
    let Ok(request) = request.body(body) else {
        return (0, Value::Null);
    };
    match agent.run(request) {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Whether an answer is worth retrying with the same key: no answer, a server error, a
/// request still in progress, or the rate limiter.
fn retryable(status: u16, body: &Value) -> bool {
    status == 0
        || status >= 500
        || status == 429
        || (status == 409 && body["type"] == "/problems/request-in-progress")
}

/// Send until the answer is final or the client gives up; the last answer and the 5xx seen.
fn until_final(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    key: Option<&str>,
    body: &Value,
) -> ((u16, Value), usize) {
    let deadline = Instant::now() + GIVE_UP_AFTER;
    let mut errors = 0;
    let mut pause = Duration::from_millis(100);
    loop {
        let (status, answer) = send(agent, method, url, token, key, body);
        if status >= 500 {
            errors += 1;
        }
        if !retryable(status, &answer) || Instant::now() >= deadline {
            return ((status, answer), errors);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// One buyer's whole visit.
fn buyer(agent: &ureq::Agent, sale: &Sale, user: &str) -> (Vec<KeyOutcome>, usize) {
    let mut errors = 0;
    let login = format!("{}/api/login", sale.gateway);
    let ((status, body), e) = until_final(agent, "POST", &login, "", None, &json!({"user": user}));
    errors += e;
    let Some(token) = body["access_token"].as_str().filter(|_| status == 200) else {
        return (Vec::new(), errors);
    };
    let orders = format!("{}/api/orders", sale.gateway);
    let order = json!({"sku": sale.sku, "qty": 1});
    let mut rng = rand::rng();
    let mut outcomes = Vec::new();

    let ((mut status, mut answer), e) =
        until_final(agent, "POST", &orders, token, Some("k1"), &order);
    errors += e;
    // A fifth of the keys are sent again: the repeat must replay the first answer.
    if rng.random_bool(0.2) {
        let (again, e) = until_final(agent, "POST", &orders, token, Some("k1"), &order);
        errors += e;
        (status, answer) = again;
    }
    let order_id =
        (status == 201).then(|| answer["order_id"].as_str().unwrap_or_default().to_owned());
    let mut action = Action::None;
    if let Some(id) = &order_id {
        let roll: f64 = rng.random();
        let what = if roll < 0.1 {
            Some("cancel")
        } else if roll < 0.6 {
            Some("pay")
        } else {
            None
        };
        if let Some(what) = what {
            let url = format!("{orders}/{id}/{what}");
            let ((s, _), e) = until_final(agent, "POST", &url, token, None, &Value::Null);
            errors += e;
            action = match (what, s) {
                ("pay", 200) => Action::Paid,
                ("cancel", 200) => Action::Cancelled,
                _ => Action::Unconfirmed,
            };
        }
    }
    outcomes.push(outcome(user, "k1", status, &answer, order_id, action));
    // A tenth try a second key: over the purchase limit unless the first one failed.
    if rng.random_bool(0.1) {
        let ((s, a), e) = until_final(agent, "POST", &orders, token, Some("k2"), &order);
        errors += e;
        let id = (s == 201).then(|| a["order_id"].as_str().unwrap_or_default().to_owned());
        outcomes.push(outcome(user, "k2", s, &a, id, Action::None));
    }
    (outcomes, errors)
}

fn outcome(
    user: &str,
    key: &str,
    status: u16,
    answer: &Value,
    order_id: Option<String>,
    action: Action,
) -> KeyOutcome {
    KeyOutcome {
        user: user.to_owned(),
        key: key.to_owned(),
        status,
        problem: answer["type"].as_str().unwrap_or_default().to_owned(),
        order_id,
        action,
    }
}
