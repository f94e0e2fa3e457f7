//! Tiny upstreams for the tests: a hyper server that echoes what it received, optionally
//! sleeping, failing, dropping connections or forwarding to a real service. It can be killed
//! (every connection cut) and restarted on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How an upstream answers (`/healthz` and `/metrics`, which the gateway's health checks and
/// dashboard sampler call in the background, always answer 200 and are not counted).
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 with a JSON echo of the request.
    Echo,
    /// Sleeps, then echoes.
    Sleep(Duration),
    /// Reads the first `n` requests, then drops their connections without answering.
    DropFirst(usize),
    /// Answers with this status (and the echo body).
    Status(u16),
    /// Forwards to `target`; for the first `drop_first` requests the target's response is
    /// thrown away and the connection dropped (the request *did* reach the target).
    Forward { target: String, drop_first: usize },
}

/// What an upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

struct State {
    name: String,
    mode: Mode,
    hits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    client: reqwest::Client,
}

/// A running (or killed) test upstream.
pub struct TestUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

impl TestUpstream {
    /// Starts `mode` on an ephemeral port; `name` is reported in echo bodies.
    pub async fn start(name: &str, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            name: name.to_owned(),
            mode,
            hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        });
        let task = Some(tokio::spawn(accept(listener, Arc::clone(&state))));
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered or dropped (health checks excluded).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Every request seen (health checks excluded).
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    /// Stops listening and cuts every open connection.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.task = Some(tokio::spawn(accept(listener, Arc::clone(&self.state))));
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Accepts connections; aborting this task drops the set and so cuts every connection.
async fn accept(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&state), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    if path == "/healthz" {
        return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
    }
    if path == "/metrics" {
        let text = format!(
            "# TYPE test_upstream_up gauge\ntest_upstream_up{{name=\"{}\"}} 1\n",
            state.name
        );
        return Ok(Response::new(Full::new(Bytes::from(text))));
    }
    let n = state.hits.fetch_add(1, Ordering::SeqCst);
    let seen = Seen {
        method: parts.method.to_string(),
        path,
        headers: parts.headers,
        body,
    };
    state.seen.lock().expect("lock").push(seen.clone());
    let echo = || {
        let headers: BTreeMap<String, String> = seen
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        json!({
            "instance": state.name,
            "method": seen.method,
            "path": seen.path,
            "headers": headers,
            "body": String::from_utf8_lossy(&seen.body),
        })
    };
    match &state.mode {
        Mode::Echo => Ok(json_response(StatusCode::OK, &echo())),
        Mode::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(json_response(StatusCode::OK, &echo()))
        }
        Mode::DropFirst(k) if n < *k => Err(std::io::Error::other("dropping the connection")),
        Mode::DropFirst(_) => Ok(json_response(StatusCode::OK, &echo())),
        Mode::Status(code) => Ok(json_response(
            StatusCode::from_u16(*code).expect("status"),
            &echo(),
        )),
        Mode::Forward { target, drop_first } => {
            let response = forward(&state.client, target, &seen).await;
            if n < *drop_first {
                return Err(std::io::Error::other("dropping after forwarding"));
            }
            Ok(response)
        }
    }
}

async fn forward(client: &reqwest::Client, target: &str, seen: &Seen) -> Response<Full<Bytes>> {
    let method = reqwest::Method::from_bytes(seen.method.as_bytes()).expect("method");
    let mut request = client.request(method, format!("{target}{}", seen.path));
    for (name, value) in &seen.headers {
        if name != "host" && name != "content-length" && name != "connection" {
            request = request.header(name.clone(), value.clone());
        }
    }
    let answer = request
        .body(seen.body.clone())
        .send()
        .await
        .expect("forward");
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            response = response.header(name.clone(), value.clone());
        }
    }
    let body = answer.bytes().await.expect("body");
    response.body(Full::new(body)).expect("response")
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}
