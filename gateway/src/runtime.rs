//! The live state built from one configuration: routes, pools, keys, limiters and the
//! upstream HTTP client. A reload builds a new [`Runtime`] and swaps it in whole; upstream
//! health, rate-limit state and the client's connection pool carry over when unchanged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, Method};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::auth::{KeyError, TokenKeys};
use crate::config::{ConfigFileError, FileConfig, Secret, UpstreamUrl};
use crate::idp::IdpKeys;
use crate::rate_limit::RateLimits;
use crate::routes::{Canary, Route, RouteTable};
use crate::settings::GatewaySettings;
use crate::upstream::{Pool, Upstream};

/// The pooled HTTP/1.1 client used for upstream requests and health checks.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Idle upstream connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per upstream.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// Everything one configuration determines.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration this was built from.
    pub file: FileConfig,
    /// Routes.
    pub routes: RouteTable,
    /// Every distinct upstream of every pool.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Token keys.
    pub tokens: TokenKeys,
    /// The `admin` user's password (`None`: admin logins refused).
    pub admin_password: Option<Secret>,
    /// Rate limiters.
    pub limits: Arc<RateLimits>,
    /// Upstream client.
    pub client: HttpClient,
}

/// Builds the upstream client with `connect_timeout`.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(connector)
}

/// The token keys `file` and `settings` describe: the demo login's HS256 key when the login
/// is on, the identity provider's public keys (its JWKS file read now) when configured.
fn token_keys(file: &FileConfig, settings: &GatewaySettings) -> Result<TokenKeys, ConfigFileError> {
    let auth = &file.auth;
    let secret = auth
        .login
        .then(|| settings.jwt_secret.as_ref().or(auth.jwt_secret.as_ref()))
        .flatten();
    if auth.login && secret.is_none() {
        return Err(ConfigFileError::Invalid(
            KeyError::NoSecret.to_string() + " (or auth.login = false with an identity provider)",
        ));
    }
    let idp = match &auth.identity_provider {
        None => None,
        Some(idp) => {
            let path = match &settings.config_path {
                Some(config) if idp.jwks_file.is_relative() => config
                    .parent()
                    .map_or_else(|| idp.jwks_file.clone(), |dir| dir.join(&idp.jwks_file)),
                _ => idp.jwks_file.clone(),
            };
            let jwks = std::fs::read_to_string(&path).map_err(|e| {
                ConfigFileError::Invalid(format!(
                    "auth.identity_provider.jwks_file {}: {e}",
                    path.display()
                ))
            })?;
            let keys = IdpKeys::from_jwks(&jwks, &idp.issuer, &idp.audience, idp.leeway_secs)
                .map_err(|e| {
                    ConfigFileError::Invalid(format!(
                        "auth.identity_provider.jwks_file {}: {e}",
                        path.display()
                    ))
                })?;
            Some(keys)
        }
    };
    TokenKeys::with_provider(secret, idp, &auth.issuer, auth.token_ttl_secs)
        .map_err(|e| ConfigFileError::Invalid(e.to_string()))
}

impl Runtime {
    /// Builds the state for `file`, with the environment's overrides, reusing what it can of
    /// `previous`.
    pub fn build(
        file: FileConfig,
        settings: &GatewaySettings,
        previous: Option<&Runtime>,
    ) -> Result<Self, ConfigFileError> {
        let tokens = token_keys(&file, settings)?;
        let admin_password = settings
            .admin_password
            .clone()
            .or_else(|| file.auth.admin_password.clone());

        let (upstreams, pools) = build_pools(&file, previous)?;
        let routes = file
            .routes
            .iter()
            .map(|r| build_route(r, &pools))
            .collect::<Result<Vec<_>, _>>()?;

        let limits = match previous {
            Some(p) if p.limits.config() == &file.rate_limit => Arc::clone(&p.limits),
            _ => Arc::new(RateLimits::new(&file.rate_limit)),
        };
        let client = match previous {
            Some(p) if p.file.upstreams.connect_timeout_ms == file.upstreams.connect_timeout_ms => {
                p.client.clone()
            }
            _ => http_client(file.upstreams.connect_timeout()),
        };
        Ok(Self {
            routes: RouteTable::new(routes),
            upstreams,
            tokens,
            admin_password,
            limits,
            client,
            file,
        })
    }
}

/// Pools by name.
type Pools = HashMap<String, Arc<Pool>>;

/// The upstreams and pools of `file`. An upstream listed by several pools is one shared
/// instance; one `previous` already had keeps its health state across the reload.
fn build_pools(
    file: &FileConfig,
    previous: Option<&Runtime>,
) -> Result<(Vec<Arc<Upstream>>, Pools), ConfigFileError> {
    let mut known: HashMap<String, Arc<Upstream>> = previous
        .map(|p| {
            p.upstreams
                .iter()
                .map(|u| (u.base.clone(), Arc::clone(u)))
                .collect()
        })
        .unwrap_or_default();
    let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
    let mut pools = HashMap::new();
    for (name, urls) in &file.pools {
        let mut members: Vec<Arc<Upstream>> = Vec::with_capacity(urls.len());
        for raw in urls {
            let base = UpstreamUrl::parse(raw)?.base;
            let upstream = match upstreams.iter().find(|u| u.base == base) {
                Some(existing) => Arc::clone(existing),
                None => {
                    let u = known
                        .remove(&base)
                        .unwrap_or_else(|| Arc::new(Upstream::new(base.clone())));
                    upstreams.push(Arc::clone(&u));
                    u
                }
            };
            if !members.iter().any(|m| Arc::ptr_eq(m, &upstream)) {
                members.push(upstream);
            }
        }
        pools.insert(
            name.clone(),
            Arc::new(Pool::new(name.clone(), members, file.upstreams.balance)),
        );
    }
    Ok((upstreams, pools))
}

/// One route of the file, its pools looked up in `pools`.
fn build_route(r: &crate::config::RouteConfig, pools: &Pools) -> Result<Route, ConfigFileError> {
    let pool = |name: &str| {
        pools
            .get(name)
            .cloned()
            .ok_or_else(|| ConfigFileError::Invalid(format!("unknown pool {name:?}")))
    };
    let canary = match &r.canary {
        None => None,
        Some(c) => Some(Canary {
            pool: pool(&c.pool)?,
            percent: c.percent,
            header: c
                .header
                .as_deref()
                .map(|h| HeaderName::from_bytes(h.as_bytes()))
                .transpose()
                .map_err(|e| ConfigFileError::Invalid(e.to_string()))?,
        }),
    };
    let mut methods = HashMap::new();
    for (m, access) in &r.methods {
        let method = Method::from_bytes(m.as_bytes())
            .map_err(|e| ConfigFileError::Invalid(e.to_string()))?;
        methods.insert(method, *access);
    }
    Ok(Route {
        name: r.display_name().into(),
        prefix: r.prefix.clone(),
        rewrite: r.rewrite.clone(),
        pool: pool(&r.pool)?,
        access: r.auth,
        methods,
        timeout: r.timeout(),
        retries: r.retries,
        canary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Env;

    fn settings() -> GatewaySettings {
        GatewaySettings::from_source(&Env::from_pairs::<_, &str, &str>([])).unwrap()
    }

    #[tokio::test]
    async fn upstream_state_and_limiters_survive_a_reload() {
        let first = FileConfig::parse(crate::settings::EXAMPLE_CONFIG).unwrap();
        let old = Runtime::build(first.clone(), &settings(), None).unwrap();
        old.upstreams[0].record_failure(1);
        let mut second = first;
        second.pools.insert(
            "extra".into(),
            vec!["http://127.0.0.1:8081/".into(), "http://127.0.0.1:9".into()],
        );
        let new = Runtime::build(second, &settings(), Some(&old)).unwrap();
        assert_eq!(new.upstreams.len(), 3);
        let kept = new
            .upstreams
            .iter()
            .find(|u| u.base == old.upstreams[0].base)
            .unwrap();
        assert!(Arc::ptr_eq(kept, &old.upstreams[0]));
        assert!(kept.is_ejected());
        assert!(Arc::ptr_eq(&new.limits, &old.limits));
    }

    #[tokio::test]
    async fn the_environment_secret_wins_and_a_missing_one_is_an_error() {
        let mut file = FileConfig::parse(crate::settings::EXAMPLE_CONFIG).unwrap();
        file.auth.jwt_secret = None;
        let err = Runtime::build(file.clone(), &settings(), None).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET"), "{err}");
        let env = Env::from_pairs([("JWT_SECRET", "from-the-environment-0123456789abcdef")]);
        let with_env = GatewaySettings::from_source(&env).unwrap();
        assert!(Runtime::build(file, &with_env, None).is_ok());
    }
}
