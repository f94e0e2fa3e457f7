//! Settings from the environment: what compose sets, overriding the configuration file.
//!
//! | variable | meaning |
//! |---|---|
//! | `GATEWAY_CONFIG` | path of the TOML file (unset: the built-in example) |
//! | `BIND_ADDR` | listen address (overrides the file's `listen`; default `0.0.0.0:8080`) |
//! | `BODY_LIMIT_BYTES` | request body limit (default 64 KiB) |
//! | `JWT_SECRET` | HS256 secret (overrides `auth.jwt_secret`) |
//! | `ADMIN_PASSWORD` | the `admin` user's password (overrides `auth.admin_password`) |
//! | `METRICS_ADDR` | where to serve Prometheus `GET /metrics` (unset: not served) |

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use service_kit::config::{BIND_ADDR, ConfigError, Env, ServiceConfig};

use crate::DEFAULT_PORT;
use crate::config::Secret;

/// Environment variable naming the configuration file.
pub const GATEWAY_CONFIG: &str = "GATEWAY_CONFIG";
/// Environment variable holding the JWT secret.
pub const JWT_SECRET: &str = "JWT_SECRET";
/// Environment variable holding the admin password.
pub const ADMIN_PASSWORD: &str = "ADMIN_PASSWORD";

/// Environment variable holding the address of the metrics listener.
pub const METRICS_ADDR: &str = "METRICS_ADDR";

/// The built-in configuration used when `GATEWAY_CONFIG` is not set.
pub const EXAMPLE_CONFIG: &str = include_str!("../gateway.example.toml");

/// Settings read from the environment.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Shared service settings (`BIND_ADDR`, `BODY_LIMIT_BYTES`).
    pub service: ServiceConfig,
    /// Whether `BIND_ADDR` was set (it then wins over the file's `listen`).
    pub bind_addr_from_env: bool,
    /// The configuration file; `None` runs the built-in example.
    pub config_path: Option<PathBuf>,
    /// `JWT_SECRET`.
    pub jwt_secret: Option<Secret>,
    /// `ADMIN_PASSWORD`.
    pub admin_password: Option<Secret>,
    /// `METRICS_ADDR`: a separate listener for `/metrics`, kept off the public port.
    pub metrics_addr: Option<SocketAddr>,
}

impl GatewaySettings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env::process())
    }

    /// Reads `env`.
    pub fn from_source(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceConfig::from_source(env, DEFAULT_PORT)?,
            bind_addr_from_env: env.raw(BIND_ADDR)?.is_some(),
            config_path: env.raw(GATEWAY_CONFIG)?.map(PathBuf::from),
            jwt_secret: env.raw(JWT_SECRET)?.map(Secret::new),
            admin_password: env.raw(ADMIN_PASSWORD)?.map(Secret::new),
            metrics_addr: env.parse(METRICS_ADDR)?,
        })
    }

    /// The address to listen on: `BIND_ADDR`, else the file's `listen`, else `0.0.0.0:8080`.
    pub fn bind_addr(&self, file_listen: Option<SocketAddr>) -> SocketAddr {
        if self.bind_addr_from_env {
            self.service.bind_addr
        } else {
            file_listen.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_are_read_and_secrets_hidden() {
        let env = Env::from_pairs([
            (GATEWAY_CONFIG, "/etc/gateway.toml"),
            (JWT_SECRET, "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"),
            (ADMIN_PASSWORD, "pw-pw"),
            (BIND_ADDR, "127.0.0.1:9000"),
            (METRICS_ADDR, "127.0.0.1:9091"),
        ]);
        let s = GatewaySettings::from_source(&env).unwrap();
        assert_eq!(s.config_path, Some(PathBuf::from("/etc/gateway.toml")));
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(
            s.bind_addr(Some("0.0.0.0:1".parse().unwrap())),
            "127.0.0.1:9000".parse().unwrap()
        );
        let printed = format!("{s:?}");
        assert!(!printed.contains("s3cr3t") && !printed.contains("pw-pw"));
    }

    #[test]
    fn listen_from_the_file_applies_without_bind_addr() {
        let s = GatewaySettings::from_source(&Env::from_pairs::<_, &str, &str>([])).unwrap();
        assert_eq!(s.config_path, None);
        assert_eq!(s.metrics_addr, None);
        assert_eq!(
            s.bind_addr(Some("127.0.0.1:7000".parse().unwrap())),
            "127.0.0.1:7000".parse().unwrap()
        );
        assert_eq!(s.bind_addr(None).port(), DEFAULT_PORT);
    }
}
