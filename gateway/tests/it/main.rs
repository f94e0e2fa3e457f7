//! Gateway integration tests: a real gateway over real HTTP, in front of tiny in-process
//! upstreams and (in `orders`) the real order-service and stock-service on PostgreSQL and
//! Redis.

mod common;
mod upstreams;

mod auth;
mod balancing;
mod canary;
mod dashboard;
mod headers;
mod identity_provider;
mod limits;
mod metrics;
mod orders;
mod reload;
mod retries;
mod routing;
