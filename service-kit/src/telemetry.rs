//! Process-wide `tracing` subscriber setup, OpenTelemetry traces over OTLP, and W3C
//! trace-context propagation.
//!
//! * `RUST_LOG` selects what is logged (env-filter syntax, default `info`); it filters the
//!   exported spans too.
//! * `LOG_FORMAT` selects the output: `json` (one object per line, for log shippers), `pretty`
//!   (multi-line, for humans) or `compact` (the default).
//! * `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://otel-collector:4318`) turns on span export
//!   over OTLP/HTTP with protobuf bodies to `<endpoint>/v1/traces`;
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` gives the full traces URL instead. Without either,
//!   no exporter and no OpenTelemetry layer are installed: tracing costs what it did before.
//! * `OTEL_SERVICE_NAME` names the service in the traces (default: the crate name the
//!   binary passes to [`init`]).
//! * `OTEL_EXPORTER_OTLP_PROTOCOL` / `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, when set, must be
//!   `http/protobuf` (the only transport compiled in).
//!
//! The SDK itself also honours the standard `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*` (batching) and
//! `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT`/`_COMPRESSION` variables.
//!
//! Propagation: [`set_parent_from_headers`] makes a request span the child of an incoming
//! `traceparent` (the shared middleware in [`crate::layers`] does it for every service), and
//! [`inject_span`] / [`inject_current`] write the `traceparent` of a span into outgoing request
//! headers. Both are no-ops when no OpenTelemetry layer is installed.

use std::str::FromStr;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};

use crate::config::{ConfigError, Env};

/// Environment variable selecting the [`LogFormat`].
pub const LOG_FORMAT: &str = "LOG_FORMAT";
/// Environment variable holding the env-filter directives.
pub const RUST_LOG: &str = "RUST_LOG";
/// Base URL of an OTLP/HTTP receiver; traces go to `<endpoint>/v1/traces`.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Full URL for traces; wins over [`OTEL_EXPORTER_OTLP_ENDPOINT`].
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// OTLP protocol; only `http/protobuf` is supported.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// OTLP protocol for traces; wins over [`OTEL_EXPORTER_OTLP_PROTOCOL`].
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// The `service.name` resource attribute of exported spans.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

/// Path the OTLP/HTTP traces endpoint has under the base endpoint.
const TRACES_PATH: &str = "/v1/traces";
/// The one OTLP protocol compiled in.
const HTTP_PROTOBUF: &str = "http/protobuf";

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Single-line human-readable output (default).
    #[default]
    Compact,
    /// Multi-line human-readable output.
    Pretty,
    /// Newline-delimited JSON objects.
    Json,
}

/// Error for an unrecognised `LOG_FORMAT` value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("expected one of \"json\", \"pretty\", \"compact\"")]
pub struct UnknownLogFormat;

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "compact" => Ok(Self::Compact),
            "pretty" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            _ => Err(UnknownLogFormat),
        }
    }
}

/// Errors raised by [`init`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// `RUST_LOG`, `LOG_FORMAT` or an `OTEL_*` variable is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A global subscriber was already installed.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialized(#[source] TryInitError),
    /// The OTLP span exporter could not be built.
    #[error("cannot build the OTLP span exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Where and as whom spans are exported, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingConfig {
    /// Full URL spans are POSTed to (`…/v1/traces`); `None` exports nothing.
    pub traces_endpoint: Option<String>,
    /// The `service.name` of the spans.
    pub service_name: String,
}

impl TracingConfig {
    /// Reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/traces`), `OTEL_SERVICE_NAME` (default
    /// `default_service_name`) and checks `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`.
    pub fn from_env(env: &Env, default_service_name: &str) -> Result<Self, ConfigError> {
        let traces_endpoint = match env.raw(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)? {
            Some(url) => Some(check_url(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, url)?),
            None => env
                .raw(OTEL_EXPORTER_OTLP_ENDPOINT)?
                .map(|base| {
                    let base = check_url(OTEL_EXPORTER_OTLP_ENDPOINT, base)?;
                    Ok::<_, ConfigError>(format!("{}{TRACES_PATH}", base.trim_end_matches('/')))
                })
                .transpose()?,
        };
        for name in [
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            OTEL_EXPORTER_OTLP_PROTOCOL,
        ] {
            if let Some(protocol) = env.raw(name)? {
                if protocol != HTTP_PROTOBUF {
                    return Err(ConfigError::Invalid {
                        name: name.to_owned(),
                        value: protocol,
                        reason: format!("only {HTTP_PROTOBUF} is supported"),
                    });
                }
                break;
            }
        }
        Ok(Self {
            traces_endpoint,
            service_name: env.string_or(OTEL_SERVICE_NAME, default_service_name)?,
        })
    }
}

fn check_url(name: &str, url: String) -> Result<String, ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url)
    } else {
        Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: url,
            reason: "expected an http:// or https:// URL".to_owned(),
        })
    }
}

/// What [`init`] installed. Keep it alive for the life of the process and call
/// [`Telemetry::shutdown`] on exit: it flushes the spans still queued for export (dropping it
/// does the same).
#[derive(Debug)]
#[must_use = "dropping the guard stops span export; keep it until the process exits"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flush queued spans and stop the exporter. Blocks the calling thread until the batch is
    /// sent (bounded by the exporter timeout); call it from `main` after serving stopped.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "span exporter shutdown failed; some spans may be lost");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds the filter from `RUST_LOG` in `env` (default `info`).
pub fn env_filter(env: &Env) -> Result<EnvFilter, ConfigError> {
    let directives = env.raw(RUST_LOG)?.unwrap_or_default();
    EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse(&directives)
        .map_err(|e| ConfigError::Invalid {
            name: RUST_LOG.to_owned(),
            value: directives,
            reason: e.to_string(),
        })
}

/// Installs the global subscriber (and, with an OTLP endpoint, the span exporter) configured
/// from the process environment. `service_name` is the default `OTEL_SERVICE_NAME`.
pub fn init(service_name: &str) -> Result<Telemetry, TelemetryError> {
    init_from(&Env::process(), service_name)
}

/// Every telemetry setting read from `env`, without installing anything: what
/// [`init_from`] would read and reject (configuration checks use it).
pub fn check_settings(env: &Env, service_name: &str) -> Result<(), ConfigError> {
    settings(env, service_name).map(|_| ())
}

fn settings(
    env: &Env,
    service_name: &str,
) -> Result<(EnvFilter, LogFormat, TracingConfig), ConfigError> {
    Ok((
        env_filter(env)?,
        env.parse_or(LOG_FORMAT, LogFormat::default())?,
        TracingConfig::from_env(env, service_name)?,
    ))
}

/// Installs the global subscriber configured from `env`; see [`init`].
pub fn init_from(env: &Env, service_name: &str) -> Result<Telemetry, TelemetryError> {
    let (filter, format, tracing_config) = settings(env, service_name)?;
    let provider = tracing_config
        .traces_endpoint
        .as_deref()
        .map(|endpoint| tracer_provider(endpoint, &tracing_config.service_name))
        .transpose()?;
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(tracing_config.service_name.clone()))
            .with_threads(false)
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = match format {
        LogFormat::Compact => registry
            .with(tracing_subscriber::fmt::layer().compact())
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().pretty())
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    result.map_err(TelemetryError::AlreadyInitialized)?;
    if let Some(endpoint) = &tracing_config.traces_endpoint {
        tracing::info!(
            endpoint,
            service = tracing_config.service_name,
            "exporting traces over OTLP/HTTP"
        );
    }
    Ok(Telemetry { provider })
}

/// A tracer provider batching spans to the OTLP/HTTP `endpoint` (full traces URL), also
/// installed as the global tracer provider, with the W3C trace-context propagator as the
/// global propagator.
fn tracer_provider(
    endpoint: &str,
    service_name: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(TelemetryError::Exporter)?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(provider)
}

/// The W3C trace context (`traceparent`, `tracestate`) in `headers`, as an OpenTelemetry
/// context (empty when absent or malformed).
pub fn extract_context(headers: &HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the trace context an incoming request carries in `headers`. Call
/// it right after creating the span, before it is entered. Does nothing when the headers carry
/// no `traceparent` or no OpenTelemetry layer is installed.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    if headers.contains_key(TRACEPARENT) {
        // Fails only without an OpenTelemetry layer (nothing to link) or for a span that is
        // already started; either way the span simply keeps its local parent.
        let _ = span.set_parent(extract_context(headers));
    }
}

/// Writes `span`'s trace context into `headers` (`traceparent`, replacing any already there,
/// and `tracestate`), so the receiver's spans become its children. Leaves `headers` alone when
/// the span has no valid OpenTelemetry context (no layer installed).
pub fn inject_span(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// [`inject_span`] for the current span.
pub fn inject_current(headers: &mut HeaderMap) {
    inject_span(&tracing::Span::current(), headers);
}

/// The W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(key), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_and_service_name_come_from_the_environment() {
        let none = TracingConfig::from_env(&Env::from_pairs([("X", "1")]), "svc").expect("ok");
        assert_eq!(none.traces_endpoint, None);
        assert_eq!(none.service_name, "svc");

        let base = TracingConfig::from_env(
            &Env::from_pairs([
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318/"),
                (OTEL_SERVICE_NAME, "shop-stock"),
            ]),
            "svc",
        )
        .expect("ok");
        assert_eq!(
            base.traces_endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(base.service_name, "shop-stock");

        let full = TracingConfig::from_env(
            &Env::from_pairs([
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318"),
                (
                    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                    "http://jaeger:4318/v1/traces",
                ),
                (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
            ]),
            "svc",
        )
        .expect("ok");
        assert_eq!(
            full.traces_endpoint.as_deref(),
            Some("http://jaeger:4318/v1/traces")
        );

        for bad in [
            (OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
        ] {
            let err = TracingConfig::from_env(&Env::from_pairs([bad]), "svc").expect_err("bad");
            assert!(err.to_string().contains(bad.0), "{err}");
        }
    }

    #[test]
    fn trace_context_round_trips_through_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let cx = extract_context(&headers);
        let mut out = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out[TRACEPARENT], headers[TRACEPARENT]);
        // Without an OpenTelemetry layer the current span has no context: nothing is written.
        let mut untouched = HeaderMap::new();
        inject_current(&mut untouched);
        assert!(untouched.is_empty());
    }
}
