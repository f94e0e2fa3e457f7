//! A key whose first attempt is still in flight — its order-service paused (SIGSTOP) or killed
//! (kill -9) after the claim, while the item sells out — is never told "sold out" by another
//! instance when its order goes through: the retry gets 409 `request-in-progress` or the
//! order's real outcome. Real order-service processes, the real stock-service, PostgreSQL and
//! Redis; the database is read directly at the end.

mod common;

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use testkit::RedisServer;

use common::{Answer, Served, database, http, orders, place, put_stock, stock, unique};

/// An order-service as a process of its own, so that it can be paused and killed.
struct Process {
    child: tokio::process::Child,
    base: String,
}

impl Process {
    async fn start(redis: &str, stock_url: &str, vars: &[(&str, &str)]) -> Process {
        let port = testkit::free_port().expect("port");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"));
        cmd.env("DATABASE_URL", database("seckill_order_test").await)
            .env("REDIS_URL", redis)
            .env("STOCK_URL", stock_url)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("RECOVERY_INTERVAL_MS", "0")
            .env("STOCK_TIMEOUT_MS", "10000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the order-service binary");
        let base = format!("http://127.0.0.1:{port}");
        let c = http();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while c.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the order-service process never came up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Process { child, base }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("pid");
        let sent = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal} {pid}");
    }
}

/// The item sells out while `key`'s first attempt (at the process) is stuck after its claim:
/// the stock-service holds every group for 1.5 s, the first attempt's deduction takes the only
/// unit, another buyer's attempt through `other` then finds none and sets the sold-out flag.
/// Returns the first attempt's task.
async fn sell_out_behind(
    first: &Process,
    other: &Served<order_service::Orders>,
    sku: &str,
    user: &str,
    key: &str,
    stuck: &str,
) -> tokio::task::JoinHandle<Option<Answer>> {
    let c = http();
    let body = json!({"sku": sku, "qty": 1});
    let attempt = {
        let (c, url, user, key, body) = (
            c.clone(),
            first.base.clone(),
            user.to_owned(),
            key.to_owned(),
            body.clone(),
        );
        tokio::spawn(async move {
            let r = c
                .post(format!("{url}/orders"))
                .header("x-user-id", &user)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await
                .ok()?;
            Some(common::answer(r).await)
        })
    };
    // Claimed, its deduction inside the stock-service's 1.5 s group.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.signal(stuck);
    // The deduction commits; the next buyer finds nothing left.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = place(&c, &other.url(""), &unique("u"), Some("late"), body).await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.raw);
    assert_eq!(late.body["type"], "/problems/sold-out", "{}", late.raw);
    attempt
}

/// The user's orders as the database has them: (count, statuses).
async fn orders_of(o: &Served<order_service::Orders>, user: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT status FROM orders WHERE user_id = $1")
        .bind(user)
        .fetch_all(&o.engine.pool)
        .await
        .expect("orders")
}

/// Retry `key` at `o` until the answer is not "still in progress" (at most `within`).
async fn retry_until_settled(
    o: &Served<order_service::Orders>,
    sku: &str,
    user: &str,
    key: &str,
    within: Duration,
) -> Vec<Answer> {
    let c = http();
    let deadline = tokio::time::Instant::now() + within;
    let mut answers = Vec::new();
    loop {
        let a = place(
            &c,
            &o.url(""),
            user,
            Some(key),
            json!({"sku": sku, "qty": 1}),
        )
        .await;
        let in_progress = a.body["type"] == "/problems/request-in-progress";
        answers.push(a);
        if !in_progress || tokio::time::Instant::now() >= deadline {
            return answers;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn assert_never_sold_out(answers: &[Answer]) {
    for a in answers {
        assert_ne!(
            a.body["type"], "/problems/sold-out",
            "a key whose order goes through was told sold out: {}",
            a.raw
        );
        assert!(
            a.status == StatusCode::CREATED || a.body["type"] == "/problems/request-in-progress",
            "{} {}",
            a.status,
            a.raw
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_while_the_first_attempt_is_paused_is_never_told_sold_out() {
    let redis = RedisServer::start().expect("redis-server");
    let s = stock(&redis.url(), &[("RMW_DELAY_MS", "1500")]).await;
    let first = Process::start(&redis.url(), &s.url(""), &[]).await;
    let other = orders(&redis.url(), &s.url(""), &[]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 1, 1).await;
    let user = unique("u");

    let attempt = sell_out_behind(&first, &other, &sku, &user, "k", "-STOP").await;
    // The buyer's retry reaches the other instance while the first attempt is paused.
    let retry = place(
        &c,
        &other.url(""),
        &user,
        Some("k"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_never_sold_out(std::slice::from_ref(&retry));
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.raw);
    assert!(retry.raw.contains("in progress"), "{}", retry.raw);

    first.signal("-CONT");
    let done = attempt
        .await
        .expect("task")
        .expect("the first attempt's answer");
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.raw);
    let last = place(
        &c,
        &other.url(""),
        &user,
        Some("k"),
        json!({"sku": sku, "qty": 1}),
    )
    .await;
    assert_eq!((last.status, last.replayed), (StatusCode::CREATED, true));
    assert_eq!(last.body["order_id"], done.body["order_id"]);
    // The database agrees with the last answer: one reserved order.
    assert_eq!(orders_of(&other, &user).await, vec!["reserved".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_the_first_attempts_instance_died_is_never_told_sold_out() {
    let redis = RedisServer::start().expect("redis-server");
    let s = stock(&redis.url(), &[("RMW_DELAY_MS", "1500")]).await;
    // The dead instance's ownership of the order runs out after 2 s.
    let first = Process::start(&redis.url(), &s.url(""), &[("ORDER_LEASE_MS", "2000")]).await;
    let other = orders(&redis.url(), &s.url(""), &[]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 1, 1).await;
    let user = unique("u");

    let attempt = sell_out_behind(&first, &other, &sku, &user, "k", "-9").await;
    assert!(
        attempt.await.expect("task").is_none(),
        "the killed instance answered"
    );
    // Retries at the other instance: in progress until the dead owner's lease ran out, then
    // the order is taken over and its (already committed) deduction replayed.
    let answers = retry_until_settled(&other, &sku, &user, "k", Duration::from_secs(15)).await;
    assert_never_sold_out(&answers);
    let last = answers.last().expect("an answer");
    assert_eq!(last.status, StatusCode::CREATED, "{}", last.raw);
    assert_eq!(orders_of(&other, &user).await, vec!["reserved".to_owned()]);
    let audit = common::stock_audit(&c, &s.url(""), &sku).await;
    assert_eq!(audit["deducted"], 1, "{audit}");
}
