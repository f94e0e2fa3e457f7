//! `cargo xtask demo`: `up`, then a flash sale with the goose load test, the audit, the
//! verdict and the summary table; the shop stays up for the dashboard until Ctrl-C.

use std::fs;
use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;

use crate::services::Services;
use crate::shop::{self, Shop};
use crate::up::{self, ShopArgs, step};

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    shop: ShopArgs,
    /// Units of the flash-sale item (keep it below `--users`: each buyer may buy one).
    #[arg(long, default_value_t = 200)]
    stock: i64,
    /// Stock segments of the item.
    #[arg(long, default_value_t = 8)]
    segments: i32,
    /// Concurrent buyers, each a distinct user (the purchase limit is one unit per user).
    #[arg(long, default_value_t = 400)]
    users: usize,
    /// How long the load runs, e.g. 20s.
    #[arg(long, default_value = "20s")]
    run_time: String,
    /// Stop the shop after the verdict instead of waiting for Ctrl-C.
    #[arg(long)]
    no_wait: bool,
}

/// Steps of the demo, for the progress lines.
const STEPS: usize = 5;

/// Runs the demo; the exit code is the verdict's (failure when the audit failed).
pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    crate::catch_interrupts()?;
    let shop_args = &args.shop;
    step(
        1,
        STEPS,
        &format!(
            "building the shop and the load test ({})",
            shop_args.profile().as_str()
        ),
    );
    let binaries = shop::build(
        shop_args.profile(),
        &["stock-service", "order-service", "gateway", "loadtest"],
    )?;
    let loadtest = shop::binary(&binaries, "loadtest")?;
    step(2, STEPS, "finding Redis and PostgreSQL");
    let services = Services::acquire(shop_args.throwaway)?;
    let cluster = shop_args.redis_cluster()?;
    step(
        3,
        STEPS,
        "starting 2 stock-services, 2 order-services and the gateway",
    );
    let options = shop_args.options("demo", cluster.as_ref())?;
    let result = Shop::start(&services, &binaries, &options).and_then(|mut shop| {
        let code = sale(args, &shop, &loadtest)?;
        up::print_urls(&shop, shop_args);
        if args.no_wait || crate::interrupted() {
            println!("\nstopping the shop ...");
        } else {
            println!(
                "\nThe shop stays up: watch {}/dashboard, place orders, or run the load test again.\nCtrl-C stops everything.",
                shop.urls.gateway
            );
            up::wait_for_interrupt(&mut shop);
            println!("stopping the shop ...");
        }
        shop.stop();
        Ok(code)
    });
    services.shutdown();
    result
}

/// Seeds, attacks, audits (all by the load test) and prints the verdict and the summary.
fn sale(args: &DemoArgs, shop: &Shop, loadtest: &std::path::Path) -> anyhow::Result<ExitCode> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let sku = format!("demo-{stamp}");
    let report_dir = up::run_dir("demo")?.join("report");
    fs::create_dir_all(&report_dir)
        .with_context(|| format!("creating {}", report_dir.display()))?;
    let log = report_dir.join("loadtest.log");
    step(
        4,
        STEPS,
        &format!(
            "flash sale: {} units of {sku} in {} segments, {} buyers for {} (log: {})",
            args.stock,
            args.segments,
            args.users,
            args.run_time,
            log.display()
        ),
    );
    let mut child = start_loadtest(args, shop, loadtest, &sku, &report_dir, &log)?;

    let done = Arc::new(AtomicBool::new(false));
    let progress = {
        let done = Arc::clone(&done);
        // Straight from a stock-service: the gateway is busy with the sale (and rate-limits
        // anonymous readers).
        let url = format!("{}/stock/{sku}", shop.urls.stock[0]);
        let total = args.stock;
        thread::spawn(move || show_progress(&url, total, &done))
    };
    let status = child.wait().context("waiting for the load test")?;
    done.store(true, Ordering::SeqCst);
    let _ = progress.join();

    Ok(verdict(&report_dir, &log, status))
}

/// The load test against the shop's gateway, its output in `log`.
fn start_loadtest(
    args: &DemoArgs,
    shop: &Shop,
    loadtest: &std::path::Path,
    sku: &str,
    report_dir: &std::path::Path,
    log: &std::path::Path,
) -> anyhow::Result<std::process::Child> {
    let mut cmd = Command::new(loadtest);
    cmd.args(["--target", &shop.urls.gateway])
        .args(["--scenario", "flash-sale"])
        .args(["--sku", sku])
        .args(["--stock", &args.stock.to_string()])
        .args(["--segments", &args.segments.to_string()])
        .args(["--users", &args.users.to_string()])
        .args(["--run-time", &args.run_time])
        .args(["--settle", "5s"])
        .arg("--report-dir")
        .arg(report_dir)
        .env("ADMIN_PASSWORD", &args.shop.admin_password);
    for url in shop.urls.metrics() {
        cmd.args(["--scrape", &url]);
    }
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file));
    cmd.spawn().context("starting the load test")
}

/// Prints the summary and the verdict the load test's exit `status` gives.
fn verdict(
    report_dir: &std::path::Path,
    log: &std::path::Path,
    status: std::process::ExitStatus,
) -> ExitCode {
    step(5, STEPS, "verdict");
    let summary = report_dir.join("summary.md");
    match fs::read_to_string(&summary) {
        Ok(text) => println!("\n{text}"),
        Err(_) => println!("(no summary: see {})", log.display()),
    }
    println!(
        "reports: {} (goose report.html, report.json, summary.md, summary.json)",
        report_dir.display()
    );
    match status.code() {
        Some(0) => {
            println!("VERDICT: PASSED (no unit oversold, books balance)");
            ExitCode::SUCCESS
        }
        Some(1) => {
            println!("VERDICT: FAILED (see the checks above)");
            ExitCode::FAILURE
        }
        _ => {
            println!(
                "the load test could not run ({status}); the end of {}:\n{}",
                log.display(),
                shop::tail(log)
            );
            ExitCode::FAILURE
        }
    }
}

/// Prints one line per second with the units left, until `done`.
fn show_progress(url: &str, total: i64, done: &AtomicBool) {
    let started = Instant::now();
    let mut stdout = std::io::stdout();
    let mut left = "?".to_owned();
    while !done.load(Ordering::SeqCst) {
        // Under load an answer can be late; keep showing the last one.
        if let Some(a) = shop::http_json(url).and_then(|v| v["available"].as_i64()) {
            left = a.to_string();
        }
        let _ = write!(
            stdout,
            "\r      {:>5.1}s  units left {left:>6} of {total}   ",
            started.elapsed().as_secs_f64()
        );
        let _ = stdout.flush();
        thread::sleep(Duration::from_secs(1));
    }
    println!();
}
