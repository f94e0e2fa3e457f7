//! Shared by the integration tests of xtask (`mod support;`).

pub mod files;
pub mod metrics;
pub mod problems;
pub mod service_config;
