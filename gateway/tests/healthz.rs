//! Serves the real app on an ephemeral port and checks `GET /healthz`.

use gateway::{Gateway, GatewaySettings, app};
use service_kit::config::Env;
use service_kit::server;

#[tokio::test]
async fn healthz_returns_ok_json() {
    // No GATEWAY_CONFIG: the built-in example configuration.
    let settings = GatewaySettings::from_source(&Env::from_pairs::<_, &str, &str>([])).unwrap();
    let gateway = Gateway::start(settings).unwrap();
    // The server lives until the test runtime shuts down.
    let addr = server::spawn_on_loopback(app(gateway)).await.unwrap();

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
            "service": "gateway",
            "version": env!("CARGO_PKG_VERSION"),
        })
    );
}
