//! A bare reverse proxy, for the throughput comparison in docs/gateway.md: axum and
//! hyper-util's legacy client, every request to `UPSTREAM/healthz`, nothing else (no routing,
//! auth, limits, retries, metrics or middleware). It shows what proxying alone costs.
//!
//! `cargo run --release -p gateway --example bare_proxy -- http://127.0.0.1:8082 127.0.0.1:18090`

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Body>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let upstream = args
        .next()
        .context("usage: bare_proxy UPSTREAM_URL LISTEN_ADDR")?;
    let listen = args
        .next()
        .context("usage: bare_proxy UPSTREAM_URL LISTEN_ADDR")?;
    let target: Uri = format!("{upstream}/healthz").parse()?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let app = Router::new().fallback(proxy).with_state((client, target));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn proxy(
    State((client, target)): State<(HttpClient, Uri)>,
    mut request: Request,
) -> Response {
    *request.uri_mut() = target;
    match client.request(request).await {
        Ok(response) => response.into_response(),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
