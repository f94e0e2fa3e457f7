//! Timeouts and retries: only what never reached an upstream, or is safe to repeat.

use std::time::{Duration, Instant};

use crate::common::{Config, TestGateway, expect_problem, read};
use crate::upstreams::{Mode, TestUpstream};

async fn one(mode: Mode, timeout_ms: u64) -> (TestGateway, TestUpstream) {
    let upstream = TestUpstream::start("app", mode).await;
    let config = Config::new(
        &format!("app = [\"{}\"]", upstream.url()),
        &format!(
            r#"
[[routes]]
prefix = "/api/app"
rewrite = "/app"
pool = "app"
auth = "public"
retries = 2
timeout_ms = {timeout_ms}
"#
        ),
    )
    // Keep the flaky upstream in the pool while it drops connections.
    .upstream_setting("eject_after_failures", "10");
    (TestGateway::start(&config).await, upstream)
}

#[tokio::test]
async fn a_slow_upstream_gets_a_504_at_the_route_deadline() {
    let (gw, upstream) = one(Mode::Sleep(Duration::from_secs(3)), 300).await;
    let started = Instant::now();
    let problem = expect_problem(gw.get("/api/app/slow", None).await, 504).await;
    let elapsed = started.elapsed();
    assert_eq!(problem["type"], "/problems/upstream-timeout");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert_eq!(upstream.hits(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn a_get_whose_connection_dropped_is_retried() {
    let (gw, upstream) = one(Mode::DropFirst(2), 3000).await;
    let (status, _, body) = read(gw.get("/api/app/x", None).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/app/x");
    assert_eq!(upstream.hits(), 3, "two dropped attempts, then an answer");
}

#[tokio::test]
async fn a_post_without_idempotency_key_is_never_repeated() {
    let (gw, upstream) = one(Mode::DropFirst(1), 3000).await;
    let response = gw
        .http
        .post(gw.url("/api/app/orders"))
        .body("{}")
        .send()
        .await
        .expect("post");
    let problem = expect_problem(response, 502).await;
    assert_eq!(problem["type"], "/problems/bad-gateway");
    assert_eq!(upstream.hits(), 1, "the POST reached the upstream once");

    // The same holds for PUT (a stock reset must not be replayed after later deductions).
    let (gw, upstream) = one(Mode::DropFirst(1), 3000).await;
    let response = gw
        .http
        .put(gw.url("/api/app/stock"))
        .body("{}")
        .send()
        .await
        .expect("put");
    expect_problem(response, 502).await;
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn a_post_with_idempotency_key_is_retried_with_the_same_body() {
    let (gw, upstream) = one(Mode::DropFirst(1), 3000).await;
    let response = gw
        .http
        .post(gw.url("/api/app/orders"))
        .header("idempotency-key", "k-1")
        .header("content-type", "application/json")
        .body(r#"{"sku":"phone","qty":1}"#)
        .send()
        .await
        .expect("post");
    let (status, _, body) = read(response).await;
    assert_eq!(status, 200);
    assert_eq!(body["body"], r#"{"sku":"phone","qty":1}"#);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body, "the buffered body is replayed");
    assert_eq!(seen[1].headers["idempotency-key"], "k-1");
}

#[tokio::test]
async fn an_error_response_is_passed_through_not_retried() {
    let (gw, upstream) = one(Mode::Status(500), 3000).await;
    let (status, _, body) = read(gw.get("/api/app/x", None).await).await;
    assert_eq!(status, 500);
    assert_eq!(body["instance"], "app");
    assert_eq!(upstream.hits(), 1);
    // …and does not eject the upstream: it answered.
    assert!(!gw.gateway.runtime().upstreams[0].is_ejected());
}

#[tokio::test]
async fn retries_stop_at_the_configured_count() {
    let (gw, upstream) = one(Mode::DropFirst(100), 3000).await;
    let problem = expect_problem(gw.get("/api/app/x", None).await, 502).await;
    assert_eq!(problem["type"], "/problems/bad-gateway");
    assert_eq!(upstream.hits(), 3, "one attempt and two retries");
}
