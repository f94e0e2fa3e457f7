//! Shared plumbing for the seckill services: configuration, telemetry,
//! problem+json errors, extractors, health checks, middleware, serving, request
//! combining (the queues behind group deduction and grouped order claims), and upstream
//! pools with ejection (the gateway's and the order-service's).
//!
//! A service's `main` is typically:
//!
//! ```no_run
//! use service_kit::{config::ServiceConfig, health, layers, server, telemetry};
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let telemetry = telemetry::init(env!("CARGO_PKG_NAME"))?;
//!     let config = ServiceConfig::from_env(8082)?;
//!     let app = layers::with_common_layers(
//!         health::router(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")),
//!         config.body_limit_bytes,
//!     );
//!     server::serve(app, config.bind_addr, env!("CARGO_PKG_NAME")).await?;
//!     telemetry.shutdown();
//!     Ok(())
//! }
//! ```

pub mod combine;
pub mod config;
pub mod extract;
pub mod health;
pub mod layers;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod problem;
pub mod server;
pub mod telemetry;
pub mod upstream;

pub use config::ServiceConfig;
pub use problem::Problem;
