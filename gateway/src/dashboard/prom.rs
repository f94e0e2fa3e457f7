//! A small parser for the Prometheus text exposition format (version 0.0.4), as served by the
//! services' `/metrics`: the samples only (`# HELP`/`# TYPE` comments are skipped, the sampler
//! knows which names it wants).
//!
//! Hand-written rather than taken from `prometheus-parse` (0.2.5, the usual crate): that one
//! splits label lists on `,` and `=` without honouring quotes or escapes, so a label value
//! containing `,`, `=`, `}` or `\"` is silently mis-read, and it pulls in `regex`, `itertools`
//! and `chrono` for what is a hundred lines here. This parser follows the format's grammar
//! (quoted values with `\\`, `\"`, `\n` escapes, optional trailing comma, optional timestamp) and
//! refuses anything else with the line number.

use std::borrow::Cow;

/// One sample: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Metric name, e.g. `stock_lock_wait_duration_seconds_bucket`.
    pub name: &'a str,
    /// Labels in the order written, values unescaped.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// A line that does not follow the text format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses a whole exposition; fails on the first malformed line.
pub fn parse(text: &str) -> Result<Vec<Sample<'_>>, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(sample)) => samples.push(sample),
            Ok(None) => {}
            Err(reason) => {
                return Err(ParseError {
                    line: index + 1,
                    reason,
                });
            }
        }
    }
    Ok(samples)
}

/// Parses one line: `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str) -> Result<Option<Sample<'_>>, &'static str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("expected a metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("expected a value")?;
    let value = parse_value(value).ok_or("the value is not a number")?;
    if let Some(timestamp) = fields.next()
        && timestamp.parse::<i64>().is_err()
    {
        return Err("the timestamp is not an integer");
    }
    if fields.next().is_some() {
        return Err("unexpected text after the value");
    }
    Ok(Some(Sample {
        name,
        labels,
        value,
    }))
}

/// Parses `name="value",…}` (after the `{`); returns what follows the `}`.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<&'a str, &'static str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated label list")?;
        let name = &rest[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err("expected a label name");
        }
        rest = rest[name_end..].trim_start();
        rest = rest
            .strip_prefix('=')
            .ok_or("expected = after a label name")?;
        rest = rest.trim_start();
        rest = rest
            .strip_prefix('"')
            .ok_or("expected a quoted label value")?;
        let (value, after) = parse_quoted(rest)?;
        labels.push((name, value));
        rest = after.trim_start();
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label value");
        }
    }
}

/// Reads a label value up to its closing quote, unescaping `\\`, `\"` and `\n`.
fn parse_quoted(text: &str) -> Result<(Cow<'_, str>, &str), &'static str> {
    let mut owned: Option<String> = None;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let value = owned.map_or(Cow::Borrowed(&text[..i]), Cow::Owned);
                return Ok((value, &text[i + 1..]));
            }
            '\\' => {
                let buffer = owned.get_or_insert_with(|| text[..i].to_owned());
                match chars.next() {
                    Some((_, '\\')) => buffer.push('\\'),
                    Some((_, '"')) => buffer.push('"'),
                    Some((_, 'n')) => buffer.push('\n'),
                    _ => return Err("invalid escape in a label value"),
                }
            }
            c => {
                if let Some(buffer) = owned.as_mut() {
                    buffer.push(c);
                }
            }
        }
    }
    Err("unterminated label value")
}

/// A sample value: a float, `NaN`, `+Inf` or `-Inf` (Go's `ParseFloat` spellings).
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if text.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.')) => {
            text.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `opentelemetry-prometheus` writes for the stock-service (trimmed).
    const EXPOSITION: &str = r#"# HELP stock_lock_wait_duration_seconds Time to take the strategy's lock(s) for one critical section
# TYPE stock_lock_wait_duration_seconds histogram
stock_lock_wait_duration_seconds_bucket{acquired="true",otel_scope_name="stock-service",otel_scope_version="",strategy="segmented",le="0.001"} 3
stock_lock_wait_duration_seconds_bucket{acquired="true",otel_scope_name="stock-service",otel_scope_version="",strategy="segmented",le="+Inf"} 5
stock_lock_wait_duration_seconds_sum{acquired="true",otel_scope_name="stock-service",otel_scope_version="",strategy="segmented"} 0.0123
# TYPE stock_available gauge
stock_available{segment="0",sku="phone"} 42
target_info{service_name="stock-service"} 1
"#;

    #[test]
    fn parses_an_exporter_page() {
        let samples = parse(EXPOSITION).unwrap();
        assert_eq!(samples.len(), 5);
        let bucket = &samples[0];
        assert_eq!(bucket.name, "stock_lock_wait_duration_seconds_bucket");
        assert_eq!(bucket.label("strategy"), Some("segmented"));
        assert_eq!(bucket.label("otel_scope_version"), Some(""));
        assert_eq!(bucket.label("le"), Some("0.001"));
        assert_eq!(bucket.label("segment"), None);
        assert_eq!(bucket.value, 3.0);
        assert_eq!(samples[1].label("le"), Some("+Inf"));
        assert_eq!(samples[3].name, "stock_available");
        assert_eq!(samples[3].label("sku"), Some("phone"));
        assert_eq!(samples[3].value, 42.0);
    }

    #[test]
    fn quoted_values_may_hold_separators_and_escapes() {
        let s = parse_line(r#"m{a="x,y=z}",b="say \"hi\"\nback\\slash",} 1.5e3 1700000000000"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.label("a"), Some("x,y=z}"));
        assert_eq!(s.label("b"), Some("say \"hi\"\nback\\slash"));
        assert_eq!(s.value, 1500.0);
        assert!(matches!(s.labels[0].1, Cow::Borrowed(_)));
    }

    #[test]
    fn special_values_and_bare_names() {
        assert_eq!(parse_line("up 1").unwrap().unwrap().labels, vec![]);
        assert_eq!(parse_line("x +Inf").unwrap().unwrap().value, f64::INFINITY);
        assert_eq!(
            parse_line("x{} -Inf").unwrap().unwrap().value,
            f64::NEG_INFINITY
        );
        assert!(parse_line("x NaN").unwrap().unwrap().value.is_nan());
        assert_eq!(parse_line("  # a comment").unwrap(), None);
        assert_eq!(parse_line("   ").unwrap(), None);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for bad in [
            "x",
            "x abc",
            "x inf",
            "1x 1",
            "{a=\"b\"} 1",
            "x{a=b} 1",
            "x{a=\"b} 1",
            "x{a=\"b\" c=\"d\"} 1",
            "x{a=\"\\q\"} 1",
            "x 1 soon",
            "x 1 2 3",
        ] {
            assert!(parse_line(bad).is_err(), "accepted {bad:?}");
        }
        let err = parse("ok 1\n\nbad{ 2\n").unwrap_err();
        assert_eq!(err.line, 3);
    }
}
