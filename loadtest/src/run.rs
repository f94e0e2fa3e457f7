//! One run: check the target, seed the item, scrape, attack, settle, audit, judge, report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use goose::config::GooseConfiguration;
use goose::prelude::*;

use crate::options::{Options, ScenarioKind};
use crate::record::{LatencyStats, Outcome, Recorder};
use crate::scenarios::{self, Context};
use crate::scrape;
use crate::shop::{OrderAudit, Shop, ShopError};
use crate::summary::{self, Errors, GooseTotals, Summary, Throughput, Timing};
use crate::verdict::{self, Facts};

/// Why a run could not produce a verdict (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The options make no sense.
    #[error("invalid options: {0}")]
    Options(String),
    /// The shop did not answer or refused a step.
    #[error("{step}: {source}")]
    Shop {
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        #[source]
        source: ShopError,
    },
    /// Goose refused the configuration or failed.
    #[error("goose: {0}")]
    Goose(String),
    /// The report directory or a report could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn shop_step(step: &'static str) -> impl FnOnce(ShopError) -> RunError {
    move |source| RunError::Shop { step, source }
}

/// The outcome of a run that got as far as a verdict.
#[derive(Debug, Clone)]
pub struct Report {
    /// Everything `summary.json` holds.
    pub summary: Summary,
    /// `summary.md`.
    pub markdown: String,
}

/// Run the load test described by `options`.
pub async fn run(options: &Options) -> Result<Report, RunError> {
    options.validate().map_err(RunError::Options)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let user_prefix = format!("{}-{run_id}-", options.user_prefix);
    std::fs::create_dir_all(&options.report_dir).map_err(|source| RunError::Write {
        path: options.report_dir.clone(),
        source,
    })?;
    let (shop, admin) = prepare(options, &user_prefix).await?;
    tracing::info!(
        target = %options.target, sku = %options.sku, stock = options.stock,
        segments = options.segments, run = %run_id, "item seeded; attacking"
    );

    let before = scrape::scrape(&options.scrape, options.request_timeout).await;
    let recorder = Arc::new(Recorder::new());
    let ctx = Arc::new(context(options, &user_prefix, &recorder));
    let started_unix = unix_now();
    let attack_started = Instant::now();
    let reports = goose_reports(&options.report_dir);
    let metrics = attack(options, &ctx, &reports).await?;
    let attack_secs = attack_started.elapsed().as_secs_f64();

    // Let pending orders and stock releases settle (the order-service's worker finishes
    // what a timed-out request left).
    let settle_started = Instant::now();
    let order_audit = settle(&shop, &admin, options, &user_prefix).await?;
    let settle_secs = settle_started.elapsed().as_secs_f64();
    let stock_audit = shop
        .stock_audit(&options.sku)
        .await
        .map_err(shop_step("stock audit after the attack"))?;
    let after = scrape::scrape(&options.scrape, options.request_timeout).await;
    let service_metrics = scrape::summarize(&before, &after, &options.sku);

    let client = recorder.facts();
    let verdict = verdict::judge(&Facts {
        stock: options.stock,
        buyers: options.scenario.buys(),
        client_users_over_limit: recorder.users_over(limit_of(&order_audit)),
        client: client.clone(),
        stock_audit: stock_audit.clone(),
        order_audit: order_audit.clone(),
        max_error_rate: options.max_error_rate,
    });
    let time_to_sell_out = recorder.time_to_sell_out();
    let selling_window = recorder.selling_window();
    let (samples, by_kind) = recorder.errors();
    let latency = recorder.latencies();
    let paths = ReportPaths::new(&options.report_dir, &reports);
    let summary = Summary {
        schema: summary::SCHEMA,
        passed: verdict.passed,
        oversold: verdict.oversold,
        duplicates: verdict.duplicates,
        lock_wait_p99_ms: service_metrics.lock_wait_p99_ms,
        verdict,
        parameters: serde_json::to_value(options).unwrap_or_default(),
        run_id,
        user_prefix,
        timing: Timing {
            started_unix,
            attack_secs,
            time_to_sell_out_secs: time_to_sell_out,
            selling_window_secs: selling_window,
            settle_secs,
        },
        throughput: throughput(&latency, time_to_sell_out.or(selling_window), attack_secs),
        latency,
        client,
        stock_audit,
        order_audit,
        service_metrics,
        goose: goose_totals(&metrics),
        errors: Errors { by_kind, samples },
        reports: paths.all.clone(),
    };
    write_reports(summary, &paths)
}

/// The purchase limit the order-service reported (at least 1), to count users over it.
fn limit_of(order_audit: &OrderAudit) -> u64 {
    u64::try_from(order_audit.purchase_limit.max(1)).unwrap_or(1)
}

/// Seconds since the Unix epoch, as `summary.json` records the start.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Check the target, log in as admin, seed the item and make sure both audits answer
/// (an older order-service has none): the shop and the admin's token.
async fn prepare(options: &Options, user_prefix: &str) -> Result<(Shop, String), RunError> {
    let shop = Shop::new(&options.target, options.request_timeout)
        .map_err(shop_step("building the HTTP client"))?;
    shop.health()
        .await
        .map_err(shop_step("the target is not reachable"))?;
    let admin = shop
        .login("admin", Some(&options.admin_password))
        .await
        .map_err(shop_step(
            "admin login (check --admin-password / ADMIN_PASSWORD)",
        ))?;
    shop.seed(&admin, &options.sku, options.stock, options.segments)
        .await
        .map_err(shop_step("seeding the item (PUT /api/stock/{sku})"))?;
    shop.stock_audit(&options.sku)
        .await
        .map_err(shop_step("stock audit before the attack"))?;
    shop.order_audit(&admin, &options.sku, user_prefix)
        .await
        .map_err(shop_step("order audit before the attack"))?;
    Ok((shop, admin))
}

/// What every buyer of the attack shares.
fn context(options: &Options, user_prefix: &str, recorder: &Arc<Recorder>) -> Context {
    Context {
        sku: options.sku.clone(),
        user_prefix: user_prefix.to_owned(),
        retry_share: options.retry_share,
        pay_share: options.pay_share,
        cancel_share: options.cancel_share,
        recorder: Arc::clone(recorder),
    }
}

/// Orders per second of selling (until sold out, else the selling window, else the whole
/// attack), rejections and requests per second of the attack.
fn throughput(
    latency: &BTreeMap<Outcome, LatencyStats>,
    selling: Option<f64>,
    attack_secs: f64,
) -> Throughput {
    let count = |o: Outcome| latency.get(&o).map_or(0, |l| l.count);
    let rejections: u64 = Outcome::ALL
        .iter()
        .filter(|o| o.is_rejection())
        .map(|o| count(*o))
        .sum();
    let requests: u64 = latency.values().map(|l| l.count).sum();
    let selling = selling.filter(|s| *s > 0.0).unwrap_or(attack_secs);
    let per = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Throughput {
        orders_per_sec: per(count(Outcome::Created), selling),
        rejections_per_sec: per(rejections, attack_secs),
        requests_per_sec: per(requests, attack_secs),
    }
}

/// Where the run's reports go: goose's and the two summaries.
struct ReportPaths {
    summary_json: PathBuf,
    summary_md: PathBuf,
    /// Every report by name, as `summary.json` lists them.
    all: BTreeMap<String, String>,
}

impl ReportPaths {
    fn new(dir: &Path, goose: &[(&'static str, PathBuf)]) -> Self {
        let summary_json = dir.join("summary.json");
        let summary_md = dir.join("summary.md");
        let mut all: BTreeMap<String, String> = goose
            .iter()
            .map(|(k, p)| ((*k).to_owned(), p.display().to_string()))
            .collect();
        all.insert("summary_json".into(), summary_json.display().to_string());
        all.insert("summary_md".into(), summary_md.display().to_string());
        Self {
            summary_json,
            summary_md,
            all,
        }
    }
}

/// Write `summary.md` and `summary.json`; the report.
fn write_reports(summary: Summary, paths: &ReportPaths) -> Result<Report, RunError> {
    let markdown = summary::markdown(&summary);
    write(&paths.summary_md, markdown.as_bytes())?;
    let json = serde_json::to_vec_pretty(&summary).unwrap_or_default();
    write(&paths.summary_json, &json)?;
    Ok(Report { summary, markdown })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    std::fs::write(path, bytes).map_err(|source| RunError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Goose's report files in `dir`, by kind.
fn goose_reports(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("html", dir.join("report.html")),
        ("json", dir.join("report.json")),
        ("md", dir.join("report.md")),
    ]
}

/// Run goose.
async fn attack(
    options: &Options,
    ctx: &Arc<Context>,
    reports: &[(&'static str, PathBuf)],
) -> Result<GooseMetrics, RunError> {
    let goose = |e: GooseError| RunError::Goose(e.to_string());
    let mut config = GooseConfiguration::default();
    config.host = Some(options.target.clone());
    config.users = Some(options.users);
    config.increase_rate = Some(format!("{}", options.hatch_rate));
    // Goose takes whole seconds.
    config.run_time = Some(options.run_time.as_secs_f64().ceil().max(1.0).to_string());
    config.report_file = reports
        .iter()
        .map(|(_, p)| p.display().to_string())
        .collect();
    // Keep the start-up in the metrics: a flash sale is decided while users arrive.
    config.no_reset_metrics = true;
    config.no_print_metrics = !options.goose_metrics;
    config.no_telnet = true;
    config.quiet = 1;
    config.timeout = Some(format!("{}", options.request_timeout.as_secs_f64()));
    let wait = Duration::from_millis(options.think_ms);
    let with_wait = |s: Scenario| -> Result<Scenario, RunError> {
        if wait.is_zero() {
            Ok(s)
        } else {
            s.set_wait_time(wait, wait).map_err(goose)
        }
    };
    let mut attack = GooseAttack::initialize_with_config(config).map_err(goose)?;
    match options.scenario {
        ScenarioKind::FlashSale => {
            attack = attack.register_scenario(with_wait(scenarios::flash_sale(ctx))?);
        }
        ScenarioKind::Browse => {
            attack = attack.register_scenario(with_wait(scenarios::browse(ctx))?);
        }
        ScenarioKind::Trivial => {
            attack = attack.register_scenario(with_wait(scenarios::trivial(ctx))?);
        }
        ScenarioKind::Mix => {
            if options.buy_weight > 0 {
                let s = scenarios::flash_sale(ctx)
                    .set_weight(options.buy_weight)
                    .map_err(goose)?;
                attack = attack.register_scenario(with_wait(s)?);
            }
            if options.browse_weight > 0 {
                let s = scenarios::browse(ctx)
                    .set_weight(options.browse_weight)
                    .map_err(goose)?;
                attack = attack.register_scenario(with_wait(s)?);
            }
        }
    }
    attack.execute().await.map_err(goose)
}

/// Poll the order audit until nothing is pending and every cancelled order's stock is
/// back, or `--settle` passes; returns the last audit.
async fn settle(
    shop: &Shop,
    admin: &str,
    options: &Options,
    prefix: &str,
) -> Result<OrderAudit, RunError> {
    let deadline = Instant::now() + options.settle;
    loop {
        let audit = shop
            .order_audit(admin, &options.sku, prefix)
            .await
            .map_err(shop_step("order audit after the attack"))?;
        let settled = audit.orders.pending.count == 0 && audit.cancelled_unreleased.count == 0;
        if settled || Instant::now() >= deadline {
            if !settled {
                tracing::warn!(
                    pending = audit.orders.pending.count,
                    unreleased = audit.cancelled_unreleased.count,
                    "orders did not settle within --settle; auditing anyway"
                );
            }
            return Ok(audit);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn goose_totals(metrics: &GooseMetrics) -> GooseTotals {
    let (mut requests, mut failures) = (0u64, 0u64);
    for aggregate in metrics.requests.values() {
        requests += (aggregate.success_count + aggregate.fail_count) as u64;
        failures += aggregate.fail_count as u64;
    }
    GooseTotals {
        requests,
        failures,
        users: metrics.total_users as u64,
        duration_secs: metrics.duration as u64,
    }
}
