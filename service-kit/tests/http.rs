//! End-to-end HTTP behaviour of the service-kit building blocks.

mod support;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use service_kit::extract::{Json, Path};
use service_kit::health::{self, Health};
use service_kit::layers::with_common_layers;
use service_kit::problem::{PROBLEM_JSON, Problem};
use support::{TestServer, client};
use tower::ServiceExt as _;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Reserve {
    sku: String,
    quantity: u32,
}

async fn reserve(Json(body): Json<Reserve>) -> Json<Reserve> {
    Json(body)
}

async fn sold_out() -> Result<(), Problem> {
    Err(Problem::conflict("sku A-1 is sold out").with_instance("/reserve/A-1"))
}

async fn item(Path(id): Path<u64>) -> String {
    id.to_string()
}

async fn echo_len(body: axum::body::Bytes) -> String {
    body.len().to_string()
}

async fn bare_status() -> StatusCode {
    StatusCode::SERVICE_UNAVAILABLE
}

async fn plain_text_error() -> (StatusCode, &'static str) {
    (StatusCode::BAD_REQUEST, "custom body")
}

fn test_app(limit: usize) -> Router {
    with_common_layers(
        Router::new()
            .route("/reserve", post(reserve))
            .route("/sold-out", get(sold_out))
            .route("/items/{id}", get(item))
            .route("/bytes", post(echo_len))
            .route("/bare", get(bare_status))
            .route("/plain", get(plain_text_error))
            .merge(health::router("test-service", "9.9.9")),
        limit,
    )
}

fn assert_problem_content_type(headers: &reqwest::header::HeaderMap) {
    assert_eq!(headers[reqwest::header::CONTENT_TYPE], PROBLEM_JSON);
}

#[tokio::test]
async fn problem_response_has_status_content_type_and_body() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client().get(server.url("/sold-out")).send().await.unwrap();

    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_problem_content_type(res.headers());
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "type": "about:blank",
            "title": "Conflict",
            "status": 409,
            "detail": "sku A-1 is sold out",
            "instance": "/reserve/A-1",
        })
    );
    server.stop().await;
}

#[tokio::test]
async fn valid_json_round_trips() {
    let server = TestServer::start(test_app(1024)).await;
    let sent = Reserve {
        sku: "A-1".into(),
        quantity: 2,
    };
    let res = client()
        .post(server.url("/reserve"))
        .json(&sent)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[reqwest::header::CONTENT_TYPE],
        "application/json"
    );
    assert_eq!(res.json::<Reserve>().await.unwrap(), sent);
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_is_400_problem() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client()
        .post(server.url("/reserve"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(r#"{"sku": "A-1", "quantity": "#)
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_problem_content_type(res.headers());
    let problem: Problem = res.json().await.unwrap();
    assert_eq!(problem.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem.title, "Bad Request");
    assert!(problem.detail.is_some_and(|d| !d.is_empty()));
    server.stop().await;
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_422_problem() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client()
        .post(server.url("/reserve"))
        .json(&json!({"sku": "A-1"}))
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem_content_type(res.headers());
    let problem: Problem = res.json().await.unwrap();
    assert!(problem.detail.is_some_and(|d| d.contains("quantity")));
    server.stop().await;
}

#[tokio::test]
async fn missing_json_content_type_is_415_problem() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client()
        .post(server.url("/reserve"))
        .body(r#"{"sku":"A-1","quantity":1}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_problem_content_type(res.headers());
    server.stop().await;
}

#[tokio::test]
async fn bad_path_parameter_is_400_problem() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client()
        .get(server.url("/items/not-a-number"))
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_problem_content_type(res.headers());
    server.stop().await;
}

#[tokio::test]
async fn body_over_limit_by_content_length_is_413_problem() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client()
        .post(server.url("/reserve"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(vec![b' '; 4096])
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_problem_content_type(res.headers());
    let problem: Problem = res.json().await.unwrap();
    assert_eq!(problem.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        problem
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("1024")),
        "detail should state the limit: {problem:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn streamed_body_over_limit_is_413_problem() {
    // No Content-Length header: the limit trips while the extractor reads.
    let request = Request::post("/reserve")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(vec![b' '; 4096]))
        .unwrap();
    assert!(request.headers().get(header::CONTENT_LENGTH).is_none());

    let res = test_app(1024).oneshot(request).await.unwrap();

    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
}

#[tokio::test]
async fn configured_limit_replaces_axums_2mb_default() {
    let size = 3 * 1024 * 1024;
    let request = Request::post("/bytes")
        .body(Body::from(vec![0_u8; size]))
        .unwrap();

    let res = test_app(4 * 1024 * 1024).oneshot(request).await.unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    let body = axum::body::to_bytes(res.into_body(), 64).await.unwrap();
    assert_eq!(body, size.to_string());
}

#[tokio::test]
async fn request_id_is_echoed_when_sent() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client()
        .get(server.url("/healthz"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();

    assert_eq!(res.headers()["x-request-id"], "req-123");
    server.stop().await;
}

#[tokio::test]
async fn request_id_is_generated_when_absent() {
    let server = TestServer::start(test_app(1024)).await;
    let first = client().get(server.url("/healthz")).send().await.unwrap();
    let second = client().get(server.url("/sold-out")).send().await.unwrap();

    let first = first.headers()["x-request-id"].to_str().unwrap().to_owned();
    let second = second.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(first.len(), 36, "expected a UUID, got {first:?}");
    assert_ne!(first, second);
    server.stop().await;
}

#[tokio::test]
async fn request_id_is_set_on_413_responses_too() {
    let server = TestServer::start(test_app(16)).await;
    let res = client()
        .post(server.url("/reserve"))
        .header("x-request-id", "big-1")
        .body(vec![b' '; 64])
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.headers()["x-request-id"], "big-1");
    server.stop().await;
}

#[tokio::test]
async fn healthz_reports_service_and_version() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client().get(server.url("/healthz")).send().await.unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Health>().await.unwrap(),
        Health {
            status: "ok".into(),
            service: "test-service".into(),
            version: "9.9.9".into(),
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_route_is_404_problem() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client().get(server.url("/nope")).send().await.unwrap();

    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_problem_content_type(res.headers());
    assert!(res.headers().contains_key("x-request-id"));
    let problem: Problem = res.json().await.unwrap();
    assert_eq!(problem.title, "Not Found");
    server.stop().await;
}

#[tokio::test]
async fn wrong_method_is_405_problem_keeping_allow() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client()
        .delete(server.url("/healthz"))
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_problem_content_type(res.headers());
    assert_eq!(res.headers()["allow"], "GET,HEAD");
    server.stop().await;
}

#[tokio::test]
async fn bare_status_code_becomes_problem() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client().get(server.url("/bare")).send().await.unwrap();

    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_problem_content_type(res.headers());
    let problem: Problem = res.json().await.unwrap();
    assert_eq!(problem.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem.title, "Service Unavailable");
    server.stop().await;
}

#[tokio::test]
async fn error_responses_with_a_body_are_left_alone() {
    let server = TestServer::start(test_app(1024)).await;
    let res = client().get(server.url("/plain")).send().await.unwrap();

    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.text().await.unwrap(), "custom body");
    server.stop().await;
}
