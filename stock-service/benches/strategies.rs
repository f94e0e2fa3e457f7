//! Sell out the same item once per deduction strategy, under the same load, and compare.
//!
//! For each strategy in turn: start `BENCH_INSTANCES` in-process stock-service instances with
//! that strategy (each with its own pool, lock client and cache, like separate processes would
//! have), stock a fresh item, fire `BENCH_BUYERS` deductions of one unit over real HTTP, round
//! robin across the instances with `BENCH_CONCURRENCY` requests in flight, then ask the audit
//! whether the books balance. One markdown table row per strategy; docs/strategies.md explains
//! how to read it.
//!
//! This is a plain binary (`harness = false`), not a criterion benchmark: what it measures is
//! the throughput of one concurrent sell-out (units sold over the time until the last unit
//! went) and the latency distribution of the thousands of requests inside it. Neither is a
//! per-iteration time that running a closure many times and fitting statistics to it would
//! make more precise: one sell-out is one sample, and only as a whole. `BENCH_ROUNDS` repeats
//! the whole comparison instead, interleaved, and reports medians and ranges.
//!
//! The load generator and every instance share one tokio runtime (a worker per CPU), and
//! PostgreSQL and Redis usually run on the same machine: the numbers compare the strategies
//! with each other on that machine, they are not capacity figures.
//!
//! Settings (environment):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `REDIS_URL` | `redis://127.0.0.1:6379/` | Redis for locks, fences and the cache |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/postgres` | the server; the bench uses its own database `seckill_bench` there |
//! | `BENCH_STOCK` | 10000 | units per item |
//! | `BENCH_SEGMENTS` | 8 | segments per item |
//! | `BENCH_BUYERS` | 3 × stock | deduction requests per strategy |
//! | `BENCH_CONCURRENCY` | 64 | requests in flight |
//! | `BENCH_INSTANCES` | 2 | service instances per strategy |
//! | `BENCH_RMW_DELAY_MS` | 0 | the services' `RMW_DELAY_MS` |
//! | `BENCH_STRATEGIES` | all seven | comma-separated `STOCK_STRATEGY` values |
//! | `BENCH_CLUSTER` | `segmented,redis-atomic` | of those, the ones also run on a throwaway 3-master Redis Cluster (empty: none) |
//! | `BENCH_SEGMENT_SWEEP` | `1,4,16` | extra `segmented` runs with these segment counts (empty: none) |
//! | `BENCH_ROUNDS` | 1 | sell-outs per strategy, interleaved; the table shows medians and ranges |
//! | `BENCH_BATCH_MAX` | 64 | the services' `STOCK_BATCH_MAX` (group deduction) |
//! | `BENCH_COMBINING_OFF` | true | also run each strategy that combines (all but `naive`) with `STOCK_BATCH_MAX=1` |
//! | `BENCH_ANCHOR_CLIENTS` | 16 | clients of the hot-row anchor |
//! | `BENCH_LONE_ROUNDS` | 3 | lone-request comparisons (combining on vs off; 0: none) |
//!
//! Before the strategies, the hot-row anchor (`testkit::anchor`) measures what one PostgreSQL
//! row takes at one unit per transaction on this machine; the table shows every rate as a
//! ratio to it.
//!
//! Exit status: non-zero when any strategy other than `naive` oversold or failed its audit, or
//! a run could not be done at all. `naive` oversells by design; its numbers are reported only.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use futures_util::StreamExt as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{
    Aggregation, InMemoryMetricExporter, InMemoryMetricExporterBuilder, Instrument,
    SdkMeterProvider, Stream, Temporality,
};
use serde_json::{Value, json};
use service_kit::config::Env;
use stock_service::{Stock, StockConfig, Strategy};
use testkit::RedisServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The engine's lock-wait histogram (see `stock_service::metrics`).
const LOCK_WAIT: &str = "stock.lock.wait.duration";
/// The bench's own database on the configured PostgreSQL server.
const DATABASE: &str = "seckill_bench";
/// Pool size per instance: 2 instances × 8 = 16 connections on a 2-core server.
const DB_MAX_CONNECTIONS: &str = "8";
/// Long enough that no deduction gives up waiting for a lock: every run must sell out.
const LOCK_WAIT_MS: &str = "60000";
/// Deductions of one lone-request sale.
const LONE_REQUESTS: i64 = 300;
/// How long the hot-row anchor runs.
const ANCHOR_DURATION: Duration = Duration::from_secs(3);
/// How many unexpected answers to print per run.
const ERROR_SAMPLES: usize = 3;

/// The service's own allocator (see `src/main.rs`), so that the bench measures what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    // `cargo bench` passes `--bench` (and any filter); this binary takes its settings from the
    // environment, so command-line arguments are ignored.
    let opts = Options::from_env()?;
    let meter = LockWaitMeter::install();
    let database_url = prepare_database().await?;

    println!("{}", opts.describe());
    println!("{}", machine(&database_url, &opts.redis_url).await);
    println!();

    let masters = redlock_masters(&opts)?;
    let cluster = redis_cluster(&opts)?;
    let bench = Bench {
        opts: &opts,
        database_url: &database_url,
        cluster_url: cluster.as_ref().map(testkit::RedisCluster::url),
        redlock_urls: masters
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(","),
        meter: &meter,
    };
    bench.warm_up().await;
    // The machine's physical anchor, in the same run: every rate is also shown as a ratio to it.
    let anchor = testkit::anchor::hot_row(&database_url, opts.anchor_clients, ANCHOR_DURATION)
        .await
        .context("measuring the hot-row anchor")?;
    println!("Hot-row anchor: {anchor}.");
    if opts.lone_rounds > 0 {
        bench.lone_request().await;
    }
    let results = bench.rounds().await;
    drop(masters);
    drop(cluster);

    let rows: Vec<(&Run, Row)> = opts
        .runs
        .iter()
        .zip(&results)
        .map(|(run, rs)| (run, Row::new(rs)))
        .collect();
    println!("{}", table(&rows, opts.rounds, anchor.tx_per_s));
    println!("At the end: {}.", load_average());
    Ok(if report_failures(&opts.runs, &results) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Three throwaway RedLock masters when a `redlock` run is on the list.
fn redlock_masters(opts: &Options) -> anyhow::Result<Vec<RedisServer>> {
    if !opts.runs.iter().any(|r| r.strategy == Strategy::Redlock) {
        return Ok(Vec::new());
    }
    let servers = (0..3)
        .map(|_| RedisServer::start())
        .collect::<anyhow::Result<Vec<_>>>()
        .context("starting 3 throwaway redis-servers for RedLock")?;
    eprintln!(
        "redlock: 3 throwaway masters on ports {}",
        servers
            .iter()
            .map(|s| s.port().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(servers)
}

/// A throwaway 3-master Redis Cluster when a run is on the list that needs one.
fn redis_cluster(opts: &Options) -> anyhow::Result<Option<testkit::RedisCluster>> {
    if !opts.runs.iter().any(|r| r.cluster) {
        return Ok(None);
    }
    let cluster = testkit::RedisCluster::start(3).context("starting a 3-master Redis Cluster")?;
    eprintln!("cluster: 3 throwaway masters at {}", cluster.url());
    Ok(Some(cluster))
}

/// What every sell-out of one bench run shares.
struct Bench<'a> {
    opts: &'a Options,
    database_url: &'a str,
    /// The 3-master cluster's `REDIS_URL`, when a run needs it.
    cluster_url: Option<String>,
    redlock_urls: String,
    meter: &'a LockWaitMeter,
}

impl Bench<'_> {
    async fn sell_out(&self, opts: &Options, run: &Run) -> anyhow::Result<Measured> {
        let redis_url = match (&self.cluster_url, run.cluster) {
            (Some(url), true) => url.as_str(),
            (None, true) => anyhow::bail!("no Redis Cluster for {}", run.label),
            (_, false) => opts.redis_url.as_str(),
        };
        let shared = Shared {
            database_url: self.database_url,
            redis_url,
            redlock_urls: &self.redlock_urls,
            meter: self.meter,
        };
        sell_out(opts, run, &shared).await
    }

    /// One unmeasured small sell-out first: warms PostgreSQL's caches, the HTTP stack and the
    /// allocator, so that the first strategy measured is not the one that pays for it.
    async fn warm_up(&self) {
        let Some(first) = self.opts.runs.first() else {
            return;
        };
        let warm = Run {
            label: format!("{} (warm-up)", first.label),
            ..first.clone()
        };
        let stock = (self.opts.stock / 10).max(50);
        let warm_opts = Options {
            stock,
            buyers: usize::try_from(stock * 3).unwrap_or(self.opts.buyers),
            ..self.opts.clone()
        };
        match self.sell_out(&warm_opts, &warm).await {
            Ok(r) => eprintln!(
                "{}: {} sold in {:.2} s, discarded",
                warm.label,
                r.sold(),
                r.sell_out.as_secs_f64()
            ),
            Err(e) => eprintln!("{}: failed: {e:#}", warm.label),
        }
    }

    /// A lone request, one buyer and no contention, with combining on and off: `segmented`, one
    /// instance, one request in flight, `LONE_REQUESTS` sales per sale, on and off alternated
    /// `lone_rounds` times; the medians of the rounds' p50s, and their ratio.
    async fn lone_request(&self) {
        let opts = Options {
            stock: LONE_REQUESTS,
            buyers: usize::try_from(LONE_REQUESTS).unwrap_or(0),
            concurrency: 1,
            instances: 1,
            ..self.opts.clone()
        };
        let run = |batch_max| Run {
            label: format!("lone request, STOCK_BATCH_MAX={batch_max}"),
            strategy: Strategy::Segmented,
            segments: self.opts.segments,
            batch_max,
            cluster: false,
        };
        let (on, off) = (run(self.opts.batch_max), run(1));
        let (mut p50_on, mut p50_off) = (Vec::new(), Vec::new());
        for _ in 0..self.opts.lone_rounds {
            for (r, p50s) in [(&on, &mut p50_on), (&off, &mut p50_off)] {
                let mut ok = match self.sell_out(&opts, r).await {
                    Ok(m) => m.ok,
                    Err(e) => {
                        eprintln!("{}: failed: {e:#}", r.label);
                        continue;
                    }
                };
                ok.sort_unstable();
                if let Some(p50) = quantile(&ok, 0.5) {
                    p50s.push(p50.as_secs_f64() * 1000.0);
                }
            }
        }
        let (on_ms, off_ms) = (median(&mut p50_on), median(&mut p50_off));
        println!(
            "Lone request (segmented, one instance, one request in flight, {LONE_REQUESTS} \
             sequential deductions, median of {} alternated rounds): p50 {on_ms:.3} ms with \
             combining (STOCK_BATCH_MAX {}), {off_ms:.3} ms without; ratio {:.3}.",
            self.opts.lone_rounds,
            self.opts.batch_max,
            if off_ms > 0.0 { on_ms / off_ms } else { 0.0 }
        );
    }

    /// Every run, `rounds` times. Rounds interleave the runs (each round starting one further
    /// along the list), so that a burst of other work on the machine does not land on one
    /// strategy only. Results by run, in list order.
    async fn rounds(&self) -> Vec<Vec<anyhow::Result<Measured>>> {
        let opts = self.opts;
        let mut results: Vec<Vec<anyhow::Result<Measured>>> =
            opts.runs.iter().map(|_| Vec::new()).collect();
        for round in 0..opts.rounds {
            for k in 0..opts.runs.len() {
                let i = (k + round) % opts.runs.len();
                let (Some(run), Some(slot)) = (opts.runs.get(i), results.get_mut(i)) else {
                    continue;
                };
                let r = self.sell_out(opts, run).await;
                let prefix = if opts.rounds > 1 {
                    format!("round {}/{}, {}", round + 1, opts.rounds, run.label)
                } else {
                    run.label.clone()
                };
                progress(&prefix, &r);
                slot.push(r);
            }
        }
        results
    }
}

/// One line on stderr per sell-out.
fn progress(prefix: &str, r: &anyhow::Result<Measured>) {
    match r {
        Ok(m) => eprintln!(
            "{prefix}: {} sold in {:.2} s, {} rejected, {} errors, audit {}",
            m.sold(),
            m.sell_out.as_secs_f64(),
            m.rejected.len(),
            m.errors,
            if m.audit_ok { "ok" } else { "NOT ok" }
        ),
        Err(e) => eprintln!("{prefix}: failed: {e:#}"),
    }
}

/// Print what went wrong: runs that could not be done, unexpected answers, and any safe
/// strategy that oversold or failed its audit. True when the bench must fail.
fn report_failures(runs: &[Run], results: &[Vec<anyhow::Result<Measured>>]) -> bool {
    let mut failed = false;
    for (run, rs) in runs.iter().zip(results) {
        for r in rs {
            match r {
                Err(e) => {
                    failed = true;
                    println!("FAILED {}: {e:#}", run.label);
                }
                Ok(m) => {
                    for sample in &m.error_samples {
                        println!("{}: unexpected answer: {sample}", run.label);
                    }
                    if run.strategy != Strategy::Naive && (m.oversold != 0 || !m.audit_ok) {
                        failed = true;
                        println!(
                            "FAILED {}: oversold {}, audit {}: {}",
                            run.label,
                            m.oversold,
                            if m.audit_ok { "ok" } else { "NOT ok" },
                            m.audit_problems
                        );
                    }
                }
            }
        }
    }
    failed
}

/// One sell-out to run.
#[derive(Debug, Clone)]
struct Run {
    label: String,
    strategy: Strategy,
    segments: i32,
    /// The instances' `STOCK_BATCH_MAX` (1: no combining).
    batch_max: usize,
    /// On the throwaway 3-master Redis Cluster instead of the one Redis.
    cluster: bool,
}

/// The bench's settings.
#[derive(Debug, Clone)]
struct Options {
    redis_url: String,
    stock: i64,
    buyers: usize,
    concurrency: usize,
    instances: usize,
    rmw_delay_ms: u64,
    segments: i32,
    rounds: usize,
    batch_max: usize,
    anchor_clients: usize,
    lone_rounds: usize,
    runs: Vec<Run>,
}

/// The comma-separated strategies in `name` (`default` when unset; set but empty: none).
fn strategy_list(name: &str, default: &str) -> anyhow::Result<Vec<Strategy>> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "none")
        .map(|s| s.parse::<Strategy>().map_err(|e| anyhow!("{name}: {e}")))
        .collect()
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_or<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match env_var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e| anyhow!("{name}={v:?}: {e}")),
    }
}

impl Options {
    fn from_env() -> anyhow::Result<Self> {
        let stock: i64 = env_or("BENCH_STOCK", 10_000)?;
        let segments: i32 = env_or("BENCH_SEGMENTS", 8)?;
        let buyers: usize = env_or("BENCH_BUYERS", usize::try_from(stock * 3).unwrap_or(0))?;
        let concurrency: usize = env_or("BENCH_CONCURRENCY", 64)?;
        let instances: usize = env_or("BENCH_INSTANCES", 2)?;
        let rounds: usize = env_or("BENCH_ROUNDS", 1)?;
        ensure!(stock > 0, "BENCH_STOCK must be positive");
        ensure!(segments > 0, "BENCH_SEGMENTS must be positive");
        ensure!(buyers > 0, "BENCH_BUYERS must be positive");
        ensure!(concurrency > 0, "BENCH_CONCURRENCY must be positive");
        ensure!(instances > 0, "BENCH_INSTANCES must be positive");
        ensure!(rounds > 0, "BENCH_ROUNDS must be positive");
        let strategies: Vec<Strategy> = match env_var("BENCH_STRATEGIES") {
            None => Strategy::ALL.to_vec(),
            Some(_) => strategy_list("BENCH_STRATEGIES", "")?,
        };
        // Unset: the default sweep; set but empty (or `none`): no sweep.
        let sweep: Vec<i32> = std::env::var("BENCH_SEGMENT_SWEEP")
            .unwrap_or_else(|_| "1,4,16".to_owned())
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "none")
            .map(|s| {
                s.parse::<i32>()
                    .map_err(|e| anyhow!("BENCH_SEGMENT_SWEEP: {s:?}: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let batch_max: usize = env_or("BENCH_BATCH_MAX", 64)?;
        ensure!(batch_max > 0, "BENCH_BATCH_MAX must be positive");
        let compare_off = env_or("BENCH_COMBINING_OFF", true)?;
        let mut runs: Vec<Run> = Vec::new();
        for &strategy in &strategies {
            runs.push(Run {
                label: strategy.as_str().to_owned(),
                strategy,
                segments,
                batch_max,
                cluster: false,
            });
            if compare_off && batch_max > 1 && strategy.combines() {
                runs.push(Run {
                    label: format!("{strategy}, no combining"),
                    strategy,
                    segments,
                    batch_max: 1,
                    cluster: false,
                });
            }
        }
        // The Redis-bound strategies again on a 3-master cluster, in the same run.
        let on_cluster = strategy_list("BENCH_CLUSTER", "segmented,redis-atomic")?;
        for &strategy in strategies.iter().filter(|s| on_cluster.contains(s)) {
            runs.push(Run {
                label: format!("{strategy}, 3-master cluster"),
                strategy,
                segments,
                batch_max,
                cluster: true,
            });
        }
        if strategies.contains(&Strategy::Segmented) {
            runs.extend(sweep.into_iter().filter(|&s| s != segments).map(|s| Run {
                label: format!("segmented, S = {s}"),
                strategy: Strategy::Segmented,
                segments: s,
                batch_max,
                cluster: false,
            }));
        }
        Ok(Options {
            redis_url: testkit::redis_url(),
            stock,
            buyers,
            concurrency,
            instances,
            rmw_delay_ms: env_or("BENCH_RMW_DELAY_MS", 0)?,
            segments,
            rounds,
            batch_max,
            anchor_clients: env_or("BENCH_ANCHOR_CLIENTS", 16)?,
            lone_rounds: env_or("BENCH_LONE_ROUNDS", 3)?,
            runs,
        })
    }

    fn describe(&self) -> String {
        format!(
            "Load: stock {} over {} segments (S), {} buyers (qty 1), {} in flight, {} instances, \
             RMW_DELAY_MS {}, DB_MAX_CONNECTIONS {DB_MAX_CONNECTIONS} per instance, \
             LOCK_WAIT_MS {LOCK_WAIT_MS}, STOCK_BATCH_MAX {} (rows marked `no combining`: 1), \
             other settings at their defaults; {} round{}.",
            self.stock,
            self.segments,
            self.buyers,
            self.concurrency,
            self.instances,
            self.rmw_delay_ms,
            self.batch_max,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" }
        )
    }
}

/// `seckill_bench` on the configured server (created if missing, like the tests' database),
/// migrated, without the items of earlier runs (older than an hour, so that a concurrent run is
/// left alone); its URL.
async fn prepare_database() -> anyhow::Result<String> {
    let url = testkit::database(DATABASE).await?;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    stock_service::store::MIGRATOR
        .run(&pool)
        .await
        .context("migrations")?;
    sqlx::query("DELETE FROM stock_movements WHERE created_at < now() - interval '1 hour'")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM items WHERE updated_at < now() - interval '1 hour'")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(url)
}

/// CPU count and model, PostgreSQL and Redis versions.
async fn machine(database_url: &str, redis_url: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(String::new, |kb| {
            format!(", {:.0} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    let postgres = async {
        let pool = sqlx::PgPool::connect(database_url).await.ok()?;
        let v: Option<String> = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await
            .ok();
        pool.close().await;
        v
    }
    .await
    .unwrap_or_else(|| "?".into());
    let redis = async {
        let client = redis::Client::open(redis_url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
    }
    .await
    .unwrap_or_else(|| "?".into());
    format!(
        "Machine: {cpus} CPUs ({model}{memory}); PostgreSQL {postgres}; Redis {redis}; \
         services, load generator, PostgreSQL and Redis all on this machine; {}.",
        load_average()
    )
}

/// The 1-minute load average (other work on the machine skews the numbers; this says how
/// much there was).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .map_or_else(
            || "load average unknown".into(),
            |l| format!("load average {l}"),
        )
}

/// The OpenTelemetry pipeline that collects the engine's lock-wait histogram: a global meter
/// provider with an in-memory exporter (delta temporality, so each run reads only its own
/// measurements) and a view that replaces the instrument's coarse buckets (powers of two) with
/// 5 % wide ones.
struct LockWaitMeter {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

/// Bucket boundaries from 10 µs to ~2 min, each 5 % above the previous one.
fn fine_boundaries() -> Vec<f64> {
    std::iter::successors(Some(1e-5_f64), |b| Some(b * 1.05))
        .take_while(|&b| b < 120.0)
        .collect()
}

impl LockWaitMeter {
    fn install() -> Self {
        let exporter = InMemoryMetricExporterBuilder::new()
            .with_temporality(Temporality::Delta)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .with_view(|i: &Instrument| {
                if i.name() != LOCK_WAIT {
                    return None;
                }
                Stream::builder()
                    .with_aggregation(Aggregation::ExplicitBucketHistogram {
                        boundaries: fine_boundaries(),
                        record_min_max: true,
                    })
                    .build()
                    .ok()
            })
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        LockWaitMeter { provider, exporter }
    }

    /// Forget everything recorded so far.
    fn reset(&self) -> anyhow::Result<()> {
        self.provider.force_flush().context("metrics flush")?;
        self.exporter.reset();
        Ok(())
    }

    /// Lock waits recorded since the last reset: (histogram of all waits, timed-out waits).
    fn take(&self) -> anyhow::Result<(Option<Hist>, u64)> {
        self.provider.force_flush().context("metrics flush")?;
        let exported = self
            .exporter
            .get_finished_metrics()
            .context("reading metrics")?;
        self.exporter.reset();
        let mut hist: Option<Hist> = None;
        let mut timeouts = 0;
        for rm in &exported {
            for sm in rm.scope_metrics() {
                for m in sm.metrics().filter(|m| m.name() == LOCK_WAIT) {
                    let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() else {
                        continue;
                    };
                    for dp in h.data_points() {
                        if dp
                            .attributes()
                            .any(|kv| kv.key.as_str() == "acquired" && kv.value.as_str() == "false")
                        {
                            timeouts += dp.count();
                        }
                        let bounds: Vec<f64> = dp.bounds().collect();
                        let counts: Vec<u64> = dp.bucket_counts().collect();
                        let h = hist.get_or_insert_with(|| Hist {
                            counts: vec![0; counts.len()],
                            bounds,
                            max: 0.0,
                        });
                        ensure!(h.counts.len() == counts.len(), "histogram buckets changed");
                        for (total, c) in h.counts.iter_mut().zip(counts) {
                            *total += c;
                        }
                        h.max = h.max.max(dp.max().unwrap_or(0.0));
                    }
                }
            }
        }
        Ok((hist.filter(|h| h.counts.iter().sum::<u64>() > 0), timeouts))
    }
}

/// An explicit-bucket histogram merged over data points.
#[derive(Clone)]
struct Hist {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    max: f64,
}

impl Hist {
    fn merge(&mut self, other: &Hist) {
        for (total, c) in self.counts.iter_mut().zip(&other.counts) {
            *total += c;
        }
        self.max = self.max.max(other.max);
    }

    /// Upper bound of the bucket holding the `q` quantile (at most 5 % above the true value),
    /// capped by the largest value recorded.
    fn quantile(&self, q: f64) -> Duration {
        let n: u64 = self.counts.iter().sum();
        let rank = ((q * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = self.bounds.get(i).copied().unwrap_or(self.max);
                return Duration::from_secs_f64(upper.min(self.max).max(0.0));
            }
        }
        Duration::from_secs_f64(self.max.max(0.0))
    }
}

/// A service instance served on a loopback port.
struct Instance {
    addr: SocketAddr,
    stock: Stock,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), service_kit::server::ServeError>>,
}

impl Instance {
    async fn start(vars: &[(&str, String)]) -> anyhow::Result<Self> {
        let config = StockConfig::from_source(&Env::from_pairs(vars.iter().cloned()))
            .context("instance configuration")?;
        let stock = stock_service::connect(config).await?;
        let listener = service_kit::server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service_kit::server::serve_listener(
            listener,
            stock_service::app(stock.clone()),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Instance {
            addr,
            stock,
            stop: Some(stop),
            task,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
        self.stock.pool.close().await;
    }
}

/// How one request ended.
enum Answer {
    Sold,
    Rejected,
    Error(String),
}

/// What one sell-out measured.
struct Measured {
    /// Latencies of successful deductions.
    ok: Vec<Duration>,
    /// Latencies of sold-out rejections (409).
    rejected: Vec<Duration>,
    errors: usize,
    error_samples: Vec<String>,
    /// From the first request to the last successful answer.
    sell_out: Duration,
    lock_wait: Option<Hist>,
    lock_timeouts: u64,
    oversold: i64,
    audit_ok: bool,
    audit_problems: String,
}

impl Measured {
    fn sold(&self) -> usize {
        self.ok.len()
    }

    fn sold_per_s(&self) -> f64 {
        if self.sell_out.is_zero() {
            0.0
        } else {
            self.sold() as f64 / self.sell_out.as_secs_f64()
        }
    }
}

/// One table row: a strategy's rounds combined. Throughput is the median over rounds (with
/// the range), latency quantiles are over the requests of all rounds, oversold is the worst
/// round.
struct Row {
    rounds: usize,
    failed_rounds: usize,
    sold: f64,
    sold_per_s: f64,
    sold_per_s_range: (f64, f64),
    p50_ok: Option<Duration>,
    p99_ok: Option<Duration>,
    p99_rejected: Option<Duration>,
    lock_wait_p99: Option<Duration>,
    lock_timeouts: u64,
    oversold: i64,
    audits_failed: usize,
    errors: usize,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values.get(n / 2).copied().unwrap_or(0.0),
        _ => {
            let a = values.get(n / 2 - 1).copied().unwrap_or(0.0);
            let b = values.get(n / 2).copied().unwrap_or(0.0);
            (a + b) / 2.0
        }
    }
}

impl Row {
    fn new(rounds: &[anyhow::Result<Measured>]) -> Self {
        let done: Vec<&Measured> = rounds.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut rates: Vec<f64> = done.iter().map(|m| m.sold_per_s()).collect();
        let mut sold: Vec<f64> = done.iter().map(|m| m.sold() as f64).collect();
        let mut ok: Vec<Duration> = done.iter().flat_map(|m| m.ok.iter().copied()).collect();
        let mut rejected: Vec<Duration> = done
            .iter()
            .flat_map(|m| m.rejected.iter().copied())
            .collect();
        ok.sort_unstable();
        rejected.sort_unstable();
        let mut lock_wait: Option<Hist> = None;
        for h in done.iter().filter_map(|m| m.lock_wait.as_ref()) {
            match &mut lock_wait {
                None => lock_wait = Some(h.clone()),
                Some(total) => total.merge(h),
            }
        }
        let range = rates.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), &r| {
            (lo.min(r), hi.max(r))
        });
        Row {
            rounds: rounds.len(),
            failed_rounds: rounds.len() - done.len(),
            sold: median(&mut sold),
            sold_per_s: median(&mut rates),
            sold_per_s_range: range,
            p50_ok: quantile(&ok, 0.50),
            p99_ok: quantile(&ok, 0.99),
            p99_rejected: quantile(&rejected, 0.99),
            lock_wait_p99: lock_wait.map(|h| h.quantile(0.99)),
            lock_timeouts: done.iter().map(|m| m.lock_timeouts).sum(),
            oversold: done.iter().map(|m| m.oversold).max().unwrap_or(0),
            audits_failed: done.iter().filter(|m| !m.audit_ok).count(),
            errors: done.iter().map(|m| m.errors).sum(),
        }
    }
}

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

/// Where one sell-out's instances connect, and the meter of their lock waits.
struct Shared<'a> {
    database_url: &'a str,
    redis_url: &'a str,
    redlock_urls: &'a str,
    meter: &'a LockWaitMeter,
}

async fn sell_out(opts: &Options, run: &Run, shared: &Shared<'_>) -> anyhow::Result<Measured> {
    let Shared {
        database_url,
        redis_url,
        redlock_urls,
        meter,
    } = *shared;
    let mut vars: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("REDIS_URL", redis_url.to_owned()),
        ("BIND_ADDR", "127.0.0.1:0".into()),
        ("STOCK_STRATEGY", run.strategy.as_str().to_owned()),
        ("STOCK_BATCH_MAX", run.batch_max.to_string()),
        ("DB_MAX_CONNECTIONS", DB_MAX_CONNECTIONS.into()),
        ("LOCK_WAIT_MS", LOCK_WAIT_MS.into()),
        ("RMW_DELAY_MS", opts.rmw_delay_ms.to_string()),
        // Own Redis keys and event channel, apart from the tests' `stock:*`.
        ("STOCK_KEY_PREFIX", "bench".into()),
    ];
    if run.strategy == Strategy::Redlock {
        ensure!(!redlock_urls.is_empty(), "no RedLock masters");
        vars.push(("REDLOCK_URLS", redlock_urls.to_owned()));
    }
    let mut instances = Vec::with_capacity(opts.instances);
    for _ in 0..opts.instances {
        match Instance::start(&vars).await {
            Ok(i) => instances.push(i),
            Err(e) => {
                for i in instances {
                    i.stop().await;
                }
                return Err(e.context(format!("starting a {} instance", run.strategy)));
            }
        }
    }
    let result = measure(opts, run, &instances, meter).await;
    for i in instances {
        i.stop().await;
    }
    result
}

async fn measure(
    opts: &Options,
    run: &Run,
    instances: &[Instance],
    meter: &LockWaitMeter,
) -> anyhow::Result<Measured> {
    let first = instances.first().context("no instance")?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(opts.concurrency)
        .build()?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let sku = format!("bench-{}-s{}-{}", run.strategy, run.segments, &tag[..12]);
    let r = http
        .put(first.url(&format!("/stock/{sku}")))
        .json(&json!({"total": opts.stock, "segments": run.segments}))
        .send()
        .await?;
    let status = r.status();
    ensure!(
        status.is_success(),
        "PUT /stock/{sku}: {status} {}",
        r.text().await.unwrap_or_default()
    );
    meter.reset()?;

    let urls: Vec<String> = instances
        .iter()
        .map(|i| i.url(&format!("/stock/{sku}/deductions")))
        .collect();
    let started = Instant::now();
    let answers: Vec<(Answer, Duration, Instant)> = futures_util::stream::iter(0..opts.buyers)
        .map(|k| {
            let http = http.clone();
            let url = urls.get(k % urls.len()).cloned().unwrap_or_default();
            let order_id = format!("bench-{tag}-{k}");
            async move {
                let sent = Instant::now();
                let answer = match http
                    .post(url)
                    .json(&json!({"order_id": order_id, "qty": 1}))
                    .send()
                    .await
                {
                    Err(e) => Answer::Error(format!("request failed: {e}")),
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.bytes().await;
                        match (status, body) {
                            (200, Ok(_)) => Answer::Sold,
                            (409, Ok(_)) => Answer::Rejected,
                            (s, Ok(b)) => {
                                Answer::Error(format!("{s} {}", String::from_utf8_lossy(&b)))
                            }
                            (s, Err(e)) => Answer::Error(format!("{s}, body lost: {e}")),
                        }
                    }
                };
                let done = Instant::now();
                (answer, done - sent, done)
            }
        })
        .buffer_unordered(opts.concurrency)
        .collect()
        .await;

    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    let mut error_samples = Vec::new();
    let mut errors = 0;
    let mut last_sale = started;
    for (answer, latency, done) in answers {
        match answer {
            Answer::Sold => {
                ok.push(latency);
                last_sale = last_sale.max(done);
            }
            Answer::Rejected => rejected.push(latency),
            Answer::Error(e) => {
                errors += 1;
                if error_samples.len() < ERROR_SAMPLES {
                    error_samples.push(e);
                }
            }
        }
    }
    let (lock_wait, lock_timeouts) = meter.take()?;

    let r = http
        .get(first.url(&format!("/stock/{sku}/audit")))
        .send()
        .await?;
    ensure!(r.status().is_success(), "audit: {}", r.status());
    let audit: Value = r.json().await?;
    let oversold = audit["oversold"]
        .as_i64()
        .context("audit without `oversold`")?;
    let audit_ok = audit["ok"].as_bool().context("audit without `ok`")?;
    let audit_problems = audit["problems"].to_string();

    Ok(Measured {
        ok,
        rejected,
        errors,
        error_samples,
        sell_out: last_sale - started,
        lock_wait,
        lock_timeouts,
        oversold,
        audit_ok,
        audit_problems,
    })
}

fn ms(d: Option<Duration>) -> String {
    match d {
        None => "—".into(),
        Some(d) => {
            let ms = d.as_secs_f64() * 1000.0;
            if ms < 10.0 {
                format!("{ms:.2}")
            } else {
                format!("{ms:.1}")
            }
        }
    }
}

/// The results as a markdown table; rates also as a ratio to the hot-row `anchor` (tx/s).
fn table(rows: &[(&Run, Row)], rounds: usize, anchor: f64) -> String {
    let range_head = if rounds > 1 { " sold/s range |" } else { "" };
    let range_rule = if rounds > 1 { "--:|" } else { "" };
    let mut out = format!(
        "| strategy | S | sold | sold/s |{range_head} × hot-row anchor | p50 ok ms \
         | p99 ok ms | p99 rejection ms | lock wait p99 ms | oversold | audit | errors |\n\
         |---|--:|--:|--:|{range_rule}--:|--:|--:|--:|--:|--:|---|--:|\n",
    );
    for (run, row) in rows {
        if row.failed_rounds == row.rounds {
            let _ = writeln!(
                out,
                "| {} | {} | failed |{}",
                run.label,
                run.segments,
                " |".repeat(if rounds > 1 { 10 } else { 9 })
            );
            continue;
        }
        let ratio = if anchor > 0.0 {
            format!("{:.2}", row.sold_per_s / anchor)
        } else {
            "—".into()
        };
        let range = if rounds > 1 {
            format!(
                " {:.0}–{:.0} |",
                row.sold_per_s_range.0, row.sold_per_s_range.1
            )
        } else {
            String::new()
        };
        let lock = match row.lock_timeouts {
            0 => ms(row.lock_wait_p99),
            t => format!("{} ({t} timed out)", ms(row.lock_wait_p99)),
        };
        let mut audit = if row.audits_failed == 0 {
            "ok".to_owned()
        } else if rounds > 1 {
            format!("NOT ok ({} of {})", row.audits_failed, row.rounds)
        } else {
            "NOT ok".to_owned()
        };
        if row.failed_rounds > 0 {
            audit.push_str(&format!(", {} rounds failed", row.failed_rounds));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} |{range} {ratio} | {} | {} | {} | {lock} | {} | {audit} | {} |",
            run.label,
            run.segments,
            row.sold,
            row.sold_per_s,
            ms(row.p50_ok),
            ms(row.p99_ok),
            ms(row.p99_rejected),
            row.oversold,
            row.errors
        );
    }
    out
}
