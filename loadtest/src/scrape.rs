//! Prometheus scrapes of the services before and after the attack: the lock-wait
//! histogram's delta turned into a p99, operation counters, the oversold gauge.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The lock-wait histogram of the stock-service.
pub const LOCK_WAIT: &str = "stock_lock_wait_duration_seconds";
/// The stock-service's operations counter.
pub const OPERATIONS: &str = "stock_operations_total";
/// The stock-service's oversold gauge (by sku).
pub const OVERSOLD: &str = "stock_oversold_units";

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_total`… suffixes).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parse the Prometheus text format (comments and malformed lines are skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let i = line.find(['{', ' '])?;
    let (name, rest) = (&line[..i], &line[i..]);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(body) => parse_labels(body)?,
        None => (BTreeMap::new(), rest),
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels of `body` (what follows `{`) and the text after the closing `}`.
fn parse_labels(body: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut chars = body.char_indices();
    loop {
        // A label name, up to `=`; or the closing brace.
        let mut key = String::new();
        let mut end = None;
        for (i, c) in chars.by_ref() {
            match c {
                '=' => break,
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                _ => key.push(c),
            }
        }
        if let Some(end) = end {
            return Some((labels, &body[end + 1..]));
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return None;
        }
        labels.insert(key, quoted_value(&mut chars));
    }
}

/// A label value after its opening quote, up to the closing one (`\n` and `\x` escapes).
fn quoted_value(chars: &mut std::str::CharIndices<'_>) -> String {
    let mut value = String::new();
    let mut escaped = false;
    for (_, c) in chars.by_ref() {
        match (escaped, c) {
            (true, 'n') => {
                value.push('\n');
                escaped = false;
            }
            (true, c) => {
                value.push(c);
                escaped = false;
            }
            (false, '\\') => escaped = true,
            (false, '"') => break,
            (false, c) => value.push(c),
        }
    }
    value
}

/// Cumulative bucket counts by upper bound (`le`), summed over every series whose labels
/// pass `keep`.
pub fn buckets(
    samples: &[Sample],
    histogram: &str,
    keep: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<Le, f64> {
    let name = format!("{histogram}_bucket");
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name && keep(&s.labels)) {
        let Some(le) = s.labels.get("le").and_then(|v| Le::parse(v)) else {
            continue;
        };
        *out.entry(le).or_insert(0.0) += s.value;
    }
    out
}

/// A bucket bound that sorts (`+Inf` last).
#[derive(Debug, Clone, Copy)]
pub struct Le(pub f64);

impl PartialEq for Le {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Le {}

impl PartialOrd for Le {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Le {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Le {
    fn parse(text: &str) -> Option<Le> {
        match text {
            "+Inf" | "Inf" => Some(Le(f64::INFINITY)),
            t => t.parse().ok().filter(|v: &f64| !v.is_nan()).map(Le),
        }
    }
}

/// `after - before`, bucket by bucket (a counter reset shows as the after value).
pub fn delta(before: &BTreeMap<Le, f64>, after: &BTreeMap<Le, f64>) -> BTreeMap<Le, f64> {
    after
        .iter()
        .map(|(le, a)| {
            let b = before.get(le).copied().unwrap_or(0.0);
            (*le, if a >= &b { a - b } else { *a })
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside the bucket like
/// PromQL's `histogram_quantile` (a quantile in the `+Inf` bucket is the largest finite
/// bound). None without observations.
pub fn quantile(q: f64, cumulative: &BTreeMap<Le, f64>) -> Option<f64> {
    let total = cumulative.iter().next_back().map(|(_, c)| *c)?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for (le, count) in cumulative {
        if *count >= rank {
            if le.0.is_infinite() {
                return Some(lower);
            }
            let in_bucket = count - below;
            if in_bucket <= 0.0 {
                return Some(le.0);
            }
            return Some(lower + (le.0 - lower) * (rank - below) / in_bucket);
        }
        if le.0.is_finite() {
            lower = le.0;
        }
        below = *count;
    }
    Some(lower)
}

/// One scrape of every URL.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Samples by URL.
    pub by_url: BTreeMap<String, Vec<Sample>>,
    /// URLs that could not be scraped, with why.
    pub errors: Vec<String>,
}

/// Scrape every URL (failures are recorded, not fatal).
pub async fn scrape(urls: &[String], timeout: Duration) -> Scrape {
    let mut out = Scrape::default();
    if urls.is_empty() {
        return out;
    }
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            out.errors.push(format!("http client: {e}"));
            return out;
        }
    };
    for url in urls {
        let text = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.map_err(|e| e.to_string()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Err(e.to_string()),
        };
        match text {
            Ok(t) => {
                out.by_url.insert(url.clone(), parse(&t));
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "scrape failed");
                out.errors.push(format!("{url}: {e}"));
            }
        }
    }
    out
}

/// What the scrapes say about the attack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceMetrics {
    /// URLs scraped before and after.
    pub scraped: Vec<String>,
    /// Lock waits observed during the attack (all instances).
    pub lock_waits: u64,
    /// p99 lock wait during the attack, ms (all instances); None without lock waits (or
    /// without scrapes, or for strategies that take no lock).
    pub lock_wait_p99_ms: Option<f64>,
    /// p50 lock wait during the attack, ms.
    pub lock_wait_p50_ms: Option<f64>,
    /// p99 lock wait by instance URL, ms.
    pub lock_wait_p99_ms_by_instance: BTreeMap<String, f64>,
    /// p99 lock wait by segment, ms (when the histogram has a `segment` label).
    pub lock_wait_p99_ms_by_segment: BTreeMap<String, f64>,
    /// Deductions and releases during the attack by `strategy/outcome`.
    pub operations: BTreeMap<String, f64>,
    /// `stock_oversold_units` for the item after the attack (largest over instances), when
    /// exported.
    pub oversold_gauge: Option<f64>,
    /// Scrape failures.
    pub errors: Vec<String>,
}

/// Compare the scrapes before and after the attack.
pub fn summarize(before: &Scrape, after: &Scrape, sku: &str) -> ServiceMetrics {
    let mut out = ServiceMetrics {
        scraped: after.by_url.keys().cloned().collect(),
        errors: before.errors.iter().chain(&after.errors).cloned().collect(),
        ..ServiceMetrics::default()
    };
    let empty = Vec::new();
    let mut total: BTreeMap<Le, f64> = BTreeMap::new();
    let mut by_segment: BTreeMap<String, BTreeMap<Le, f64>> = BTreeMap::new();
    for (url, after_samples) in &after.by_url {
        let before_samples = before.by_url.get(url).unwrap_or(&empty);
        let d = delta(
            &buckets(before_samples, LOCK_WAIT, |_| true),
            &buckets(after_samples, LOCK_WAIT, |_| true),
        );
        for (le, c) in &d {
            *total.entry(*le).or_insert(0.0) += c;
        }
        if let Some(p) = quantile(0.99, &d) {
            out.lock_wait_p99_ms_by_instance
                .insert(url.clone(), p * 1000.0);
        }
        let segments: std::collections::BTreeSet<String> = after_samples
            .iter()
            .filter(|s| s.name == format!("{LOCK_WAIT}_bucket"))
            .filter_map(|s| s.labels.get("segment").cloned())
            .collect();
        for segment in segments {
            let keep = |l: &BTreeMap<String, String>| l.get("segment") == Some(&segment);
            let d = delta(
                &buckets(before_samples, LOCK_WAIT, keep),
                &buckets(after_samples, LOCK_WAIT, keep),
            );
            let acc = by_segment.entry(segment.clone()).or_default();
            for (le, c) in d {
                *acc.entry(le).or_insert(0.0) += c;
            }
        }
        let count = |samples: &[Sample]| {
            let mut m: BTreeMap<String, f64> = BTreeMap::new();
            for s in samples.iter().filter(|s| s.name == OPERATIONS) {
                let key = format!(
                    "{}/{}",
                    s.labels.get("strategy").map_or("?", String::as_str),
                    s.labels.get("outcome").map_or("?", String::as_str)
                );
                *m.entry(key).or_insert(0.0) += s.value;
            }
            m
        };
        let (b, a) = (count(before_samples), count(after_samples));
        for (k, v) in a {
            let d = v - b.get(&k).copied().unwrap_or(0.0);
            let d = if d < 0.0 { v } else { d };
            if d > 0.0 {
                *out.operations.entry(k).or_insert(0.0) += d;
            }
        }
        for s in after_samples
            .iter()
            .filter(|s| s.name == OVERSOLD && s.labels.get("sku").map(String::as_str) == Some(sku))
        {
            out.oversold_gauge = Some(out.oversold_gauge.map_or(s.value, |v| v.max(s.value)));
        }
    }
    out.lock_waits = total.values().next_back().copied().unwrap_or(0.0) as u64;
    out.lock_wait_p99_ms = quantile(0.99, &total).map(|s| s * 1000.0);
    out.lock_wait_p50_ms = quantile(0.50, &total).map(|s| s * 1000.0);
    for (segment, d) in by_segment {
        if let Some(p) = quantile(0.99, &d) {
            out.lock_wait_p99_ms_by_segment.insert(segment, p * 1000.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP stock_lock_wait_duration_seconds Time to take the lock
# TYPE stock_lock_wait_duration_seconds histogram
stock_lock_wait_duration_seconds_bucket{acquired="true",strategy="segmented",le="0.001"} 10
stock_lock_wait_duration_seconds_bucket{acquired="true",strategy="segmented",le="0.01"} 10
stock_lock_wait_duration_seconds_bucket{acquired="true",strategy="segmented",le="0.1"} 10
stock_lock_wait_duration_seconds_bucket{acquired="true",strategy="segmented",le="+Inf"} 10
stock_lock_wait_duration_seconds_sum{acquired="true",strategy="segmented"} 0.005
stock_lock_wait_duration_seconds_count{acquired="true",strategy="segmented"} 10
stock_operations_total{strategy="segmented",outcome="deducted"} 5
"#;

    const AFTER: &str = r#"stock_lock_wait_duration_seconds_bucket{acquired="true",strategy="segmented",le="0.001"} 60
stock_lock_wait_duration_seconds_bucket{acquired="true",strategy="segmented",le="0.01"} 108
stock_lock_wait_duration_seconds_bucket{acquired="true",strategy="segmented",le="0.1"} 110
stock_lock_wait_duration_seconds_bucket{acquired="true",strategy="segmented",le="+Inf"} 110
stock_operations_total{strategy="segmented",outcome="deducted"} 55
stock_operations_total{strategy="segmented",outcome="sold_out"} 7
stock_oversold_units{sku="hot",otel_scope_name="x"} 0
stock_oversold_units{sku="cold"} 3
"#;

    #[test]
    fn parses_the_text_format() {
        let s = parse(
            "# c\nup 1\nx{a=\"b\\\"c\",d=\"e\"} 2.5 1700000000\nbad line here\ny{le=\"+Inf\"} +Inf\n",
        );
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].name, "up");
        assert_eq!(s[1].labels["a"], "b\"c");
        assert_eq!(s[1].labels["d"], "e");
        assert_eq!(s[1].value, 2.5);
        assert!(s[2].value.is_infinite());
    }

    #[test]
    fn the_p99_comes_from_the_bucket_delta() {
        let mut before = Scrape::default();
        before.by_url.insert("a".into(), parse(BEFORE));
        let mut after = Scrape::default();
        after.by_url.insert("a".into(), parse(AFTER));
        let m = summarize(&before, &after, "hot");
        // 100 waits in the attack: 50 <= 1 ms, 48 in (1, 10] ms, 2 in (10, 100] ms.
        assert_eq!(m.lock_waits, 100);
        let p99 = m.lock_wait_p99_ms.unwrap();
        // rank 99: 1 into the (10, 100] bucket of 2 -> 10 + 90 * 1/2 = 55 ms.
        assert!((p99 - 55.0).abs() < 1e-9, "{p99}");
        let p50 = m.lock_wait_p50_ms.unwrap();
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        assert_eq!(m.operations["segmented/deducted"], 50.0);
        assert_eq!(m.operations["segmented/sold_out"], 7.0);
        assert_eq!(m.oversold_gauge, Some(0.0));
        assert!(m.lock_wait_p99_ms_by_segment.is_empty());
        assert_eq!(m.lock_wait_p99_ms_by_instance.len(), 1);
    }

    #[test]
    fn segments_and_missing_scrapes_are_tolerated() {
        let text = r#"stock_lock_wait_duration_seconds_bucket{segment="0",le="0.01"} 4
stock_lock_wait_duration_seconds_bucket{segment="0",le="+Inf"} 4
stock_lock_wait_duration_seconds_bucket{segment="1",le="0.01"} 0
stock_lock_wait_duration_seconds_bucket{segment="1",le="+Inf"} 2
"#;
        let mut after = Scrape::default();
        after.by_url.insert("a".into(), parse(text));
        after.errors.push("b: refused".into());
        let m = summarize(&Scrape::default(), &after, "hot");
        assert_eq!(m.lock_waits, 6);
        assert_eq!(m.lock_wait_p99_ms_by_segment.len(), 2);
        // Segment 1's waits are all in +Inf: the largest finite bound.
        assert_eq!(m.lock_wait_p99_ms_by_segment["1"], 10.0);
        assert_eq!(m.errors, vec!["b: refused".to_owned()]);
        assert_eq!(m.oversold_gauge, None);
        assert_eq!(quantile(0.99, &BTreeMap::new()), None);
        assert_eq!(
            summarize(&Scrape::default(), &Scrape::default(), "x").lock_wait_p99_ms,
            None
        );
    }
}
