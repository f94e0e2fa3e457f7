//! The shop as native processes: two stock-service and two order-service instances
//! behind the gateway, on the Redis and PostgreSQL that [`Services`] found or started.
//! The same topology as `compose.yaml`, without Docker (`cargo xtask up`, `demo`,
//! `bench shop`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::services::Services;

/// How long a service may take to answer `/healthz` after it was started (it applies
/// its migrations first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause before a supervised process that died is started again; it doubles with each
/// restart that did not last [`STABLE_AFTER`], up to [`MAX_BACKOFF`] (compose's
/// `restart: unless-stopped` backs off the same way).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before dying counts as having started well: the back-off
/// starts over.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Cargo profile the binaries are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `dev`: quick to build, shares artifacts with the tests.
    Debug,
    /// `release`: what throughput figures are measured with.
    Release,
}

impl Profile {
    /// The name printed to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// Builds `packages` and returns the path of every binary they produced, by name.
pub fn build(profile: Profile, packages: &[&str]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut cmd = crate::cargo()?;
    cmd.args(["build", "--message-format=json-render-diagnostics"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    for package in packages {
        cmd.args(["-p", package]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("running cargo build")?;
    let stdout = child.stdout.take().context("cargo build has no stdout")?;
    let mut binaries = BTreeMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo build's output")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(name), Some(exe)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        binaries.insert(name.to_owned(), PathBuf::from(exe));
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    Ok(binaries)
}

/// The path of binary `name` among what [`build`] produced.
pub fn binary(binaries: &BTreeMap<String, PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    binaries
        .get(name)
        .cloned()
        .with_context(|| format!("cargo build produced no `{name}` binary"))
}

/// How to run the shop.
#[derive(Debug, Clone)]
pub struct ShopOptions {
    /// Port of the gateway on 127.0.0.1 (0: any free port).
    pub gateway_port: u16,
    /// Instances of the stock-service and of the order-service (each).
    pub instances: usize,
    /// `STOCK_STRATEGY` of every stock-service instance.
    pub strategy: String,
    /// Extra environment of every stock-service instance (`RMW_DELAY_MS`, `REDLOCK_URLS`, ...).
    pub stock_env: Vec<(String, String)>,
    /// Extra environment of every order-service instance.
    pub order_env: Vec<(String, String)>,
    /// Whether the gateway's rate limits stay on (off for benchmarks, which measure the
    /// strategies, not the limiter).
    pub rate_limits: bool,
    /// Password of the `admin` login.
    pub admin_password: String,
    /// Suffix of the two databases (`seckill_<suffix>_stock`, `seckill_<suffix>_orders`)
    /// and the Redis key prefix, so that `up`, `demo` and `bench` do not share state.
    pub name: String,
    /// Directory for the gateway configuration and the services' logs.
    pub run_dir: PathBuf,
    /// `RUST_LOG` of the services.
    pub log_filter: String,
    /// The services' Redis when not the one [`Services`] found (the chaos suite's replicated
    /// Redis behind its proxy).
    pub redis_url: Option<String>,
}

/// Where the running shop answers.
#[derive(Debug, Clone)]
pub struct ShopUrls {
    /// The gateway: the only entry point for clients.
    pub gateway: String,
    /// The gateway's Prometheus endpoint (`METRICS_ADDR`).
    pub gateway_metrics: String,
    /// Base URL of each stock-service instance (each serves `/metrics`).
    pub stock: Vec<String>,
    /// Base URL of each order-service instance (each serves `/metrics`).
    pub orders: Vec<String>,
}

impl ShopUrls {
    /// Every service's `/metrics` URL, stock-service instances first.
    pub fn metrics(&self) -> Vec<String> {
        self.stock
            .iter()
            .chain(&self.orders)
            .map(|u| format!("{u}/metrics"))
            .chain([self.gateway_metrics.clone()])
            .collect()
    }
}

/// What every service process of a shop shares: its log filter, its Redis, its key prefixes
/// (so that shops sharing one Redis keep apart).
struct Common {
    log_filter: String,
    redis_url: String,
    key_prefix: String,
}

impl Common {
    /// `bin` listening on `port`, with the shared environment.
    fn command(&self, bin: &Path, port: u16) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", &self.log_filter)
            .env("REDIS_URL", &self.redis_url)
            .env("STOCK_KEY_PREFIX", &self.key_prefix)
            .env("ORDER_KEY_PREFIX", format!("{}-orders", self.key_prefix));
        cmd
    }
}

/// One child process of the shop, and what it takes to start it again.
struct Proc {
    name: String,
    /// How it was started (a `Command` can spawn again; its output stays appended to `log`).
    cmd: Command,
    child: Child,
    log: PathBuf,
    started: Instant,
    /// Set while it is dead and waiting to be restarted.
    restart_at: Option<Instant>,
    backoff: Duration,
    restarts: u32,
}

/// What [`Shop::supervise`] did, one line each for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Supervised {
    /// A process died; it will be started again after the back-off.
    Died {
        /// The process.
        name: String,
        /// How it ended.
        status: String,
        /// The pause before the restart.
        restart_in: Duration,
    },
    /// A process was started again.
    Restarted {
        /// The process.
        name: String,
        /// Its new pid.
        pid: u32,
        /// Restarts so far.
        restarts: u32,
    },
    /// A restart failed to spawn; it is tried again after the back-off.
    RestartFailed {
        /// The process.
        name: String,
        /// Why.
        error: String,
    },
}

impl std::fmt::Display for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Supervised::Died {
                name,
                status,
                restart_in,
            } => write!(
                f,
                "{name} exited ({status}); restarting it in {:.0?}",
                restart_in
            ),
            Supervised::Restarted {
                name,
                pid,
                restarts,
            } => write!(f, "{name} restarted (pid {pid}, restart #{restarts})"),
            Supervised::RestartFailed { name, error } => {
                write!(f, "{name} could not be restarted: {error}")
            }
        }
    }
}

/// The running shop; [`Shop::stop`] (or dropping it) stops every process it started.
pub struct Shop {
    procs: Vec<Proc>,
    /// Where it answers.
    pub urls: ShopUrls,
    /// Directory of the logs.
    pub log_dir: PathBuf,
    /// The two databases, for the printout.
    pub databases: [String; 2],
    /// The two databases' URLs (stock, orders), with their credentials.
    database_urls: [String; 2],
    /// Processes the supervisor leaves dead (a chaos scenario's "not restarted").
    left_dead: Vec<String>,
}

impl Shop {
    /// A shop with no process yet, its logs in `log_dir`, on the databases `database_urls`
    /// (stock, orders).
    fn empty(log_dir: PathBuf, database_urls: [String; 2]) -> Shop {
        Shop {
            procs: Vec::new(),
            urls: ShopUrls {
                gateway: String::new(),
                gateway_metrics: String::new(),
                stock: Vec::new(),
                orders: Vec::new(),
            },
            log_dir,
            databases: database_urls.clone().map(|u| redact_db(&u)),
            database_urls,
            left_dead: Vec::new(),
        }
    }

    /// Starts the stock-services, the order-services and then the gateway, each once the
    /// previous ones answer `/healthz`. `binaries` comes from [`build`].
    pub fn start(
        services: &Services,
        binaries: &BTreeMap<String, PathBuf>,
        options: &ShopOptions,
    ) -> anyhow::Result<Shop> {
        let (stock_bin, order_bin, gateway_bin) = (
            binary(binaries, "stock-service")?,
            binary(binaries, "order-service")?,
            binary(binaries, "gateway")?,
        );

        let stock_db = create_database(
            &services.database_url,
            &format!("seckill_{}_stock", options.name),
        )?;
        let orders_db = create_database(
            &services.database_url,
            &format!("seckill_{}_orders", options.name),
        )?;
        let log_dir = options.run_dir.join("logs");
        fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;

        let mut shop = Shop::empty(log_dir, [stock_db.clone(), orders_db.clone()]);
        let common = Common {
            log_filter: options.log_filter.clone(),
            redis_url: options
                .redis_url
                .clone()
                .unwrap_or_else(|| services.redis_url.clone()),
            key_prefix: format!("shop-{}", options.name),
        };
        shop.start_stock_services(&stock_bin, &common, options, &stock_db)?;
        shop.start_order_services(&order_bin, &common, options, &orders_db)?;
        shop.start_gateway(&gateway_bin, options)?;
        Ok(shop)
    }

    fn start_stock_services(
        &mut self,
        bin: &Path,
        common: &Common,
        options: &ShopOptions,
        database_url: &str,
    ) -> anyhow::Result<()> {
        for i in 1..=options.instances {
            let port = testkit::free_port()?;
            let mut cmd = common.command(bin, port);
            cmd.env("DATABASE_URL", database_url)
                .env("STOCK_STRATEGY", &options.strategy)
                .envs(options.stock_env.iter().map(|(k, v)| (k, v)));
            let url = format!("http://127.0.0.1:{port}");
            self.spawn(&format!("stock-service-{i}"), cmd, &url)?;
            self.urls.stock.push(url);
        }
        Ok(())
    }

    /// Every order-service talks to every stock-service (balanced, failed ones ejected), each
    /// list starting at its own instance; both stock-services contend for the same locks.
    fn start_order_services(
        &mut self,
        bin: &Path,
        common: &Common,
        options: &ShopOptions,
        database_url: &str,
    ) -> anyhow::Result<()> {
        for i in 1..=options.instances {
            let port = testkit::free_port()?;
            let mut cmd = common.command(bin, port);
            let n = self.urls.stock.len();
            let stock: Vec<&str> = (0..n)
                .map(|k| self.urls.stock[(i - 1 + k) % n].as_str())
                .collect();
            cmd.env("DATABASE_URL", database_url)
                .env("STOCK_URL", stock.join(","))
                .envs(options.order_env.iter().map(|(k, v)| (k, v)));
            let url = format!("http://127.0.0.1:{port}");
            self.spawn(&format!("order-service-{i}"), cmd, &url)?;
            self.urls.orders.push(url);
        }
        Ok(())
    }

    /// The gateway, its configuration written with pools over the instances started.
    fn start_gateway(&mut self, bin: &Path, options: &ShopOptions) -> anyhow::Result<()> {
        let port = match options.gateway_port {
            0 => testkit::free_port()?,
            p => p,
        };
        let metrics_port = testkit::free_port()?;
        let config = options.run_dir.join("gateway.toml");
        fs::write(&config, gateway_config(&self.urls, options.rate_limits)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let mut cmd = Command::new(bin);
        cmd.env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("GATEWAY_CONFIG", &config)
            .env("ADMIN_PASSWORD", &options.admin_password)
            .env("JWT_SECRET", random_secret())
            .env("RUST_LOG", &options.log_filter);
        let url = format!("http://127.0.0.1:{port}");
        self.spawn("gateway", cmd, &url)?;
        self.urls.gateway = url;
        self.urls.gateway_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
        Ok(())
    }

    /// Starts one process with its output in `<log_dir>/<name>.log` and waits until
    /// `<url>/healthz` answers 200.
    fn spawn(&mut self, name: &str, mut cmd: Command, url: &str) -> anyhow::Result<()> {
        let log = self.log_dir.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = file.try_clone().context("duplicating a log file handle")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        self.procs.push(Proc {
            name: name.to_owned(),
            cmd,
            child,
            log,
            started: Instant::now(),
            restart_at: None,
            backoff: FIRST_BACKOFF,
            restarts: 0,
        });
        let health = format!("{url}/healthz");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if answers_ok(&health) {
                return Ok(());
            }
            if let Some(dead) = self.first_exited() {
                bail!("{dead}");
            }
            if crate::interrupted() {
                bail!("interrupted while starting {name}");
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not answer {health} within {}s; its log:\n{}",
                    START_TIMEOUT.as_secs(),
                    tail(&self.procs[self.procs.len() - 1].log)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A description (with the end of its log) of the first process that has exited.
    pub fn first_exited(&mut self) -> Option<String> {
        for proc in &mut self.procs {
            if let Ok(Some(status)) = proc.child.try_wait() {
                return Some(format!(
                    "{} exited ({status}); the end of {}:\n{}",
                    proc.name,
                    proc.log.display(),
                    tail(&proc.log)
                ));
            }
        }
        None
    }

    /// Keep every process running, as compose's `restart:` policy does: a process that died
    /// is started again after a back-off (1 s, doubling up to 30 s, reset once a run lasted
    /// 30 s), with the same command, its output appended to the same log. Call it
    /// periodically; it returns what it did.
    pub fn supervise(&mut self) -> Vec<Supervised> {
        let now = Instant::now();
        let mut events = Vec::new();
        for proc in &mut self.procs {
            if self.left_dead.contains(&proc.name) {
                continue;
            }
            match proc.restart_at {
                None => {
                    let Ok(Some(status)) = proc.child.try_wait() else {
                        continue;
                    };
                    if now.duration_since(proc.started) >= STABLE_AFTER {
                        proc.backoff = FIRST_BACKOFF;
                    }
                    proc.restart_at = Some(now + proc.backoff);
                    events.push(Supervised::Died {
                        name: proc.name.clone(),
                        status: status.to_string(),
                        restart_in: proc.backoff,
                    });
                }
                Some(at) if now >= at => {
                    proc.backoff = (proc.backoff * 2).min(MAX_BACKOFF);
                    match proc.cmd.spawn() {
                        Ok(child) => {
                            proc.child = child;
                            proc.started = now;
                            proc.restart_at = None;
                            proc.restarts += 1;
                            events.push(Supervised::Restarted {
                                name: proc.name.clone(),
                                pid: proc.child.id(),
                                restarts: proc.restarts,
                            });
                        }
                        Err(err) => {
                            proc.restart_at = Some(now + proc.backoff);
                            events.push(Supervised::RestartFailed {
                                name: proc.name.clone(),
                                error: err.to_string(),
                            });
                        }
                    }
                }
                Some(_) => {}
            }
        }
        events
    }

    /// Never restart process `name` (it stays dead once it died).
    pub fn leave_dead(&mut self, name: &str) {
        self.left_dead.push(name.to_owned());
    }

    /// The pid of process `name`, if the shop has it.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// The URLs of the stock and the orders database.
    pub fn database_urls(&self) -> (String, String) {
        let [stock, orders] = &self.database_urls;
        (stock.clone(), orders.clone())
    }

    /// The names and pids of the running processes, in start order.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), p.child.id()))
            .collect()
    }

    /// Stops every process: SIGTERM in reverse start order (gateway first), then waits;
    /// whatever is still running after [`STOP_TIMEOUT`] is killed.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for proc in self.procs.iter_mut().rev() {
            if matches!(proc.child.try_wait(), Ok(None)) {
                // Our own child, by pid: SIGTERM lets it drain and flush telemetry.
                let _ = Command::new("kill")
                    .args(["-TERM", &proc.child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for proc in self.procs.iter_mut().rev() {
            loop {
                match proc.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("xtask: {} did not stop; killing it", proc.name);
                        let _ = proc.child.kill();
                        let _ = proc.child.wait();
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.procs.clear();
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The gateway configuration for the shop: the built-in example with the pools pointed
/// at the instances (and the rate limits off when asked).
fn gateway_config(urls: &ShopUrls, rate_limits: bool) -> anyhow::Result<String> {
    let example = include_str!("../../gateway/gateway.example.toml");
    let mut config: toml::Table =
        toml::from_str(example).context("parsing gateway.example.toml")?;
    let pools = config
        .get_mut("pools")
        .and_then(toml::Value::as_table_mut)
        .context("gateway.example.toml has no [pools]")?;
    let list =
        |v: &[String]| toml::Value::Array(v.iter().cloned().map(toml::Value::from).collect());
    pools.insert("orders".into(), list(&urls.orders));
    pools.insert("stock".into(), list(&urls.stock));
    if !rate_limits {
        let limits = config
            .get_mut("rate_limit")
            .and_then(toml::Value::as_table_mut)
            .context("gateway.example.toml has no [rate_limit]")?;
        limits.insert("per_user_per_second".into(), 0.into());
        limits.insert("global_per_second".into(), 0.into());
    }
    Ok(format!(
        "# Written by cargo xtask for this run (from gateway/gateway.example.toml).\n{}",
        toml::to_string(&config).context("writing the gateway configuration")?
    ))
}

/// Creates (if missing) database `name` on the server of `admin_url`; returns its URL.
fn create_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?
        .block_on(testkit::database_on(admin_url, name))
}

/// A database URL without its password, for printing.
fn redact_db(url: &str) -> String {
    crate::services::redact(url)
}

/// 32 random bytes as hex: a fresh JWT secret per run.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One HTTP client for the health probes and the progress line (2 s per request; a non-2xx
/// answer counts as an error).
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into()
    })
}

/// Whether `GET url` answers 2xx.
pub fn answers_ok(url: &str) -> bool {
    agent().get(url).call().is_ok()
}

/// The JSON body of `GET url` when it answers 2xx, else `None`.
pub fn http_json(url: &str) -> Option<serde_json::Value> {
    let mut response = agent().get(url).call().ok()?;
    let text = response.body_mut().read_to_string().ok()?;
    serde_json::from_str(&text).ok()
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let Ok(text) = fs::read_to_string(path) else {
        return format!("(cannot read {})", path.display());
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shop of one process that exits at once, with its log in a temporary directory.
    fn shop_of(script: &str) -> Shop {
        let dir = std::env::temp_dir().join(format!("xtask-supervise-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut shop = Shop::empty(dir, [String::new(), String::new()]);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        let log = shop.log_dir.join("p.log");
        let file = File::create(&log).unwrap();
        cmd.stdout(Stdio::from(file));
        let child = cmd.spawn().unwrap();
        shop.procs.push(Proc {
            name: "p".into(),
            cmd,
            child,
            log,
            started: Instant::now(),
            restart_at: None,
            backoff: FIRST_BACKOFF,
            restarts: 0,
        });
        shop
    }

    #[test]
    fn a_dead_process_is_restarted_after_a_growing_back_off() {
        let mut shop = shop_of("echo run; exit 3");
        thread::sleep(Duration::from_millis(200));
        let died = shop.supervise();
        assert!(
            matches!(&died[..], [Supervised::Died { restart_in, status, .. }]
                if *restart_in == FIRST_BACKOFF && status.contains('3')),
            "{died:?}"
        );
        assert!(shop.supervise().is_empty(), "waits for the back-off");
        thread::sleep(FIRST_BACKOFF);
        let restarted = shop.supervise();
        assert!(
            matches!(&restarted[..], [Supervised::Restarted { restarts: 1, .. }]),
            "{restarted:?}"
        );
        thread::sleep(Duration::from_millis(200));
        let again = shop.supervise();
        assert!(
            matches!(&again[..], [Supervised::Died { restart_in, .. }] if *restart_in == FIRST_BACKOFF * 2),
            "the back-off doubles: {again:?}"
        );
        let log = fs::read_to_string(&shop.procs[0].log).unwrap();
        assert_eq!(
            log.lines().count(),
            2,
            "both runs append to the log: {log:?}"
        );
        shop.stop();
    }

    #[test]
    fn gateway_config_points_the_pools_at_the_instances() {
        let urls = ShopUrls {
            gateway: String::new(),
            gateway_metrics: String::new(),
            stock: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            orders: vec!["http://127.0.0.1:3".into()],
        };
        let text = gateway_config(&urls, false).unwrap();
        let config: toml::Table = toml::from_str(&text).unwrap();
        let pools = config["pools"].as_table().unwrap();
        assert_eq!(pools["stock"].as_array().unwrap().len(), 2);
        assert_eq!(pools["orders"][0].as_str(), Some("http://127.0.0.1:3"));
        assert_eq!(
            config["rate_limit"]["global_per_second"].as_integer(),
            Some(0)
        );
        assert!(config.get("routes").is_some(), "routes kept");
    }
}
