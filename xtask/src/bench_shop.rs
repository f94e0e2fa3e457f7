//! `cargo xtask bench shop`: the goose flash sale through the whole shop (gateway, two
//! order-services, two stock-services, release builds), once per strategy and for
//! `segmented` with S = 1, 4, 8 and 16 segments, and the default with grouping off
//! (`STOCK_BATCH_MAX` and `ORDER_BATCH_MAX` 1), in one run; then the sold-out phase against
//! the raw gateway. Prints the comparison as ratios to `db-pessimistic` and to the machine's
//! hot-row anchor, measured before each round.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;
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
    /// Group deduction and grouped claims and settles on (the default), or off
    /// (`STOCK_BATCH_MAX` and `ORDER_BATCH_MAX` 1) for the same-run comparison.
    grouped: bool,
}

/// The cases, the baseline first. Every item has 8 segments except the S sweep.
const CASES: &[Case] = &[
    Case {
        label: "db-pessimistic",
        strategy: "db-pessimistic",
        segments: 8,
        grouped: true,
    },
    Case {
        label: "db-optimistic",
        strategy: "db-optimistic",
        segments: 8,
        grouped: true,
    },
    Case {
        label: "redis-lock",
        strategy: "redis-lock",
        segments: 8,
        grouped: true,
    },
    Case {
        label: "segmented S=1",
        strategy: "segmented",
        segments: 1,
        grouped: true,
    },
    Case {
        label: "segmented S=4",
        strategy: "segmented",
        segments: 4,
        grouped: true,
    },
    Case {
        label: "segmented S=8 (default)",
        strategy: "segmented",
        segments: 8,
        grouped: true,
    },
    Case {
        label: "segmented S=8, no grouping",
        strategy: "segmented",
        segments: 8,
        grouped: false,
    },
    Case {
        label: "segmented S=16",
        strategy: "segmented",
        segments: 16,
        grouped: true,
    },
    Case {
        label: "redlock (3 masters)",
        strategy: "redlock",
        segments: 8,
        grouped: true,
    },
    Case {
        label: "redis-atomic",
        strategy: "redis-atomic",
        segments: 8,
        grouped: true,
    },
    Case {
        label: "naive (control)",
        strategy: "naive",
        segments: 8,
        grouped: true,
    },
];

/// Load parameters, from `BENCH_SHOP_*` variables (documented in docs/strategies.md).
struct Load {
    stock: u64,
    users: u64,
    run_time: String,
    phase_time: String,
    phase_pairs: usize,
    rounds: usize,
    only: Option<String>,
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
            run_time: var("BENCH_SHOP_RUN_TIME", "12s"),
            phase_time: var("BENCH_SHOP_PHASE_TIME", "10s"),
            phase_pairs: var("BENCH_SHOP_PHASE_PAIRS", "3")
                .parse::<usize>()
                .context("BENCH_SHOP_PHASE_PAIRS must be a number")?
                .max(1),
            rounds: var("BENCH_SHOP_ROUNDS", "3")
                .parse()
                .context("BENCH_SHOP_ROUNDS must be a number")?,
            only: std::env::var("BENCH_SHOP_ONLY")
                .ok()
                .filter(|v| !v.trim().is_empty()),
        })
    }
}

/// What one load-test run reported (from its `summary.json`).
#[derive(Debug, Default, Clone)]
struct Run {
    exit: Option<i32>,
    /// Whether the load test wrote a summary (false: it could not run).
    summary: bool,
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
            summary: true,
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
    let loadtest = shop::binary(&binaries, "loadtest")?;
    let dir = crate::up::run_dir("bench-shop")?;
    let (masters, redlock_urls) = redlock_masters()?;

    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| load.only.as_deref().is_none_or(|o| c.label.contains(o)))
        .collect();
    let mut rows: Vec<(&Case, Vec<Run>)> = cases.iter().map(|c| (*c, Vec::new())).collect();
    let mut phase: Option<Vec<(Run, Run)>> = None;
    let mut anchors = Vec::new();
    for round in 1..=load.rounds {
        let anchor = hot_row_anchor(services)?;
        println!("==> round {round}/{}: hot-row anchor {anchor}", load.rounds);
        anchors.push(anchor.tx_per_s);
        for (i, (case, runs)) in rows.iter_mut().enumerate() {
            if crate::interrupted() {
                break;
            }
            println!(
                "==> round {round}/{}, [{}/{}] {}",
                load.rounds,
                i + 1,
                cases.len(),
                case.label
            );
            let mut options = shop_options(case, &dir, i)?;
            if case.strategy == "redlock" {
                options
                    .stock_env
                    .push(("REDLOCK_URLS".into(), redlock_urls.clone()));
            }
            let shop = Shop::start(services, &binaries, &options)?;
            let report = dir.join(format!("r{round}-{:02}-{}", i + 1, slug(case.label)));
            let sku = format!("bench-{}-{round}-{}", std::process::id(), i + 1);
            let run = attack(
                &loadtest,
                &shop,
                &options,
                &sale_args(&load, case, &sku),
                &report,
            )?;
            println!(
                "    {:.0} orders/s, p99 created {}, oversold {}, verdict {}",
                run.orders_per_sec,
                ms(run.created_p99_ms),
                run.oversold,
                verdict(&run)
            );
            if round == 1 && case.label.ends_with("(default)") && !crate::interrupted() {
                phase = Some(sold_out_phase(&load, &loadtest, &shop, &options, &dir)?);
            }
            shop.stop();
            runs.push(run);
        }
    }
    let steps = verdicts(&rows, phase.as_deref());
    drop(masters);
    let table = table(&load, &rows, &anchors, phase.as_deref());
    println!("\n{table}");
    let path = dir.join("comparison.md");
    fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(steps)
}

/// RedLock needs its own independent masters: three throwaway redis-servers and their URLs
/// as `REDLOCK_URLS` takes them.
fn redlock_masters() -> anyhow::Result<(Vec<RedisServer>, String)> {
    let masters = (0..3)
        .map(|_| RedisServer::start())
        .collect::<anyhow::Result<Vec<_>>>()
        .context("starting three throwaway redis-servers for redlock")?;
    let urls = masters
        .iter()
        .map(RedisServer::url)
        .collect::<Vec<_>>()
        .join(",");
    Ok((masters, urls))
}

/// The machine's hot-row anchor (`testkit::anchor`) on the shop's PostgreSQL, in the bench's
/// own database: one unit per transaction on one row, 16 clients, 3 s.
fn hot_row_anchor(services: &Services) -> anyhow::Result<testkit::anchor::HotRow> {
    let runtime = tokio::runtime::Runtime::new().context("starting a runtime for the anchor")?;
    runtime
        .block_on(async {
            let url = testkit::database("seckill_bench").await?;
            testkit::anchor::hot_row(&url, 16, std::time::Duration::from_secs(3)).await
        })
        .with_context(|| format!("hot-row anchor on {}", services.database_url))
}

/// The bench's steps: each case passed when every sale of it passed its verdict (the negative
/// control when it failed), and the sold-out phase when both halves ran.
fn verdicts(rows: &[(&Case, Vec<Run>)], phase: Option<&[(Run, Run)]>) -> Vec<(String, Outcome)> {
    let mut steps = Vec::new();
    for (case, runs) in rows {
        // The negative control is expected to fail its audit; everything else to pass.
        let expected = |r: &Run| {
            r.summary
                && if case.strategy == "naive" {
                    !r.passed
                } else {
                    r.passed
                }
        };
        let outcome = if runs.is_empty() {
            Outcome::Skipped("interrupted")
        } else if runs.iter().all(expected) {
            Outcome::Passed
        } else {
            Outcome::Failed(runs.iter().find(|r| !expected(r)).and_then(|r| r.exit))
        };
        steps.push((case.label.to_owned(), outcome));
    }
    if let Some(pairs) = phase {
        let failed = pairs
            .iter()
            .find(|(sold_out, trivial)| !(sold_out.passed && trivial.passed));
        steps.push((
            "sold-out phase".to_owned(),
            match failed {
                None => Outcome::Passed,
                Some((sold_out, _)) => Outcome::Failed(sold_out.exit),
            },
        ));
    }
    steps
}

fn shop_options(case: &Case, dir: &Path, i: usize) -> anyhow::Result<ShopOptions> {
    // Every buyer keeps buying: the run measures the strategy, not user churn.
    let mut order_env = vec![("PURCHASE_LIMIT".into(), "1000000".into())];
    let mut stock_env = Vec::new();
    if !case.grouped {
        stock_env.push(("STOCK_BATCH_MAX".into(), "1".into()));
        order_env.push(("ORDER_BATCH_MAX".into(), "1".into()));
    }
    Ok(ShopOptions {
        gateway_port: 0,
        instances: 2,
        strategy: case.strategy.to_owned(),
        stock_env,
        order_env,
        rate_limits: false,
        admin_password: "bench-admin-password".into(),
        name: "bench".into(),
        run_dir: dir.join(format!("shop-{:02}", i + 1)),
        log_filter: "warn".into(),
        redis_url: None,
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
/// from the fast paths) against the gateway's own `/healthz`, same users, same shop, in
/// `phase_pairs` alternating pairs, so that drift of a shared machine falls on both halves.
fn sold_out_phase(
    load: &Load,
    loadtest: &Path,
    shop: &Shop,
    options: &ShopOptions,
    dir: &Path,
) -> anyhow::Result<Vec<(Run, Run)>> {
    println!(
        "==> sold-out phase: order requests on a sold-out item vs GET /healthz on the gateway, \
         {} alternating pair(s)",
        load.phase_pairs
    );
    let mut pairs = Vec::new();
    for pair in 1..=load.phase_pairs {
        if crate::interrupted() {
            break;
        }
        let dir = dir.join(format!("sold-out-phase-{pair}"));
        pairs.push(sold_out_pair(load, loadtest, shop, options, &dir, pair)?);
    }
    Ok(pairs)
}

/// One pair of the sold-out phase: the sold-out half, then the `/healthz` half.
fn sold_out_pair(
    load: &Load,
    loadtest: &Path,
    shop: &Shop,
    options: &ShopOptions,
    dir: &Path,
    pair: usize,
) -> anyhow::Result<(Run, Run)> {
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
    let sku = format!("bench-{}-soldout-{pair}", std::process::id());
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
    if matches!(status.code(), Some(0 | 1))
        && let Ok(run) = Run::read(report, status.code())
    {
        return Ok(run);
    }
    eprintln!(
        "xtask: the load test could not run ({status}); the end of {}:\n{}",
        log.display(),
        shop::tail(&log)
    );
    Ok(Run {
        exit: status.code(),
        ..Run::default()
    })
}

fn verdict(run: &Run) -> &'static str {
    match (run.summary, run.passed) {
        (false, _) => "could not run",
        (true, true) => "passed",
        (true, false) => "FAILED",
    }
}

/// The comparison as markdown: per case the median over the rounds (and the range), orders/s
/// also as a ratio to `db-pessimistic` and to the hot-row anchor of the same round
/// (`anchors`, tx/s, one per round).
fn table(
    load: &Load,
    rows: &[(&Case, Vec<Run>)],
    anchors: &[f64],
    phase: Option<&[(Run, Run)]>,
) -> String {
    let base: Option<&Vec<Run>> = rows
        .iter()
        .find(|(c, _)| c.strategy == "db-pessimistic")
        .map(|(_, r)| r);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Flash sale through the gateway: {} units, {} buyers (no purchase limit, no rate limits), \
         {} per sale; 2 order-services and 2 stock-services, release builds; {} round(s), \
         medians (range). Hot-row anchor (one unit per transaction on one row, 16 clients, \
         same PostgreSQL, measured before each round): {} tx/s.\n",
        load.stock,
        load.users,
        load.run_time,
        load.rounds,
        spread(anchors.to_vec(), 0, "")
    );
    let _ = writeln!(
        out,
        "| strategy | S | orders/s | × db-pessimistic | × hot-row anchor | sold out after | p99 created | lock wait p99 | oversold | errors | verdicts |"
    );
    let _ = writeln!(out, "|---|--:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (case, runs) in rows {
        out.push_str(&table_row(case, runs, base, anchors));
    }
    if let Some(phase) = phase {
        out.push_str(&sold_out_phase_line(load, phase));
    }
    out
}

/// One case's row of the table.
fn table_row(case: &Case, runs: &[Run], base: Option<&Vec<Run>>, anchors: &[f64]) -> String {
    let mut line = String::new();
    let ok: Vec<&Run> = runs.iter().filter(|r| r.summary).collect();
    let ratios: Vec<f64> = base.map_or_else(Vec::new, |base| {
        runs.iter()
            .zip(base)
            .filter(|(r, b)| r.summary && b.summary && b.orders_per_sec > 0.0)
            .map(|(r, b)| r.orders_per_sec / b.orders_per_sec)
            .collect()
    });
    let to_anchor: Vec<f64> = runs
        .iter()
        .zip(anchors)
        .filter(|(r, a)| r.summary && **a > 0.0)
        .map(|(r, a)| r.orders_per_sec / a)
        .collect();
    let passed = ok.iter().filter(|r| r.passed).count();
    let not_run = match runs.len() - ok.len() {
        0 => String::new(),
        n => format!(", {n} could not run"),
    };
    let _ = writeln!(
        line,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {passed} passed, {} failed{not_run} |",
        case.label,
        case.segments,
        spread(ok.iter().map(|r| r.orders_per_sec).collect(), 0, ""),
        spread(ratios, 2, ""),
        spread(to_anchor, 2, ""),
        spread(
            ok.iter().filter_map(|r| r.time_to_sell_out).collect(),
            1,
            " s"
        ),
        spread(
            ok.iter().filter_map(|r| r.created_p99_ms).collect(),
            0,
            " ms"
        ),
        spread(
            ok.iter().filter_map(|r| r.lock_wait_p99_ms).collect(),
            0,
            " ms"
        ),
        ok.iter().map(|r| r.oversold).max().unwrap_or(0),
        ok.iter().map(|r| r.errors).sum::<u64>(),
        ok.len() - passed,
    );
    line
}

/// The sold-out phase's line: rejections through the gateway against its own `/healthz`,
/// medians (range) over the pairs; the ratio is taken within each pair.
fn sold_out_phase_line(load: &Load, pairs: &[(Run, Run)]) -> String {
    let mut line = String::new();
    let of = |f: fn(&(Run, Run)) -> Option<f64>| pairs.iter().filter_map(f).collect::<Vec<_>>();
    let ratios =
        of(|(s, t)| (t.requests_per_sec > 0.0).then(|| s.requests_per_sec / t.requests_per_sec));
    let _ = writeln!(
        line,
        "\nSold-out phase (segmented S=8 shop, {} users, {} alternating pair(s) of {} each): \
         order requests on a sold-out item {} req/s (p99 {} ms) vs the gateway's own GET \
         /healthz {} req/s (p99 {} ms): ratio {}.",
        load.users,
        pairs.len(),
        load.phase_time,
        spread(of(|(s, _)| Some(s.requests_per_sec)), 0, ""),
        spread(of(|(s, _)| s.sold_out_p99_ms), 0, ""),
        spread(of(|(_, t)| Some(t.requests_per_sec)), 0, ""),
        spread(of(|(_, t)| t.healthz_p99_ms), 0, ""),
        spread(ratios, 2, ""),
    );
    line
}

/// `median (min–max)` of `values` with `decimals` and `unit`; `-` when empty.
fn spread(mut values: Vec<f64>, decimals: usize, unit: &str) -> String {
    if values.is_empty() {
        return "-".to_owned();
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    if n == 1 {
        format!("{median:.decimals$}{unit}")
    } else {
        format!(
            "{median:.decimals$}{unit} ({:.decimals$}–{:.decimals$})",
            values[0],
            values[n - 1]
        )
    }
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
    fn the_table_shows_medians_and_ratios_to_db_pessimistic_per_round() {
        let load = Load {
            stock: 10,
            users: 2,
            run_time: "1s".into(),
            phase_time: "1s".into(),
            phase_pairs: 1,
            rounds: 2,
            only: None,
        };
        let run = |v: f64| Run {
            orders_per_sec: v,
            passed: true,
            summary: true,
            ..Run::default()
        };
        let rows = vec![
            (&CASES[0], vec![run(100.0), run(200.0)]),
            (&CASES[5], vec![run(150.0), run(200.0)]),
        ];
        let text = table(&load, &rows, &[50.0, 100.0], None);
        assert!(
            text.contains("| segmented S=8 (default) | 8 | 175 (150–200) | 1.25 (1.00–1.50) |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| db-pessimistic | 8 | 150 (100–200) | 1.00 (1.00–1.00) | 2.00 (2.00–2.00) |"
            ),
            "the ratio to each round's anchor: {text}"
        );
        assert!(
            text.contains("| db-pessimistic | 8 | 150 (100–200) | 1.00 (1.00–1.00) |"),
            "{text}"
        );
        assert!(text.contains("2 passed, 0 failed"), "{text}");
    }

    #[test]
    fn spread_is_median_and_range() {
        assert_eq!(spread(vec![], 0, ""), "-");
        assert_eq!(spread(vec![3.0], 1, " s"), "3.0 s");
        assert_eq!(spread(vec![5.0, 1.0, 3.0], 0, " ms"), "3 ms (1–5)");
    }
}
