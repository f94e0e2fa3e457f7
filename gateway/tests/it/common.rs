//! Test harness: a real gateway on an ephemeral port, configured from a temporary TOML file.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gateway::metrics::GatewayMetrics;
use gateway::{Gateway, GatewaySettings};
use serde_json::{Value, json};
use service_kit::config::Env;

/// The JWT secret of test gateways.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// The admin password of test gateways.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A gateway configuration: fast health checks, no rate limits unless set.
pub struct Config {
    upstreams: BTreeMap<String, String>,
    pools: String,
    routes: String,
    rate_limit: String,
    auth: String,
}

impl Config {
    /// `pools` are lines of the `[pools]` table; `routes` the `[[routes]]` tables.
    pub fn new(pools: &str, routes: &str) -> Self {
        let upstreams = [
            ("connect_timeout_ms", "300"),
            ("eject_after_failures", "2"),
            ("health_check_interval_ms", "100"),
            ("health_check_timeout_ms", "300"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            upstreams,
            pools: pools.to_owned(),
            routes: routes.to_owned(),
            rate_limit: "per_user_per_second = 0\nglobal_per_second = 0".to_owned(),
            auth: String::new(),
        }
    }

    /// Sets a key of the `[upstreams]` table (`value` is TOML).
    pub fn upstream_setting(mut self, key: &str, value: &str) -> Self {
        self.upstreams.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Replaces the body of the `[rate_limit]` table.
    pub fn rate_limit(mut self, body: &str) -> Self {
        body.clone_into(&mut self.rate_limit);
        self
    }

    /// Sets the body of the `[auth]` table (and its subtables, after it).
    pub fn auth(mut self, body: &str) -> Self {
        body.clone_into(&mut self.auth);
        self
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let upstreams: String = self
            .upstreams
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        format!(
            "reload_interval_ms = 100\n[upstreams]\n{upstreams}[rate_limit]\n{}\n[pools]\n{}\n{}\n[auth]\n{}\n",
            self.rate_limit, self.pools, self.routes, self.auth
        )
    }
}

/// A running gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub path: PathBuf,
    pub http: reqwest::Client,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl TestGateway {
    /// Starts a gateway on `config`.
    pub async fn start(config: &Config) -> Self {
        Self::start_with(config, &[], None).await
    }

    /// Starts a gateway on `config` with extra environment and optional own metrics.
    pub async fn start_with(
        config: &Config,
        env: &[(&str, &str)],
        metrics: Option<GatewayMetrics>,
    ) -> Self {
        let path = std::env::temp_dir().join(format!(
            "gateway-test-{}.toml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, config.render()).expect("write config");
        let path_text = path.display().to_string();
        let mut pairs = vec![
            ("GATEWAY_CONFIG", path_text.as_str()),
            ("JWT_SECRET", SECRET),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ];
        pairs.extend_from_slice(env);
        let settings = GatewaySettings::from_source(&Env::from_pairs(pairs)).expect("settings");
        let gateway = match metrics {
            Some(m) => Gateway::start_with_metrics(settings, m),
            None => Gateway::start(settings),
        }
        .expect("gateway config");
        let addr = service_kit::server::spawn_on_loopback(gateway::app(gateway.clone()))
            .await
            .expect("serve");
        Self {
            addr,
            gateway,
            path,
            http: http(),
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Rewrites the configuration file.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.path, text).expect("rewrite config");
    }

    /// Logs in as `user` and returns the token.
    pub async fn token(&self, user: &str) -> String {
        self.login(json!({ "user": user })).await
    }

    /// Logs in as admin and returns the token.
    pub async fn admin_token(&self) -> String {
        self.login(json!({ "user": "admin", "password": ADMIN_PASSWORD }))
            .await
    }

    /// `POST /api/login` with `body`, the answer as it came.
    pub async fn post_login(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/login"))
            .json(body)
            .send()
            .await
            .expect("login")
    }

    async fn login(&self, body: Value) -> String {
        let response = self.post_login(&body).await;
        assert_eq!(response.status(), 200, "login {body}");
        let answer: Value = response.json().await.expect("login json");
        answer["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// GET `path` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send().await.expect("get")
    }
}

/// A client that never uses a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// Status, selected headers and the JSON body of a response.
pub async fn read(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Asserts a problem+json response with `status`; returns its body.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> Value {
    let (got, headers, body) = read(response).await;
    assert_eq!(got, status, "body: {body}");
    assert_eq!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        "application/problem+json",
        "{body}"
    );
    assert_eq!(body["status"], status);
    body
}

/// Polls `check` every 50 ms until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique name (`prefix-<uuid>`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Real stock-service and order-service in-process on the test PostgreSQL (databases
/// `stock_db` and `order_db`, created if missing) and Redis, each also serving `metrics`'
/// `/metrics` when given; their base URLs.
pub async fn services(
    stock_db: &str,
    order_db: &str,
    metrics: Option<&service_kit::metrics::Metrics>,
) -> (String, String) {
    let with_metrics = |router: axum::Router| match metrics {
        Some(m) => router.merge(m.router()),
        None => router,
    };
    let redis = testkit::redis_url();
    let stock_env = Env::from_pairs([
        (
            "DATABASE_URL",
            testkit::database(stock_db).await.expect("stock db"),
        ),
        ("REDIS_URL", redis.clone()),
        ("DB_MAX_CONNECTIONS", "8".to_owned()),
    ]);
    let stock_config = stock_service::StockConfig::from_source(&stock_env).expect("stock config");
    let stock = stock_service::connect(stock_config)
        .await
        .expect("stock connect");
    let stock_url = format!(
        "http://{}",
        service_kit::server::spawn_on_loopback(with_metrics(stock_service::app(stock)))
            .await
            .expect("serve")
    );
    let order_env = Env::from_pairs([
        (
            "DATABASE_URL",
            testkit::database(order_db).await.expect("order db"),
        ),
        ("REDIS_URL", redis),
        ("STOCK_URL", stock_url.clone()),
        ("DB_MAX_CONNECTIONS", "8".to_owned()),
        ("RECOVERY_INTERVAL_MS", "0".to_owned()),
    ]);
    let order_config = order_service::OrderConfig::from_source(&order_env).expect("order config");
    let orders = order_service::connect(order_config)
        .await
        .expect("order connect");
    let orders_url = format!(
        "http://{}",
        service_kit::server::spawn_on_loopback(with_metrics(order_service::app(orders)))
            .await
            .expect("serve")
    );
    (stock_url, orders_url)
}
