//! `cargo xtask chaos`: the shop under one real fault per scenario, then the books read straight
//! from PostgreSQL.
//!
//! For each scenario: a fresh native shop (2 stock-services, 2 order-services, the gateway, each
//! supervised as by `cargo xtask up`) on throwaway Redis and PostgreSQL; a flash sale through
//! the gateway (see [`buyers`]); the fault injected a moment into the sale; the recovery worker
//! given time to settle; then the audit ([`audit`]): no unit oversold, ledger = segments, every
//! live order holds stock and every deduction has a live order, nothing pending, the purchase
//! limit held, every client's last answer agreeing with the database. A table of the scenarios;
//! the exit code fails on any violation. docs/reliability.md has the table and what it shows.

mod audit;
mod buyers;
mod faults;
mod proxy;

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::json;

use crate::services::Services;
use crate::shop::{self, Profile, Shop, ShopOptions};
use faults::{Fault, Replicated};

/// The order-services' ownership lease in the chaos shop (short, so a pause outlives it).
const ORDER_LEASE_MS: &str = "3000";
/// The stock-services' lock lease in the chaos shop (fixed, short, so a pause outlives it).
const LOCK_LEASE_MS: &str = "2000";
/// When, into the sale, the fault is injected.
const FAULT_AFTER: Duration = Duration::from_millis(1000);
/// How long the shop gets to settle what the sale left pending.
const SETTLE: Duration = Duration::from_secs(40);
/// The purchase limit of the chaos shop.
const PURCHASE_LIMIT: i64 = 1;

/// Options of `cargo xtask chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Only the scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// The short list CI runs (no fault, a killed stock-service, a paused order-service,
    /// Redis restarted empty).
    #[arg(long)]
    quick: bool,
    /// Units of the item.
    #[arg(long, default_value_t = 600)]
    stock: i64,
    /// Buyers in the sale.
    #[arg(long, default_value_t = 1200)]
    buyers: usize,
    /// Build and run release binaries.
    #[arg(long)]
    release: bool,
    /// `STOCK_STRATEGY` of the stock-services (`naive` shows the audit failing).
    #[arg(long, default_value = "segmented")]
    strategy: String,
}

/// Every scenario, in the order of the table.
fn scenarios() -> Vec<Fault> {
    vec![
        Fault::None,
        Fault::Kill {
            process: "stock-service-1",
        },
        Fault::KillForGood {
            process: "stock-service-1",
        },
        Fault::Pause {
            process: "stock-service-1",
        },
        Fault::Kill {
            process: "order-service-1",
        },
        Fault::KillForGood {
            process: "order-service-1",
        },
        Fault::Pause {
            process: "order-service-1",
        },
        Fault::Kill { process: "gateway" },
        Fault::Pause { process: "gateway" },
        Fault::RedisFlush,
        Fault::RedisRestartedEmpty,
        Fault::PostgresRestarted,
        Fault::RedisFailover,
        Fault::RedlockMastersKilled,
    ]
}

/// The short list.
fn quick() -> Vec<Fault> {
    vec![
        Fault::None,
        Fault::Kill {
            process: "stock-service-1",
        },
        Fault::Pause {
            process: "order-service-1",
        },
        Fault::RedisRestartedEmpty,
    ]
}

/// One scenario's row.
struct Row {
    label: String,
    sold: i64,
    oversold: i64,
    wrong: usize,
    unanswered: usize,
    pending: i64,
    server_errors: usize,
    sale: Duration,
    sold_out_after: Option<Duration>,
    violations: Vec<String>,
}

/// Runs the scenarios and prints the table.
pub fn run(args: &ChaosArgs) -> anyhow::Result<ExitCode> {
    crate::catch_interrupts()?;
    let profile = if args.release {
        Profile::Release
    } else {
        Profile::Debug
    };
    let binaries = shop::build(profile, &["stock-service", "order-service", "gateway"])?;
    let mut services = Services::acquire(true)?;
    let list = if args.quick { quick() } else { scenarios() };
    let mut rows = Vec::new();
    for (i, fault) in list.into_iter().enumerate() {
        if args
            .only
            .as_deref()
            .is_some_and(|o| !fault.label().contains(o))
        {
            continue;
        }
        if crate::interrupted() {
            break;
        }
        println!("==> {}", fault.label());
        let row = scenario(args, &binaries, &mut services, i, fault)
            .with_context(|| format!("scenario {}", fault.label()))?;
        for v in &row.violations {
            println!("    VIOLATION: {v}");
        }
        rows.push(row);
    }
    services.shutdown();
    println!("\n{}", table(args, &rows));
    let failed = rows.iter().filter(|r| !r.violations.is_empty()).count();
    if failed > 0 {
        eprintln!("xtask chaos: {failed} scenario(s) broke an invariant");
        return Ok(ExitCode::FAILURE);
    }
    println!("xtask chaos: PASSED ({} scenarios)", rows.len());
    Ok(ExitCode::SUCCESS)
}

fn options(args: &ChaosArgs, n: usize, redis_url: Option<String>) -> anyhow::Result<ShopOptions> {
    let name = format!("chaos{n}");
    Ok(ShopOptions {
        gateway_port: 0,
        instances: 2,
        strategy: args.strategy.clone(),
        stock_env: vec![("LOCK_LEASE_MS".into(), LOCK_LEASE_MS.into())],
        order_env: vec![
            ("ORDER_LEASE_MS".into(), ORDER_LEASE_MS.into()),
            ("PURCHASE_LIMIT".into(), PURCHASE_LIMIT.to_string()),
        ],
        rate_limits: false,
        admin_password: "chaos-admin".into(),
        run_dir: crate::up::run_dir(&name)?,
        name,
        log_filter: "warn".into(),
        redis_url,
    })
}

/// What a fault needs besides the shop: a replicated Redis, RedLock masters.
struct Stage {
    replicated: Option<Replicated>,
    masters: Vec<testkit::RedisServer>,
}

impl Stage {
    fn for_fault(fault: Fault) -> anyhow::Result<Stage> {
        let replicated = if fault.needs_replica() {
            Some(Replicated::start()?)
        } else {
            None
        };
        let masters = (0..fault.redlock_masters())
            .map(|_| testkit::RedisServer::start())
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Stage {
            replicated,
            masters,
        })
    }

    /// The scenario's shop: on the replicated Redis when there is one, `redlock` over the
    /// masters when there are some.
    fn shop_options(&self, args: &ChaosArgs, n: usize) -> anyhow::Result<ShopOptions> {
        let mut options = options(args, n, self.replicated.as_ref().map(Replicated::url))?;
        if !self.masters.is_empty() {
            let urls: Vec<String> = self.masters.iter().map(testkit::RedisServer::url).collect();
            options.strategy = "redlock".into();
            options
                .stock_env
                .push(("REDLOCK_URLS".into(), urls.join(",")));
        }
        Ok(options)
    }
}

/// One scenario on a fresh shop.
fn scenario(
    args: &ChaosArgs,
    binaries: &std::collections::BTreeMap<String, std::path::PathBuf>,
    services: &mut Services,
    n: usize,
    fault: Fault,
) -> anyhow::Result<Row> {
    let mut stage = Stage::for_fault(fault)?;
    let options = stage.shop_options(args, n)?;
    let mut shop = Shop::start(services, binaries, &options)?;
    if let Some(name) = fault.keeps_dead() {
        shop.leave_dead(name);
    }
    let sku = format!("chaos-item-{n}");
    seed(
        &shop.urls.gateway,
        &options.admin_password,
        &sku,
        args.stock,
    )?;
    let sale = buyers::Sale {
        gateway: shop.urls.gateway.clone(),
        sku: sku.clone(),
        buyers: args.buyers,
        threads: 16,
        pace: Duration::from_millis(60),
        users: format!("chaos{n}"),
    };
    let (tally, sale_time) = sell_under(&mut shop, services, &mut stage, fault, &sale)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    settle(&mut shop, &runtime)?;
    let (stock_db, orders_db) = shop.database_urls();
    let findings = runtime.block_on(audit::audit(
        &stock_db,
        &orders_db,
        &sku,
        PURCHASE_LIMIT,
        &tally.keys,
    ))?;
    shop.stop();
    Ok(row(args, fault, &tally, findings, sale_time))
}

/// Run the sale on its threads while [`drive`] injects the fault; the clients' tally and how
/// long the sale took.
fn sell_under(
    shop: &mut Shop,
    services: &mut Services,
    stage: &mut Stage,
    fault: Fault,
    sale: &buyers::Sale,
) -> anyhow::Result<(buyers::Tally, Duration)> {
    thread::scope(|scope| {
        let started = Instant::now();
        let sold = scope.spawn(|| buyers::run(sale));
        let faulted = drive(
            shop,
            services,
            stage.replicated.as_mut(),
            &mut stage.masters,
            fault,
            started,
            || sold.is_finished(),
        );
        let tally = sold
            .join()
            .map_err(|_| anyhow::anyhow!("the sale panicked"))?;
        faulted?;
        Ok((tally, started.elapsed()))
    })
}

/// The scenario's row: the audit's findings, and a sale that never sold out counted as a
/// violation (with twice as many buyers as units, it did not run as intended and proves
/// nothing).
fn row(
    args: &ChaosArgs,
    fault: Fault,
    tally: &buyers::Tally,
    findings: audit::Findings,
    sale: Duration,
) -> Row {
    let mut violations = findings.violations;
    if args.buyers as i64 >= 2 * args.stock && tally.first_refusal.is_none() {
        violations.push(format!(
            "the item never sold out ({} of {} units held)",
            findings.held, args.stock
        ));
    }
    Row {
        label: fault.label(),
        sold: findings.held,
        oversold: findings.oversold,
        wrong: findings.wrong_answers,
        unanswered: findings.unanswered,
        pending: findings.pending,
        server_errors: tally.server_errors,
        sale,
        sold_out_after: tally.first_refusal,
        violations,
    }
}

/// While the sale runs: inject the fault at [`FAULT_AFTER`] (and end it when it lasts), and
/// keep the shop supervised (a killed process comes back after its back-off).
fn drive(
    shop: &mut Shop,
    services: &mut Services,
    mut replicated: Option<&mut Replicated>,
    masters: &mut [testkit::RedisServer],
    fault: Fault,
    started: Instant,
    done: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let mut injected = false;
    let mut ends_at: Option<Instant> = None;
    while !done() {
        if !injected && started.elapsed() >= FAULT_AFTER {
            fault.start(shop, services, replicated.as_deref_mut(), masters)?;
            injected = true;
            ends_at = fault.lasts().map(|d| Instant::now() + d);
        }
        if ends_at.is_some_and(|t| Instant::now() >= t) {
            fault.end(shop)?;
            ends_at = None;
        }
        supervise(shop);
        thread::sleep(Duration::from_millis(100));
    }
    if !injected {
        bail!(
            "the sale ended before the fault ({:?} in): make it longer",
            FAULT_AFTER
        );
    }
    if ends_at.is_some() {
        fault.end(shop)?;
    }
    Ok(())
}

fn supervise(shop: &mut Shop) {
    for event in shop.supervise() {
        println!("    {event}");
    }
}

/// Give the recovery worker time to settle what the fault left pending (until nothing is
/// pending, or [`SETTLE`]), supervising meanwhile.
fn settle(shop: &mut Shop, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let (_, orders_db) = shop.database_urls();
    let pool = runtime.block_on(sqlx::PgPool::connect(&orders_db))?;
    let deadline = Instant::now() + SETTLE;
    loop {
        let pending: i64 = runtime.block_on(
            sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = 'pending'")
                .fetch_one(&pool),
        )?;
        if pending == 0 || Instant::now() >= deadline {
            break;
        }
        supervise(shop);
        thread::sleep(Duration::from_millis(500));
    }
    runtime.block_on(pool.close());
    Ok(())
}

/// Stock the item through the gateway's admin API.
fn seed(gateway: &str, password: &str, sku: &str, stock: i64) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut login = agent
        .post(format!("{gateway}/api/login"))
        .header("content-type", "application/json")
        .send(json!({"user": "admin", "password": password}).to_string())?;
    let token: serde_json::Value = serde_json::from_str(&login.body_mut().read_to_string()?)?;
    let token = token["access_token"]
        .as_str()
        .context("admin login without a token")?;
    agent
        .put(format!("{gateway}/api/stock/{sku}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(json!({"total": stock, "segments": 8}).to_string())?;
    Ok(())
}

/// The table of the scenarios (markdown).
fn table(args: &ChaosArgs, rows: &[Row]) -> String {
    let mut out = format!(
        "Chaos, strategy {}: {} units, {} buyers through the gateway (a fifth of the keys sent twice, a tenth \
         of the buyers trying a second key over the limit of {PURCHASE_LIMIT}, half the orders \
         paid, a tenth cancelled), one fault {:.1} s into the sale, then up to {} s to settle.\n\n",
        args.strategy,
        args.stock,
        args.buyers,
        FAULT_AFTER.as_secs_f64(),
        SETTLE.as_secs()
    );
    out.push_str(
        "| scenario | held | oversold | wrong answers | unanswered | pending | 5xx seen | first sold-out | sale | verdict |\n",
    );
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s | {} |\n",
            r.label,
            r.sold,
            r.oversold,
            r.wrong,
            r.unanswered,
            r.pending,
            r.server_errors,
            r.sold_out_after
                .map_or("—".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            r.sale.as_secs_f64(),
            if r.violations.is_empty() {
                "passed"
            } else {
                "FAILED"
            }
        ));
    }
    out
}
