//! `summary.json` (for scripts such as `cargo xtask bench`) and `summary.md` (for people).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::{ClientFacts, LatencyStats, Outcome};
use crate::scrape::ServiceMetrics;
use crate::shop::{OrderAudit, StockAudit};
use crate::verdict::Verdict;

/// Version of the `summary.json` layout; bumped on incompatible changes.
pub const SCHEMA: u32 = 1;

/// Timings of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// When the attack started (seconds since the Unix epoch).
    pub started_unix: f64,
    /// How long goose ran (user start-up, run time, shutdown), seconds.
    pub attack_secs: f64,
    /// From the first order request to the first sold-out answer, seconds (None: never
    /// sold out).
    pub time_to_sell_out_secs: Option<f64>,
    /// From the first order request to the last new order, seconds.
    pub selling_window_secs: Option<f64>,
    /// Waiting for pending orders and releases to settle before the audit, seconds.
    pub settle_secs: f64,
}

/// Rates of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// New orders per second while selling (over the time to sell out, or the selling
    /// window, or the whole attack).
    pub orders_per_sec: f64,
    /// Expected rejections (sold out, purchase limit, in flight, rate limited) per second of
    /// the attack.
    pub rejections_per_sec: f64,
    /// Requests of every kind per second of the attack.
    pub requests_per_sec: f64,
}

/// Goose's own totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GooseTotals {
    /// Requests goose recorded.
    pub requests: u64,
    /// Of those, failures (after `set_success`/`set_failure`).
    pub failures: u64,
    /// Users started.
    pub users: u64,
    /// Goose's own duration, seconds.
    pub duration_secs: u64,
}

/// Genuine errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    /// Count by kind (login, order, pay, cancel, browse, duplicate-order, replay-mismatch).
    pub by_kind: BTreeMap<String, u64>,
    /// Up to 20 examples.
    pub samples: Vec<String>,
}

/// Everything `summary.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The verdict passed (exit code 0; 1 otherwise).
    pub passed: bool,
    /// Units sold beyond the stock.
    pub oversold: i64,
    /// Orders duplicated for one key (client and server side).
    pub duplicates: i64,
    /// p99 lock wait scraped from the stock-services during the attack, ms.
    pub lock_wait_p99_ms: Option<f64>,
    /// The verdict with every check's numbers.
    pub verdict: Verdict,
    /// The run's parameters (the options, without the admin password).
    pub parameters: Value,
    /// Random id of the run; buyers are `<user_prefix>b<n>`.
    pub run_id: String,
    /// Prefix of every user id of the run.
    pub user_prefix: String,
    /// Timings.
    pub timing: Timing,
    /// Rates.
    pub throughput: Throughput,
    /// Latency by outcome (only outcomes that happened).
    pub latency: BTreeMap<Outcome, LatencyStats>,
    /// What the clients saw.
    pub client: ClientFacts,
    /// The stock-service's audit after the run.
    pub stock_audit: StockAudit,
    /// The order-service's audit after the run.
    pub order_audit: OrderAudit,
    /// From the `--scrape` URLs.
    pub service_metrics: ServiceMetrics,
    /// Goose's totals.
    pub goose: GooseTotals,
    /// Genuine errors.
    pub errors: Errors,
    /// Report files written, by kind (`html`, `json`, `md`, `summary_md`, `summary_json`).
    pub reports: BTreeMap<String, String>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} ms"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.2} s"))
}

/// Render `summary.md`.
pub fn markdown(s: &Summary) -> String {
    let mut out = String::new();
    for section in [
        headline,
        verdict_table,
        latency_table,
        orders_section,
        timing_section,
        errors_section,
        reports_section,
    ] {
        section(&mut out, s);
    }
    out
}

/// The title, the run's parameters and its key figures.
fn headline(out: &mut String, s: &Summary) {
    let verdict = if s.passed { "PASSED" } else { "FAILED" };
    let p = &s.parameters;
    let text = |k: &str| match &p[k] {
        Value::String(v) => v.clone(),
        Value::Null => "–".to_owned(),
        v => v.to_string(),
    };
    let _ = writeln!(out, "# Load test: {verdict}\n");
    let _ = writeln!(
        out,
        "Scenario `{}` against {}: {} users (hatch {}/s, run {} s), item `{}` with {} units in \
         {} segments; run `{}`.\n",
        text("scenario"),
        text("target"),
        text("users"),
        text("hatch_rate"),
        text("run_time"),
        text("sku"),
        text("stock"),
        text("segments"),
        s.run_id
    );
    let _ = writeln!(
        out,
        "**Oversold: {}** · **duplicates: {}** · time to sell out: {} · orders/s: {:.1} · \
         rejections/s: {:.1} · lock wait p99: {}\n",
        s.oversold,
        s.duplicates,
        secs(s.timing.time_to_sell_out_secs),
        s.throughput.orders_per_sec,
        s.throughput.rejections_per_sec,
        ms(s.lock_wait_p99_ms)
    );
}

/// The verdict's checks.
fn verdict_table(out: &mut String, s: &Summary) {
    let _ = writeln!(
        out,
        "## Verdict\n\n| check | result | detail |\n|---|---|---|"
    );
    for c in &s.verdict.checks {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            c.name,
            if c.passed { "pass" } else { "**FAIL**" },
            c.detail.replace('|', "\\|")
        );
    }
}

/// Latency by outcome.
fn latency_table(out: &mut String, s: &Summary) {
    let _ = writeln!(
        out,
        "\n## Latency by outcome\n\n| outcome | requests | p50 | p99 | max |\n|---|---:|---:|---:|---:|"
    );
    for o in Outcome::ALL {
        if let Some(l) = s.latency.get(&o) {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
                o.as_str(),
                l.count,
                l.p50_ms,
                l.p99_ms,
                l.max_ms
            );
        }
    }
}

/// What clients, the order-service and the stock-service counted.
fn orders_section(out: &mut String, s: &Summary) {
    let c = &s.client;
    let o = &s.order_audit;
    let a = &s.stock_audit;
    let _ = writeln!(out, "\n## Orders\n");
    let _ = writeln!(
        out,
        "- clients: {} order requests, {} orders seen ({} paid, {} cancelled), {} resends \
         ({} unmarked replays), {} genuine errors",
        c.order_requests,
        c.orders_seen,
        c.orders_paid,
        c.orders_cancelled,
        c.resends,
        c.replays_unmarked,
        c.errors
    );
    let _ = writeln!(
        out,
        "- order-service: reserved {}, paid {}, cancelled {} (unreleased {}), rejected {}, \
         pending {}; {} users, limit {}",
        o.orders.reserved.count,
        o.orders.paid.count,
        o.orders.cancelled.count,
        o.cancelled_unreleased.count,
        o.orders.rejected.count,
        o.orders.pending.count,
        o.users,
        o.purchase_limit
    );
    let _ = writeln!(
        out,
        "- stock-service: initial {}, available {}, deducted {}, released {}, oversold {} \
         (audit {})",
        a.initial,
        a.available,
        a.deducted,
        a.released,
        a.oversold,
        if a.ok { "ok" } else { "FAILED" }
    );
}

/// Timing, and what the services' metrics showed.
fn timing_section(out: &mut String, s: &Summary) {
    let m = &s.service_metrics;
    let _ = writeln!(out, "\n## Timing and services\n");
    let _ = writeln!(
        out,
        "- attack {:.1} s, selling window {}, settle {:.1} s; {:.0} requests/s; goose: {} \
         requests, {} failures",
        s.timing.attack_secs,
        secs(s.timing.selling_window_secs),
        s.timing.settle_secs,
        s.throughput.requests_per_sec,
        s.goose.requests,
        s.goose.failures
    );
    if m.scraped.is_empty() && m.errors.is_empty() {
        let _ = writeln!(out, "- no `--scrape` URLs: lock waits not measured");
    } else {
        let _ = writeln!(
            out,
            "- lock waits during the attack: {} (p50 {}, p99 {}) from {}",
            m.lock_waits,
            ms(m.lock_wait_p50_ms),
            ms(m.lock_wait_p99_ms),
            m.scraped.join(", ")
        );
        for (segment, p99) in &m.lock_wait_p99_ms_by_segment {
            let _ = writeln!(out, "  - segment {segment}: p99 {p99:.1} ms");
        }
        if !m.operations.is_empty() {
            let ops: Vec<String> = m
                .operations
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect();
            let _ = writeln!(out, "- stock operations: {}", ops.join(", "));
        }
        if let Some(g) = m.oversold_gauge {
            let _ = writeln!(out, "- `stock_oversold_units`: {g}");
        }
        for e in &m.errors {
            let _ = writeln!(out, "- scrape failed: {e}");
        }
    }
}

/// Errors by kind, with examples (nothing when there were none).
fn errors_section(out: &mut String, s: &Summary) {
    if !s.errors.samples.is_empty() {
        let _ = writeln!(out, "\n## Errors\n");
        for (kind, n) in &s.errors.by_kind {
            let _ = writeln!(out, "- {kind}: {n}");
        }
        let _ = writeln!(out, "\nExamples:\n");
        for e in &s.errors.samples {
            let _ = writeln!(out, "- `{}`", e.replace('`', "'"));
        }
    }
}

/// Where the reports are (nothing when there are none).
fn reports_section(out: &mut String, s: &Summary) {
    if !s.reports.is_empty() {
        let _ = writeln!(out, "\n## Reports\n");
        for (kind, path) in &s.reports {
            let _ = writeln!(out, "- {kind}: `{path}`");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Facts, judge};
    use serde_json::json;

    pub(crate) fn sample() -> Summary {
        let verdict = judge(&Facts {
            stock: 10,
            buyers: true,
            client: ClientFacts {
                order_requests: 40,
                orders_seen: 10,
                ..ClientFacts::default()
            },
            stock_audit: StockAudit {
                ok: true,
                initial: 10,
                deducted: 10,
                ..StockAudit::default()
            },
            order_audit: OrderAudit {
                holding_stock_qty: 10,
                orders: crate::shop::StatusTallies {
                    reserved: crate::shop::Tally { count: 10, qty: 10 },
                    ..Default::default()
                },
                purchase_limit: 1,
                ..OrderAudit::default()
            },
            ..Facts::default()
        });
        let mut latency = BTreeMap::new();
        latency.insert(
            Outcome::Created,
            LatencyStats {
                count: 10,
                p50_ms: 4.0,
                p99_ms: 9.5,
                max_ms: 10.0,
            },
        );
        Summary {
            schema: SCHEMA,
            passed: verdict.passed,
            oversold: verdict.oversold,
            duplicates: verdict.duplicates,
            lock_wait_p99_ms: Some(3.25),
            verdict,
            parameters: json!({"scenario": "flash-sale", "target": "http://x", "users": 5,
                "hatch_rate": 5.0, "run_time": 2.0, "sku": "hot", "stock": 10, "segments": 2}),
            run_id: "abc".into(),
            user_prefix: "lt-abc-".into(),
            timing: Timing {
                time_to_sell_out_secs: Some(1.5),
                ..Timing::default()
            },
            throughput: Throughput::default(),
            latency,
            client: ClientFacts::default(),
            stock_audit: StockAudit::default(),
            order_audit: OrderAudit::default(),
            service_metrics: ServiceMetrics::default(),
            goose: GooseTotals::default(),
            errors: Errors {
                by_kind: [("order".to_owned(), 1)].into(),
                samples: vec!["order: HTTP 503 `x`".into()],
            },
            reports: [("html".to_owned(), "r/report.html".to_owned())].into(),
        }
    }

    #[test]
    fn markdown_shows_the_verdict_checks_and_latencies() {
        let s = sample();
        assert!(s.passed, "{:#?}", s.verdict);
        let md = markdown(&s);
        assert!(md.starts_with("# Load test: PASSED"), "{md}");
        assert!(md.contains("**Oversold: 0**"), "{md}");
        assert!(md.contains("time to sell out: 1.50 s"), "{md}");
        assert!(md.contains("lock wait p99: 3.2 ms") || md.contains("lock wait p99: 3.3 ms"));
        assert!(md.contains("| `no_oversell` | pass |"), "{md}");
        assert!(
            md.contains("| created | 10 | 4.0 ms | 9.5 ms | 10.0 ms |"),
            "{md}"
        );
        assert!(
            md.contains("Scenario `flash-sale` against http://x: 5 users"),
            "{md}"
        );
        assert!(md.contains("- `order: HTTP 503 'x'`"), "{md}");
        assert!(md.contains("no `--scrape` URLs"), "{md}");

        let mut failed = s;
        failed.passed = false;
        failed.verdict.checks[1].passed = false;
        let md = markdown(&failed);
        assert!(md.starts_with("# Load test: FAILED"));
        assert!(md.contains("| `no_oversell` | **FAIL** |"), "{md}");
    }

    #[test]
    fn json_has_the_documented_shape_and_round_trips() {
        let s = sample();
        let v = serde_json::to_value(&s).unwrap();
        for key in [
            "schema",
            "passed",
            "oversold",
            "duplicates",
            "lock_wait_p99_ms",
            "verdict",
            "parameters",
            "timing",
            "throughput",
            "latency",
            "client",
            "stock_audit",
            "order_audit",
            "service_metrics",
            "goose",
            "errors",
            "reports",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["latency"]["created"]["p99_ms"], 9.5);
        assert_eq!(v["verdict"]["checks"][0]["name"], "stock_ledger_balances");
        assert_eq!(v["timing"]["time_to_sell_out_secs"], 1.5);
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
