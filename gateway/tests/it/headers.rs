//! Request ids, W3C trace context, forwarding headers, hop-by-hop headers.

use crate::common::{Config, TestGateway, read};
use crate::upstreams::{Mode, TestUpstream};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn setup() -> (TestGateway, TestUpstream) {
    let upstream = TestUpstream::start("app", Mode::Echo).await;
    let config = Config::new(
        &format!("app = [\"{}\"]", upstream.url()),
        r#"
[[routes]]
prefix = "/api/app"
pool = "app"
auth = "public"
"#,
    );
    (TestGateway::start(&config).await, upstream)
}

#[tokio::test]
async fn trace_context_and_request_ids_pass_through() {
    let (gw, _upstream) = setup().await;
    let response = gw
        .http
        .get(gw.url("/api/app/x"))
        .header("traceparent", TRACEPARENT)
        .header("tracestate", "vendor=opaque,other=1")
        .header("x-request-id", "req-from-client")
        .send()
        .await
        .expect("get");
    let (status, headers, echo) = read(response).await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["traceparent"], TRACEPARENT);
    assert_eq!(echo["headers"]["tracestate"], "vendor=opaque,other=1");
    assert_eq!(echo["headers"]["x-request-id"], "req-from-client");
    assert_eq!(headers["x-request-id"], "req-from-client");

    // Without one, the gateway makes an id and the upstream sees the same.
    let (_, headers, echo) = read(gw.get("/api/app/x", None).await).await;
    let id = headers["x-request-id"].to_str().expect("id").to_owned();
    assert!(!id.is_empty());
    assert_eq!(echo["headers"]["x-request-id"], id);
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_ones_dropped() {
    let (gw, upstream) = setup().await;
    let response = gw
        .http
        .get(gw.url("/api/app/x"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("proxy-authorization", "Basic abc")
        .header("x-custom", "kept")
        .send()
        .await
        .expect("get");
    let (_, _, echo) = read(response).await;
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "replaced, not appended");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string());
    assert!(h.get("forwarded").is_none());
    assert!(h.get("x-hop").is_none());
    assert!(h.get("proxy-authorization").is_none());
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(
        h["host"],
        upstream.addr.to_string(),
        "Host names the upstream"
    );
}
