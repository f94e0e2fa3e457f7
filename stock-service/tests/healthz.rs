//! Serves the real app on an ephemeral port and checks `GET /healthz`.

use std::net::SocketAddr;

use service_kit::config::{Env, ServiceConfig};
use service_kit::server;
use stock_service::{DEFAULT_PORT, app};

#[tokio::test]
async fn healthz_returns_ok_json() {
    let config =
        ServiceConfig::from_source(&Env::from_pairs::<_, &str, &str>([]), DEFAULT_PORT).unwrap();
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    // The server lives until the test runtime shuts down.
    tokio::spawn(server::serve_listener(
        listener,
        app(&config),
        std::future::pending(),
    ));

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), reqwest::StatusCode::OK);
    assert!(res.headers().contains_key("x-request-id"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ok",
            "service": "stock-service",
            "version": env!("CARGO_PKG_VERSION"),
        })
    );
}
