//! The dashboard over HTTP: page, assets and their cache headers, the data with requests
//! counted by outcome and every upstream scraped, and the path freed when it is disabled.

use std::time::Duration;

use serde_json::Value;

use crate::common::{Config, TestGateway, eventually, read};
use crate::upstreams::{Mode, TestUpstream};

const ECHO_ROUTE: &str = r#"
[[routes]]
name = "echo"
prefix = "/api/echo"
pool = "echo"
auth = "public"
"#;

const TAKEN_ROUTE: &str = r#"
[[routes]]
name = "taken"
prefix = "/api/taken"
pool = "taken"
auth = "public"
"#;

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_types_and_cache_headers() {
    let echo = TestUpstream::start("echo", Mode::Echo).await;
    let config = Config::new(&format!("echo = [\"{}\"]", echo.url()), ECHO_ROUTE);
    let gw = TestGateway::start(&config).await;

    let page = gw.get("/dashboard", None).await;
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert!(header(&page, "content-security-policy").contains("script-src 'self'"));
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    let etag = header(&page, "etag").to_owned();
    assert!(etag.starts_with('"'), "{etag:?}");
    let html = page.text().await.expect("html");
    assert!(html.contains("panel-qps") && html.contains("uPlot.iife.min.js"));

    // Revalidation: unchanged → 304 without a body.
    let again = gw
        .http
        .get(gw.url("/dashboard"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), etag);
    assert!(again.bytes().await.expect("body").is_empty());

    for (path, content_type, cache) in [
        ("/dashboard/", "text/html; charset=utf-8", "no-cache"),
        (
            "/dashboard/assets/dashboard.js",
            "text/javascript; charset=utf-8",
            "no-cache",
        ),
        (
            "/dashboard/assets/dashboard.css",
            "text/css; charset=utf-8",
            "no-cache",
        ),
        (
            "/dashboard/assets/uplot-1.6.32/uPlot.iife.min.js",
            "text/javascript; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
        (
            "/dashboard/assets/uplot-1.6.32/uPlot.min.css",
            "text/css; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
        (
            "/dashboard/assets/uplot-1.6.32/LICENSE",
            "text/plain; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
    ] {
        let response = gw.get(path, None).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        assert_eq!(header(&response, "cache-control"), cache, "{path}");
        assert!(!response.bytes().await.expect("body").is_empty(), "{path}");
    }
    let head = gw
        .http
        .head(gw.url("/dashboard"))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);

    // Below /dashboard, an unknown path is the usual 404 problem, never proxied.
    let missing = gw.get("/dashboard/nope", None).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(echo.hits(), 0);
}

#[tokio::test]
async fn the_data_counts_requests_by_outcome_and_lists_the_scraped_upstreams() {
    let echo = TestUpstream::start("echo", Mode::Echo).await;
    let taken = TestUpstream::start("taken", Mode::Status(409)).await;
    let dead = TestUpstream::start("dead", Mode::Echo).await;
    let dead_url = dead.url();
    drop(dead);
    let config = Config::new(
        &format!(
            "echo = [\"{}\"]\ntaken = [\"{}\"]\nspare = [\"{dead_url}\"]",
            echo.url(),
            taken.url()
        ),
        &format!("{ECHO_ROUTE}{TAKEN_ROUTE}\n[dashboard]\nsample_interval_ms = 100\n"),
    );
    let gw = TestGateway::start(&config).await;
    // The first sample is the baseline the rates start from.
    let sampled = eventually(Duration::from_secs(5), || async {
        let data = read(gw.get("/dashboard/data", None).await).await.2;
        data["time"].as_array().is_some_and(|t| !t.is_empty())
    })
    .await;
    assert!(sampled, "no sample");

    for _ in 0..3 {
        assert_eq!(gw.get("/api/echo/x", None).await.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(gw.get("/api/taken", None).await.status(), 409);
    }
    assert_eq!(gw.get("/nowhere", None).await.status(), 404);
    // The dashboard's own requests and /healthz are not counted.
    gw.get("/dashboard", None).await;
    gw.get("/healthz", None).await;
    let counts = gw.gateway.dashboard().counters().snapshot();
    assert_eq!(
        (
            counts.success,
            counts.conflict,
            counts.rate_limited,
            counts.server_error,
            counts.other
        ),
        (3, 2, 0, 0, 1)
    );

    // The sampler turns them into rates.
    let total = |data: &Value, class: &str| -> f64 {
        data["qps"][class]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).sum())
            .unwrap_or(0.0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let last = loop {
        let response = gw.get("/dashboard/data", None).await;
        assert_eq!(header(&response, "cache-control"), "no-store");
        let data = read(response).await.2;
        let seen =
            total(&data, "2xx") > 0.0 && total(&data, "409") > 0.0 && total(&data, "other") > 0.0;
        if seen || tokio::time::Instant::now() > deadline {
            assert!(seen, "{data}");
            break data;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(total(&last, "429"), 0.0, "{last}");
    assert_eq!(total(&last, "5xx"), 0.0, "{last}");
    assert_eq!(last["interval_ms"], 100);
    let time = last["time"].as_array().expect("time");
    assert_eq!(
        last["qps"]["2xx"].as_array().expect("2xx").len(),
        time.len()
    );

    // Every upstream of every pool is scraped; the dead one is reported, the rest still work.
    let upstreams = last["upstreams"].as_array().expect("upstreams");
    assert_eq!(upstreams.len(), 3, "{upstreams:?}");
    let find = |url: &str| {
        upstreams
            .iter()
            .find(|u| u["url"] == url)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(find(&echo.url())["ok"], true);
    assert_eq!(find(&echo.url())["pools"], serde_json::json!(["echo"]));
    assert_eq!(find(&taken.url())["ok"], true);
    let down = find(&dead_url);
    assert_eq!(down["ok"], false, "{down}");
    assert!(
        down["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("unreachable")),
        "{down}"
    );
    // No stock-service behind: no stock, no lock waits, nothing oversold.
    assert_eq!(last["stock"], serde_json::json!([]));
    assert_eq!(last["lock_wait"], serde_json::json!([]));
    assert_eq!(last["oversold"]["total"], 0.0);
}

#[tokio::test]
async fn a_disabled_dashboard_frees_its_path_for_routes() {
    let echo = TestUpstream::start("echo", Mode::Echo).await;
    let config = Config::new(
        &format!("echo = [\"{}\"]", echo.url()),
        "[[routes]]\nprefix = \"/dashboard\"\npool = \"echo\"\nauth = \"public\"\n\n[dashboard]\nenabled = false\n",
    );
    let gw = TestGateway::start(&config).await;
    assert!(!gw.gateway.dashboard_enabled());
    let (status, _, body) = read(gw.get("/dashboard/data", None).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["instance"], "echo",
        "proxied, not the dashboard: {body}"
    );
    assert_eq!(echo.hits(), 1);
}
