//! Offline checks of `docker compose up`: `compose.yaml`, `.env.example`, `.dockerignore` and
//! everything under `infra/` (Dockerfile, gateway TOML, Prometheus, Grafana, OTel collector).
//!
//! There is no Docker engine where these run, so nothing is built or started. Instead every
//! file is parsed and cross-checked against the others and against the Rust code itself:
//! each service's `environment:` is loaded with that service's own configuration loader, the
//! gateway TOML with the gateway's own validation, the workspace binaries come from
//! `cargo metadata`. Each check collects all its problems and fails with the list.
//!
//! Variables are resolved the way compose does (`${VAR:-default}`), from `.env.example`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use support::files::{display, normalize, root};
use support::metrics::{self, Kind};
use support::problems::assert_problems;
use support::service_config::{SERVICE_TARGETS, environment_problems};

/// Services allowed to publish ports on the host: the public door and the dashboards.
const PUBLISHING: &[&str] = &["gateway", "grafana", "jaeger", "prometheus"];

/// Long-running services without a healthcheck, and why.
const NO_HEALTHCHECK: &[(&str, &str)] = &[(
    "otel-collector",
    "the collector image is FROM scratch: no shell, curl or wget to run a probe with",
)];

/// Port of the collector's OTLP http/protobuf receiver, which the services export to.
const OTLP_HTTP_PORT: u16 = 4318;

const COMPOSE: &str = "compose.yaml";
/// The override that runs the shop on a 3-master Redis Cluster.
const REDIS_CLUSTER_OVERRIDE: &str = "compose.redis-cluster.yaml";
const ENV_EXAMPLE: &str = ".env.example";
const DOCKERFILE: &str = "infra/docker/Dockerfile";
const COMPOSE_SCHEMA: &str = "infra/schema/compose-spec.json";
const GATEWAY_TOML: &str = "infra/gateway/gateway.toml";
const PROMETHEUS: &str = "infra/prometheus/prometheus.yml";
const GRAFANA_DATASOURCES: &str = "infra/grafana/provisioning/datasources";
const GRAFANA_DASHBOARD_PROVIDERS: &str = "infra/grafana/provisioning/dashboards";
const OTEL_COLLECTOR: &str = "infra/otel-collector/config.yaml";

// ---------------------------------------------------------------------------------------
// The checks.

#[test]
fn compose_file_parses_and_matches_the_compose_spec_schema() {
    let compose = Compose::load();
    let schema: Value = serde_json::from_str(&read(COMPOSE_SCHEMA))
        .unwrap_or_else(|e| panic!("{COMPOSE_SCHEMA} is not JSON: {e}"));
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{COMPOSE_SCHEMA} is not a usable JSON schema: {e}"));
    let problems: Vec<String> = validator
        .iter_errors(&compose.doc)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect();
    assert_problems(
        &format!("{COMPOSE} does not match the compose specification"),
        problems,
    );
    assert!(
        !compose.services().is_empty(),
        "{COMPOSE} defines no services"
    );
}

#[test]
fn env_example_documents_exactly_the_variables_compose_uses_with_the_same_defaults() {
    let compose = Compose::load();
    let example = &compose.vars;
    let mut problems = Vec::new();
    for (name, defaults) in &compose.references {
        match example.get(name) {
            None => problems.push(format!(
                "{COMPOSE} uses ${{{name}}} but {ENV_EXAMPLE} does not list it"
            )),
            Some(value) => {
                for default in defaults {
                    match default {
                        None => problems.push(format!(
                            "{COMPOSE} uses ${{{name}}} without a default; write ${{{name}:-{value}}} so the stack runs without a .env"
                        )),
                        Some(d) if d != value => problems.push(format!(
                            "{COMPOSE} defaults {name} to {d:?} but {ENV_EXAMPLE} says {value:?}"
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    for name in example.keys() {
        if !compose.references.contains_key(name) {
            problems.push(format!(
                "{ENV_EXAMPLE} lists {name}, which {COMPOSE} never uses"
            ));
        }
    }
    assert_problems("compose variables and .env.example disagree", problems);
}

#[tokio::test]
async fn every_service_environment_loads_and_every_variable_is_read() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, service) in compose.services() {
        let Some(target) = compose.runs_target(service) else {
            continue;
        };
        if !SERVICE_TARGETS.contains(&target) {
            continue;
        }
        checked += 1;
        let vars = environment(service);
        // The gateway's file, found on the host through the bind mount.
        problems.extend(environment_problems(name, target, &vars, |path| {
            let path = path.to_string_lossy();
            let host = host_path(service, &path)
                .ok_or_else(|| format!("GATEWAY_CONFIG={path} is not a mounted file"))?;
            std::fs::read_to_string(&host)
                .map_err(|e| format!("cannot read {}: {e}", host.display()))
        }));
        if !vars.contains_key("BIND_ADDR") {
            problems.push(format!(
                "{name}: set BIND_ADDR explicitly; the healthcheck and Prometheus depend on its port"
            ));
        }
        match vars.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            None => problems.push(format!("{name}: OTEL_EXPORTER_OTLP_ENDPOINT is not set")),
            Some(url) => match parse_http_url(url) {
                Some((host, port, _)) if compose.is_service(&host) && port == OTLP_HTTP_PORT => {
                }
                _ => problems.push(format!(
                    "{name}: OTEL_EXPORTER_OTLP_ENDPOINT={url} is not http://<compose service>:{OTLP_HTTP_PORT}"
                )),
            },
        }
        if !vars.contains_key("OTEL_SERVICE_NAME") {
            problems.push(format!("{name}: OTEL_SERVICE_NAME is not set"));
        }
    }
    assert!(
        checked >= 5,
        "expected the gateway and two instances of each service in {COMPOSE}, found {checked}"
    );
    assert_problems(
        "service environments do not match what the binaries read",
        problems,
    );
}

#[test]
fn healthchecks_prometheus_and_gateway_pools_use_the_ports_services_bind() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        let Some(port) = compose.bind_port(name) else {
            continue;
        };
        let urls = healthcheck_urls(service);
        if urls.is_empty() {
            problems.push(format!("{name}: the healthcheck probes no http:// URL"));
        }
        for (host, hport, path) in urls {
            if !matches!(host.as_str(), "127.0.0.1" | "localhost") || hport != port {
                problems.push(format!(
                    "{name}: healthcheck probes {host}:{hport}{path}, but BIND_ADDR listens on port {port}"
                ));
            }
            if path != "/healthz" {
                problems.push(format!("{name}: healthcheck probes {path}, not /healthz"));
            }
        }
    }

    let gateway = gateway::FileConfig::read(&root().join(GATEWAY_TOML))
        .unwrap_or_else(|e| panic!("{GATEWAY_TOML}: {e}"))
        .0;
    for (pool, urls) in &gateway.pools {
        let mut targets = BTreeSet::new();
        let mut listed = BTreeSet::new();
        for url in urls {
            let Some((host, port, _)) = parse_http_url(url) else {
                problems.push(format!(
                    "{GATEWAY_TOML}: pool {pool}: {url} is not http://host:port"
                ));
                continue;
            };
            match compose.bind_port(&host) {
                None => problems.push(format!(
                    "{GATEWAY_TOML}: pool {pool}: {host} is not a service of {COMPOSE} with a BIND_ADDR"
                )),
                Some(bound) if bound != port => problems.push(format!(
                    "{GATEWAY_TOML}: pool {pool}: {url} but {host} binds port {bound}"
                )),
                Some(_) => {}
            }
            if let Some(target) = compose.service(&host).and_then(build_target) {
                targets.insert(target.to_owned());
            }
            listed.insert(host);
        }
        if targets.len() > 1 {
            problems.push(format!(
                "{GATEWAY_TOML}: pool {pool} mixes different services: {targets:?}"
            ));
        }
        for target in &targets {
            for instance in compose.services_built_from(target) {
                if !listed.contains(&instance) {
                    problems.push(format!(
                        "{GATEWAY_TOML}: pool {pool} leaves out {instance}, another {target} instance"
                    ));
                }
            }
        }
    }
    assert_problems("ports disagree", problems);
}

#[test]
fn depends_on_points_at_existing_healthchecked_services() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        for (target, condition) in depends_on(service) {
            let Some(dependency) = compose.service(&target) else {
                problems.push(format!(
                    "{name}: depends on {target}, which is not a service"
                ));
                continue;
            };
            let exempt = NO_HEALTHCHECK.iter().any(|(n, _)| *n == target);
            let expected = if dependency.get("healthcheck").is_some() {
                "service_healthy"
            } else if exempt {
                "service_started"
            } else if dependency.get("restart").is_none() {
                "service_completed_successfully"
            } else {
                problems.push(format!(
                    "{name}: depends on {target}, which has no healthcheck to wait for"
                ));
                continue;
            };
            if condition != expected {
                problems.push(format!(
                    "{name}: depends on {target} with condition {condition}; use {expected}"
                ));
            }
        }
    }
    assert_problems("depends_on is wrong", problems);
}

#[test]
fn long_running_services_have_healthchecks_and_restart_policies() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        if service.get("profiles").is_some() {
            // On-demand jobs (the load test) run to completion.
            if service.get("restart").is_some() {
                problems.push(format!("{name}: a one-shot job should not restart"));
            }
            continue;
        }
        let exempt = NO_HEALTHCHECK.iter().any(|(n, _)| n == name);
        match (service.get("healthcheck"), exempt) {
            (None, false) => problems.push(format!("{name}: no healthcheck")),
            (Some(_), true) => problems.push(format!(
                "{name}: has a healthcheck now; remove it from NO_HEALTHCHECK"
            )),
            (Some(h), false) if h.get("test").is_none() => {
                problems.push(format!("{name}: the healthcheck has no test"));
            }
            _ => {}
        }
        match service.get("restart").and_then(Value::as_str) {
            Some("always" | "unless-stopped") => {}
            Some(p) if p.starts_with("on-failure") => {}
            other => problems.push(format!(
                "{name}: restart policy {other:?}; use unless-stopped"
            )),
        }
    }
    assert_problems("long-running services are not supervised", problems);
}

#[test]
fn only_the_gateway_and_the_dashboards_publish_ports() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        let published = service
            .get("ports")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty());
        if published && !PUBLISHING.contains(&name.as_str()) {
            problems.push(format!(
                "{name}: publishes ports; only {PUBLISHING:?} may (others stay on the compose network)"
            ));
        }
        if name == "gateway" && !published {
            problems.push("gateway: publishes no port".to_owned());
        }
    }
    assert_problems("ports are published that should not be", problems);
}

#[test]
fn each_image_is_built_by_one_service_and_the_others_never_pull_it() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    let mut builders: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for (name, service) in compose.services() {
        let Some(image) = service.get("image").and_then(Value::as_str) else {
            continue;
        };
        if service.get("build").is_some() {
            builders.entry(image).or_default().push(name);
        }
    }
    for (image, names) in &builders {
        if names.len() > 1 {
            problems.push(format!(
                "{image} is built by {names:?}: parallel builds of one tag fail (\"image already exists\"); build it once"
            ));
        }
    }
    for (name, service) in compose.services() {
        let Some(image) = service.get("image").and_then(Value::as_str) else {
            continue;
        };
        if service.get("build").is_none()
            && builders.contains_key(image)
            && service.get("pull_policy").and_then(Value::as_str) != Some("never")
        {
            problems.push(format!(
                "{name}: runs {image}, built here, without `pull_policy: never` (it would try to pull it)"
            ));
        }
    }
    assert_problems("images are built more than once", problems);
}

#[test]
fn long_running_services_keep_their_logs_bounded() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        if service.get("profiles").is_some() {
            continue;
        }
        let options = service.pointer("/logging/options");
        let max_size = options.and_then(|o| o.get("max-size")).map(scalar);
        let max_file = options.and_then(|o| o.get("max-file")).map(scalar);
        if max_size.is_none() || max_file.is_none() {
            problems.push(format!(
                "{name}: no logging max-size/max-file: its log grows without limit"
            ));
        }
    }
    assert_problems("logs grow without limit", problems);
}

#[test]
fn bind_mounts_are_read_only_and_relabelled_for_selinux() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        for volume in service
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|v| v.starts_with("./"))
        {
            let mode = volume.splitn(3, ':').nth(2).unwrap_or("");
            let flags: Vec<&str> = mode.split(',').collect();
            if !flags.contains(&"ro") || !(flags.contains(&"z") || flags.contains(&"Z")) {
                problems.push(format!(
                    "{name}: {volume}: bind mounts of the repository are `ro,z` (read-only, readable on SELinux hosts)"
                ));
            }
        }
    }
    assert_problems("bind mounts", problems);
}

#[test]
fn grafana_mounts_only_the_provisioning_folders_it_uses() {
    let compose = Compose::load();
    let grafana = compose
        .service("grafana")
        .unwrap_or_else(|| panic!("{COMPOSE} has no grafana service"));
    let targets: Vec<String> = bind_mounts(grafana).into_iter().map(|(_, t)| t).collect();
    assert!(
        !targets
            .iter()
            .any(|t| t.trim_end_matches('/') == "/etc/grafana/provisioning"),
        "mounting over /etc/grafana/provisioning hides the image's alerting/ and plugins/ folders: {targets:?}"
    );
    for folder in ["datasources", "dashboards"] {
        assert!(
            targets.contains(&format!("/etc/grafana/provisioning/{folder}")),
            "provisioning/{folder} is not mounted: {targets:?}"
        );
    }
}

#[test]
fn images_are_pinned() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        let Some(image) = service.get("image").and_then(Value::as_str) else {
            if service.get("build").is_none() {
                problems.push(format!("{name}: neither image nor build"));
            }
            continue;
        };
        let local = compose.runs_target(service).is_some();
        if let Err(e) = check_pinned(image, local) {
            problems.push(format!("{name}: image {image}: {e}"));
        }
    }
    let dockerfile = Dockerfile::load();
    for stage in &dockerfile.stages {
        if dockerfile.stage(&stage.base).is_none()
            && let Err(e) = check_pinned(&stage.base, false)
        {
            problems.push(format!("{DOCKERFILE}: FROM {}: {e}", stage.base));
        }
    }
    assert_problems("images are not pinned", problems);
}

#[test]
fn the_rust_image_is_new_enough_for_the_workspace() {
    let dockerfile = Dockerfile::load();
    let manifest = read("Cargo.toml");
    let required = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version"))
        .and_then(|l| l.split('"').nth(1))
        .unwrap_or_else(|| panic!("Cargo.toml has no workspace rust-version"));
    let builders: Vec<&Stage> = dockerfile
        .stages
        .iter()
        .filter(|s| s.base.starts_with("rust:"))
        .collect();
    assert!(
        !builders.is_empty(),
        "{DOCKERFILE}: no stage builds FROM an official rust:<version> image"
    );
    for stage in builders {
        let tag = stage.base.trim_start_matches("rust:");
        let version = version_prefix(tag);
        assert!(
            !version.is_empty() && version_at_least(&version, &version_prefix(required)),
            "{DOCKERFILE}: FROM {} but the workspace needs Rust {required}",
            stage.base
        );
    }
}

#[test]
fn dockerfile_targets_exist_run_as_non_root_and_ship_workspace_binaries() {
    let compose = Compose::load();
    let dockerfile = Dockerfile::load();
    let binaries = workspace_binaries();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        let Some(build) = service.get("build") else {
            continue;
        };
        let file = build
            .get("dockerfile")
            .and_then(Value::as_str)
            .unwrap_or("Dockerfile");
        let context = build.get("context").and_then(Value::as_str).unwrap_or(".");
        if root().join(context).join(file) != root().join(DOCKERFILE) {
            problems.push(format!(
                "{name}: builds {context}/{file}; every image comes from {DOCKERFILE} with context ."
            ));
            continue;
        }
        let Some(target) = build_target(service) else {
            problems.push(format!("{name}: build has no target"));
            continue;
        };
        let Some(stage) = dockerfile.stage(target) else {
            problems.push(format!(
                "{name}: build target {target} is not a stage of {DOCKERFILE}"
            ));
            continue;
        };
        match dockerfile.effective_user(stage) {
            None => problems.push(format!(
                "{DOCKERFILE}: stage {target} runs as root (no USER)"
            )),
            Some(user) => {
                let uid = user.split(':').next().unwrap_or_default();
                match uid.parse::<u32>() {
                    Ok(0) => problems.push(format!("{DOCKERFILE}: stage {target} runs as uid 0")),
                    Ok(_) => {}
                    Err(_) => problems.push(format!(
                        "{DOCKERFILE}: stage {target}: USER {user} is not a numeric uid (Kubernetes' runAsNonRoot cannot verify names)"
                    )),
                }
            }
        }
        let copied = stage.copied_binaries();
        if copied.is_empty() {
            problems.push(format!(
                "{DOCKERFILE}: stage {target} copies no binary from another stage"
            ));
        }
        for (bin, destination) in copied {
            if !binaries.contains(&bin) {
                if bin == "loadtest" && !root().join("loadtest/Cargo.toml").exists() {
                    // The loadtest crate lands with its own issue; until then only the stage
                    // is checked.
                    eprintln!("note: the loadtest crate is not in the workspace yet");
                } else {
                    problems.push(format!(
                        "{DOCKERFILE}: stage {target} ships {bin}, which is not a [[bin]] of the workspace ({binaries:?})"
                    ));
                }
            }
            if !stage
                .instructions("ENTRYPOINT")
                .chain(stage.instructions("CMD"))
                .any(|args| args.contains(&destination))
            {
                problems.push(format!(
                    "{DOCKERFILE}: stage {target} copies {destination} but does not run it"
                ));
            }
            if !dockerfile.builder_builds(&bin) {
                problems.push(format!(
                    "{DOCKERFILE}: no RUN in the builder stage names {bin}"
                ));
            }
        }
        if SERVICE_TARGETS.contains(&target) {
            let exposed = dockerfile.exposed_ports(stage);
            for port in compose.listen_ports(name) {
                if !exposed.contains(&port) {
                    problems.push(format!(
                        "{DOCKERFILE}: stage {target} does not EXPOSE {port}, which {name} listens on"
                    ));
                }
            }
        }
    }
    assert_problems("the Dockerfile does not fit compose.yaml", problems);
}

#[test]
fn dockerignore_keeps_build_output_and_git_out_of_the_context() {
    let ignore = read(".dockerignore");
    let patterns: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let mut problems = Vec::new();
    for needed in ["target", ".git", ".env"] {
        if !patterns.contains(needed) {
            problems.push(format!(".dockerignore does not exclude {needed}"));
        }
    }
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        "gateway",
        "service-kit",
        "stock-service",
    ] {
        if patterns.contains(kept) {
            problems.push(format!(
                ".dockerignore excludes {kept}, which the build needs"
            ));
        }
    }
    assert_problems(".dockerignore is wrong", problems);
}

#[test]
fn bind_mounted_files_exist() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        for (source, target) in bind_mounts(service) {
            if !source.exists() {
                problems.push(format!(
                    "{name}: mounts {} at {target}, which does not exist",
                    display(&source)
                ));
            }
        }
    }
    assert_problems("mounted files are missing", problems);
}

#[test]
fn gateway_toml_validates_with_the_gateway_loader() {
    let compose = Compose::load();
    let (file, _) = gateway::FileConfig::read(&root().join(GATEWAY_TOML))
        .unwrap_or_else(|e| panic!("{GATEWAY_TOML} does not validate: {e}"));
    assert!(
        file.auth.jwt_secret.is_none() && file.auth.admin_password.is_none(),
        "{GATEWAY_TOML}: keep secrets out of the file; compose sets JWT_SECRET and ADMIN_PASSWORD"
    );
    let gateway = compose
        .service("gateway")
        .unwrap_or_else(|| panic!("{COMPOSE} has no gateway service"));
    let config = environment(gateway)
        .remove("GATEWAY_CONFIG")
        .unwrap_or_else(|| panic!("gateway: GATEWAY_CONFIG is not set"));
    let mounted = host_path(gateway, &config);
    assert_eq!(
        mounted,
        Some(root().join(GATEWAY_TOML)),
        "gateway: GATEWAY_CONFIG={config} must be {GATEWAY_TOML}, mounted there"
    );
}

#[test]
fn grafana_dashboard_uses_the_provisioned_datasource_and_known_metrics() {
    let compose = Compose::load();
    let mut problems = Vec::new();

    // Datasources and their uids.
    let mut uids = BTreeSet::new();
    for (path, doc) in yaml_files(GRAFANA_DATASOURCES) {
        for ds in doc
            .get("datasources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match ds.get("uid").and_then(Value::as_str) {
                Some(uid) => {
                    uids.insert(uid.to_owned());
                }
                None => problems.push(format!(
                    "{path}: datasource without a uid (dashboards refer to it by uid)"
                )),
            }
            if let Some(url) = ds.get("url").and_then(Value::as_str) {
                match parse_http_url(url) {
                    Some((host, _, _)) if compose.is_service(&host) => {}
                    _ => problems.push(format!(
                        "{path}: datasource url {url} is not a compose service"
                    )),
                }
            }
        }
    }
    assert!(
        !uids.is_empty(),
        "no datasource under {GRAFANA_DATASOURCES}"
    );

    // Dashboard providers: their path must be where compose mounts the dashboards.
    let grafana = compose
        .service("grafana")
        .unwrap_or_else(|| panic!("{COMPOSE} has no grafana service"));
    let mounts = bind_mounts(grafana);
    let mut dashboards = Vec::new();
    for (path, doc) in yaml_files(GRAFANA_DASHBOARD_PROVIDERS) {
        for provider in doc
            .get("providers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(dir) = provider.pointer("/options/path").and_then(Value::as_str) else {
                problems.push(format!("{path}: provider without options.path"));
                continue;
            };
            match mounts.iter().find(|(_, target)| target == dir) {
                None => problems.push(format!(
                    "{path}: dashboards are read from {dir}, which grafana does not mount"
                )),
                Some((source, _)) => dashboards.extend(json_files(source)),
            }
        }
    }
    assert!(
        !dashboards.is_empty(),
        "no dashboard JSON reaches Grafana through the providers under {GRAFANA_DASHBOARD_PROVIDERS}"
    );

    let mut exprs_seen = Vec::new();
    for (path, dashboard) in &dashboards {
        for panel in all_panels(dashboard) {
            let title = panel
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("(untitled)");
            if panel.get("type").and_then(Value::as_str) == Some("row") {
                continue;
            }
            let check_ds = |what: &str, ds: Option<&Value>| match ds
                .and_then(|d| d.get("uid"))
                .and_then(Value::as_str)
            {
                Some(uid) if uids.contains(uid) => None,
                other => Some(format!(
                    "{path}: panel {title:?}: {what} datasource uid {other:?} is not one of the provisioned {uids:?}"
                )),
            };
            problems.extend(check_ds("panel", panel.get("datasource")));
            let targets = panel
                .get("targets")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{path}: panel {title:?} has no queries"));
            }
            for target in &targets {
                if target.get("datasource").is_some() {
                    problems.extend(check_ds("query", target.get("datasource")));
                }
                let Some(expr) = target.get("expr").and_then(Value::as_str) else {
                    problems.push(format!("{path}: panel {title:?}: a query without expr"));
                    continue;
                };
                exprs_seen.push((panel.clone(), expr.to_owned()));
                let parsed = parse_promql(expr);
                if parsed.metrics.is_empty() {
                    problems.push(format!("{path}: panel {title:?}: no metric in {expr:?}"));
                }
                let mut labels: BTreeSet<&str> = metrics::TARGET_LABELS.iter().copied().collect();
                for metric in &parsed.metrics {
                    match metrics::lookup(metric) {
                        Some((_, _, own)) => labels.extend(own.iter().copied()),
                        None => problems.push(format!(
                            "{path}: panel {title:?}: unknown metric {metric} in {expr:?} (known: tests/support/metrics.rs)"
                        )),
                    }
                }
                for label in &parsed.labels {
                    if !labels.contains(label.as_str()) {
                        problems.push(format!(
                            "{path}: panel {title:?}: label {label} is not a label of {:?} in {expr:?}",
                            parsed.metrics
                        ));
                    }
                }
            }
        }
    }

    // The panels issue 6 asks for.
    let has = |pred: &dyn Fn(&str) -> bool| exprs_seen.iter().any(|(_, e)| pred(e));
    let wanted: &[(&str, &ExprTest)] = &[
        ("orders by outcome", &|e| {
            e.contains("orders_outcomes_total") && e.contains("outcome")
        }),
        ("responses by HTTP status", &|e| {
            e.contains("http_server_request_duration_seconds_count")
                && e.contains("http_response_status_code")
        }),
        ("latency p50", &|e| {
            is_quantile(e, "0.5", "http_server_request_duration_seconds_bucket")
        }),
        ("latency p99", &|e| {
            is_quantile(e, "0.99", "http_server_request_duration_seconds_bucket")
        }),
        ("lock wait p50", &|e| {
            is_quantile(e, "0.5", "stock_lock_wait_duration_seconds_bucket")
        }),
        ("lock wait p99", &|e| {
            is_quantile(e, "0.99", "stock_lock_wait_duration_seconds_bucket")
        }),
        ("lock acquire timeouts", &|e| {
            e.contains("stock_lock_wait_duration_seconds_count")
                && e.contains(r#"acquired="false""#)
        }),
        ("fence rejections", &|e| {
            e.contains("stock_fence_rejections_total")
        }),
        ("stock remaining per segment", &|e| {
            e.contains("stock_available") && e.contains("segment")
        }),
        ("oversold units", &|e| e.contains("stock_oversold_units")),
        ("idempotent replays", &|e| {
            e.contains("orders_idempotency_total")
        }),
    ];
    for (what, pred) in wanted {
        if !has(*pred) {
            problems.push(format!("the dashboard has no {what} panel"));
        }
    }
    for (panel, expr) in &exprs_seen {
        if expr.contains("stock_oversold_units") && !red_above_zero(panel) {
            problems.push(format!(
                "panel {:?}: oversold units need a red threshold above 0 (and none at or below 0)",
                panel.get("title")
            ));
        }
    }
    assert_problems("the Grafana dashboard is wrong", problems);
}

#[test]
fn prometheus_scrapes_every_service_instance_on_its_metrics_port() {
    let compose = Compose::load();
    let doc = yaml(PROMETHEUS);
    let mut problems = Vec::new();
    match doc
        .pointer("/global/scrape_interval")
        .and_then(Value::as_str)
        .and_then(seconds)
    {
        Some(s) if s <= 10.0 => {}
        other => problems.push(format!(
            "{PROMETHEUS}: global.scrape_interval is {other:?} s; keep it near 5s"
        )),
    }
    let mut scraped = BTreeSet::new();
    for job in doc
        .get("scrape_configs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let job_name = job.get("job_name").and_then(Value::as_str).unwrap_or("?");
        let path = job
            .get("metrics_path")
            .and_then(Value::as_str)
            .unwrap_or("/metrics");
        for target in job
            .get("static_configs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("targets").and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
        {
            let Some((host, port)) = target
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            else {
                problems.push(format!(
                    "{PROMETHEUS}: job {job_name}: target {target} is not host:port"
                ));
                continue;
            };
            if host == "localhost" && job_name == "prometheus" {
                continue;
            }
            if !compose.is_service(&host) {
                problems.push(format!(
                    "{PROMETHEUS}: job {job_name}: {host} is not a service of {COMPOSE}"
                ));
                continue;
            }
            match compose.metrics_port(&host) {
                Some(p) if p == port && path == "/metrics" => {
                    scraped.insert(host);
                }
                Some(p) => problems.push(format!(
                    "{PROMETHEUS}: job {job_name}: scrapes {target}{path} but {host} serves /metrics on port {p}"
                )),
                None => problems.push(format!(
                    "{PROMETHEUS}: job {job_name}: {host} serves no /metrics (no BIND_ADDR / METRICS_ADDR)"
                )),
            }
        }
    }
    for (name, service) in compose.services() {
        if compose
            .runs_target(service)
            .is_some_and(|t| SERVICE_TARGETS.contains(&t))
            && !scraped.contains(name)
        {
            problems.push(format!("{PROMETHEUS}: {name} is not scraped"));
        }
    }
    if compose
        .service("gateway")
        .map(environment)
        .is_some_and(|e| !e.contains_key("METRICS_ADDR"))
    {
        problems.push("gateway: METRICS_ADDR is not set, so it serves no /metrics".to_owned());
    }
    assert_problems("Prometheus does not scrape what runs", problems);
}

#[test]
fn otel_collector_receives_otlp_and_exports_traces_to_jaeger() {
    let compose = Compose::load();
    let doc = yaml(OTEL_COLLECTOR);
    let mut problems = Vec::new();
    for (protocol, port) in [("http", OTLP_HTTP_PORT), ("grpc", 4317)] {
        let endpoint = doc
            .pointer(&format!("/receivers/otlp/protocols/{protocol}/endpoint"))
            .and_then(Value::as_str);
        if endpoint != Some(&format!("0.0.0.0:{port}")) {
            problems.push(format!(
                "{OTEL_COLLECTOR}: receivers.otlp.protocols.{protocol}.endpoint is {endpoint:?}; want 0.0.0.0:{port} (the default listens on localhost only)"
            ));
        }
    }
    let pipeline = doc.pointer("/service/pipelines/traces");
    let names = |key: &str| -> Vec<String> {
        pipeline
            .and_then(|p| p.get(key))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    if !names("receivers").iter().any(|r| r == "otlp") {
        problems.push(format!(
            "{OTEL_COLLECTOR}: the traces pipeline does not receive otlp"
        ));
    }
    for kind in ["receivers", "processors", "exporters"] {
        for name in names(kind) {
            if doc.get(kind).and_then(|k| k.get(&name)).is_none() {
                problems.push(format!(
                    "{OTEL_COLLECTOR}: the traces pipeline uses {kind} {name}, which is not defined"
                ));
            }
        }
    }
    let to_jaeger = names("exporters").iter().any(|name| {
        doc.pointer(&format!("/exporters/{}/endpoint", name.replace('/', "~1")))
            .and_then(Value::as_str)
            .and_then(|e| e.trim_start_matches("http://").rsplit_once(':'))
            .is_some_and(|(host, _)| host == "jaeger" && compose.is_service(host))
    });
    if !to_jaeger {
        problems.push(format!(
            "{OTEL_COLLECTOR}: no exporter of the traces pipeline sends to the jaeger service"
        ));
    }
    let collector = compose.service("otel-collector");
    let mounted = collector
        .map(bind_mounts)
        .unwrap_or_default()
        .into_iter()
        .any(|(source, _)| source == root().join(OTEL_COLLECTOR));
    if !mounted {
        problems.push(format!("otel-collector: does not mount {OTEL_COLLECTOR}"));
    }
    assert_problems("the collector does not forward traces", problems);
}

#[test]
fn the_redis_cluster_override_puts_every_service_on_three_joined_masters() {
    let base = Compose::load();
    let cluster = Compose::load_file(REDIS_CLUSTER_OVERRIDE);
    let schema: Value = serde_json::from_str(&read(COMPOSE_SCHEMA)).expect("schema");
    let validator = jsonschema::validator_for(&schema).expect("validator");
    let mut problems: Vec<String> = validator
        .iter_errors(&cluster.doc)
        .map(|e| format!("schema, at {}: {e}", e.instance_path()))
        .collect();
    let command = |service: &Value| -> String {
        match service.get("command") {
            Some(Value::Array(items)) => items.iter().map(scalar).collect::<Vec<_>>().join(" "),
            Some(other) => scalar(other),
            None => String::new(),
        }
    };
    let nodes: Vec<String> = cluster
        .services()
        .into_iter()
        .filter(|(_, s)| command(s).contains("--cluster-enabled yes"))
        .map(|(name, _)| name.clone())
        .collect();
    if nodes.len() != 3 {
        problems.push(format!("expected 3 cluster-enabled nodes, found {nodes:?}"));
    }
    for name in &nodes {
        let node = cluster.service(name).expect("node");
        let cmd = command(node);
        for needed in [
            format!("--cluster-announce-hostname {name}"),
            "--requirepass".to_owned(),
            "--masterauth".to_owned(),
        ] {
            if !cmd.contains(&needed) {
                problems.push(format!("{name}: its command lacks {needed}"));
            }
        }
        for key in ["healthcheck", "restart", "logging"] {
            if node.get(key).is_none() {
                problems.push(format!("{name}: no {key}"));
            }
        }
    }
    let init = cluster.service("redis-cluster-init");
    let init_cmd = init.map(command).unwrap_or_default();
    let create: String = nodes.iter().map(|n| format!(" {n}:6379")).collect();
    if !init_cmd.contains(&format!("--cluster create{create}")) {
        problems.push(format!(
            "redis-cluster-init does not join {nodes:?}: {init_cmd:?}"
        ));
    }
    let init_deps = init.map(depends_on).unwrap_or_default();
    for name in &nodes {
        if !init_deps.contains(&(name.clone(), "service_healthy".to_owned())) {
            problems.push(format!(
                "redis-cluster-init does not wait for {name} to be healthy"
            ));
        }
    }
    // Every service of compose.yaml that reads REDIS_URL moves to the cluster, and its merged
    // environment still loads with its own configuration loader.
    for (name, service) in base.services() {
        let Some(target) = base.runs_target(service) else {
            continue;
        };
        let mut vars = environment(service);
        if !SERVICE_TARGETS.contains(&target) || !vars.contains_key("REDIS_URL") {
            continue;
        }
        let Some(over) = cluster.service(name) else {
            problems.push(format!(
                "{name} reads REDIS_URL but the override leaves it on one Redis"
            ));
            continue;
        };
        vars.extend(environment(over));
        let url = vars.get("REDIS_URL").cloned().unwrap_or_default();
        match rlock::RedisTarget::parse(&url) {
            rlock::RedisTarget::Cluster(seeds) => {
                let hosts: Vec<String> = seeds
                    .iter()
                    .filter_map(|s| {
                        s.rsplit_once('@')
                            .map(|(_, h)| h.trim_end_matches('/').to_owned())
                    })
                    .collect();
                let expected: Vec<String> = nodes.iter().map(|n| format!("{n}:6379")).collect();
                if hosts != expected {
                    problems.push(format!(
                        "{name}: REDIS_URL seeds {hosts:?}, not {expected:?} (with the password)"
                    ));
                }
            }
            rlock::RedisTarget::Single(_) => {
                problems.push(format!("{name}: REDIS_URL {url} is not a cluster URL"));
            }
        }
        if !depends_on(over).contains(&(
            "redis-cluster-init".to_owned(),
            "service_completed_successfully".to_owned(),
        )) {
            problems.push(format!(
                "{name}: does not wait for redis-cluster-init to complete"
            ));
        }
        problems.extend(environment_problems(name, target, &vars, |path| {
            let host = host_path(service, &path.to_string_lossy())
                .ok_or_else(|| format!("{} is not a mounted file", path.display()))?;
            std::fs::read_to_string(&host)
                .map_err(|e| format!("cannot read {}: {e}", host.display()))
        }));
    }
    assert_problems(
        &format!("{REDIS_CLUSTER_OVERRIDE} does not put the shop on a Redis Cluster"),
        problems,
    );
}

#[test]
fn promql_parsing_finds_metrics_and_labels() {
    let p = parse_promql(
        r#"histogram_quantile(0.99, sum by (le, strategy) (rate(stock_lock_wait_duration_seconds_bucket{acquired="false", segment=~"1|2"}[$__rate_interval]))) / on(job) group_left up_down offset 5m"#,
    );
    assert_eq!(
        p.metrics,
        vec!["stock_lock_wait_duration_seconds_bucket", "up_down"]
    );
    assert_eq!(
        p.labels.iter().collect::<BTreeSet<_>>(),
        ["acquired", "job", "le", "segment", "strategy"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
            .iter()
            .collect()
    );
    assert!(metrics::lookup("stock_lock_wait_duration_seconds_bucket").is_some());
    assert!(metrics::lookup("stock_available_bucket").is_none());
    assert_eq!(
        metrics::lookup("orders_outcomes_total").map(|m| m.1),
        Some(Kind::Counter)
    );
}

#[test]
fn interpolation_follows_compose_rules() {
    let vars: BTreeMap<String, String> = [("SET", "x"), ("EMPTY", "")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut refs = BTreeMap::new();
    let i = |s: &str, refs: &mut BTreeMap<_, _>| interpolate(s, &vars, refs);
    assert_eq!(i("a${SET}b", &mut refs).as_deref(), Ok("axb"));
    assert_eq!(i("${UNSET:-d}", &mut refs).as_deref(), Ok("d"));
    assert_eq!(i("${EMPTY:-d}", &mut refs).as_deref(), Ok("d"));
    assert_eq!(i("${EMPTY-d}", &mut refs).as_deref(), Ok(""));
    assert_eq!(i("$$SET $SET", &mut refs).as_deref(), Ok("$SET x"));
    assert_eq!(i("${UNSET:-${SET}}", &mut refs).as_deref(), Ok("x"));
    assert!(i("${UNSET:?needed}", &mut refs).is_err());
    assert!(i("${SET", &mut refs).is_err());
}

// ---------------------------------------------------------------------------------------
// compose.yaml.

/// `compose.yaml` with variables resolved from `.env.example`.
struct Compose {
    doc: Value,
    /// `.env.example`.
    vars: BTreeMap<String, String>,
    /// Every variable the file interpolates, with the default of each use.
    references: BTreeMap<String, Vec<Option<String>>>,
}

impl Compose {
    fn load() -> Self {
        Self::load_file(COMPOSE)
    }

    /// `relative` (compose.yaml or an override of it), interpolated from `.env.example`.
    fn load_file(relative: &str) -> Self {
        let raw = yaml(relative);
        let vars = dotenv(&read(ENV_EXAMPLE));
        let mut references = BTreeMap::new();
        let doc = resolve(&raw, &vars, &mut references)
            .unwrap_or_else(|e| panic!("{relative}: interpolation failed: {e}"));
        Self {
            doc,
            vars,
            references,
        }
    }

    fn services(&self) -> BTreeMap<&String, &Value> {
        self.doc
            .get("services")
            .and_then(Value::as_object)
            .map(|m| m.iter().collect())
            .unwrap_or_default()
    }

    fn service(&self, name: &str) -> Option<&Value> {
        self.doc.get("services").and_then(|s| s.get(name))
    }

    fn is_service(&self, name: &str) -> bool {
        self.service(name).is_some()
    }

    /// The Dockerfile target a service runs: its own `build:`, or — for an instance that runs
    /// the image another service builds (`pull_policy: never`) — that service's.
    fn runs_target<'a>(&'a self, service: &'a Value) -> Option<&'a str> {
        if let Some(target) = build_target(service) {
            return Some(target);
        }
        if service.get("pull_policy").and_then(Value::as_str) != Some("never") {
            return None;
        }
        let image = service.get("image").and_then(Value::as_str)?;
        self.services().into_values().find_map(|other| {
            (other.get("image").and_then(Value::as_str) == Some(image))
                .then(|| build_target(other))
                .flatten()
        })
    }

    fn services_built_from(&self, target: &str) -> Vec<String> {
        self.services()
            .into_iter()
            .filter(|(_, s)| self.runs_target(s) == Some(target))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The port of the service's `BIND_ADDR`.
    fn bind_port(&self, name: &str) -> Option<u16> {
        addr_port(environment(self.service(name)?).get("BIND_ADDR")?)
    }

    /// Where the service serves `/metrics`: `METRICS_ADDR` if set, else `BIND_ADDR`.
    fn metrics_port(&self, name: &str) -> Option<u16> {
        let env = environment(self.service(name)?);
        addr_port(env.get("METRICS_ADDR").or(env.get("BIND_ADDR"))?)
    }

    /// Every port the service listens on (`BIND_ADDR`, `METRICS_ADDR`).
    fn listen_ports(&self, name: &str) -> Vec<u16> {
        let Some(service) = self.service(name) else {
            return Vec::new();
        };
        let env = environment(service);
        ["BIND_ADDR", "METRICS_ADDR"]
            .iter()
            .filter_map(|k| env.get(*k).and_then(|a| addr_port(a)))
            .collect()
    }
}

fn build_target(service: &Value) -> Option<&str> {
    service.pointer("/build/target").and_then(Value::as_str)
}

/// A service's `environment:` (map or `KEY=VALUE` list), values as strings.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (item.to_owned(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `depends_on` as (service, condition), for the list and the map form.
fn depends_on(service: &Value) -> Vec<(String, String)> {
    match service.get("depends_on") {
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(Value::as_str)
            .map(|n| (n.to_owned(), "service_started".to_owned()))
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(n, v)| {
                let condition = v
                    .get("condition")
                    .and_then(Value::as_str)
                    .unwrap_or("service_started");
                (n.clone(), condition.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Bind mounts as (host path, container path), short and long syntax; named volumes are
/// left out.
/// Where the container path `path` of `service` is on the host: a file bind-mounted there,
/// or inside a bind-mounted folder.
fn host_path(service: &Value, path: &str) -> Option<PathBuf> {
    bind_mounts(service)
        .into_iter()
        .find_map(|(source, target)| {
            if target == path {
                return Some(source);
            }
            path.strip_prefix(&format!("{}/", target.trim_end_matches('/')))
                .map(|rest| source.join(rest))
        })
}

fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
    let mut mounts = Vec::new();
    for volume in service
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (source, target) = match volume {
            Value::String(s) => {
                let mut parts = s.split(':');
                match (parts.next(), parts.next()) {
                    (Some(source), Some(target)) => (source.to_owned(), target.to_owned()),
                    _ => continue,
                }
            }
            Value::Object(m) if m.get("type").and_then(Value::as_str) == Some("bind") => {
                match (
                    m.get("source").and_then(Value::as_str),
                    m.get("target").and_then(Value::as_str),
                ) {
                    (Some(source), Some(target)) => (source.to_owned(), target.to_owned()),
                    _ => continue,
                }
            }
            _ => continue,
        };
        if source.starts_with("./") || source.starts_with("../") || source.starts_with('/') {
            mounts.push((normalize(&root().join(&source)), target));
        }
    }
    mounts
}

/// The http:// URLs a healthcheck's test probes.
fn healthcheck_urls(service: &Value) -> Vec<(String, u16, String)> {
    let words: Vec<String> = match service.pointer("/healthcheck/test") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    words
        .iter()
        .flat_map(|w| w.split_whitespace())
        .filter_map(|w| parse_http_url(w.trim_matches(['"', '\''])))
        .collect()
}

/// `http://host:port/path` as (host, port, path); the port defaults to 80.
fn parse_http_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = authority.rsplit('@').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, 80),
    };
    Some((host.to_owned(), port, path.to_owned()))
}

fn addr_port(addr: &str) -> Option<u16> {
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

fn check_pinned(image: &str, built_here: bool) -> Result<(), String> {
    if image.contains("@sha256:") {
        return Ok(());
    }
    let name_end = image.rfind('/').map_or(0, |i| i + 1);
    let Some((_, tag)) = image[name_end..].split_once(':') else {
        return Err("no tag (pulls latest)".to_owned());
    };
    if tag == "latest" || tag.is_empty() {
        return Err("tag latest".to_owned());
    }
    if !built_here && !tag.chars().any(|c| c.is_ascii_digit()) {
        return Err(format!("tag {tag} names no version"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Variable interpolation, as compose does it.

fn dotenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

fn resolve(
    value: &Value,
    vars: &BTreeMap<String, String>,
    refs: &mut BTreeMap<String, Vec<Option<String>>>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(interpolate(s, vars, refs)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve(v, vars, refs))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), resolve(v, vars, refs)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Resolves `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`,
/// `${VAR?err}`, `${VAR:+alt}` and `${VAR+alt}`; records each variable with its default.
fn interpolate(
    text: &str,
    vars: &BTreeMap<String, String>,
    refs: &mut BTreeMap<String, Vec<Option<String>>>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            // Find the matching brace (defaults may nest ${...}).
            let mut depth = 1;
            let mut end = None;
            for (j, c) in r.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(j);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            let name_len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let (name, op) = inner.split_at(name_len);
            if name.is_empty() {
                return Err(format!("bad variable in {text:?}"));
            }
            let value = vars.get(name).map(String::as_str);
            let set_nonempty = value.is_some_and(|v| !v.is_empty());
            let (resolved, default) = if op.is_empty() {
                (value.unwrap_or_default().to_owned(), None)
            } else if let Some(d) = op.strip_prefix(":-") {
                let d = interpolate(d, vars, refs)?;
                (
                    if set_nonempty {
                        value.unwrap_or_default().to_owned()
                    } else {
                        d.clone()
                    },
                    Some(d),
                )
            } else if let Some(d) = op.strip_prefix('-') {
                let d = interpolate(d, vars, refs)?;
                (value.map_or_else(|| d.clone(), str::to_owned), Some(d))
            } else if let Some(msg) = op.strip_prefix(":?") {
                if !set_nonempty {
                    return Err(format!("{name} is required: {msg}"));
                }
                (value.unwrap_or_default().to_owned(), None)
            } else if let Some(msg) = op.strip_prefix('?') {
                (
                    value
                        .ok_or_else(|| format!("{name} is required: {msg}"))?
                        .to_owned(),
                    None,
                )
            } else if let Some(alt) = op.strip_prefix(":+") {
                let alt = interpolate(alt, vars, refs)?;
                (
                    if set_nonempty { alt } else { String::new() },
                    Some(String::new()),
                )
            } else if let Some(alt) = op.strip_prefix('+') {
                let alt = interpolate(alt, vars, refs)?;
                (
                    if value.is_some() { alt } else { String::new() },
                    Some(String::new()),
                )
            } else {
                return Err(format!("unsupported modifier {op:?} in {text:?}"));
            };
            refs.entry(name.to_owned()).or_default().push(default);
            out.push_str(&resolved);
        } else {
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if name_len == 0 {
                out.push('$');
                continue;
            }
            let (name, r) = rest.split_at(name_len);
            refs.entry(name.to_owned()).or_default().push(None);
            out.push_str(vars.get(name).map(String::as_str).unwrap_or_default());
            rest = r;
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The Dockerfile.

struct Dockerfile {
    stages: Vec<Stage>,
}

struct Stage {
    /// The image or stage it starts from (`ARG` defaults substituted).
    base: String,
    name: Option<String>,
    /// (instruction in upper case, arguments).
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn instructions<'a>(&'a self, which: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.instructions
            .iter()
            .filter(move |(i, _)| i == which)
            .map(|(_, args)| args.as_str())
    }

    /// `COPY --from=<stage> /out/<bin> <destination>` as (bin, destination).
    fn copied_binaries(&self) -> Vec<(String, String)> {
        self.instructions("COPY")
            .filter(|args| args.starts_with("--from="))
            .filter_map(|args| {
                let words: Vec<&str> = args.split_whitespace().collect();
                let (source, destination) = (words.get(1)?, words.last()?);
                let bin = Path::new(source).file_name()?.to_str()?;
                Some((bin.to_owned(), (*destination).to_owned()))
            })
            .collect()
    }
}

impl Dockerfile {
    fn load() -> Self {
        let text = read(DOCKERFILE);
        // Join continuation lines, drop comments (and the parser directive).
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        let mut args = BTreeMap::new();
        let mut stages: Vec<Stage> = Vec::new();
        for line in logical {
            let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let instruction = instruction.to_ascii_uppercase();
            let rest = rest.trim().to_owned();
            if instruction == "ARG" && stages.is_empty() {
                if let Some((k, v)) = rest.split_once('=') {
                    args.insert(k.to_owned(), v.to_owned());
                }
                continue;
            }
            if instruction == "FROM" {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let mut refs = BTreeMap::new();
                let base =
                    interpolate(words.first().copied().unwrap_or_default(), &args, &mut refs)
                        .unwrap_or_else(|e| panic!("{DOCKERFILE}: FROM {rest}: {e}"));
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                    _ => None,
                };
                stages.push(Stage {
                    base,
                    name,
                    instructions: Vec::new(),
                });
                continue;
            }
            match stages.last_mut() {
                Some(stage) => stage.instructions.push((instruction, rest)),
                None => panic!("{DOCKERFILE}: {instruction} before the first FROM"),
            }
        }
        assert!(!stages.is_empty(), "{DOCKERFILE} has no stages");
        Self { stages }
    }

    fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }

    /// The stage and the stages it is built `FROM`, nearest first.
    fn chain<'a>(&'a self, stage: &'a Stage) -> Vec<&'a Stage> {
        let mut chain = vec![stage];
        let mut current = stage;
        while let Some(parent) = self.stage(&current.base) {
            if chain.iter().any(|s| std::ptr::eq(*s, parent)) {
                break;
            }
            chain.push(parent);
            current = parent;
        }
        chain
    }

    /// The last `USER` in effect for `stage`.
    fn effective_user(&self, stage: &Stage) -> Option<String> {
        self.chain(stage)
            .into_iter()
            .find_map(|s| s.instructions("USER").last().map(str::to_owned))
    }

    fn exposed_ports(&self, stage: &Stage) -> BTreeSet<u16> {
        self.chain(stage)
            .into_iter()
            .flat_map(|s| s.instructions("EXPOSE"))
            .flat_map(str::split_whitespace)
            .filter_map(|p| p.split('/').next()?.parse().ok())
            .collect()
    }

    /// Whether a `RUN` of a stage others copy from names `bin`.
    fn builder_builds(&self, bin: &str) -> bool {
        self.stages
            .iter()
            .filter(|s| {
                s.name.as_ref().is_some_and(|n| {
                    self.stages.iter().any(|o| {
                        o.instructions("COPY")
                            .any(|c| c.starts_with(&format!("--from={n} ")))
                    })
                })
            })
            .flat_map(|s| s.instructions("RUN"))
            .any(|run| {
                run.split(|c: char| c.is_whitespace() || c == '"')
                    .any(|w| w == bin)
            })
    }
}

/// The names of the workspace's binary targets, from `cargo metadata`.
fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo metadata: {e}"));
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("cargo metadata printed no JSON: {e}"));
    metadata
        .get("packages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("targets").and_then(Value::as_array))
        .flatten()
        .filter(|t| {
            t.get("kind")
                .and_then(Value::as_array)
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn version_prefix(tag: &str) -> String {
    tag.chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect::<String>()
        .trim_end_matches('.')
        .to_owned()
}

fn version_at_least(have: &str, need: &str) -> bool {
    let parts = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    let (have, need) = (parts(have), parts(need));
    // A tag like 1.95 means the newest 1.95.x, so compare only the parts it gives.
    let n = have.len().min(need.len());
    have[..n] >= need[..n]
}

// ---------------------------------------------------------------------------------------
// Grafana and PromQL.

/// Every panel, including those nested in collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard
        .get("panels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(panel);
        out.extend(
            panel
                .get("panels")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
    }
    out
}

fn is_quantile(expr: &str, q: &str, series: &str) -> bool {
    expr.contains(&format!("histogram_quantile({q},")) && expr.contains(series)
}

/// A threshold step that turns red above 0, and no red step at or below 0.
fn red_above_zero(panel: &Value) -> bool {
    let steps: Vec<&Value> = panel
        .pointer("/fieldConfig/defaults/thresholds/steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let red: Vec<Option<f64>> = steps
        .iter()
        .filter(|s| s.get("color").and_then(Value::as_str) == Some("red"))
        .map(|s| s.get("value").and_then(Value::as_f64))
        .collect();
    red.iter().any(|v| v.is_some_and(|v| v > 0.0 && v <= 1.0))
        && !red.iter().any(|v| v.is_none_or(|v| v <= 0.0))
}

/// A predicate on a PromQL expression.
type ExprTest = dyn Fn(&str) -> bool;

#[derive(Debug, Default)]
struct PromQl {
    /// Series names, in order of appearance.
    metrics: Vec<String>,
    /// Label names in matchers and in `by`/`without`/`on`/`ignoring`/`group_*` lists.
    labels: Vec<String>,
}

/// A small PromQL scanner: enough to list the metric names and label names of an
/// expression. Strings, ranges and Grafana variables are skipped; an identifier followed by
/// `(` is a function or aggregation.
fn parse_promql(expr: &str) -> PromQl {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        // Aggregations, which may be followed by `by (...)` before their parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = PromQl::default();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_string = |i: &mut usize| {
        let quote = chars[*i];
        *i += 1;
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            skip_string(&mut i);
        } else if c == '{' {
            // Label matchers: name op "value", ...
            i += 1;
            let mut expect_name = true;
            while i < chars.len() && chars[i] != '}' {
                let c = chars[i];
                if c == '"' || c == '\'' || c == '`' {
                    skip_string(&mut i);
                    continue;
                }
                if c == ',' {
                    expect_name = true;
                } else if expect_name && (c.is_ascii_alphabetic() || c == '_') {
                    let start = i;
                    while i < chars.len() && ident(chars[i]) {
                        i += 1;
                    }
                    out.labels.push(chars[start..i].iter().collect());
                    expect_name = false;
                    continue;
                }
                i += 1;
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            i += 1;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = chars.get(j) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                if call {
                    let end = chars[j..]
                        .iter()
                        .position(|c| *c == ')')
                        .map_or(chars.len(), |p| j + p);
                    let list: String = chars[j + 1..end].iter().collect();
                    out.labels.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                    i = end + 1;
                }
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                out.metrics.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// A Prometheus duration (`5s`, `1m`, `500ms`) in seconds.
fn seconds(duration: &str) -> Option<f64> {
    let split = duration.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = duration.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Files.

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Value {
    parse_yaml(relative, &read(relative))
}

fn parse_yaml(what: &str, text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text)
        .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
}

fn files_with_extension(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
        })
        .collect();
    files.sort();
    files
}

fn yaml_files(relative_dir: &str) -> Vec<(String, Value)> {
    files_with_extension(&root().join(relative_dir), &["yaml", "yml"])
        .into_iter()
        .map(|p| {
            let name = display(&p);
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {name}: {e}"));
            let doc = parse_yaml(&name, &text);
            (name, doc)
        })
        .collect()
}

fn json_files(dir: &Path) -> Vec<(String, Value)> {
    files_with_extension(dir, &["json"])
        .into_iter()
        .map(|p| {
            let name = display(&p);
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {name}: {e}"));
            let doc =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            (name, doc)
        })
        .collect()
}
