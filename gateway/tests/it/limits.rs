//! Rate limits (per user, per IP when anonymous, overall) and the request-size limit.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{Config, TestGateway, expect_problem, read};
use crate::upstreams::{Mode, TestUpstream};

const ROUTES: &str = r#"
[[routes]]
prefix = "/api/app"
pool = "app"
auth = "public"
"#;

async fn limited(rate_limit: &str, env: &[(&str, &str)]) -> (TestGateway, TestUpstream) {
    let upstream = TestUpstream::start("app", Mode::Echo).await;
    let config =
        Config::new(&format!("app = [\"{}\"]", upstream.url()), ROUTES).rate_limit(rate_limit);
    (TestGateway::start_with(&config, env, None).await, upstream)
}

#[tokio::test]
async fn a_burst_gets_429_with_retry_after_per_user() {
    let (gw, upstream) = limited(
        "per_user_per_second = 1\nper_user_burst = 3\nglobal_per_second = 0",
        &[],
    )
    .await;
    // Logins count against the caller's IP, not against the users.
    let alice = gw.token("alice").await;
    let bob = gw.token("bob").await;

    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = gw.get("/api/app/x", Some(&alice)).await;
        if response.status() == 429 {
            let retry_after: u64 = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After seconds");
            assert!((1..=2).contains(&retry_after), "{retry_after}");
            let problem = expect_problem(response, 429).await;
            assert_eq!(problem["type"], "/problems/rate-limited");
            assert_eq!(problem["scope"], "user");
            statuses.push(429);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429]);
    assert_eq!(
        upstream.hits(),
        3,
        "refused requests never reach the upstream"
    );

    // Another user has a budget of their own.
    let (status, _, _) = read(gw.get("/api/app/x", Some(&bob)).await).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn anonymous_callers_are_limited_by_ip_and_everyone_by_the_global_limit() {
    let (gw, _upstream) = limited(
        "per_user_per_second = 1\nper_user_burst = 2\nglobal_per_second = 0",
        &[],
    )
    .await;
    assert_eq!(gw.get("/api/app/x", None).await.status(), 200);
    assert_eq!(gw.get("/api/app/x", None).await.status(), 200);
    let problem = expect_problem(gw.get("/api/app/x", None).await, 429).await;
    assert_eq!(problem["scope"], "user");

    let (gw, _upstream) = limited(
        "per_user_per_second = 0\nglobal_per_second = 1\nglobal_burst = 3",
        &[],
    )
    .await;
    let carol = gw.token("carol").await; // one of the three
    assert_eq!(gw.get("/api/app/x", None).await.status(), 200);
    assert_eq!(gw.get("/api/app/x", Some(&carol)).await.status(), 200);
    let problem = expect_problem(gw.get("/api/app/x", Some(&carol)).await, 429).await;
    assert_eq!(problem["scope"], "global");
}

#[tokio::test]
async fn an_oversized_body_is_413_and_never_forwarded() {
    let (gw, upstream) = limited("per_user_per_second = 0", &[("BODY_LIMIT_BYTES", "1024")]).await;
    let response = gw
        .http
        .post(gw.url("/api/app/x"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .expect("post");
    let problem = expect_problem(response, 413).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("1024"),
        "{problem}"
    );

    // Streamed (chunked, no length announced): cut when it crosses the limit.
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let mut request = b"POST /api/app/x HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..16 {
        request.extend_from_slice(b"100\r\n");
        request.extend_from_slice(&[b'b'; 256]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let (status, _, _) = read(
        gw.http
            .post(gw.url("/api/app/x"))
            .body(vec![b'a'; 1000])
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.hits(), 1);
}
