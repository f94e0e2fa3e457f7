//! Binding and serving a [`Router`] with graceful shutdown.
//!
//! Production code calls [`serve`]. Tests bind port 0 with [`bind`], read the
//! address from [`TcpListener::local_addr`] and run [`serve_listener`] with a
//! shutdown future they control.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

/// Errors raised while binding or serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listening socket could not be bound.
    #[error("failed to bind {addr}")]
    Bind {
        /// The address that was requested.
        addr: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The bound socket's local address could not be read.
    #[error("failed to read the listener's local address")]
    LocalAddr(#[source] io::Error),
    /// The server stopped with an I/O error.
    #[error("server error")]
    Serve(#[source] io::Error),
}

/// Binds a TCP listener on `addr` (use port 0 for an ephemeral port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting connections and waits for in-flight requests to finish. Handlers can
/// extract the client's address (`ConnectInfo<SocketAddr>`; the gateway's rate limits
/// and `X-Forwarded-For` need it).
pub async fn serve_listener<F>(
    listener: TcpListener,
    router: Router,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(ServeError::Serve)
}

/// Binds an ephemeral port on 127.0.0.1 and serves `router` there in a background task
/// for the life of the runtime; returns the bound address. For tests and examples that
/// run services in-process.
pub async fn spawn_on_loopback(router: Router) -> Result<SocketAddr, ServeError> {
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
    tokio::spawn(serve_listener(listener, router, std::future::pending()));
    Ok(addr)
}

/// Binds `addr`, logs the bound address and serves `router` until Ctrl-C or
/// SIGTERM (see [`shutdown_signal`]).
pub async fn serve(router: Router, addr: SocketAddr, service_name: &str) -> Result<(), ServeError> {
    let listener = bind(addr).await?;
    let local_addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
    tracing::info!(service = service_name, addr = %local_addr, "listening");
    serve_listener(listener, router, shutdown_signal()).await?;
    tracing::info!(service = service_name, "shut down gracefully");
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
///
/// If a signal handler cannot be installed the error is logged and that
/// signal is ignored, rather than shutting down immediately.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => tracing::info!("received Ctrl-C, shutting down"),
            Err(error) => {
                tracing::error!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
                tracing::info!("received SIGTERM, shutting down");
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
