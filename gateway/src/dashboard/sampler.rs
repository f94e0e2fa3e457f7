//! The dashboard's sampler: every `sample_interval_ms`, read the gateway's request counters,
//! scrape `GET /metrics` on every upstream of every pool (concurrently, each bounded by a
//! timeout and a size limit), turn cumulative values into per-interval points, keep
//! `history_secs` of them and publish the JSON the page reads.
//!
//! A scrape that fails (refused, timeout, non-2xx, unparsable) only marks that upstream as
//! failing in the data; the others still count, and the stock levels it reported before are
//! kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{Method, Request, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::stats::{self, Buckets};
use super::{RequestCounts, prom};
use crate::config::UpstreamUrl;
use crate::runtime::{HttpClient, Runtime};
use crate::state::WeakGateway;

/// Path scraped on every upstream.
pub(crate) const METRICS_PATH: &str = "/metrics";
/// Largest `/metrics` page read.
const MAX_SCRAPE_BYTES: usize = 4 * 1024 * 1024;
/// Stock series kept (SKU × segment); more are left out, the data says so.
const MAX_STOCK_SERIES: usize = 64;
/// Lock-wait series kept (strategy, strategy × segment).
const MAX_LOCK_SERIES: usize = 64;

const LOCK_WAIT_BUCKET: &str = "stock_lock_wait_duration_seconds_bucket";
const STOCK_AVAILABLE: &str = "stock_available";
const STOCK_OVERSOLD: &str = "stock_oversold_units";

/// Runs until the gateway is dropped.
pub(crate) async fn run(weak: WeakGateway) {
    let mut sampler = Sampler::default();
    let mut next = Instant::now();
    loop {
        let Some(gateway) = weak.upgrade() else {
            return;
        };
        let runtime = gateway.runtime();
        let settings = runtime.file.dashboard.clone();
        let interval = settings.sample_interval();
        // A scrape must end before the next sample is due.
        let timeout = runtime
            .file
            .upstreams
            .health_check_timeout()
            .min(interval.mul_f64(0.8));
        let targets = targets(&runtime);
        let client = runtime.client.clone();
        let dashboard = Arc::clone(gateway.dashboard());
        drop(runtime);
        drop(gateway);

        let counts = dashboard.counters().snapshot();
        let scrapes = scrape_all(&client, targets, timeout).await;
        sampler.record(Instant::now(), unix_now(), counts, scrapes);
        sampler.trim(Duration::from_secs(settings.history_secs));
        dashboard.publish(sampler.render(settings.sample_interval_ms, settings.history_secs));

        next += interval;
        let now = Instant::now();
        if next < now {
            // Late (a slow scrape, a paused process): start afresh instead of catching up.
            next = now + interval;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Every upstream of the configuration, with the pools listing it.
fn targets(runtime: &Runtime) -> Vec<(String, Vec<String>)> {
    runtime
        .upstreams
        .iter()
        .map(|upstream| {
            let pools = runtime
                .file
                .pools
                .iter()
                .filter(|(_, urls)| {
                    urls.iter().any(|raw| {
                        UpstreamUrl::parse(raw).is_ok_and(|url| url.base == upstream.base)
                    })
                })
                .map(|(name, _)| name.clone())
                .collect();
            (upstream.base.clone(), pools)
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Why a scrape failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScrapeError {
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// Connection refused, reset, …
    #[error("unreachable: {0}")]
    Transport(String),
    /// A status other than 2xx.
    #[error("HTTP {0}")]
    Status(u16),
    /// The body could not be read or was too large.
    #[error("unreadable body: {0}")]
    Body(String),
    /// The body is not the Prometheus text format.
    #[error("not Prometheus text: {0}")]
    Parse(#[from] prom::ParseError),
}

/// The outcome of scraping one upstream.
#[derive(Debug)]
pub(crate) struct Scraped {
    /// The upstream's base URL.
    pub(crate) base: String,
    /// The pools listing it.
    pub(crate) pools: Vec<String>,
    /// The `/metrics` page, or why there is none.
    pub(crate) result: Result<String, ScrapeError>,
}

/// Scrapes every `(base URL, pools)` concurrently; results in the same order.
pub(crate) async fn scrape_all(
    client: &HttpClient,
    targets: Vec<(String, Vec<String>)>,
    timeout: Duration,
) -> Vec<Scraped> {
    let mut tasks = JoinSet::new();
    for (index, (base, _)) in targets.iter().enumerate() {
        let client = client.clone();
        let url = format!("{base}{METRICS_PATH}");
        tasks.spawn(async move {
            let result = tokio::time::timeout(timeout, scrape(&client, &url))
                .await
                .unwrap_or(Err(ScrapeError::Timeout));
            (index, result)
        });
    }
    let mut results: Vec<Option<Result<String, ScrapeError>>> = vec![None; targets.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, result)) = joined
            && let Some(slot) = results.get_mut(index)
        {
            *slot = Some(result);
        }
    }
    targets
        .into_iter()
        .zip(results)
        .map(|((base, pools), result)| Scraped {
            base,
            pools,
            result: result.unwrap_or_else(|| Err(ScrapeError::Transport("task failed".into()))),
        })
        .collect()
}

async fn scrape(client: &HttpClient, url: &str) -> Result<String, ScrapeError> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(url)
        .header(header::ACCEPT, "text/plain")
        .header(header::USER_AGENT, "seckill-gateway-dashboard")
        .body(Full::new(Bytes::new()))
        .map_err(|e| ScrapeError::Transport(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| ScrapeError::Transport(crate::proxy::error_chain(&e)))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_SCRAPE_BYTES)
        .collect()
        .await
        .map_err(|e| ScrapeError::Body(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(ScrapeError::Status(status.as_u16()));
    }
    String::from_utf8(body.to_vec()).map_err(|e| ScrapeError::Body(e.to_string()))
}

/// A lock-wait series: a strategy, and a segment when the exporter labels one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct LockKey {
    strategy: String,
    segment: Option<String>,
}

/// A stock series: a SKU and (normally) a segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct StockKey {
    sku: String,
    segment: Option<String>,
}

/// Lock-wait quantiles of one interval, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Quantiles {
    p50: Option<f64>,
    p99: Option<f64>,
    count: f64,
}

/// Requests per second by class over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Qps {
    success: f64,
    conflict: f64,
    rate_limited: f64,
    server_error: f64,
    other: f64,
}

/// One sample.
#[derive(Debug, Clone)]
struct Point {
    /// Unix time, seconds.
    at: f64,
    /// `None` for the first sample (no interval yet).
    qps: Option<Qps>,
    lock_wait: BTreeMap<LockKey, Quantiles>,
    stock: BTreeMap<StockKey, f64>,
    /// Sum over SKUs; `None` when no upstream could be scraped.
    oversold: Option<f64>,
}

/// What the sampler remembers of one upstream between samples.
#[derive(Debug, Default)]
struct Instance {
    lock_wait: HashMap<LockKey, Buckets>,
    stock: HashMap<StockKey, f64>,
}

/// The state of the latest sample that is not a time series.
#[derive(Debug, Default)]
struct Latest {
    upstreams: Vec<UpstreamStatus>,
    oversold_by_sku: BTreeMap<String, f64>,
    oversold_exported: bool,
    stock_series_dropped: bool,
}

/// Turns readings into points and points into JSON.
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    history: VecDeque<Point>,
    previous_counts: Option<(Instant, RequestCounts)>,
    instances: HashMap<String, Instance>,
    stock: BTreeMap<StockKey, f64>,
    latest: Latest,
}

/// What one sampling round gathers over the instances' readings.
#[derive(Default)]
struct Round {
    lock_deltas: BTreeMap<LockKey, Buckets>,
    oversold_by_sku: BTreeMap<String, f64>,
    oversold_exported: bool,
    any_ok: bool,
}

/// p50, p99 and count of each lock-wait series' deltas (at most [`MAX_LOCK_SERIES`]).
fn quantiles(lock_deltas: BTreeMap<LockKey, Buckets>) -> BTreeMap<LockKey, Quantiles> {
    lock_deltas
        .into_iter()
        .take(MAX_LOCK_SERIES)
        .map(|(key, buckets)| {
            let quantiles = Quantiles {
                p50: stats::quantile(0.5, &buckets),
                p99: stats::quantile(0.99, &buckets),
                count: stats::total(&buckets),
            };
            (key, quantiles)
        })
        .collect()
}

impl Sampler {
    /// Adds a point from the counters read at `now` (unix time `at`) and the scrapes.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        at: f64,
        counts: RequestCounts,
        scrapes: Vec<Scraped>,
    ) {
        let qps = self.qps(now, counts);
        self.instances
            .retain(|base, _| scrapes.iter().any(|s| s.base == *base));
        let mut round = Round::default();
        let mut upstreams = Vec::with_capacity(scrapes.len());
        for Scraped {
            base,
            pools,
            result,
        } in scrapes
        {
            let parsed = result.and_then(|text| {
                let samples = prom::parse(&text)?;
                Ok(Reading::from_samples(&samples))
            });
            let error = match parsed {
                Ok(reading) => {
                    self.absorb(&base, reading, &mut round);
                    None
                }
                Err(error) => Some(error.to_string()),
            };
            upstreams.push(UpstreamStatus {
                url: base,
                pools,
                ok: error.is_none(),
                error,
            });
        }
        let lock_wait = quantiles(round.lock_deltas);
        let oversold = round.any_ok.then(|| round.oversold_by_sku.values().sum());
        self.latest.upstreams = upstreams;
        self.latest.oversold_by_sku = round.oversold_by_sku;
        self.latest.oversold_exported = round.oversold_exported;
        self.history.push_back(Point {
            at,
            qps,
            lock_wait,
            stock: self.stock.clone(),
            oversold,
        });
    }

    /// One instance's reading: its lock-wait histogram deltas since its last reading (per
    /// segment and per strategy), the freshest stock levels, its oversold units.
    fn absorb(&mut self, base: &str, reading: Reading, round: &mut Round) {
        round.any_ok = true;
        let instance = self.instances.entry(base.to_owned()).or_default();
        for (key, current) in &reading.lock_wait {
            if let Some(delta) = stats::delta(current, instance.lock_wait.get(key)) {
                let strategy = LockKey {
                    strategy: key.strategy.clone(),
                    segment: None,
                };
                if key.segment.is_some() {
                    stats::merge(round.lock_deltas.entry(key.clone()).or_default(), &delta);
                }
                stats::merge(round.lock_deltas.entry(strategy).or_default(), &delta);
            }
        }
        instance.lock_wait = reading.lock_wait;
        for (key, value) in &reading.stock {
            // The freshest level wins: the instance whose value moved (or a new series).
            let moved = instance.stock.get(key) != Some(value);
            let known = self.stock.contains_key(key);
            if (moved || !known) && (known || self.stock.len() < MAX_STOCK_SERIES) {
                self.stock.insert(key.clone(), *value);
            } else if !known {
                self.latest.stock_series_dropped = true;
            }
        }
        instance.stock = reading.stock;
        if !reading.oversold.is_empty() {
            round.oversold_exported = true;
        }
        for (sku, units) in reading.oversold {
            let entry = round.oversold_by_sku.entry(sku).or_insert(0.0);
            *entry = entry.max(units);
        }
    }

    fn qps(&mut self, now: Instant, counts: RequestCounts) -> Option<Qps> {
        let previous = self.previous_counts.replace((now, counts));
        let (then, before) = previous?;
        let seconds = now.saturating_duration_since(then).as_secs_f64();
        let per_second = |current: u64, previous: u64| {
            #[allow(clippy::cast_precision_loss)] // counts stay far below 2^52
            let delta = stats::counter_delta(current as f64, previous as f64);
            stats::rate(delta, seconds)
        };
        Some(Qps {
            success: per_second(counts.success, before.success)?,
            conflict: per_second(counts.conflict, before.conflict)?,
            rate_limited: per_second(counts.rate_limited, before.rate_limited)?,
            server_error: per_second(counts.server_error, before.server_error)?,
            other: per_second(counts.other, before.other)?,
        })
    }

    /// Drops points older than `history` before the newest one.
    pub(crate) fn trim(&mut self, history: Duration) {
        let Some(newest) = self.history.back().map(|p| p.at) else {
            return;
        };
        let oldest = newest - history.as_secs_f64();
        while self.history.front().is_some_and(|p| p.at < oldest) {
            self.history.pop_front();
        }
    }

    /// The JSON served at `/dashboard/data`.
    pub(crate) fn render(&self, interval_ms: u64, history_secs: u64) -> Bytes {
        let points = &self.history;
        let column = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<Option<f64>> {
            points.iter().map(f).collect()
        };
        let qps_column =
            |f: fn(&Qps) -> f64| -> Vec<Option<f64>> { column(&|p| p.qps.as_ref().map(f)) };
        let mut lock_keys: Vec<&LockKey> = points.iter().flat_map(|p| p.lock_wait.keys()).collect();
        lock_keys.sort();
        lock_keys.dedup();
        let mut stock_keys: Vec<&StockKey> = points.iter().flat_map(|p| p.stock.keys()).collect();
        stock_keys.sort();
        stock_keys.dedup();
        let data = Data {
            interval_ms,
            history_secs,
            time: points.iter().map(|p| p.at).collect(),
            qps: QpsSeries {
                success: qps_column(|q| q.success),
                conflict: qps_column(|q| q.conflict),
                rate_limited: qps_column(|q| q.rate_limited),
                server_error: qps_column(|q| q.server_error),
                other: qps_column(|q| q.other),
            },
            lock_wait: lock_keys
                .into_iter()
                .map(|key| {
                    let at = |p: &Point| p.lock_wait.get(key).copied();
                    LockSeries {
                        strategy: &key.strategy,
                        segment: key.segment.as_deref(),
                        p50_ms: column(&|p| at(p).and_then(|q| q.p50).map(|s| s * 1000.0)),
                        p99_ms: column(&|p| at(p).and_then(|q| q.p99).map(|s| s * 1000.0)),
                        count: column(&|p| at(p).map(|q| q.count)),
                    }
                })
                .collect(),
            stock: stock_keys
                .into_iter()
                .map(|key| StockSeries {
                    sku: &key.sku,
                    segment: key.segment.as_deref(),
                    available: column(&|p| p.stock.get(key).copied()),
                })
                .collect(),
            stock_series_dropped: self.latest.stock_series_dropped,
            oversold: Oversold {
                total: points.back().and_then(|p| p.oversold),
                exported: self.latest.oversold_exported,
                by_sku: &self.latest.oversold_by_sku,
                series: column(&|p| p.oversold),
            },
            upstreams: &self.latest.upstreams,
        };
        serde_json::to_vec(&data).map_or_else(|_| empty_data(), Bytes::from)
    }
}

/// The data before the first sample.
pub(crate) fn empty_data() -> Bytes {
    Bytes::from_static(
        br#"{"interval_ms":0,"history_secs":0,"time":[],"qps":{"2xx":[],"409":[],"429":[],"5xx":[],"other":[]},"lock_wait":[],"stock":[],"stock_series_dropped":false,"oversold":{"total":null,"exported":false,"by_sku":{},"series":[]},"upstreams":[]}"#,
    )
}

/// What one scrape says, cumulative values summed over labels the dashboard does not show.
#[derive(Debug, Default)]
struct Reading {
    lock_wait: HashMap<LockKey, Buckets>,
    stock: HashMap<StockKey, f64>,
    oversold: HashMap<String, f64>,
}

impl Reading {
    fn from_samples(samples: &[prom::Sample<'_>]) -> Self {
        let mut reading = Self::default();
        for sample in samples {
            match sample.name {
                LOCK_WAIT_BUCKET => {
                    let Some(le) = sample.label("le").and_then(parse_bound) else {
                        continue;
                    };
                    let key = LockKey {
                        strategy: sample.label("strategy").unwrap_or("unknown").to_owned(),
                        segment: sample.label("segment").map(str::to_owned),
                    };
                    // Summed over `acquired` and any other label.
                    stats::add_bucket(reading.lock_wait.entry(key).or_default(), le, sample.value);
                }
                STOCK_AVAILABLE if sample.value.is_finite() => {
                    let key = StockKey {
                        sku: sample.label("sku").unwrap_or("").to_owned(),
                        segment: sample.label("segment").map(str::to_owned),
                    };
                    *reading.stock.entry(key).or_insert(0.0) += sample.value;
                }
                STOCK_OVERSOLD if sample.value.is_finite() => {
                    let sku = sample.label("sku").unwrap_or("").to_owned();
                    let units = reading.oversold.entry(sku).or_insert(0.0);
                    *units = units.max(sample.value);
                }
                _ => {}
            }
        }
        reading
    }
}

fn parse_bound(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

#[derive(Debug, Serialize)]
struct Data<'a> {
    interval_ms: u64,
    history_secs: u64,
    time: Vec<f64>,
    qps: QpsSeries,
    lock_wait: Vec<LockSeries<'a>>,
    stock: Vec<StockSeries<'a>>,
    stock_series_dropped: bool,
    oversold: Oversold<'a>,
    upstreams: &'a [UpstreamStatus],
}

#[derive(Debug, Serialize)]
struct QpsSeries {
    #[serde(rename = "2xx")]
    success: Vec<Option<f64>>,
    #[serde(rename = "409")]
    conflict: Vec<Option<f64>>,
    #[serde(rename = "429")]
    rate_limited: Vec<Option<f64>>,
    #[serde(rename = "5xx")]
    server_error: Vec<Option<f64>>,
    other: Vec<Option<f64>>,
}

#[derive(Debug, Serialize)]
struct LockSeries<'a> {
    strategy: &'a str,
    segment: Option<&'a str>,
    p50_ms: Vec<Option<f64>>,
    p99_ms: Vec<Option<f64>>,
    count: Vec<Option<f64>>,
}

#[derive(Debug, Serialize)]
struct StockSeries<'a> {
    sku: &'a str,
    segment: Option<&'a str>,
    available: Vec<Option<f64>>,
}

#[derive(Debug, Serialize)]
struct Oversold<'a> {
    total: Option<f64>,
    exported: bool,
    by_sku: &'a BTreeMap<String, f64>,
    series: Vec<Option<f64>>,
}

/// Whether the latest scrape of an upstream worked.
#[derive(Debug, Clone, Serialize)]
struct UpstreamStatus {
    url: String,
    pools: Vec<String>,
    ok: bool,
    error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn lock_page(strategy: &str, segment: Option<&str>, buckets: &[(&str, u64)]) -> String {
        let segment = segment.map_or(String::new(), |s| format!(",segment=\"{s}\""));
        buckets
            .iter()
            .flat_map(|(le, count)| {
                // Split between acquired true/false: the sampler sums them.
                let half = count / 2;
                [
                    format!(
                        "stock_lock_wait_duration_seconds_bucket{{acquired=\"true\",otel_scope_name=\"stock-service\",strategy=\"{strategy}\"{segment},le=\"{le}\"}} {}\n",
                        count - half
                    ),
                    format!(
                        "stock_lock_wait_duration_seconds_bucket{{acquired=\"false\",otel_scope_name=\"stock-service\",strategy=\"{strategy}\"{segment},le=\"{le}\"}} {half}\n"
                    ),
                ]
            })
            .collect()
    }

    fn scraped(base: &str, result: Result<String, ScrapeError>) -> Scraped {
        Scraped {
            base: base.to_owned(),
            pools: vec!["stock".to_owned()],
            result,
        }
    }

    fn counts(success: u64, conflict: u64) -> RequestCounts {
        RequestCounts {
            success,
            conflict,
            ..RequestCounts::default()
        }
    }

    fn json(sampler: &Sampler) -> Value {
        serde_json::from_slice(&sampler.render(1000, 300)).unwrap()
    }

    #[test]
    fn two_samples_make_rates_quantiles_and_levels() {
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        let a = "http://a".to_owned();
        let b = "http://b".to_owned();
        let first_a = lock_page(
            "segmented",
            None,
            &[("0.001", 10), ("0.002", 10), ("+Inf", 10)],
        ) + "stock_available{sku=\"phone\",segment=\"0\"} 50\nstock_available{sku=\"phone\",segment=\"1\"} 50\n";
        let first_b = lock_page(
            "segmented",
            None,
            &[("0.001", 0), ("0.002", 0), ("+Inf", 0)],
        );
        sampler.record(
            t0,
            100.0,
            counts(0, 0),
            vec![scraped(&a, Ok(first_a)), scraped(&b, Ok(first_b))],
        );
        let first = json(&sampler);
        assert_eq!(first["time"], json!([100.0]));
        assert_eq!(first["qps"]["2xx"], json!([null]), "no interval yet");
        assert_eq!(first["lock_wait"], json!([]), "no interval yet");
        assert_eq!(first["stock"][0]["available"], json!([50.0]));
        assert_eq!(first["oversold"]["total"], json!(0.0));
        assert_eq!(first["oversold"]["exported"], json!(false));

        // One second later: 40 × 2xx and 10 × 409; a got 10 more fast waits, b 10 slow ones.
        let second_a = lock_page(
            "segmented",
            None,
            &[("0.001", 20), ("0.002", 20), ("+Inf", 20)],
        ) + "stock_available{sku=\"phone\",segment=\"0\"} 30\nstock_available{sku=\"phone\",segment=\"1\"} 50\nstock_oversold_units{sku=\"phone\"} 0\n";
        let second_b = lock_page(
            "segmented",
            None,
            &[("0.001", 0), ("0.002", 10), ("+Inf", 10)],
        );
        sampler.record(
            t0 + Duration::from_secs(1),
            101.0,
            counts(40, 10),
            vec![scraped(&a, Ok(second_a)), scraped(&b, Ok(second_b))],
        );
        let second = json(&sampler);
        assert_eq!(second["qps"]["2xx"], json!([null, 40.0]));
        assert_eq!(second["qps"]["409"], json!([null, 10.0]));
        assert_eq!(second["qps"]["429"], json!([null, 0.0]));
        let lock = &second["lock_wait"][0];
        assert_eq!(lock["strategy"], "segmented");
        assert_eq!(lock["segment"], Value::Null);
        assert_eq!(lock["count"], json!([null, 20.0]));
        // 10 waits ≤ 1 ms and 10 in (1, 2] ms over both instances: p50 at 1 ms.
        let p50 = lock["p50_ms"][1].as_f64().unwrap();
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        let p99 = lock["p99_ms"][1].as_f64().unwrap();
        assert!((p99 - 1.98).abs() < 1e-9, "{p99}");
        assert_eq!(second["stock"][0]["segment"], "0");
        assert_eq!(second["stock"][0]["available"], json!([50.0, 30.0]));
        assert_eq!(second["stock"][1]["available"], json!([50.0, 50.0]));
        assert_eq!(second["oversold"]["exported"], json!(true));
        assert_eq!(second["oversold"]["series"], json!([0.0, 0.0]));
    }

    #[test]
    fn segments_are_kept_apart_and_summed_per_strategy() {
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        let page = |n0: u64, n1: u64| {
            lock_page("redis-lock", Some("0"), &[("0.01", n0), ("+Inf", n0)])
                + &lock_page("redis-lock", Some("1"), &[("0.01", 0), ("+Inf", n1)])
        };
        sampler.record(
            t0,
            1.0,
            counts(0, 0),
            vec![scraped("http://s", Ok(page(0, 0)))],
        );
        sampler.record(
            t0 + Duration::from_secs(1),
            2.0,
            counts(0, 0),
            vec![scraped("http://s", Ok(page(4, 4)))],
        );
        let data = json(&sampler);
        let series = data["lock_wait"].as_array().unwrap();
        let names: Vec<(String, Value)> = series
            .iter()
            .map(|s| {
                (
                    s["strategy"].as_str().unwrap().to_owned(),
                    s["segment"].clone(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("redis-lock".to_owned(), Value::Null),
                ("redis-lock".to_owned(), json!("0")),
                ("redis-lock".to_owned(), json!("1")),
            ]
        );
        assert_eq!(series[0]["count"], json!([null, 8.0]));
        assert_eq!(series[1]["count"], json!([null, 4.0]));
        // Segment 1's waits are all above the last finite bound: p99 answers that bound.
        assert_eq!(series[2]["p99_ms"], json!([null, 10.0]));
    }

    #[test]
    fn a_failing_upstream_is_reported_and_does_not_break_the_rest() {
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        let good = "stock_available{sku=\"a\",segment=\"0\"} 7\n".to_owned();
        sampler.record(
            t0,
            1.0,
            counts(1, 0),
            vec![
                scraped("http://good", Ok(good.clone())),
                scraped("http://down", Err(ScrapeError::Timeout)),
                scraped("http://junk", Ok("<html>".into())),
                scraped("http://404", Err(ScrapeError::Status(404))),
            ],
        );
        let data = json(&sampler);
        let statuses: Vec<(bool, Value)> = data["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| (u["ok"].as_bool().unwrap(), u["error"].clone()))
            .collect();
        assert_eq!(
            statuses,
            vec![
                (true, Value::Null),
                (false, json!("timed out")),
                (
                    false,
                    json!("not Prometheus text: line 1: expected a metric name")
                ),
                (false, json!("HTTP 404")),
            ]
        );
        assert_eq!(data["stock"][0]["available"], json!([7.0]));

        // Nothing reachable: the oversold count is unknown, stock levels stay as last seen.
        sampler.record(
            t0 + Duration::from_secs(1),
            2.0,
            counts(1, 0),
            vec![scraped("http://good", Err(ScrapeError::Timeout))],
        );
        let data = json(&sampler);
        assert_eq!(data["oversold"]["total"], Value::Null);
        assert_eq!(data["oversold"]["series"], json!([0.0, null]));
        assert_eq!(data["stock"][0]["available"], json!([7.0, 7.0]));
        assert_eq!(data["qps"]["2xx"], json!([null, 0.0]));
    }

    #[test]
    fn the_freshest_stock_level_wins_and_restarts_do_not_go_negative() {
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        let level = |v: u64| format!("stock_available{{sku=\"a\",segment=\"0\"}} {v}\n");
        let lock = |n: u64| lock_page("s", None, &[("0.001", n), ("+Inf", n)]);
        sampler.record(
            t0,
            1.0,
            counts(0, 0),
            vec![
                scraped("http://x", Ok(level(10) + &lock(100))),
                scraped("http://y", Ok(level(10))),
            ],
        );
        // y saw the item last: its level is the one to show, although x still says 10.
        sampler.record(
            t0 + Duration::from_secs(1),
            2.0,
            counts(0, 0),
            vec![
                scraped("http://x", Ok(level(10) + &lock(2))),
                scraped("http://y", Ok(level(4))),
            ],
        );
        let data = json(&sampler);
        assert_eq!(data["stock"][0]["available"], json!([10.0, 4.0]));
        // x restarted (100 → 2 waits): its 2 waits count, not -98.
        assert_eq!(data["lock_wait"][0]["count"], json!([null, 2.0]));
    }

    async fn serve(router: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn each_upstream_is_scraped_with_a_timeout_and_failures_stay_local() {
        use axum::http::StatusCode;
        use axum::routing::get;
        let metrics = |handler| axum::Router::new().route(METRICS_PATH, handler);
        let good = serve(metrics(get(|| async { "up 1\n" }))).await;
        let failing = serve(metrics(get(|| async {
            (StatusCode::INTERNAL_SERVER_ERROR, "boom")
        })))
        .await;
        let slow = serve(metrics(get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        })))
        .await;
        let dead = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let client = crate::runtime::http_client(Duration::from_millis(200));
        let targets = [&good, &failing, &slow, &dead]
            .into_iter()
            .map(|base| (base.clone(), vec!["p".to_owned()]))
            .collect();
        let started = Instant::now();
        let results = scrape_all(&client, targets, Duration::from_millis(300)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the slow one held everything up"
        );
        let bases: Vec<&str> = results.iter().map(|r| r.base.as_str()).collect();
        assert_eq!(bases, [&good, &failing, &slow, &dead]);
        assert_eq!(results[0].result, Ok("up 1\n".to_owned()));
        assert_eq!(results[1].result, Err(ScrapeError::Status(500)));
        assert_eq!(results[2].result, Err(ScrapeError::Timeout));
        assert!(
            matches!(results[3].result, Err(ScrapeError::Transport(_))),
            "{:?}",
            results[3]
        );
    }

    #[test]
    fn old_points_are_trimmed_and_the_empty_data_parses() {
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        for i in 0..10_u32 {
            sampler.record(
                t0 + Duration::from_secs(u64::from(i)),
                f64::from(i),
                counts(u64::from(i), 0),
                vec![],
            );
        }
        sampler.trim(Duration::from_secs(3));
        assert_eq!(json(&sampler)["time"], json!([6.0, 7.0, 8.0, 9.0]));
        assert_eq!(json(&sampler)["qps"]["2xx"], json!([1.0, 1.0, 1.0, 1.0]));
        let empty: Value = serde_json::from_slice(&empty_data()).unwrap();
        let rendered = json(&Sampler::default());
        assert_eq!(
            empty,
            rendered
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("interval_ms".into(), json!(0));
                    o.insert("history_secs".into(), json!(0));
                    Value::Object(o)
                })
                .unwrap()
        );
    }
}
