//! The dashboard in a real browser: headless Chromium loads `/dashboard` from a gateway in
//! front of the real stock-service and order-service (PostgreSQL, Redis) while a flash sale
//! runs through the gateway, and the DOM it renders must show every chart drawn with data.
//!
//! Chromium is found through `$CHROMIUM`, else `chromium` or `chromium-browser` on `PATH`;
//! without it the test fails (Debian package `chromium`). It is driven by its command line
//! (`--headless --dump-dom`, then `--screenshot`): the page's script writes what it drew into
//! `data-*` attributes, which the dumped DOM shows. The screenshot goes to a temporary file, or
//! to `$DASHBOARD_SCREENSHOT` (relative paths from the workspace root); docs/dashboard.png is
//! made with `DASHBOARD_SCREENSHOT=docs/dashboard.png cargo test -p gateway --test
//! dashboard_browser`.

#[allow(dead_code)]
#[path = "it/common.rs"]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gateway::auth::Role;
use gateway::{Gateway, GatewaySettings};
use serde_json::{Value, json};
use service_kit::config::Env;
use service_kit::metrics::Metrics;
use tokio::time::Instant;

const ADMIN_PASSWORD: &str = "dashboard-test-password";
const SECRET: &str = "dashboard-test-secret-0123456789abcdef";
/// Units on sale.
const TOTAL: u64 = 300;
const SEGMENTS: u64 = 4;
/// Concurrent buyers, and the pause between one buyer's orders.
const BUYERS: usize = 8;
const BUYER_PAUSE: Duration = Duration::from_millis(25);
/// Anonymous readers, each reading the item every `READ_PAUSE`: together above the per-IP
/// limit of 10/s, so some get 429.
const READERS: usize = 3;
const READ_PAUSE: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_live_sale_in_headless_chromium() {
    let chromium = chromium();
    // One Prometheus registry for the process, served by both services at /metrics (as their
    // binaries do): it must exist before they create their instruments.
    let metrics = Metrics::install("dashboard-test").expect("metrics");
    let (stock_url, orders_url) =
        common::services("seckill_dash_stock", "seckill_dash_order", Some(&metrics)).await;
    let gw = start_gateway(&stock_url, &orders_url).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");

    // Seed the item as the admin.
    let sku = format!("phone-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let login: Value = http
        .post(gw.url("/api/login"))
        .json(&json!({"user": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login json");
    let admin = login["access_token"].as_str().expect("admin token");
    let put = http
        .put(gw.url(&format!("/api/stock/{sku}")))
        .bearer_auth(admin)
        .json(&json!({"total": TOTAL, "segments": SEGMENTS}))
        .send()
        .await
        .expect("put stock");
    assert_eq!(put.status(), 200, "{:?}", put.text().await);

    // The sale: buyers until sold out (and on, getting 409s, until the browser is done), and
    // anonymous readers above their rate limit.
    let load = Load::start(&http, &gw, &sku);

    // Wait until the sampler has seen traffic and stock, then point the browser at the page.
    let data_url = gw.url("/dashboard/data");
    let seen = wait_for(Duration::from_secs(10), || async {
        let Ok(response) = http.get(&data_url).send().await else {
            return false;
        };
        let data: Value = response.json().await.unwrap_or(Value::Null);
        max_of(&data["qps"]["2xx"]) > 0.0
            && data["stock"].as_array().is_some_and(|s| !s.is_empty())
            && data["lock_wait"].as_array().is_some_and(|s| !s.is_empty())
    })
    .await;
    assert!(
        seen,
        "the sampler never reported the sale: {:?}",
        http.get(&data_url).send().await.ok()
    );

    let profile = TempDir::new("dashboard-chromium");
    let page = gw.url("/dashboard");
    let started = Instant::now();
    let dom = run_chromium(&chromium, &profile.0, &["--dump-dom".to_owned()], &page).await;
    let dom_secs = started.elapsed().as_secs_f64();

    // The picture: after the sell-out, with the buyers now getting 409s for a moment.
    let sold_out = wait_for(Duration::from_secs(20), || async { load.sold_out() > 0 }).await;
    assert!(sold_out, "the sale did not sell out");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let screenshot = screenshot_path(&profile.0);
    run_chromium(
        &chromium,
        &profile.0,
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1400,1000".to_owned(),
            "--hide-scrollbars".to_owned(),
        ],
        &page,
    )
    .await;
    let outcome = load.finish().await;

    // The page loaded and polled the data.
    let status = attributes(&dom, "status");
    assert_eq!(
        status.get("data-state").map(String::as_str),
        Some("ok"),
        "{dom}"
    );
    let body = attributes_of_tag(&dom, "<body");
    let polls: u32 = body
        .get("data-polls")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(polls >= 1, "the page never got its data:\n{dom}");

    // Every chart was drawn (uPlot made its canvas) with data.
    for panel in ["panel-qps", "panel-lock", "panel-stock"] {
        let attrs = attributes(&dom, panel);
        assert_eq!(
            attrs.get("data-rendered").map(String::as_str),
            Some("true"),
            "{panel}: {attrs:?}"
        );
        let points: u32 = attrs
            .get("data-points")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        assert!(points >= 1, "{panel} has no data: {attrs:?}");
    }
    assert!(
        dom.matches("<canvas").count() >= 3,
        "no uPlot canvases:\n{dom}"
    );
    // Requests and stock during the sale are not zero.
    let qps = attributes(&dom, "panel-qps");
    assert!(number(&qps, "data-max") > 0.0, "QPS shows nothing: {qps:?}");
    let stock = attributes(&dom, "panel-stock");
    assert!(
        number(&stock, "data-max") > 0.0,
        "stock shows nothing: {stock:?}"
    );
    // Nothing oversold.
    let oversold = attributes(&dom, "oversold");
    assert_eq!(
        oversold.get("data-value").map(String::as_str),
        Some("0"),
        "{oversold:?}"
    );

    // The screenshot is a real picture.
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );

    // And the sale itself was sound: exactly the stock was sold, the books balance.
    assert_eq!(outcome.created, TOTAL, "{outcome:?}");
    assert!(
        outcome.sold_out > 0 && outcome.limited > 0 && outcome.reads > 0 && outcome.other == 0,
        "{outcome:?}"
    );
    let audit: Value = http
        .get(gw.url(&format!("/api/stock/{sku}/audit")))
        // As the admin: anonymous reads from this IP are at their rate limit.
        .bearer_auth(admin)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("audit json");
    assert_eq!(audit["ok"], true, "{audit}");
    let data: Value = http
        .get(&data_url)
        .send()
        .await
        .expect("data")
        .json()
        .await
        .expect("json");
    assert_eq!(
        data["oversold"]["total"],
        json!(0.0),
        "{}",
        data["oversold"]
    );
    assert!(
        data["upstreams"]
            .as_array()
            .is_some_and(|u| u.iter().all(|u| u["ok"] == true)),
        "{}",
        data["upstreams"]
    );
    eprintln!(
        "dashboard test: {outcome:?}; chromium dump-dom {dom_secs:.1}s, {polls} polls; screenshot {} ({} bytes)",
        screenshot.display(),
        png.len()
    );
}

/// The browser: `$CHROMIUM` (a path, or a program name looked up on `PATH`), else `chromium`
/// or `chromium-browser` on `PATH`.
fn chromium() -> PathBuf {
    let on_path = |name: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    };
    if let Some(wanted) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let wanted = PathBuf::from(wanted);
        let found = if wanted.components().count() > 1 {
            wanted.is_file().then(|| wanted.clone())
        } else {
            on_path(&wanted.to_string_lossy())
        };
        return found.unwrap_or_else(|| panic!("CHROMIUM={} is not a program", wanted.display()));
    }
    ["chromium", "chromium-browser"]
        .into_iter()
        .find_map(on_path)
        .unwrap_or_else(|| {
            panic!(
                "this test needs headless Chromium and found none: install the Debian package \
                 `chromium` (apt-get install chromium), or set CHROMIUM=/path/to/chromium"
            )
        })
}

/// Runs Chromium headless on `url` with `extra` flags; returns its standard output.
async fn run_chromium(chromium: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-extensions",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            // Virtual time runs the page's timers fast; network waits still take real time.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("chromium did not finish within 30 s")
        .expect("chromium output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn screenshot_path(temp: &Path) -> PathBuf {
    match std::env::var_os("DASHBOARD_SCREENSHOT").filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            if path.is_absolute() {
                path
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
            }
        }
        None => temp.join("dashboard.png"),
    }
}

/// The attributes of the element with `id` in a DOM dump.
fn attributes(dom: &str, id: &str) -> HashMap<String, String> {
    let marker = format!("id=\"{id}\"");
    let Some(at) = dom.find(&marker) else {
        panic!("no element #{id} in the page:\n{dom}");
    };
    let start = dom[..at].rfind('<').expect("tag start");
    parse_tag(&dom[start..])
}

/// The attributes of the first tag starting with `open` (`<body`).
fn attributes_of_tag(dom: &str, open: &str) -> HashMap<String, String> {
    let start = dom
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in:\n{dom}"));
    parse_tag(&dom[start..])
}

/// `<tag a="1" b="x">…` → {a: 1, b: x} (values as Chromium serialises them, `"` escaped).
fn parse_tag(tag: &str) -> HashMap<String, String> {
    let end = tag.find('>').expect("tag end");
    let mut rest = &tag[..end];
    rest = rest.trim_start_matches('<');
    rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    let mut attrs = HashMap::new();
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_owned();
        let after = &rest[eq + 2..];
        let close = after.find('"').expect("attribute end");
        attrs.insert(name, after[..close].to_owned());
        rest = &after[close + 1..];
    }
    attrs
}

fn number(attrs: &HashMap<String, String>, name: &str) -> f64 {
    attrs.get(name).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn max_of(values: &Value) -> f64 {
    values
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).fold(0.0, f64::max))
        .unwrap_or(0.0)
}

async fn wait_for<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running gateway and its configuration file.
struct TestGateway {
    addr: SocketAddr,
    gateway: Gateway,
    _dir: TempDir,
}

impl TestGateway {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn start_gateway(stock_url: &str, orders_url: &str) -> TestGateway {
    let dir = TempDir::new("dashboard-gateway");
    let path = dir.0.join("gateway.toml");
    let config = format!(
        r#"
reload_interval_ms = 0

[upstreams]
connect_timeout_ms = 300
eject_after_failures = 10
health_check_interval_ms = 500
health_check_timeout_ms = 1000

[rate_limit]
per_user_per_second = 10
per_user_burst = 10
global_per_second = 0

[dashboard]
sample_interval_ms = 500

[pools]
orders = ["{orders_url}"]
stock = ["{stock_url}"]

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
"#
    );
    std::fs::write(&path, config).expect("write config");
    let path_text = path.display().to_string();
    let settings = GatewaySettings::from_source(&Env::from_pairs([
        ("GATEWAY_CONFIG", path_text.as_str()),
        ("JWT_SECRET", SECRET),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
    ]))
    .expect("settings");
    let gateway = Gateway::start(settings).expect("gateway");
    assert!(gateway.dashboard_enabled());
    let addr = service_kit::server::spawn_on_loopback(gateway::app(gateway.clone()))
        .await
        .expect("serve");
    TestGateway {
        addr,
        gateway,
        _dir: dir,
    }
}

/// What the load saw.
#[derive(Debug, Default)]
struct Outcome {
    created: u64,
    sold_out: u64,
    limited: u64,
    reads: u64,
    other: u64,
}

#[derive(Default)]
struct Counts {
    created: AtomicU64,
    sold_out: AtomicU64,
    limited: AtomicU64,
    reads: AtomicU64,
    other: AtomicU64,
}

/// Buyers and readers running in the background.
struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(http: &reqwest::Client, gw: &TestGateway, sku: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut tasks = Vec::new();
        let tokens = gw.gateway.runtime();
        for buyer in 0..BUYERS {
            let (http, stop, counts) = (http.clone(), Arc::clone(&stop), Arc::clone(&counts));
            let url = gw.url("/api/orders");
            let sku = sku.to_owned();
            // Distinct users, tokens minted directly (logins are rate-limited per IP).
            let users: Vec<(String, String)> = (0..TOTAL)
                .map(|n| {
                    let user = format!("buyer-{buyer}-{n}");
                    let token = tokens.tokens.issue(&user, Role::User).expect("token");
                    (user, token)
                })
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut sold_out_seen = false;
                for (_user, token) in users {
                    if stop.load(Ordering::Relaxed) && sold_out_seen {
                        break;
                    }
                    let response = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                        .json(&json!({"sku": sku, "qty": 1}))
                        .send()
                        .await;
                    let counter = match response.map(|r| r.status().as_u16()) {
                        Ok(201) => &counts.created,
                        Ok(409) => {
                            sold_out_seen = true;
                            &counts.sold_out
                        }
                        Ok(429) => &counts.limited,
                        _ => &counts.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(BUYER_PAUSE).await;
                }
            }));
        }
        for _ in 0..READERS {
            let (http, stop, counts) = (http.clone(), Arc::clone(&stop), Arc::clone(&counts));
            let url = gw.url(&format!("/api/stock/{sku}"));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = http.get(&url).send().await.map(|r| r.status().as_u16());
                    let counter = match status {
                        Ok(200) => &counts.reads,
                        Ok(429) => &counts.limited,
                        _ => &counts.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(READ_PAUSE).await;
                }
            }));
        }
        Self {
            stop,
            counts,
            tasks,
        }
    }

    fn sold_out(&self) -> u64 {
        self.counts.sold_out.load(Ordering::Relaxed)
    }

    async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("the load did not stop")
                .expect("load task");
        }
        let c = &self.counts;
        Outcome {
            created: c.created.load(Ordering::Relaxed),
            sold_out: c.sold_out.load(Ordering::Relaxed),
            limited: c.limited.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
            other: c.other.load(Ordering::Relaxed),
        }
    }
}
