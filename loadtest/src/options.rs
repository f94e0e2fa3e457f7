//! Command-line options (every one can also come from the environment).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// Which users the attack starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// Buyers: log in, order the hot item with a fresh Idempotency-Key, sometimes resend the
    /// key (a retry), pay or cancel.
    FlashSale,
    /// Browsers: log in, read the item's stock.
    Browse,
    /// Both, weighted by `--buy-weight` and `--browse-weight`.
    Mix,
    /// The gateway's own `GET /healthz`, no login, no upstream: the raw gateway rate that the
    /// sold-out phase is compared with.
    Trivial,
}

impl ScenarioKind {
    /// The name as given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioKind::FlashSale => "flash-sale",
            ScenarioKind::Browse => "browse",
            ScenarioKind::Mix => "mix",
            ScenarioKind::Trivial => "trivial",
        }
    }

    /// Whether buyers take part (orders are placed).
    pub fn buys(self) -> bool {
        matches!(self, ScenarioKind::FlashSale | ScenarioKind::Mix)
    }
}

/// Load test of the shop through its gateway: seed the hot item, attack it with goose, audit
/// the books, write reports, and exit 0 (verdict passed), 1 (verdict failed: oversold,
/// duplicates, limit broken, books off) or 2 (could not run).
#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "loadtest",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 the verdict passed; 1 the verdict failed (oversold, duplicate \
                  orders, purchase limit broken, books disagree); 2 could not run (bad options, \
                  target unreachable, admin login refused, audits missing).\n\
                  Reports in --report-dir: report.html, report.json, report.md (goose), \
                  summary.md, summary.json (schema 1)."
)]
pub struct Options {
    /// The gateway's base URL.
    #[arg(long, env = "LOADTEST_TARGET", default_value = "http://127.0.0.1:8080")]
    pub target: String,

    /// Password of the gateway's `admin` user (seeding and audits need it).
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    #[serde(skip)]
    pub admin_password: String,

    /// Which users to start.
    #[arg(
        long,
        env = "LOADTEST_SCENARIO",
        value_enum,
        default_value = "flash-sale"
    )]
    pub scenario: ScenarioKind,

    /// Concurrent goose users (buyers and browsers, each a distinct login).
    #[arg(short = 'u', long, env = "LOADTEST_USERS", default_value_t = 200)]
    pub users: usize,

    /// Users started per second (the hatch rate).
    #[arg(
        short = 'r',
        long,
        env = "LOADTEST_HATCH_RATE",
        default_value_t = 100.0
    )]
    pub hatch_rate: f64,

    /// How long the attack runs once every user started, e.g. 30s, 2m, 1m30s.
    #[arg(short = 't', long, env = "LOADTEST_RUN_TIME", default_value = "20s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub run_time: Duration,

    /// The hot item (created or reset by the load test).
    #[arg(long, env = "LOADTEST_SKU", default_value = "flash-sale-item")]
    pub sku: String,

    /// Units to stock the item with before the attack.
    #[arg(long, env = "LOADTEST_STOCK", default_value_t = 100)]
    pub stock: i64,

    /// Segments to split the stock over.
    #[arg(long, env = "LOADTEST_SEGMENTS", default_value_t = 8)]
    pub segments: i32,

    /// Share of created orders whose request is sent again with the same Idempotency-Key
    /// and body (the answer must be the same order, replayed).
    #[arg(long, env = "LOADTEST_RETRY_SHARE", default_value_t = 0.2, value_parser = parse_share)]
    pub retry_share: f64,

    /// Share of created orders that are paid.
    #[arg(long, env = "LOADTEST_PAY_SHARE", default_value_t = 0.5, value_parser = parse_share)]
    pub pay_share: f64,

    /// Share of created orders that are cancelled (their unit goes back on sale); pay and
    /// cancel shares together are at most 1.
    #[arg(long, env = "LOADTEST_CANCEL_SHARE", default_value_t = 0.1, value_parser = parse_share)]
    pub cancel_share: f64,

    /// Weight of buyers in the `mix` scenario.
    #[arg(long, env = "LOADTEST_BUY_WEIGHT", default_value_t = 3)]
    pub buy_weight: usize,

    /// Weight of browsers in the `mix` scenario.
    #[arg(long, env = "LOADTEST_BROWSE_WEIGHT", default_value_t = 1)]
    pub browse_weight: usize,

    /// Pause of each user between two iterations, in milliseconds (0: none).
    #[arg(long, env = "LOADTEST_THINK_MS", default_value_t = 0)]
    pub think_ms: u64,

    /// Directory for the reports (goose's report.html and report.json, summary.md,
    /// summary.json); created if missing.
    #[arg(long, env = "LOADTEST_REPORT_DIR", default_value = "target/loadtest")]
    pub report_dir: PathBuf,

    /// A service's Prometheus `/metrics` URL to scrape before and after the attack (lock
    /// wait p99, operations, oversold gauge); repeat for every stock-service instance.
    #[arg(long = "scrape", env = "LOADTEST_SCRAPE", value_delimiter = ',')]
    pub scrape: Vec<String>,

    /// Fail the verdict when more than this share of order requests ended in a genuine
    /// error (5xx, transport errors, unexpected answers); unset: errors are reported only.
    #[arg(long, env = "LOADTEST_MAX_ERROR_RATE", value_parser = parse_share)]
    pub max_error_rate: Option<f64>,

    /// How long to wait after the attack for pending orders and stock releases to settle
    /// before auditing, e.g. 15s.
    #[arg(long, env = "LOADTEST_SETTLE", default_value = "15s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub settle: Duration,

    /// Timeout of one request, e.g. 10s.
    #[arg(long, env = "LOADTEST_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub request_timeout: Duration,

    /// Prefix of the buyers' user ids; a random run id is appended, so every run has fresh
    /// buyers (the purchase limit is per user and item).
    #[arg(long, env = "LOADTEST_USER_PREFIX", default_value = "lt")]
    pub user_prefix: String,

    /// Print goose's own metrics tables to stdout as well.
    #[arg(long, env = "LOADTEST_GOOSE_METRICS")]
    pub goose_metrics: bool,
}

impl Options {
    /// Check what clap cannot: shares add up, numbers are in range.
    pub fn validate(&self) -> Result<(), String> {
        if self.users == 0 {
            return Err("--users must be at least 1".into());
        }
        if !(self.hatch_rate.is_finite() && self.hatch_rate > 0.0) {
            return Err("--hatch-rate must be above 0".into());
        }
        if self.pay_share + self.cancel_share > 1.0 + 1e-9 {
            return Err("--pay-share and --cancel-share add up to more than 1".into());
        }
        if !(0..=1_000_000_000).contains(&self.stock) {
            return Err("--stock must be 0..=1000000000".into());
        }
        if !(1..=1024).contains(&self.segments) {
            return Err("--segments must be 1..=1024".into());
        }
        if self.scenario == ScenarioKind::Mix && self.buy_weight + self.browse_weight == 0 {
            return Err("--buy-weight and --browse-weight cannot both be 0".into());
        }
        let sku_ok = !self.sku.is_empty()
            && self.sku.len() <= 64
            && self
                .sku
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !sku_ok {
            return Err("--sku must be 1-64 characters of letters, digits, '.', '_' or '-'".into());
        }
        let prefix_ok = !self.user_prefix.is_empty()
            && self.user_prefix.len() <= 24
            && self
                .user_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !prefix_ok {
            return Err(
                "--user-prefix must be 1-24 characters of letters, digits, '.', '_' or '-'".into(),
            );
        }
        if self.run_time.is_zero() {
            return Err("--run-time must be above 0".into());
        }
        Ok(())
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Parse `1h2m3s`, `90s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(format!("bad duration {text:?}"))
        };
    }
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            "ms"
        } else {
            match c {
                'h' => "h",
                'm' => "m",
                's' => "s",
                _ => return Err(format!("bad duration {text:?}: unknown unit {c:?}")),
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("bad duration {text:?}: a number must precede {unit:?}"))?;
        number.clear();
        let secs = match unit {
            "h" => value * 3600.0,
            "m" => value * 60.0,
            "s" => value,
            _ => value / 1000.0,
        };
        total += Duration::from_secs_f64(secs);
    }
    if !number.is_empty() {
        return Err(format!(
            "bad duration {text:?}: trailing number without a unit"
        ));
    }
    Ok(total)
}

/// Parse a share between 0 and 1.
pub fn parse_share(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_form() {
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m500ms"), Ok(Duration::from_millis(60_500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3m4").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn shares_are_between_zero_and_one() {
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert_eq!(parse_share("1"), Ok(1.0));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("x").is_err());
    }

    #[test]
    fn options_parse_and_validate() {
        let o = Options::try_parse_from([
            "loadtest",
            "--admin-password",
            "pw",
            "--scrape",
            "http://a/metrics",
            "--scrape",
            "http://b/metrics,http://c/metrics",
            "--run-time",
            "5s",
            "--scenario",
            "mix",
        ])
        .unwrap();
        assert_eq!(o.scrape.len(), 3);
        assert_eq!(o.run_time, Duration::from_secs(5));
        assert_eq!(o.scenario, ScenarioKind::Mix);
        assert_eq!(o.validate(), Ok(()));
        let mut bad = o.clone();
        bad.pay_share = 0.7;
        bad.cancel_share = 0.4;
        assert!(bad.validate().is_err());
        let mut bad = o.clone();
        bad.sku = "no spaces".into();
        assert!(bad.validate().is_err());
        let mut bad = o;
        bad.users = 0;
        assert!(bad.validate().is_err());
    }
}
