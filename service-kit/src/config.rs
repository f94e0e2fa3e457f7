//! Service configuration read from environment variables.
//!
//! This is plain [`std::env`](mod@std::env) parsing rather than a configuration crate: a
//! service has a handful of flat settings, and a few lines of `FromStr` give
//! precise error messages (naming the offending variable) without another
//! dependency or a layered-config model nobody needs here.
//!
//! Reads go through [`Env`], which is either the process environment or a
//! fixed map. Tests use the map: in edition 2024 `std::env::set_var` is
//! `unsafe` (and this workspace forbids `unsafe`), and mutating the process
//! environment would race with parallel tests anyway.
//!
//! An [`Env`] remembers every name it was asked for ([`Env::names_read`]), so a
//! test can load a service's configuration from, say, a compose file's
//! `environment:` block and check that every variable set there is one the
//! service actually reads.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

/// Environment variable holding the socket address to listen on.
pub const BIND_ADDR: &str = "BIND_ADDR";
/// Environment variable holding the maximum request body size in bytes.
pub const BODY_LIMIT_BYTES: &str = "BODY_LIMIT_BYTES";

/// Errors raised while reading configuration; each names its variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The variable is set but is not valid UTF-8.
    #[error("environment variable {name} is not valid UTF-8")]
    NotUnicode {
        /// Name of the variable.
        name: String,
    },
    /// The variable is set but its value could not be used.
    #[error("invalid value {value:?} for environment variable {name}: {reason}")]
    Invalid {
        /// Name of the variable.
        name: String,
        /// The raw (trimmed) value found.
        value: String,
        /// Why the value was rejected.
        reason: String,
    },
}

/// A source of configuration variables: the process environment or a fixed map.
///
/// Values are trimmed, and empty values count as unset (so `BIND_ADDR=` in a
/// compose file falls back to the default instead of failing).
///
/// Every lookup is recorded, set or not; clones share the record, so
/// [`Env::names_read`] on any clone lists what all of them were asked for.
#[derive(Debug, Clone, Default)]
pub struct Env {
    fixed: Option<HashMap<String, String>>,
    read: Arc<Mutex<BTreeSet<String>>>,
}

impl Env {
    /// Reads from the process environment.
    pub fn process() -> Self {
        Self::default()
    }

    /// Reads only from the given pairs; the process environment is ignored.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            fixed: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            read: Arc::default(),
        }
    }

    /// Every name looked up so far (through any accessor, by this `Env` or a
    /// clone of it), whether or not it was set.
    pub fn names_read(&self) -> BTreeSet<String> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The trimmed value of `name`, or `None` if it is unset or blank.
    pub fn raw(&self, name: &str) -> Result<Option<String>, ConfigError> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned());
        let value = match &self.fixed {
            Some(map) => map.get(name).cloned(),
            None => match std::env::var(name) {
                Ok(value) => Some(value),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ConfigError::NotUnicode {
                        name: name.to_owned(),
                    });
                }
            },
        };
        Ok(value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()))
    }

    /// Parses `name` with [`FromStr`]; `Ok(None)` if it is unset or blank.
    pub fn parse<T>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.raw(name)?
            .map(|value| {
                value.parse().map_err(|e: T::Err| ConfigError::Invalid {
                    name: name.to_owned(),
                    reason: e.to_string(),
                    value,
                })
            })
            .transpose()
    }

    /// Parses `name`, falling back to `default` if it is unset or blank.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.parse(name)?.unwrap_or(default))
    }

    /// Parses `name` (`default` if unset or blank) and checks it lies in `range`.
    pub fn parse_within<T>(
        &self,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display,
        T::Err: Display,
    {
        let value = self.parse_or(name, default)?;
        if !range.contains(&value) {
            return Err(ConfigError::Invalid {
                name: name.to_owned(),
                value: value.to_string(),
                reason: format!("must be between {} and {}", range.start(), range.end()),
            });
        }
        Ok(value)
    }

    /// A duration given in milliseconds in `name`, `default_ms` if unset.
    pub fn millis(&self, name: &str, default_ms: u64) -> Result<std::time::Duration, ConfigError> {
        Ok(std::time::Duration::from_millis(
            self.parse_or(name, default_ms)?,
        ))
    }

    /// A duration given in seconds in `name`, `default_secs` if unset.
    pub fn secs(&self, name: &str, default_secs: u64) -> Result<std::time::Duration, ConfigError> {
        Ok(std::time::Duration::from_secs(
            self.parse_or(name, default_secs)?,
        ))
    }

    /// The string in `name`, `default` if unset or blank.
    pub fn string_or(&self, name: &str, default: &str) -> Result<String, ConfigError> {
        Ok(self.raw(name)?.unwrap_or_else(|| default.to_owned()))
    }
}

/// Settings every service shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Address to listen on (`BIND_ADDR`; default `0.0.0.0:<default_port>`).
    pub bind_addr: SocketAddr,
    /// Largest accepted request body in bytes (`BODY_LIMIT_BYTES`; default 64 KiB).
    pub body_limit_bytes: usize,
}

impl ServiceConfig {
    /// Default for [`ServiceConfig::body_limit_bytes`]: 64 KiB.
    pub const DEFAULT_BODY_LIMIT_BYTES: usize = 64 * 1024;

    /// Loads the configuration from the process environment.
    pub fn from_env(default_port: u16) -> Result<Self, ConfigError> {
        Self::from_source(&Env::process(), default_port)
    }

    /// Loads the configuration from `env`; `default_port` is used when
    /// `BIND_ADDR` is unset.
    pub fn from_source(env: &Env, default_port: u16) -> Result<Self, ConfigError> {
        let bind_addr = env.parse_or(
            BIND_ADDR,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, default_port)),
        )?;
        let body_limit_bytes = env.parse_or(BODY_LIMIT_BYTES, Self::DEFAULT_BODY_LIMIT_BYTES)?;
        if body_limit_bytes == 0 {
            return Err(ConfigError::Invalid {
                name: BODY_LIMIT_BYTES.to_owned(),
                value: body_limit_bytes.to_string(),
                reason: "must be greater than zero".to_owned(),
            });
        }
        Ok(Self {
            bind_addr,
            body_limit_bytes,
        })
    }
}

/// "cannot connect to Redis at <url without its password>": the context of a failed Redis
/// connection at start, the same in every service.
pub fn redis_unreachable(url: &str) -> String {
    format!("cannot connect to Redis at {}", redact_password(url))
}

/// `url` with the password of its userinfo (`scheme://user:password@host`) replaced by `***`,
/// for error messages and logs (database and Redis URLs carry
/// passwords under compose).
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_password;

    #[test]
    fn passwords_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_password("postgres://postgres:s3cret@postgres:5432/seckill_stock"),
            "postgres://postgres:***@postgres:5432/seckill_stock"
        );
        assert_eq!(
            redact_password("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(
            redact_password("postgres://u:p@h/db?sslmode=disable&x=a@b"),
            "postgres://u:***@h/db?sslmode=disable&x=a@b"
        );
        assert_eq!(redact_password("not a url"), "not a url");
    }
}
