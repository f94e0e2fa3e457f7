//! `cargo xtask bench shop`: the goose flash sale through the whole shop (gateway, two
//! order-services, two stock-services, release builds), once per strategy and for
//! `segmented` with S = 1, 4, 8 and 16 segments, in one run; then the sold-out phase against
//! the raw gateway. Prints the comparison as ratios to `db-pessimistic`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde_json::Value;
use testkit::RedisServer;

use crate::outcome::Outcome;
use crate::services::Services;
use crate::shop::{self, Profile, Shop, ShopOptions};

/// One configuration of the comparison.
struct Case {
    label: &'static str,
    strategy: &'static str,
    segments: u32,
}

/// The cases, the baseline first. Every item has 8 segments except the S sweep.
const CASES: &[Case] = &[
    Case {
        label: "db-pessimistic",
        strategy: "db-pessimistic",
        segments: 8,
    },
    Case {
        label: "db-optimistic",
        strategy: "db-optimistic",
        segments: 8,
    },
    Case {
        label: "redis-lock",
        strategy: "redis-lock",
        segments: 8,
    },
    Case {
        label: "segmented S=1",
        strategy: "segmented",
        segments: 1,
    },
    Case {
        label: "segmented S=4",
        strategy: "segmented",
        segments: 4,
    },
    Case {
        label: "segmented S=8 (default)",
        strategy: "segmented",
        segments: 8,
    },
    Case {
        label: "segmented S=16",
        strategy: "segmented",
        segments: 16,
    },
    Case {
        label: "redlock (3 masters)",
        strategy: "redlock",
        segments: 8,
    },
    Case {
        label: "redis-atomic",
        strategy: "redis-atomic",
        segments: 8,
    },
    Case {
        label: "naive (control)",
        strategy: "naive",
        segments: 8,
    },
];

/// Load parameters, from `BENCH_SHOP_*` variables (documented in docs/strategies.md).
struct Load {
    stock: u64,
    users: u64,
    run_time: String,
    phase_time: String,
}

impl Load {
    fn from_env() -> anyhow::Result<Load> {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Ok(Load {
            stock: var("BENCH_SHOP_STOCK", "2000")
                .parse()
                .context("BENCH_SHOP_STOCK must be a number")?,
            users: var("BENCH_SHOP_USERS", "128")
                .parse()
                .context("BENCH_SHOP_USERS must be a number")?,
            run_time: var("BENCH_SHOP_RUN_TIME", "20s"),
            phase_time: var("BENCH_SHOP_PHASE_TIME", "10s"),
        })
    }
}

/// What one load-test run reported (from its `summary.json`).
#[derive(Debug, Default, Clone)]
struct Run {
    exit: Option<i32>,
    passed: bool,
    oversold: i64,
    orders_per_sec: f64,
    requests_per_sec: f64,
    created_p99_ms: Option<f64>,
    sold_out_p99_ms: Option<f64>,
    healthz_p99_ms: Option<f64>,
    time_to_sell_out: Option<f64>,
    lock_wait_p99_ms: Option<f64>,
    errors: u64,
}

impl Run {
    fn read(dir: &Path, exit: Option<i32>) -> anyhow::Result<Run> {
        let path = dir.join("summary.json");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("the load test wrote no {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).context("parsing summary.json")?;
        let p99 = |outcome: &str| v["latency"][outcome]["p99_ms"].as_f64();
        Ok(Run {
            exit,
            passed: v["passed"].as_bool().unwrap_or(false),
            oversold: v["oversold"].as_i64().unwrap_or(0),
            orders_per_sec: v["throughput"]["orders_per_sec"].as_f64().unwrap_or(0.0),
            requests_per_sec: v["throughput"]["requests_per_sec"].as_f64().unwrap_or(0.0),
            created_p99_ms: p99("created"),
            sold_out_p99_ms: p99("sold_out"),
            healthz_p99_ms: p99("healthz"),
            time_to_sell_out: v["timing"]["time_to_sell_out_secs"].as_f64(),
            lock_wait_p99_ms: v["lock_wait_p99_ms"].as_f64(),
            errors: v["latency"]["error"]["count"].as_u64().unwrap_or(0),
        })
    }
}

/// Runs the comparison; one step per case plus the sold-out phase.
pub fn run(services: &Services) -> anyhow::Result<Vec<(String, Outcome)>> {
    let load = Load::from_env()?;
    println!("==> building release binaries (stock-service, order-service, gateway, loadtest)");
    let binaries = shop::build(
        Profile::Release,
        &["stock-service", "order-service", "gateway", "loadtest"],
    )?;
    let loadtest = binaries
        .get("loadtest")
        .cloned()
        .context("cargo build produced no `loadtest` binary")?;
    let dir = crate::up::run_dir("bench-shop")?;
    // RedLock needs its own independent masters.
    let masters = (0..3)
        .map(|_| RedisServer::start())
        .collect::<anyhow::Result<Vec<_>>>()
        .context("starting three throwaway redis-servers for redlock")?;
    let redlock_urls = masters
        .iter()
        .map(RedisServer::url)
        .collect::<Vec<_>>()
        .join(",");

    let mut steps = Vec::new();
    let mut rows: Vec<(&Case, Run)> = Vec::new();
    let mut phase: Option<(Run, Run)> = None;
    for (i, case) in CASES.iter().enumerate() {
        if crate::interrupted() {
            steps.push((case.label.to_owned(), Outcome::Skipped("interrupted")));
            continue;
        }
        println!("==> [{}/{}] {}", i + 1, CASES.len(), case.label);
        let mut options = shop_options(case, &dir, i)?;
        if case.strategy == "redlock" {
            options
                .stock_env
                .push(("REDLOCK_URLS".into(), redlock_urls.clone()));
        }
        let shop = Shop::start(services, &binaries, &options)?;
        let report = dir.join(format!("{:02}-{}", i + 1, slug(case.label)));
        let sku = format!("bench-{}-{}", std::process::id(), i + 1);
        let args = sale_args(&load, case, &sku);
        let run = attack(&loadtest, &shop, &options, &args, &report)?;
        // The negative control is expected to fail its audit.
        let expected = if case.strategy == "naive" {
            !run.passed
        } else {
            run.passed
        };
        steps.push((
            case.label.to_owned(),
            if expected {
                Outcome::Passed
            } else {
                Outcome::Failed(run.exit)
            },
        ));
        println!(
            "    {:.0} orders/s, p99 created {}, oversold {}, verdict {}",
            run.orders_per_sec,
            ms(run.created_p99_ms),
            run.oversold,
            if run.passed { "passed" } else { "FAILED" }
        );
        if case.label.ends_with("(default)") && !crate::interrupted() {
            phase = Some(sold_out_phase(&load, &loadtest, &shop, &options, &dir)?);
            let (sold_out, trivial) = phase
                .as_ref()
                .map(|(a, b)| (a.clone(), b.clone()))
                .unwrap_or_default();
            steps.push((
                "sold-out phase".to_owned(),
                if sold_out.passed && trivial.exit == Some(0) {
                    Outcome::Passed
                } else {
                    Outcome::Failed(sold_out.exit)
                },
            ));
        }
        shop.stop();
        rows.push((case, run));
    }
    drop(masters);
    let table = table(&load, &rows, phase.as_ref());
    println!("\n{table}");
    let path = dir.join("comparison.md");
    fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(steps)
}

fn shop_options(case: &Case, dir: &Path, i: usize) -> anyhow::Result<ShopOptions> {
    Ok(ShopOptions {
        gateway_port: 0,
        instances: 2,
        strategy: case.strategy.to_owned(),
        stock_env: Vec::new(),
        // Every buyer keeps buying: the run measures the strategy, not user churn.
        order_env: vec![("PURCHASE_LIMIT".into(), "1000000".into())],
        rate_limits: false,
        admin_password: "bench-admin-password".into(),
        name: "bench".into(),
        run_dir: dir.join(format!("shop-{:02}", i + 1)),
        log_filter: "warn".into(),
    })
}

fn sale_args(load: &Load, case: &Case, sku: &str) -> Vec<String> {
    [
        "--scenario",
        "flash-sale",
        "--sku",
        sku,
        "--stock",
        &load.stock.to_string(),
        "--segments",
        &case.segments.to_string(),
        "--users",
        &load.users.to_string(),
        "--hatch-rate",
        &load.users.to_string(),
        "--run-time",
        &load.run_time,
        "--settle",
        "20s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The sold-out phase: order requests for an item with no stock left (every answer a 409
/// from the fast paths) against the gateway's own `/healthz`, same users, same shop.
fn sold_out_phase(
    load: &Load,
    loadtest: &Path,
    shop: &Shop,
    options: &ShopOptions,
    dir: &Path,
) -> anyhow::Result<(Run, Run)> {
    println!(
        "==> sold-out phase: order requests on a sold-out item vs GET /healthz on the gateway"
    );
    let users = load.users.to_string();
    let common = [
        "--users",
        &users,
        "--hatch-rate",
        &users,
        "--run-time",
        &load.phase_time,
        "--settle",
        "5s",
    ];
    let sku = format!("bench-{}-soldout", std::process::id());
    let mut sold_out_args: Vec<String> = [
        "--scenario",
        "flash-sale",
        "--sku",
        &sku,
        "--stock",
        "0",
        "--segments",
        "8",
    ]
    .iter()
    .chain(common.iter())
    .map(|s| (*s).to_owned())
    .collect();
    // No orders are made, so nothing to retry, pay or cancel.
    sold_out_args.extend(
        [
            "--retry-share",
            "0",
            "--pay-share",
            "0",
            "--cancel-share",
            "0",
        ]
        .map(str::to_owned),
    );
    let sold_out = attack(
        loadtest,
        shop,
        options,
        &sold_out_args,
        &dir.join("sold-out"),
    )?;
    let trivial_args: Vec<String> = [
        "--scenario",
        "trivial",
        "--sku",
        &format!("{sku}-t"),
        "--stock",
        "0",
    ]
    .iter()
    .chain(common.iter())
    .map(|s| (*s).to_owned())
    .collect();
    let trivial = attack(loadtest, shop, options, &trivial_args, &dir.join("trivial"))?;
    println!(
        "    sold-out {:.0} req/s, /healthz {:.0} req/s",
        sold_out.requests_per_sec, trivial.requests_per_sec
    );
    Ok((sold_out, trivial))
}

/// Runs the load test against `shop`; its output goes to `<report>/loadtest.log`.
fn attack(
    loadtest: &Path,
    shop: &Shop,
    options: &ShopOptions,
    args: &[String],
    report: &Path,
) -> anyhow::Result<Run> {
    fs::create_dir_all(report).with_context(|| format!("creating {}", report.display()))?;
    let log = report.join("loadtest.log");
    let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(loadtest);
    cmd.args(["--target", &shop.urls.gateway])
        .args(args)
        .arg("--report-dir")
        .arg(report)
        .env("ADMIN_PASSWORD", &options.admin_password)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file));
    for url in shop.urls.stock.iter().map(|u| format!("{u}/metrics")) {
        cmd.args(["--scrape", &url]);
    }
    let status = cmd.status().context("running the load test")?;
    if status.code() == Some(2) || status.code().is_none() {
        bail!(
            "the load test could not run ({status}); the end of {}:\n{}",
            log.display(),
            shop::tail(&log)
        );
    }
    Run::read(report, status.code())
}

/// The comparison as markdown.
fn table(load: &Load, rows: &[(&Case, Run)], phase: Option<&(Run, Run)>) -> String {
    let base = rows
        .iter()
        .find(|(c, _)| c.strategy == "db-pessimistic")
        .map(|(_, r)| r.orders_per_sec)
        .filter(|v| *v > 0.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Flash sale through the gateway: {} units, {} buyers (no purchase limit, no rate limits), \
         {} per strategy; 2 order-services and 2 stock-services, release builds.\n",
        load.stock, load.users, load.run_time
    );
    let _ = writeln!(
        out,
        "| strategy | orders/s | × db-pessimistic | sold out after | p99 created | lock wait p99 | oversold | errors | verdict |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (case, run) in rows {
        let ratio = base.map_or_else(
            || "-".to_owned(),
            |b| format!("{:.2}", run.orders_per_sec / b),
        );
        let _ = writeln!(
            out,
            "| {} | {:.0} | {ratio} | {} | {} | {} | {} | {} | {} |",
            case.label,
            run.orders_per_sec,
            run.time_to_sell_out
                .map_or_else(|| "not sold out".to_owned(), |s| format!("{s:.1} s")),
            ms(run.created_p99_ms),
            ms(run.lock_wait_p99_ms),
            run.oversold,
            run.errors,
            if run.passed { "passed" } else { "FAILED" }
        );
    }
    if let Some((sold_out, trivial)) = phase {
        let ratio = if trivial.requests_per_sec > 0.0 {
            format!(
                "{:.2}",
                sold_out.requests_per_sec / trivial.requests_per_sec
            )
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            out,
            "\nSold-out phase (segmented S=8 shop, {} users for {} each): order requests on a \
             sold-out item {:.0} req/s (p99 {}) vs the gateway's own GET /healthz {:.0} req/s \
             (p99 {}): ratio {ratio}.",
            load.users,
            load.phase_time,
            sold_out.requests_per_sec,
            ms(sold_out.sold_out_p99_ms),
            trivial.requests_per_sec,
            ms(trivial.healthz_p99_ms),
        );
    }
    out
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"))
}

fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("segmented S=8 (default)"), "segmented-s-8-default");
        assert_eq!(slug("naive (control)"), "naive-control");
    }

    #[test]
    fn the_table_shows_ratios_to_db_pessimistic() {
        let load = Load {
            stock: 10,
            users: 2,
            run_time: "1s".into(),
            phase_time: "1s".into(),
        };
        let base = Run {
            orders_per_sec: 100.0,
            passed: true,
            ..Run::default()
        };
        let seg = Run {
            orders_per_sec: 150.0,
            passed: true,
            ..Run::default()
        };
        let rows = vec![(&CASES[0], base), (&CASES[5], seg)];
        let text = table(&load, &rows, None);
        assert!(
            text.contains("| segmented S=8 (default) | 150 | 1.50 |"),
            "{text}"
        );
        assert!(text.contains("| db-pessimistic | 100 | 1.00 |"), "{text}");
    }
}
