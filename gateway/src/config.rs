//! The gateway's configuration file (TOML): pools, routes, rate limits and auth settings.
//!
//! [`FileConfig::parse`] reads and validates a file's text; [`crate::runtime`] turns a valid
//! file into the live routing state. `gateway/gateway.example.toml` documents every field;
//! `docs/gateway.md` explains them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::{HeaderName, Method, Uri};
use serde::Deserialize;

/// Errors raised while reading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// The file parsed but a value is not acceptable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigFileError {
    fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

/// A secret string (JWT secret, admin password): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on; `BIND_ADDR` overrides it. Not reloadable.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// How often the file is checked for changes, in milliseconds (0: never).
    #[serde(default = "defaults::reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// Balancing, ejection and health-check settings shared by all pools.
    #[serde(default)]
    pub upstreams: UpstreamSettings,
    /// Pools by name: each a list of upstream base URLs (`http://host:port`).
    pub pools: BTreeMap<String, Vec<String>>,
    /// Routes; the longest matching prefix wins.
    pub routes: Vec<RouteConfig>,
    /// Rate limits.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Tokens and logins.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The built-in live dashboard (`/dashboard`).
    #[serde(default)]
    pub dashboard: DashboardConfig,
}

pub use service_kit::upstream::Balance;

/// Balancing, passive ejection and active health checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// The balancing algorithm.
    pub balance: Balance,
    /// TCP connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Consecutive failures (transport errors, timeouts, failed health checks) that eject an
    /// upstream.
    pub eject_after_failures: u32,
    /// Interval of the active health checks, in milliseconds.
    pub health_check_interval_ms: u64,
    /// Timeout of one health check, in milliseconds.
    pub health_check_timeout_ms: u64,
    /// Path probed by the health checks; a 2xx answer is healthy.
    pub health_check_path: String,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            balance: Balance::RoundRobin,
            connect_timeout_ms: 500,
            eject_after_failures: 3,
            health_check_interval_ms: 1000,
            health_check_timeout_ms: 500,
            health_check_path: "/healthz".to_owned(),
        }
    }
}

impl UpstreamSettings {
    /// [`Self::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`Self::health_check_interval_ms`] as a duration.
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms)
    }

    /// [`Self::health_check_timeout_ms`] as a duration.
    pub fn health_check_timeout(&self) -> Duration {
        Duration::from_millis(self.health_check_timeout_ms)
    }
}

/// Who may use a route (or one method of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone; a bearer token is optional (but must be valid when sent).
    Public,
    /// A valid token of any role.
    User,
    /// A valid token with role `admin`.
    Admin,
}

/// One route: requests whose path starts with `prefix` go to `pool`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in metrics and logs (default: the prefix).
    #[serde(default)]
    pub name: Option<String>,
    /// Path prefix, matched on segment boundaries (`/api/orders` matches `/api/orders` and
    /// `/api/orders/…`, not `/api/ordersx`).
    pub prefix: String,
    /// Replacement for the prefix in the upstream path (default: the path is kept).
    #[serde(default)]
    pub rewrite: Option<String>,
    /// The pool serving the route.
    pub pool: String,
    /// Access for methods not listed in `methods`.
    #[serde(default = "defaults::access")]
    pub auth: Access,
    /// Access per method (`GET = "public"`), overriding `auth`.
    #[serde(default)]
    pub methods: BTreeMap<String, Access>,
    /// Deadline for the whole request, all attempts included, in milliseconds.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Extra attempts after the first (only when a retry is safe).
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Canary split.
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
}

/// Sends part of a route's traffic to another pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The canary pool.
    pub pool: String,
    /// Share of requests (0–100) sent to the canary; sticky per user.
    #[serde(default)]
    pub percent: u8,
    /// A request header that forces the choice: `1`/`true`/`yes`/`always` → canary,
    /// `0`/`false`/`no`/`never` → primary.
    #[serde(default)]
    pub header: Option<String>,
}

/// Rate limits; a rate of 0 switches that limiter off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second per user (per client IP for anonymous requests).
    pub per_user_per_second: u32,
    /// Burst allowance per user.
    pub per_user_burst: u32,
    /// Sustained requests per second over all clients.
    pub global_per_second: u32,
    /// Burst allowance over all clients.
    pub global_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_user_per_second: 20,
            per_user_burst: 40,
            global_per_second: 2000,
            global_burst: 2000,
        }
    }
}

/// Token and login settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret (at least 32 bytes); `JWT_SECRET` overrides it.
    pub jwt_secret: Option<Secret>,
    /// Token lifetime, in seconds.
    pub token_ttl_secs: u64,
    /// `iss` of issued tokens, required on presented ones.
    pub issuer: String,
    /// Password of the `admin` user; `ADMIN_PASSWORD` overrides it; unset: no admin logins.
    pub admin_password: Option<Secret>,
    /// Serve the demo login `POST /api/login` (HS256 tokens signed with `jwt_secret`). Off, it
    /// answers 404 and no HS256 token is accepted: only the identity provider's tokens are.
    pub login: bool,
    /// Tokens of a real identity provider (RS256/ES256), checked against its public keys.
    pub identity_provider: Option<IdentityProviderConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            token_ttl_secs: 3600,
            issuer: "seckill-gateway".to_owned(),
            admin_password: None,
            login: true,
            identity_provider: None,
        }
    }
}

/// An identity provider whose tokens the gateway accepts (`[auth.identity_provider]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderConfig {
    /// Its public keys: a JWKS document (RFC 7517), as the provider publishes at its
    /// `jwks_uri`. Re-read on every reload (SIGHUP), so a key rotation is a file update.
    pub jwks_file: PathBuf,
    /// The `iss` its tokens must carry.
    pub issuer: String,
    /// The `aud` its tokens must carry (this API's identifier at the provider).
    pub audience: String,
    /// Clock skew forgiven on `exp`, in seconds (the provider's clock is not ours).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

fn default_leeway_secs() -> u64 {
    30
}

/// The built-in live dashboard: `GET /dashboard` and its data, sampled in the background.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Serve `/dashboard…` and run the sampler. Read at start only (not reloadable).
    pub enabled: bool,
    /// How often the gateway's counters are read and every upstream's `/metrics` scraped,
    /// in milliseconds (100–60000). Reloadable.
    pub sample_interval_ms: u64,
    /// How much history is kept and served, in seconds (10–3600). Reloadable.
    pub history_secs: u64,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_interval_ms: 1000,
            history_secs: 300,
        }
    }
}

impl DashboardConfig {
    /// [`Self::sample_interval_ms`] as a duration.
    pub fn sample_interval(&self) -> Duration {
        Duration::from_millis(self.sample_interval_ms)
    }

    fn validate(&self, routes: &[RouteConfig]) -> Result<(), ConfigFileError> {
        if !(100..=60_000).contains(&self.sample_interval_ms) {
            return Err(ConfigFileError::invalid(
                "dashboard.sample_interval_ms must be between 100 and 60000",
            ));
        }
        if !(10..=3600).contains(&self.history_secs) {
            return Err(ConfigFileError::invalid(
                "dashboard.history_secs must be between 10 and 3600",
            ));
        }
        if self.enabled {
            let reserved = crate::dashboard::DASHBOARD_PATH;
            if let Some(route) = routes.iter().find(|r| {
                r.prefix
                    .strip_prefix(reserved)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }) {
                return Err(ConfigFileError::invalid(format!(
                    "route {:?}: {reserved} is reserved for the dashboard (set dashboard.enabled = false to route it)",
                    route.prefix
                )));
            }
        }
        Ok(())
    }
}

mod defaults {
    use super::Access;

    pub(super) fn reload_interval_ms() -> u64 {
        2000
    }
    pub(super) fn access() -> Access {
        Access::User
    }
    pub(super) fn timeout_ms() -> u64 {
        5000
    }
    pub(super) fn retries() -> u32 {
        1
    }
}

/// An upstream base URL split into what requests need.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl {
    /// `http://host:port`, without a trailing slash.
    pub base: String,
}

impl UpstreamUrl {
    /// Parses `http://host:port` (a trailing `/` is allowed; paths, queries and other schemes
    /// are not).
    pub fn parse(raw: &str) -> Result<Self, ConfigFileError> {
        let uri: Uri = raw
            .parse()
            .map_err(|e| ConfigFileError::invalid(format!("upstream {raw:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(ConfigFileError::invalid(format!(
                "upstream {raw:?}: only http:// upstreams are supported"
            )));
        }
        let Some(authority) = uri.authority() else {
            return Err(ConfigFileError::invalid(format!(
                "upstream {raw:?}: no host"
            )));
        };
        let path_ok = uri
            .path_and_query()
            .is_none_or(|pq| pq.as_str().is_empty() || pq.as_str() == "/");
        if !path_ok {
            return Err(ConfigFileError::invalid(format!(
                "upstream {raw:?}: must not have a path or query (use the route's rewrite)"
            )));
        }
        Ok(Self {
            base: format!("http://{authority}"),
        })
    }
}

impl FileConfig {
    /// Parses and validates the text of a configuration file.
    pub fn parse(text: &str) -> Result<Self, ConfigFileError> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn read(path: &std::path::Path) -> Result<(Self, String), ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok((Self::parse(&text)?, text))
    }

    fn validate(&self) -> Result<(), ConfigFileError> {
        let u = &self.upstreams;
        if u.eject_after_failures == 0 {
            return Err(ConfigFileError::invalid(
                "upstreams.eject_after_failures must be at least 1",
            ));
        }
        if u.connect_timeout_ms == 0 || u.health_check_timeout_ms == 0 {
            return Err(ConfigFileError::invalid(
                "upstreams.connect_timeout_ms and health_check_timeout_ms must be positive",
            ));
        }
        if u.health_check_interval_ms < 50 {
            return Err(ConfigFileError::invalid(
                "upstreams.health_check_interval_ms must be at least 50",
            ));
        }
        if !u.health_check_path.starts_with('/') {
            return Err(ConfigFileError::invalid(
                "upstreams.health_check_path must start with /",
            ));
        }
        if self.pools.is_empty() {
            return Err(ConfigFileError::invalid("at least one pool is required"));
        }
        for (name, urls) in &self.pools {
            if urls.is_empty() {
                return Err(ConfigFileError::invalid(format!(
                    "pool {name:?} has no upstreams"
                )));
            }
            for url in urls {
                UpstreamUrl::parse(url)?;
            }
        }
        let mut prefixes = std::collections::BTreeSet::new();
        for route in &self.routes {
            route.validate(&self.pools)?;
            if !prefixes.insert(route.prefix.as_str()) {
                return Err(ConfigFileError::invalid(format!(
                    "prefix {:?} is routed twice",
                    route.prefix
                )));
            }
        }
        let limits = &self.rate_limit;
        if (limits.per_user_per_second > 0 && limits.per_user_burst == 0)
            || (limits.global_per_second > 0 && limits.global_burst == 0)
        {
            return Err(ConfigFileError::invalid(
                "rate_limit: a burst must be at least 1 when its rate is set",
            ));
        }
        if self.auth.token_ttl_secs == 0 {
            return Err(ConfigFileError::invalid(
                "auth.token_ttl_secs must be positive",
            ));
        }
        if !self.auth.login && self.auth.identity_provider.is_none() {
            return Err(ConfigFileError::invalid(
                "auth.login = false needs an [auth.identity_provider]: no token could be valid",
            ));
        }
        if let Some(idp) = &self.auth.identity_provider
            && (idp.issuer.is_empty() || idp.audience.is_empty())
        {
            return Err(ConfigFileError::invalid(
                "auth.identity_provider: issuer and audience must not be empty",
            ));
        }
        self.dashboard.validate(&self.routes)?;
        Ok(())
    }
}

impl RouteConfig {
    /// The route's name: `name`, or the prefix.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.prefix)
    }

    /// [`Self::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn validate(&self, pools: &BTreeMap<String, Vec<String>>) -> Result<(), ConfigFileError> {
        let prefix = &self.prefix;
        let what = |msg: &str| ConfigFileError::invalid(format!("route {prefix:?}: {msg}"));
        let well_formed = |p: &str| {
            p.starts_with('/')
                && (p == "/" || !p.ends_with('/'))
                && p.parse::<axum::http::uri::PathAndQuery>().is_ok()
                && !p.contains(['?', '#'])
        };
        if !well_formed(prefix) {
            return Err(what(
                "prefix must start with /, not end with / and be a valid path",
            ));
        }
        if let Some(rewrite) = &self.rewrite
            && !well_formed(rewrite)
        {
            return Err(what(
                "rewrite must start with /, not end with / and be a valid path",
            ));
        }
        if !pools.contains_key(&self.pool) {
            return Err(what(&format!("unknown pool {:?}", self.pool)));
        }
        for method in self.methods.keys() {
            if Method::from_bytes(method.as_bytes()).is_err()
                || method.to_ascii_uppercase() != *method
            {
                return Err(what(&format!(
                    "{method:?} is not an upper-case HTTP method"
                )));
            }
        }
        if self.timeout_ms == 0 {
            return Err(what("timeout_ms must be positive"));
        }
        if self.retries > 10 {
            return Err(what("retries must be at most 10"));
        }
        if let Some(canary) = &self.canary {
            if !pools.contains_key(&canary.pool) {
                return Err(what(&format!("unknown canary pool {:?}", canary.pool)));
            }
            if canary.percent > 100 {
                return Err(what("canary.percent must be at most 100"));
            }
            if let Some(header) = &canary.header
                && HeaderName::from_bytes(header.as_bytes()).is_err()
            {
                return Err(what(&format!(
                    "canary.header {header:?} is not a header name"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../gateway.example.toml");

    #[test]
    fn the_example_file_is_valid() {
        let config = FileConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.pools["orders"], vec!["http://127.0.0.1:8081"]);
        assert_eq!(config.pools["stock"], vec!["http://127.0.0.1:8082"]);
        let stock = config
            .routes
            .iter()
            .find(|r| r.prefix == "/api/stock")
            .unwrap();
        assert_eq!(stock.auth, Access::Admin);
        assert_eq!(stock.methods["GET"], Access::Public);
        assert_eq!(stock.rewrite.as_deref(), Some("/stock"));
    }

    fn minimal(extra_route: &str) -> String {
        format!(
            "[pools]\np = [\"http://127.0.0.1:1\"]\n[[routes]]\nprefix = \"/a\"\npool = \"p\"\n{extra_route}"
        )
    }

    #[test]
    fn defaults_apply() {
        let config = FileConfig::parse(&minimal("")).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.auth, Access::User);
        assert_eq!(route.timeout_ms, 5000);
        assert_eq!(route.retries, 1);
        assert_eq!(config.upstreams, UpstreamSettings::default());
        assert_eq!(config.rate_limit, RateLimitConfig::default());
        assert_eq!(config.dashboard, DashboardConfig::default());
        assert!(config.dashboard.enabled);
    }

    #[test]
    fn the_dashboard_path_is_routable_only_with_the_dashboard_off() {
        let route = "[[routes]]\nprefix = \"/dashboard\"\npool = \"p\"\n";
        let on = format!("[pools]\np = [\"http://x:1\"]\n{route}");
        let err = FileConfig::parse(&on).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        let off = format!("[pools]\np = [\"http://x:1\"]\n[dashboard]\nenabled = false\n{route}");
        assert!(FileConfig::parse(&off).is_ok());
        let near =
            "[pools]\np = [\"http://x:1\"]\n[[routes]]\nprefix = \"/dashboards\"\npool = \"p\"";
        assert!(FileConfig::parse(near).is_ok());
    }

    #[test]
    fn bad_files_are_rejected_with_a_reason() {
        let cases = [
            minimal("rewrite = \"x\""),
            minimal("pool2 = \"p\""),
            minimal("timeout_ms = 0"),
            minimal("methods = { get = \"public\" }"),
            minimal("canary = { pool = \"nope\" }"),
            minimal("canary = { pool = \"p\", percent = 101 }"),
            "[pools]\np = [\"https://x:1\"]\n".to_owned() + "routes = []",
            "[pools]\np = [\"http://x:1/base\"]\nroutes = []".to_owned(),
            "[pools]\np = []\nroutes = []".to_owned(),
            "[pools]\np = [\"http://x:1\"]\n[[routes]]\nprefix = \"/a/\"\npool = \"p\"".to_owned(),
            "[pools]\np = [\"http://x:1\"]\n[[routes]]\nprefix = \"/a\"\npool = \"q\"".to_owned(),
            "[pools]\np = [\"http://x:1\"]\n[[routes]]\nprefix = \"/a\"\npool = \"p\"\n[[routes]]\nprefix = \"/a\"\npool = \"p\"".to_owned(),
            minimal("[upstreams]\neject_after_failures = 0"),
            minimal("[dashboard]\nsample_interval_ms = 50"),
            minimal("[dashboard]\nhistory_secs = 0"),
            minimal("[dashboard]\ncolour = \"red\""),
            "[pools]\np = [\"http://x:1\"]\n[[routes]]\nprefix = \"/dashboard\"\npool = \"p\"".to_owned(),
            "[pools]\np = [\"http://x:1\"]\n[[routes]]\nprefix = \"/dashboard/x\"\npool = \"p\"".to_owned(),
        ];
        for text in cases {
            assert!(FileConfig::parse(&text).is_err(), "accepted:\n{text}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let text = minimal(
            "[auth]\njwt_secret = \"supersecretsupersecretsupersecret\"\nadmin_password = \"hunter2\"",
        );
        let config = FileConfig::parse(&text).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("supersecret"));
        assert!(!printed.contains("hunter2"));
    }
}
