//! The whole shop in-process on free loopback ports — two stock-service instances, two
//! order-service instances and the gateway in front — on the real PostgreSQL and Redis, and
//! the `loadtest` binary run against it.
//!
//! Goose installs a process-wide Ctrl-C handler and logger, so the attack runs as the built
//! binary (a child process), not in the test process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use service_kit::config::Env;
use service_kit::metrics::Metrics;

/// The admin password of the test gateway.
pub const ADMIN_PASSWORD: &str = "loadtest-admin-password";
const JWT_SECRET: &str = "loadtest-jwt-secret-0123456789abcdef0123";

/// A unique name (`prefix-<uuid>`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The process-wide Prometheus registry the stock-services export to (installed once,
/// before any instance connects, so their instruments land in it).
fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::install("stock-service").expect("metrics"))
}

/// Held while a test attacks: attacks share two cores, so they take turns, also across
/// the processes nextest runs tests in.
pub struct AttackTurn(std::fs::File);

/// Wait for this test's turn to attack.
pub async fn attack_turn() -> AttackTurn {
    let path = std::env::temp_dir().join("seckill-loadtest-attack.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("lock file");
    tokio::task::spawn_blocking(move || {
        file.lock().expect("lock");
        AttackTurn(file)
    })
    .await
    .expect("lock task")
}

/// The running shop.
pub struct Shop {
    /// The gateway's base URL.
    pub gateway: String,
    /// The stock-services' base URLs.
    pub stock: Vec<String>,
    /// The order-services' base URLs.
    pub orders: Vec<String>,
    config: PathBuf,
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Shop {
    /// Start the shop; `stock_vars` go to both stock-services (e.g. the strategy).
    pub async fn start(stock_vars: &[(&str, &str)]) -> Shop {
        let metrics = metrics();
        let redis = testkit::redis_url();
        let prefix = unique("lt");
        let stock_db = testkit::database("seckill_lt_stock")
            .await
            .expect("stock db");
        let order_db = testkit::database("seckill_lt_orders")
            .await
            .expect("orders db");

        let mut stock = Vec::new();
        for _ in 0..2 {
            let mut pairs = vec![
                ("DATABASE_URL".to_owned(), stock_db.clone()),
                ("REDIS_URL".to_owned(), redis.clone()),
                ("STOCK_KEY_PREFIX".to_owned(), prefix.clone()),
                ("DB_MAX_CONNECTIONS".to_owned(), "6".to_owned()),
                ("LOCK_WAIT_MS".to_owned(), "10000".to_owned()),
            ];
            for (k, v) in stock_vars {
                pairs.retain(|(name, _)| name != k);
                pairs.push(((*k).to_owned(), (*v).to_owned()));
            }
            let config = stock_service::StockConfig::from_source(&Env::from_pairs(pairs))
                .expect("stock config");
            let engine = stock_service::connect(config).await.expect("stock connect");
            let app = stock_service::app(engine).merge(metrics.router());
            stock.push(format!(
                "http://{}",
                service_kit::server::spawn_on_loopback(app)
                    .await
                    .expect("serve")
            ));
        }

        let mut orders = Vec::new();
        for stock_url in &stock {
            let config = order_service::OrderConfig::from_source(&Env::from_pairs([
                ("DATABASE_URL", order_db.clone()),
                ("REDIS_URL", redis.clone()),
                ("STOCK_URL", stock_url.clone()),
                ("STOCK_KEY_PREFIX", prefix.clone()),
                ("DB_MAX_CONNECTIONS", "6".to_owned()),
                ("RECOVERY_INTERVAL_MS", "200".to_owned()),
                // A request the gateway gave up on leaves its order pending; the worker
                // settles it once the lease ran out.
                ("ORDER_LEASE_MS", "2000".to_owned()),
            ]))
            .expect("order config");
            let engine = order_service::connect(config).await.expect("order connect");
            let interval = engine.config.recovery_interval;
            tokio::spawn(order_service::recovery::run(engine.clone(), interval));
            orders.push(format!(
                "http://{}",
                service_kit::server::spawn_on_loopback(order_service::app(engine))
                    .await
                    .expect("serve")
            ));
        }

        let quoted = |urls: &[String]| {
            urls.iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let toml = format!(
            r#"reload_interval_ms = 60000
[upstreams]
balance = "round_robin"
connect_timeout_ms = 500
eject_after_failures = 3
health_check_interval_ms = 1000
health_check_timeout_ms = 500
health_check_path = "/healthz"

[pools]
orders = [{}]
stock = [{}]

[[routes]]
name = "orders"
prefix = "/api/orders"
rewrite = "/orders"
pool = "orders"
auth = "user"
timeout_ms = 8000
retries = 2

[[routes]]
name = "stock"
prefix = "/api/stock"
rewrite = "/stock"
pool = "stock"
auth = "admin"
methods = {{ GET = "public", HEAD = "public" }}
timeout_ms = 5000
retries = 1

[rate_limit]
per_user_per_second = 20
per_user_burst = 40
global_per_second = 0
"#,
            quoted(&orders),
            quoted(&stock)
        );
        let config = std::env::temp_dir().join(format!("{}.toml", unique("loadtest-gateway")));
        std::fs::write(&config, toml).expect("gateway config");
        let settings = gateway::GatewaySettings::from_source(&Env::from_pairs([
            ("GATEWAY_CONFIG", config.display().to_string()),
            ("JWT_SECRET", JWT_SECRET.to_owned()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ]))
        .expect("gateway settings");
        let gw = gateway::Gateway::start(settings).expect("gateway");
        let addr = service_kit::server::spawn_on_loopback(gateway::app(gw))
            .await
            .expect("serve");
        Shop {
            gateway: format!("http://{addr}"),
            stock,
            orders,
            config,
        }
    }
}

/// What a run of the binary left.
pub struct Run {
    /// Its exit code.
    pub code: Option<i32>,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// `summary.json`, if written.
    pub summary: Option<Value>,
    /// The report directory.
    pub dir: PathBuf,
}

/// Run the `loadtest` binary with `args` (the report directory is added), within `limit`.
pub async fn loadtest(args: &[&str], limit: Duration) -> Run {
    let dir = std::env::temp_dir().join(unique("loadtest-reports"));
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"));
    command
        .args(args)
        .arg("--report-dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .env_remove("ADMIN_PASSWORD")
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .expect("loadtest ran too long")
        .expect("loadtest started");
    let summary = std::fs::read(dir.join("summary.json"))
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("summary.json is JSON"));
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        summary,
        dir,
    }
}

impl Run {
    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Remove the report directory.
    pub fn clean(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
