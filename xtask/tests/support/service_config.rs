//! Loading a deployment's environment for one of the Rust services with that service's own
//! configuration loader: shared by the compose checks (`tests/compose.rs`) and the Kubernetes
//! checks (`tests/k8s.rs`), so that both hold their `environment:`/`env:` blocks against
//! the same code the binaries run at start.
//!
//! [`Env::from_pairs`] records every name a loader asks for, so after loading, a variable the
//! deployment sets but the loader never asked for is a typo or a leftover.

use std::collections::BTreeMap;
use std::path::Path;

use service_kit::config::Env;

/// The Rust services (Dockerfile targets and binaries) whose environment is checked.
pub const SERVICE_TARGETS: &[&str] = &["gateway", "order-service", "stock-service"];

/// Variables the OpenTelemetry SDK reads straight from the process environment (not through
/// [`Env`]), so they count as read for every service. `OTEL_SERVICE_NAME` and the OTLP
/// endpoint/protocol are read through `Env` by `service_kit::telemetry`, so they are checked.
pub const OTEL_SDK_VARS: &[&str] = &[
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

/// Loads `env` the way the `target` binary does at start (its configuration, and for the
/// gateway the file `GATEWAY_CONFIG` names, with the environment's secrets applied).
///
/// `gateway_file` returns the text of the file the container would find at a path: compose
/// reads it through a bind mount, Kubernetes from a mounted ConfigMap. It is called only for
/// the gateway, and only when `GATEWAY_CONFIG` is set (unset, the built-in example is used,
/// as the binary does).
pub fn load_config(
    target: &str,
    env: &Env,
    gateway_file: impl FnOnce(&Path) -> Result<String, String>,
) -> Result<(), String> {
    match target {
        "stock-service" => stock_service::StockConfig::from_source(env)
            .map(drop)
            .map_err(|e| e.to_string()),
        "order-service" => order_service::OrderConfig::from_source(env)
            .map(drop)
            .map_err(|e| e.to_string()),
        "gateway" => {
            let settings = gateway::GatewaySettings::from_source(env).map_err(|e| e.to_string())?;
            let file = match &settings.config_path {
                None => gateway::FileConfig::parse(gateway::settings::EXAMPLE_CONFIG),
                Some(path) => gateway::FileConfig::parse(&gateway_file(path)?),
            }
            .map_err(|e| e.to_string())?;
            // Applies the environment's secrets: a short JWT_SECRET fails here.
            gateway::runtime::Runtime::build(file, &settings, None)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("no loader for target {other}")),
    }
}

/// What is wrong with `vars`, the environment that `instance` gives the `target` binary:
/// telemetry settings the binary would reject, a configuration that does not load, and every
/// variable set that the binary never reads. Empty when all is well.
pub fn environment_problems(
    instance: &str,
    target: &str,
    vars: &BTreeMap<String, String>,
    gateway_file: impl FnOnce(&Path) -> Result<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let env = Env::from_pairs(vars.clone());
    // The same reads the binary does at start: telemetry, then its configuration.
    if let Err(e) = service_kit::telemetry::check_settings(&env, target) {
        problems.push(format!("{instance}: telemetry settings rejected: {e}"));
    }
    if let Err(e) = load_config(target, &env, gateway_file) {
        // Loading stopped early, so what was read says nothing.
        problems.push(format!(
            "{instance}: the {target} configuration does not load: {e}"
        ));
        return problems;
    }
    let read = env.names_read();
    for key in vars.keys() {
        if !read.contains(key) && !OTEL_SDK_VARS.contains(&key.as_str()) {
            problems.push(format!(
                "{instance}: sets {key}, which {target} never reads (typo or leftover?); it reads {read:?}"
            ));
        }
    }
    problems
}
