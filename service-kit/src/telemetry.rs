//! Process-wide `tracing` subscriber setup.
//!
//! * `RUST_LOG` selects what is logged (env-filter syntax, default `info`).
//! * `LOG_FORMAT` selects the output: `json` (one object per line, for log
//!   shippers), `pretty` (multi-line, for humans) or `compact` (the default).

use std::str::FromStr;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};

use crate::config::{ConfigError, Env};

/// Environment variable selecting the [`LogFormat`].
pub const LOG_FORMAT: &str = "LOG_FORMAT";
/// Environment variable holding the env-filter directives.
pub const RUST_LOG: &str = "RUST_LOG";

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
    /// `RUST_LOG` or `LOG_FORMAT` is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A global subscriber was already installed.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialized(#[source] TryInitError),
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

/// Installs the global subscriber configured from the process environment.
pub fn init() -> Result<(), TelemetryError> {
    init_from(&Env::process())
}

/// Installs the global subscriber configured from `env`.
pub fn init_from(env: &Env) -> Result<(), TelemetryError> {
    let filter = env_filter(env)?;
    let format = env.parse_or(LOG_FORMAT, LogFormat::default())?;
    let registry = tracing_subscriber::registry().with(filter);
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
    result.map_err(TelemetryError::AlreadyInitialized)
}
