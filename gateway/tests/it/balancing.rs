//! Balancing over two upstreams; an upstream killed and brought back; a pool with none left.

use std::time::{Duration, Instant};

use crate::common::{Config, TestGateway, eventually, expect_problem, read};
use crate::upstreams::{Mode, TestUpstream};

const ROUTE: &str = r#"
[[routes]]
prefix = "/api/app"
rewrite = "/"
pool = "app"
auth = "public"
retries = 1
timeout_ms = 2000
"#;

async fn two(balance: &str) -> (TestGateway, TestUpstream, TestUpstream) {
    let a = TestUpstream::start("a", Mode::Echo).await;
    let b = TestUpstream::start("b", Mode::Echo).await;
    let config = Config::new(&format!("app = [\"{}\", \"{}\"]", a.url(), b.url()), ROUTE)
        .upstream_setting("balance", balance);
    (TestGateway::start(&config).await, a, b)
}

#[tokio::test]
async fn round_robin_alternates_between_two_upstreams() {
    let (gw, a, b) = two("\"round_robin\"").await;
    let mut instances = Vec::new();
    for _ in 0..10 {
        let (status, _, body) = read(gw.get("/api/app/x", None).await).await;
        assert_eq!(status, 200);
        instances.push(body["instance"].as_str().expect("instance").to_owned());
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
    assert!(instances.windows(2).all(|w| w[0] != w[1]), "{instances:?}");
}

#[tokio::test]
async fn power_of_two_choices_uses_both_upstreams() {
    let (gw, a, b) = two("\"p2c\"").await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (http, url) = (gw.http.clone(), gw.url("/api/app/x"));
        tasks.spawn(async move { http.get(url).send().await.expect("get").status() });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), 200);
    }
    assert_eq!(a.hits() + b.hits(), 40);
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a={} b={}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test]
async fn a_killed_upstream_is_ejected_and_taken_back_when_healthy() {
    let (gw, mut a, b) = two("\"round_robin\"").await;
    a.kill().await;

    // Connect errors never reached an upstream: retried on b, so clients see no error.
    for _ in 0..10 {
        let (status, _, body) = read(gw.get("/api/app/x", None).await).await;
        assert_eq!(status, 200);
        assert_eq!(body["instance"], "b");
    }
    let runtime = gw.gateway.runtime();
    let a_state = runtime
        .upstreams
        .iter()
        .find(|u| u.base == a.url())
        .expect("a");
    assert!(
        a_state.is_ejected(),
        "a is ejected after consecutive failures"
    );
    let before = b.hits();
    for _ in 0..4 {
        assert_eq!(gw.get("/api/app/x", None).await.status(), 200);
    }
    assert_eq!(b.hits(), before + 4, "an ejected upstream gets no traffic");

    a.restart().await;
    // The active health check (every 100 ms) takes it back.
    assert!(
        eventually(Duration::from_secs(3), || async { !a_state.is_ejected() }).await,
        "a re-admitted"
    );
    for _ in 0..4 {
        assert_eq!(gw.get("/api/app/x", None).await.status(), 200);
    }
    assert_eq!(a.hits(), 2, "a serves again");
}

#[tokio::test]
async fn with_every_upstream_down_the_answer_is_a_quick_503() {
    let (gw, mut a, mut b) = two("\"round_robin\"").await;
    a.kill().await;
    b.kill().await;
    for _ in 0..3 {
        let started = Instant::now();
        let problem = expect_problem(gw.get("/api/app/x", None).await, 503).await;
        assert!(started.elapsed() < Duration::from_secs(1), "quick");
        let kind = problem["type"].as_str().unwrap_or_default().to_owned();
        assert!(
            kind == "/problems/upstream-unavailable" || kind == "/problems/no-healthy-upstream",
            "{problem}"
        );
    }
    // Once both are ejected the gateway does not even try.
    assert!(
        eventually(Duration::from_secs(2), || async {
            gw.gateway
                .runtime()
                .upstreams
                .iter()
                .all(|u| u.is_ejected())
        })
        .await
    );
    let response = gw.get("/api/app/x", None).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let problem = expect_problem(response, 503).await;
    assert_eq!(problem["type"], "/problems/no-healthy-upstream");
}
