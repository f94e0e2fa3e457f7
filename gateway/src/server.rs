//! Serving the gateway: like `service_kit::server`, but with the client's socket address
//! available to handlers (rate limits key anonymous callers by IP; `X-Forwarded-For`).

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use service_kit::server::{ServeError, bind, shutdown_signal};
use tokio::net::TcpListener;

/// Serves `router` on `listener` until `shutdown` completes, then drains in-flight requests.
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

/// Binds `addr` and serves `router` until Ctrl-C or SIGTERM.
pub async fn serve(router: Router, addr: SocketAddr) -> Result<(), ServeError> {
    let listener = bind(addr).await?;
    let local_addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
    tracing::info!(service = crate::SERVICE_NAME, addr = %local_addr, "listening");
    serve_listener(listener, router, shutdown_signal()).await?;
    tracing::info!(service = crate::SERVICE_NAME, "shut down gracefully");
    Ok(())
}
