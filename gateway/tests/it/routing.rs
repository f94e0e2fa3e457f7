//! Routing: prefixes, rewrites, longest match, unknown paths, per-method access, bad input.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{Config, TestGateway, expect_problem, read};
use crate::upstreams::{Mode, TestUpstream};

async fn setup() -> (TestGateway, TestUpstream, TestUpstream, TestUpstream) {
    let orders = TestUpstream::start("orders", Mode::Echo).await;
    let stock = TestUpstream::start("stock", Mode::Echo).await;
    let api = TestUpstream::start("api", Mode::Echo).await;
    let config = Config::new(
        &format!(
            "orders = [\"{}\"]\nstock = [\"{}\"]\napi = [\"{}\"]",
            orders.url(),
            stock.url(),
            api.url()
        ),
        r#"
[[routes]]
name = "orders"
prefix = "/api/orders"
rewrite = "/orders"
pool = "orders"
auth = "public"

[[routes]]
name = "stock"
prefix = "/api/stock"
rewrite = "/stock"
pool = "stock"
auth = "admin"
methods = { GET = "public", HEAD = "public" }

[[routes]]
name = "api"
prefix = "/api"
pool = "api"
auth = "public"
"#,
    );
    (TestGateway::start(&config).await, orders, stock, api)
}

#[tokio::test]
async fn prefixes_are_rewritten_and_the_longest_match_wins() {
    let (gw, orders, stock, api) = setup().await;

    let (status, _, body) = read(gw.get("/api/orders/42/pay?x=1&y=2", None).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["instance"], "orders");
    assert_eq!(body["path"], "/orders/42/pay?x=1&y=2");

    let (_, _, body) = read(gw.get("/api/orders", None).await).await;
    assert_eq!(body["path"], "/orders");

    let (_, _, body) = read(gw.get("/api/stock/phone", None).await).await;
    assert_eq!(body["instance"], "stock");
    assert_eq!(body["path"], "/stock/phone");

    // Segment boundaries: /api/ordersx is not /api/orders; it falls to the /api route,
    // which keeps the path as it is.
    let (_, _, body) = read(gw.get("/api/ordersx", None).await).await;
    assert_eq!(body["instance"], "api");
    assert_eq!(body["path"], "/api/ordersx");

    assert_eq!(orders.hits(), 2);
    assert_eq!(stock.hits(), 1);
    assert_eq!(api.hits(), 1);
}

#[tokio::test]
async fn unknown_paths_are_404_problems_and_the_gateway_serves_its_own_healthz() {
    let (gw, orders, _stock, _api) = setup().await;
    let body = expect_problem(gw.get("/nope", None).await, 404).await;
    assert_eq!(body["type"], "/problems/no-route");
    let (status, _, body) = read(gw.get("/healthz", None).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["service"], "gateway");
    // The login route only takes POST.
    expect_problem(gw.get("/api/login", None).await, 405).await;
    assert_eq!(orders.hits(), 0);
}

#[tokio::test]
async fn reads_are_public_and_writes_need_an_admin_token() {
    let (gw, _orders, stock, _api) = setup().await;
    let user = gw.token("alice").await;
    let admin = gw.admin_token().await;
    let put = |token: Option<String>| {
        let mut request = gw
            .http
            .put(gw.url("/api/stock/phone"))
            .json(&json!({"total": 5, "segments": 1}));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };

    let r = put(None).await.expect("put");
    let problem = expect_problem(r, 401).await;
    assert_eq!(problem["type"], "/problems/unauthenticated");
    let problem = expect_problem(put(Some(user.clone())).await.expect("put"), 403).await;
    assert_eq!(problem["type"], "/problems/forbidden");
    assert_eq!(stock.hits(), 0, "refused requests never reach the upstream");

    let (status, _, body) = read(put(Some(admin)).await.expect("put")).await;
    assert_eq!(status, 200);
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["headers"]["x-user-id"], "admin");
    assert_eq!(body["headers"]["x-user-role"], "admin");

    let (status, _, _) = read(gw.get("/api/stock/phone", None).await).await;
    assert_eq!(status, 200);
    let (status, _, body) = read(gw.get("/api/stock/phone", Some(&user)).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["headers"]["x-user-id"], "alice");
}

/// Sends a raw request line (clients normalise dot segments away) and returns the status.
async fn raw_status(gw: &TestGateway, target: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line")
}

#[tokio::test]
async fn bad_input_gets_4xx_and_never_reaches_an_upstream() {
    let (gw, orders, stock, api) = setup().await;
    assert_eq!(raw_status(&gw, "/api/orders/../stock/x").await, 400);
    assert_eq!(raw_status(&gw, "/api/orders/%2e%2e/stock/x").await, 400);
    assert_eq!(raw_status(&gw, "/api/orders/%2E%2e").await, 400);

    // Login: malformed JSON, wrong content type, bad user ids.
    let login = |body: &'static str, content_type: &'static str| {
        gw.http
            .post(gw.url("/api/login"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    expect_problem(login("{", "application/json").await.expect("login"), 400).await;
    expect_problem(
        login(r#"{"user":"x"}"#, "text/plain").await.expect("login"),
        415,
    )
    .await;
    expect_problem(login("{}", "application/json").await.expect("login"), 422).await;
    for bad in [r#"{"user":""}"#, r#"{"user":"a b"}"#, r#"{"user":"a/b"}"#] {
        let body = expect_problem(login(bad, "application/json").await.expect("login"), 422).await;
        assert_eq!(body["type"], "/problems/bad-login", "{bad}");
    }
    assert_eq!(orders.hits() + stock.hits() + api.hits(), 0);
}
