//! Configuration and telemetry settings parsed from environment variables.

use std::net::SocketAddr;

use service_kit::config::{ConfigError, Env, ServiceConfig};
use service_kit::telemetry::{self, LogFormat};

#[test]
fn defaults_apply_when_unset() {
    let config = ServiceConfig::from_source(&Env::from_pairs::<_, &str, &str>([]), 8082).unwrap();
    assert_eq!(
        config.bind_addr,
        "0.0.0.0:8082".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.body_limit_bytes, 64 * 1024);
}

#[test]
fn blank_values_count_as_unset() {
    let env = Env::from_pairs([("BIND_ADDR", ""), ("BODY_LIMIT_BYTES", "   ")]);
    let config = ServiceConfig::from_source(&env, 8081).unwrap();
    assert_eq!(config.bind_addr.port(), 8081);
    assert_eq!(
        config.body_limit_bytes,
        ServiceConfig::DEFAULT_BODY_LIMIT_BYTES
    );
}

#[test]
fn values_override_defaults() {
    let env = Env::from_pairs([
        ("BIND_ADDR", "127.0.0.1:9000"),
        ("BODY_LIMIT_BYTES", " 1024 "),
    ]);
    let config = ServiceConfig::from_source(&env, 8080).unwrap();
    assert_eq!(
        config.bind_addr,
        "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.body_limit_bytes, 1024);
}

#[test]
fn invalid_bind_addr_names_the_variable() {
    let env = Env::from_pairs([("BIND_ADDR", "localhost")]);
    let err = ServiceConfig::from_source(&env, 8080).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { name, value, .. } if name == "BIND_ADDR" && value == "localhost"),
        "{err:?}"
    );
    assert!(err.to_string().contains("BIND_ADDR"), "{err}");
}

#[test]
fn invalid_body_limit_names_the_variable() {
    let env = Env::from_pairs([("BODY_LIMIT_BYTES", "64KiB")]);
    let err = ServiceConfig::from_source(&env, 8080).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { name, .. } if name == "BODY_LIMIT_BYTES"),
        "{err:?}"
    );
    assert!(err.to_string().contains("BODY_LIMIT_BYTES"), "{err}");
}

#[test]
fn zero_body_limit_is_rejected() {
    let env = Env::from_pairs([("BODY_LIMIT_BYTES", "0")]);
    let err = ServiceConfig::from_source(&env, 8080).unwrap_err();
    assert!(err.to_string().contains("greater than zero"), "{err}");
}

#[test]
fn env_parse_is_reusable_for_service_specific_settings() {
    let env = Env::from_pairs([("STOCK_URL", "http://stock:8082"), ("RETRIES", "three")]);
    assert_eq!(
        env.parse::<String>("STOCK_URL").unwrap().as_deref(),
        Some("http://stock:8082")
    );
    assert_eq!(env.parse_or("MISSING", 5_u32).unwrap(), 5);
    let err = env.parse::<u32>("RETRIES").unwrap_err();
    assert!(err.to_string().contains("RETRIES"), "{err}");
}

#[test]
fn log_format_parses_known_values() {
    assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
    assert_eq!("JSON".parse::<LogFormat>().unwrap(), LogFormat::Json);
    assert_eq!("pretty".parse::<LogFormat>().unwrap(), LogFormat::Pretty);
    assert_eq!("compact".parse::<LogFormat>().unwrap(), LogFormat::Compact);
    assert!("xml".parse::<LogFormat>().is_err());
}

#[test]
fn invalid_log_settings_name_the_variable() {
    let err = telemetry::env_filter(&Env::from_pairs([("RUST_LOG", "info,=[")])).unwrap_err();
    assert!(err.to_string().contains("RUST_LOG"), "{err}");

    // Checked before anything is installed, so this does not touch the global subscriber.
    let err = telemetry::init_from(&Env::from_pairs([("LOG_FORMAT", "xml")]), "test").unwrap_err();
    assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
}

#[test]
fn default_filter_is_info() {
    let filter = telemetry::env_filter(&Env::from_pairs::<_, &str, &str>([])).unwrap();
    assert_eq!(filter.to_string(), "info");
}

#[test]
fn env_records_every_name_looked_up() {
    let env = Env::from_pairs([("BIND_ADDR", "127.0.0.1:9000"), ("UNUSED", "x")]);
    let clone = env.clone();
    ServiceConfig::from_source(&clone, 8080).unwrap();
    let read = env.names_read();
    assert!(read.contains("BIND_ADDR"), "{read:?}");
    assert!(
        read.contains("BODY_LIMIT_BYTES"),
        "unset names count too: {read:?}"
    );
    assert!(!read.contains("UNUSED"), "{read:?}");
}
