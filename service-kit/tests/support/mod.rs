//! Helpers shared by the HTTP integration tests.

use std::net::SocketAddr;

use axum::Router;
use service_kit::server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running on an ephemeral localhost port.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), server::ServeError>>,
}

impl TestServer {
    pub async fn start(router: Router) -> Self {
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("read the bound address");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::serve_listener(listener, router, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown and waits for the server task to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.handle)
            .await
            .expect("server task panicked")
            .expect("server failed");
    }
}

/// A client that ignores any proxy settings in the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build reqwest client")
}
