//! The Kubernetes manifests in daemonset/: the base and every overlay render with `kubectl kustomize` into known kinds
//! whose every field exists in the Kubernetes API types, and the agent's privileges, mounts, probes, scheduling and
//! RBAC are the intended ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use e2e::workspace_root;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

const OVERLAYS: [&str; 6] = [
    "overlays/gpu",
    "overlays/old-kernel",
    "overlays/privileged",
    "overlays/prometheus-operator",
    "overlays/push",
    "overlays/seccomp-localhost",
];

/// Exactly the capabilities the unprivileged agent gets (besides dropping all others).
const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "DAC_READ_SEARCH", "SYS_PTRACE"];

/// Host path, mount path in the container, and whether the mount must be read-only (`None`: either).
const HOST_PATHS: [(&str, &str, Option<bool>); 4] = [
    ("/sys/fs/cgroup", "/sys/fs/cgroup", Some(true)),
    ("/proc", "/host/proc", Some(true)),
    ("/sys/kernel/tracing", "/sys/kernel/tracing", None),
    ("/sys/kernel/btf", "/sys/kernel/btf", Some(true)),
];

/// The Prometheus Operator's PodMonitor (a CRD, so not in k8s-openapi), as far as these manifests use it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: PodMonitorSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMonitorSpec {
    selector: LabelSelector,
    pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMetricsEndpoint {
    port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    relabelings: Vec<RelabelConfig>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RelabelConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    source_labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
}

/// One rendered object, typed by its apiVersion and kind.
#[derive(Debug)]
enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    ConfigMap(Box<ConfigMap>),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    PodMonitor(Box<PodMonitor>),
}

/// What one kustomization renders to.
struct Rendered {
    dir: String,
    objects: Vec<Object>,
}

impl Rendered {
    fn one<'a, T>(&'a self, kind: &str, pick: impl Fn(&'a Object) -> Option<&'a T>) -> &'a T {
        let found: Vec<&T> = self.objects.iter().filter_map(pick).collect();
        assert_eq!(found.len(), 1, "{}: expected exactly one {kind}, found {}", self.dir, found.len());
        found[0]
    }

    fn daemon_set(&self) -> &DaemonSet {
        self.one("DaemonSet", |o| if let Object::DaemonSet(x) = o { Some(&**x) } else { None })
    }

    fn namespace(&self) -> &Namespace {
        self.one("Namespace", |o| if let Object::Namespace(x) = o { Some(&**x) } else { None })
    }

    fn config_map(&self) -> &ConfigMap {
        self.one("ConfigMap", |o| if let Object::ConfigMap(x) = o { Some(&**x) } else { None })
    }

    fn cluster_role(&self) -> &ClusterRole {
        self.one("ClusterRole", |o| if let Object::ClusterRole(x) = o { Some(&**x) } else { None })
    }

    fn cluster_role_binding(&self) -> &ClusterRoleBinding {
        self.one("ClusterRoleBinding", |o| if let Object::ClusterRoleBinding(x) = o { Some(&**x) } else { None })
    }

    fn service(&self) -> &Service {
        self.one("Service", |o| if let Object::Service(x) = o { Some(&**x) } else { None })
    }

    fn pod_monitors(&self) -> Vec<&PodMonitor> {
        self.objects.iter().filter_map(|o| if let Object::PodMonitor(x) = o { Some(&**x) } else { None }).collect()
    }

    fn pod_spec(&self) -> &PodSpec {
        let spec = self.daemon_set().spec.as_ref().unwrap_or_else(|| panic!("{}: DaemonSet has no spec", self.dir));
        spec.template.spec.as_ref().unwrap_or_else(|| panic!("{}: DaemonSet has no pod spec", self.dir))
    }

    fn agent(&self) -> &Container {
        let containers = &self.pod_spec().containers;
        assert_eq!(containers.len(), 1, "{}: the agent's pod has one container", self.dir);
        &containers[0]
    }
}

/// Runs `kubectl kustomize daemonset/<dir>` and types every document it prints.
fn render(dir: &str) -> Rendered {
    let path = workspace_root().join("daemonset").join(dir);
    let output = match Command::new("kubectl").arg("kustomize").arg(&path).output() {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run `kubectl kustomize {}` ({e}): these tests need kubectl (with its built-in kustomize) on PATH",
            path.display()
        ),
    };
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed ({}): {}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("kubectl printed UTF-8");
    let mut objects = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{dir}: document {index} is not YAML that maps to JSON: {e}"));
        if value.is_null() {
            continue;
        }
        objects.push(typed_object(&value).unwrap_or_else(|e| panic!("{dir}: document {index}: {e}")));
    }
    assert!(!objects.is_empty(), "{dir}: `kubectl kustomize` rendered nothing");
    Rendered { dir: dir.to_string(), objects }
}

fn typed_object(value: &Value) -> Result<Object, String> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).ok_or("no apiVersion")?;
    let kind = value.get("kind").and_then(Value::as_str).ok_or("no kind")?;
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>");
    let what = format!("{api_version} {kind} {name}");
    let typed = || -> Result<Object, String> {
        Ok(match (api_version, kind) {
            ("v1", "Namespace") => Object::Namespace(round_trip(value)?),
            ("v1", "ServiceAccount") => Object::ServiceAccount(round_trip(value)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(round_trip(value)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => Object::ClusterRoleBinding(round_trip(value)?),
            ("v1", "ConfigMap") => Object::ConfigMap(round_trip(value)?),
            ("apps/v1", "DaemonSet") => Object::DaemonSet(round_trip(value)?),
            ("v1", "Service") => Object::Service(round_trip(value)?),
            ("monitoring.coreos.com/v1", "PodMonitor") => Object::PodMonitor(round_trip(value)?),
            _ => return Err("not a kind these manifests should contain".to_string()),
        })
    };
    typed().map_err(|e| format!("{what}: {e}"))
}

/// Deserializes `value` into `T` and checks that serializing it back gives the same document (nulls aside): a field
/// `T` does not know is dropped on the way and shows up as the first difference.
fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Box<T>, String> {
    let type_name = std::any::type_name::<T>();
    let typed: T = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| format!("not a valid {type_name} at {}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("serializing {type_name} back failed: {e}"))?;
    match first_difference(&without_nulls(value), &without_nulls(&back), "") {
        Some(difference) => Err(format!("{difference} in a round trip through {type_name}")),
        None => Ok(Box::new(typed)),
    }
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn first_difference(original: &Value, back: &Value, path: &str) -> Option<String> {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    None => return Some(format!("{here} is an unknown field (lost)")),
                    Some(other) => {
                        if let Some(difference) = first_difference(value, other, &here) {
                            return Some(difference);
                        }
                    }
                }
            }
            b.keys().find(|key| !a.contains_key(*key)).map(|key| format!("{path}.{key} appeared"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]")))
        }
        _ => (original != back)
            .then(|| format!("{} changed from {original} to {back}", if path.is_empty() { "." } else { path })),
    }
}

fn labels_match(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The settings the agent needs on every variant: host PIDs, the host's files, its identity, probes and scheduling.
fn check_common(rendered: &Rendered) {
    let dir = &rendered.dir;
    let daemon_set = rendered.daemon_set();
    let pod = rendered.pod_spec();
    let agent = rendered.agent();

    let namespace = &rendered.namespace().metadata;
    assert_eq!(namespace.name, daemon_set.metadata.namespace, "{dir}: the DaemonSet's namespace is the one created");
    // hostPID, hostPath and added capabilities are outside the `baseline` Pod Security Standard.
    let enforce = namespace.labels.as_ref().and_then(|l| l.get("pod-security.kubernetes.io/enforce"));
    assert_eq!(enforce.map(String::as_str), Some("privileged"), "{dir}: the namespace's Pod Security level");

    assert_eq!(pod.host_pid, Some(true), "{dir}: hostPID");
    assert_eq!(pod.service_account_name.as_deref(), Some("modelmeter"), "{dir}: serviceAccountName");
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"), "{dir}: priorityClassName");
    assert_eq!(pod.termination_grace_period_seconds, Some(30), "{dir}: terminationGracePeriodSeconds");
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "{dir}: a toleration `operator: Exists` (every taint) is expected: {tolerations:?}"
    );

    let spec = daemon_set.spec.as_ref().expect("DaemonSet spec");
    let strategy = spec.update_strategy.as_ref().unwrap_or_else(|| panic!("{dir}: no updateStrategy"));
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{dir}: updateStrategy.type");
    let rolling = strategy.rolling_update.as_ref().unwrap_or_else(|| panic!("{dir}: no rollingUpdate"));
    assert!(
        matches!(&rolling.max_surge, Some(IntOrString::Int(n)) if *n > 0)
            || matches!(&rolling.max_surge, Some(IntOrString::String(s)) if s != "0" && s != "0%"),
        "{dir}: rollingUpdate.maxSurge must be set and non-zero: {rolling:?}"
    );
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)), "{dir}: rollingUpdate.maxUnavailable");
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let pod_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    assert!(labels_match(&selector, pod_labels), "{dir}: selector {selector:?} must match pod labels {pod_labels:?}");
    for (key, value) in [("app.kubernetes.io/name", "modelmeter"), ("app.kubernetes.io/component", "agent")] {
        assert_eq!(pod_labels.and_then(|l| l.get(key)).map(String::as_str), Some(value), "{dir}: pod label {key}");
    }

    assert_eq!(agent.image.as_deref(), Some("ghcr.io/modelmeter/modelmeter:0.1.0"), "{dir}: image");
    assert_eq!(agent.image_pull_policy.as_deref(), Some("IfNotPresent"), "{dir}: imagePullPolicy");
    let command: Vec<&str> = agent.command.iter().chain(agent.args.iter()).flatten().map(String::as_str).collect();
    assert!(
        command.ends_with(&["run", "--config", "/etc/modelmeter/config.yaml"]),
        "{dir}: the agent runs `modelmeter run --config /etc/modelmeter/config.yaml`: {command:?}"
    );
    let node_name = agent.env.as_deref().unwrap_or_default().iter().find(|e| e.name == "NODE_NAME");
    let field_path =
        node_name.and_then(|e| e.value_from.as_ref()).and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field_path, Some("spec.nodeName"), "{dir}: env NODE_NAME from the downward API: {node_name:?}");

    let ports = agent.ports.as_deref().unwrap_or_default();
    assert!(
        ports.iter().any(|p| p.name.as_deref() == Some("metrics") && p.container_port == 9464),
        "{dir}: containerPort 9464 named metrics: {ports:?}"
    );
    for (probe, name, path) in
        [(&agent.liveness_probe, "livenessProbe", "/healthz"), (&agent.readiness_probe, "readinessProbe", "/readyz")]
    {
        let http = probe.as_ref().and_then(|p| p.http_get.as_ref());
        assert_eq!(http.and_then(|h| h.path.as_deref()), Some(path), "{dir}: {name} path");
        assert_eq!(http.map(|h| &h.port), Some(&IntOrString::String("metrics".into())), "{dir}: {name} port");
    }

    let resources = agent.resources.as_ref().unwrap_or_else(|| panic!("{dir}: no resources"));
    let requests = resources.requests.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or_default();
    assert_eq!(requests.get("cpu").map(|q| q.0.as_str()), Some("50m"), "{dir}: cpu request");
    assert_eq!(requests.get("memory").map(|q| q.0.as_str()), Some("64Mi"), "{dir}: memory request");
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("128Mi"), "{dir}: memory limit");
    assert!(!limits.contains_key("cpu"), "{dir}: no cpu limit (throttling would stall collections)");

    // Host paths: exactly the five (and the push overlay's event spool), each mounted where and how
    // the agent expects.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = agent.volume_mounts.as_deref().unwrap_or_default();
    let host_paths: BTreeMap<&str, &str> =
        volumes.iter().filter_map(|v| Some((v.host_path.as_ref()?.path.as_str(), v.name.as_str()))).collect();
    let mut expected: BTreeSet<&str> = HOST_PATHS.iter().map(|(host, _, _)| *host).collect();
    if dir == "overlays/push" {
        expected.insert("/var/lib/modelmeter/spool");
    }
    assert_eq!(host_paths.keys().copied().collect::<BTreeSet<_>>(), expected, "{dir}: hostPath volumes");
    for (host, mount_path, read_only) in HOST_PATHS {
        let volume = host_paths[host];
        let mount = mounts.iter().find(|m| m.name == volume);
        let mount = mount.unwrap_or_else(|| panic!("{dir}: hostPath {host} (volume {volume}) is not mounted"));
        assert_eq!(mount.mount_path, mount_path, "{dir}: where hostPath {host} is mounted");
        if let Some(read_only) = read_only {
            assert_eq!(mount.read_only.unwrap_or(false), read_only, "{dir}: hostPath {host} readOnly");
        }
    }

    // The config file: the generated ConfigMap, mounted at /etc/modelmeter.
    let config_map_name = rendered.config_map().metadata.name.as_deref().expect("ConfigMap name");
    assert!(config_map_name.starts_with("modelmeter-config"), "{dir}: ConfigMap name {config_map_name}");
    let config_volume = volumes
        .iter()
        .find(|v| v.config_map.as_ref().is_some_and(|c| c.name == config_map_name))
        .unwrap_or_else(|| panic!("{dir}: no volume of ConfigMap {config_map_name}"));
    assert!(
        mounts.iter().any(|m| m.name == config_volume.name && m.mount_path == "/etc/modelmeter"),
        "{dir}: ConfigMap {config_map_name} mounted at /etc/modelmeter: {mounts:?}"
    );

    // Identity: the ServiceAccount the pods run as is the one the ClusterRole is bound to.
    let binding = rendered.cluster_role_binding();
    assert_eq!(binding.role_ref.kind, "ClusterRole", "{dir}: roleRef kind");
    assert_eq!(Some(&binding.role_ref.name), rendered.cluster_role().metadata.name.as_ref(), "{dir}: roleRef name");
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.len() == 1
            && subjects[0].kind == "ServiceAccount"
            && subjects[0].name == "modelmeter"
            && subjects[0].namespace == daemon_set.metadata.namespace,
        "{dir}: the binding's subject is the agent's ServiceAccount: {subjects:?}"
    );

    let service = rendered.service().spec.as_ref().expect("Service spec");
    let service_ports = service.ports.as_deref().unwrap_or_default();
    assert!(
        service_ports.iter().any(|p| p.name.as_deref() == Some("metrics") && p.port == 9464),
        "{dir}: Service port metrics 9464: {service_ports:?}"
    );
    assert!(
        labels_match(&service.selector.clone().unwrap_or_default(), pod_labels),
        "{dir}: the Service selects the agent's pods"
    );
}

/// The unprivileged security context of the base (and of the overlays that keep it).
fn check_unprivileged(rendered: &Rendered) {
    let dir = &rendered.dir;
    let pod = rendered.pod_spec();
    for container in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        let privileged = container.security_context.as_ref().and_then(|s| s.privileged);
        assert_ne!(privileged, Some(true), "{dir}: container {} must not be privileged", container.name);
    }
    let agent = rendered.agent();
    let security = agent.security_context.as_ref().unwrap_or_else(|| panic!("{dir}: no securityContext"));
    let capabilities = security.capabilities.as_ref().unwrap_or_else(|| panic!("{dir}: no capabilities"));
    let add = capabilities.add.clone().unwrap_or_default();
    let mut sorted_add = add.clone();
    sorted_add.sort();
    let mut expected: Vec<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    // Kernels before 5.11 charge maps to RLIMIT_MEMLOCK, which the agent raises with it.
    if dir == "overlays/old-kernel" {
        expected.push("SYS_RESOURCE".into());
    }
    expected.sort();
    assert_eq!(sorted_add, expected, "{dir}: capabilities.add must be exactly {CAPABILITIES:?}: {add:?}");
    assert!(
        capabilities.drop.as_deref().unwrap_or_default().iter().any(|c| c == "ALL"),
        "{dir}: capabilities.drop must contain ALL: {:?}",
        capabilities.drop
    );
    assert_eq!(security.read_only_root_filesystem, Some(true), "{dir}: readOnlyRootFilesystem");
    assert_eq!(security.allow_privilege_escalation, Some(false), "{dir}: allowPrivilegeEscalation");
    assert_eq!(security.run_as_user, Some(0), "{dir}: runAsUser");
}

#[test]
fn every_kustomization_renders_only_known_kinds_and_fields() {
    for dir in std::iter::once("base").chain(OVERLAYS) {
        let rendered = render(dir);
        let kinds: BTreeSet<&str> = rendered
            .objects
            .iter()
            .map(|o| match o {
                Object::Namespace(_) => "Namespace",
                Object::ServiceAccount(_) => "ServiceAccount",
                Object::ClusterRole(_) => "ClusterRole",
                Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
                Object::ConfigMap(_) => "ConfigMap",
                Object::DaemonSet(_) => "DaemonSet",
                Object::Service(_) => "Service",
                Object::PodMonitor(_) => "PodMonitor",
            })
            .collect();
        let mut expected = BTreeSet::from([
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Service",
        ]);
        if dir == "overlays/prometheus-operator" {
            expected.insert("PodMonitor");
        }
        assert_eq!(kinds, expected, "{dir}: kinds rendered");
        assert_eq!(rendered.objects.len(), expected.len(), "{dir}: one object of each kind");
        for object in &rendered.objects {
            let namespace = match object {
                Object::ServiceAccount(x) => &x.metadata.namespace,
                Object::ConfigMap(x) => &x.metadata.namespace,
                Object::DaemonSet(x) => &x.metadata.namespace,
                Object::Service(x) => &x.metadata.namespace,
                Object::PodMonitor(x) => &x.metadata.namespace,
                Object::Namespace(_) | Object::ClusterRole(_) | Object::ClusterRoleBinding(_) => continue,
            };
            assert_eq!(namespace.as_deref(), Some("modelmeter"), "{dir}: namespaced objects live in modelmeter");
        }
    }
}

#[test]
fn round_trip_names_an_unknown_field() {
    let mut daemon_set = serde_json::to_value(render("base").daemon_set()).expect("DaemonSet to JSON");
    daemon_set["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] = Value::Bool(true);
    let error = round_trip::<DaemonSet>(&daemon_set).expect_err("an unknown field must fail");
    assert!(error.contains(".spec.template.spec.containers[0].securityContext.privilegd"), "{error}");

    let pod_monitor = render("overlays/prometheus-operator");
    let mut value = serde_json::to_value(pod_monitor.pod_monitors()[0]).expect("PodMonitor to JSON");
    value["spec"]["podMetricsEndpoints"][0]["scrapeTimeut"] = Value::String("5s".into());
    let error = round_trip::<PodMonitor>(&value).expect_err("an unknown PodMonitor field must fail");
    assert!(error.contains("scrapeTimeut"), "{error}");
}

#[test]
fn base_daemonset_is_unprivileged_with_four_capabilities_and_the_runtime_seccomp_profile() {
    let base = render("base");
    check_unprivileged(&base);
    let security = base.agent().security_context.as_ref().expect("securityContext");
    assert_eq!(security.privileged, Some(false), "base: privileged is false, explicitly");
    let seccomp = security.seccomp_profile.as_ref().expect("base: seccompProfile is set explicitly");
    assert_eq!(seccomp.type_, "RuntimeDefault");
    let old_kernel = render("overlays/old-kernel");
    check_unprivileged(&old_kernel);
}

#[test]
fn the_localhost_seccomp_overlay_names_the_shipped_profile_which_allows_bpf() {
    let rendered = render("overlays/seccomp-localhost");
    check_unprivileged(&rendered);
    let security = rendered.agent().security_context.as_ref().expect("securityContext");
    let seccomp = security.seccomp_profile.as_ref().expect("seccompProfile");
    assert_eq!((seccomp.type_.as_str(), seccomp.localhost_profile.as_deref()), ("Localhost", Some("modelmeter.json")));
    let path = e2e::workspace_root().join("daemonset/seccomp/modelmeter.json");
    let profile: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("the profile")).expect("JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ALLOW", "everything but the listed calls");
    let denied: Vec<&str> = profile["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|rule| rule["action"] != "SCMP_ACT_ALLOW")
        .flat_map(|rule| rule["names"].as_array().into_iter().flatten().filter_map(Value::as_str))
        .collect();
    // What the agent needs stays allowed; what it never does is refused.
    for needed in ["bpf", "perf_event_open", "openat", "read", "ioctl", "mmap"] {
        assert!(!denied.contains(&needed), "{needed} must be allowed");
    }
    for refused in ["kexec_load", "init_module", "mount", "setns", "ptrace"] {
        assert!(denied.contains(&refused), "{refused} is refused");
    }
}

#[test]
fn base_daemonset_mounts_probes_and_schedules_as_intended() {
    check_common(&render("base"));
}

#[test]
fn cluster_role_only_reads_pods() {
    let base = render("base");
    let role = base.cluster_role();
    assert!(role.aggregation_rule.is_none(), "the ClusterRole aggregates nothing");
    let rules = role.rules.as_deref().unwrap_or_default();
    assert!(!rules.is_empty(), "the ClusterRole has rules");
    let mut verbs = BTreeSet::new();
    for rule in rules {
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]), "core API group only: {rule:?}");
        assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]), "pods only: {rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
        verbs.extend(rule.verbs.iter().map(String::as_str));
    }
    assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "verbs on pods");
}

#[test]
fn config_map_holds_the_agent_config() {
    let base = render("base");
    let data = base.config_map().data.as_ref().expect("ConfigMap data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["config.yaml"], "the ConfigMap holds config.yaml only");
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&data["config.yaml"]).expect("config.yaml is YAML");
    let field = |key: &str| config.get(key).and_then(serde_yaml_ng::Value::as_str).map(str::to_owned);
    assert_eq!(field("proc_root").as_deref(), Some("/host/proc"));
    assert_eq!(field("listen").as_deref(), Some("0.0.0.0:9464"));
    assert_eq!(field("cgroup_root").as_deref(), Some("/sys/fs/cgroup"));
    let node_name = config.get("kubernetes").and_then(|k| k.get("node_name")).and_then(serde_yaml_ng::Value::as_str);
    assert_eq!(node_name, Some(""), "kubernetes.node_name empty: the agent takes NODE_NAME");
    // The agent's own loader accepts it (unknown fields would be errors).
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &data["config.yaml"]).expect("writing config");
    let loaded = modelmeter::config::Config::load(Some(file.path()), std::iter::empty())
        .unwrap_or_else(|e| panic!("the ConfigMap's config.yaml does not load: {e}"));
    assert_eq!(loaded.proc_root, std::path::PathBuf::from("/host/proc"));
}

#[test]
fn push_overlay_config_loads_with_every_sink() {
    let rendered = render("overlays/push");
    check_common(&rendered);
    let data = rendered.config_map().data.as_ref().expect("ConfigMap data");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &data["config.yaml"]).expect("writing config");
    let loaded = modelmeter::config::Config::load(Some(file.path()), std::iter::empty())
        .unwrap_or_else(|e| panic!("the push overlay's config.yaml does not load: {e}"));
    assert!(loaded.sinks.otlp.enabled && loaded.sinks.loki.url.is_some() && loaded.sinks.elasticsearch.url.is_some());
    // The files the config names are where the overlay mounts the Secret.
    let mounted = rendered
        .agent()
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == "elasticsearch-credentials" && m.mount_path == "/etc/modelmeter/elasticsearch");
    assert!(mounted, "the Elasticsearch Secret is not mounted where the config reads it");
    let spool =
        rendered.agent().volume_mounts.iter().flatten().find(|m| m.name == "spool").expect("the spool is mounted");
    assert!(loaded.sinks.spool.enabled && loaded.sinks.spool.path.starts_with(&spool.mount_path));
    assert_ne!(spool.read_only, Some(true), "the spool is written");
    let es = &loaded.sinks.elasticsearch;
    for file in [es.auth.api_key_file.as_ref(), es.tls.ca_file.as_ref()] {
        assert!(file.is_some_and(|f| f.starts_with("/etc/modelmeter/elasticsearch")), "{file:?}");
    }
}

#[test]
fn privileged_overlay_runs_privileged() {
    let rendered = render("overlays/privileged");
    check_common(&rendered);
    let security = rendered.agent().security_context.as_ref().expect("securityContext");
    assert_eq!(security.privileged, Some(true), "privileged overlay: privileged");
    assert!(security.capabilities.is_none(), "privileged overlay: the capability list is moot and removed");
    assert_ne!(
        security.allow_privilege_escalation,
        Some(false),
        "the API server rejects allowPrivilegeEscalation: false with privileged: true"
    );
}

#[test]
fn gpu_overlay_adds_nvml_and_gpu_scheduling() {
    let rendered = render("overlays/gpu");
    check_common(&rendered);
    check_unprivileged(&rendered);
    let pod = rendered.pod_spec();
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.key.as_deref() == Some("nvidia.com/gpu")
            && t.operator.as_deref() == Some("Exists")
            && t.effect.as_deref() == Some("NoSchedule")),
        "gpu overlay: toleration nvidia.com/gpu Exists NoSchedule: {tolerations:?}"
    );
    assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"), "gpu overlay: runtimeClassName");
    assert_eq!(
        pod.node_selector.as_ref().and_then(|s| s.get("nvidia.com/gpu.present")).map(String::as_str),
        Some("true"),
        "gpu overlay: nodeSelector"
    );
    let env: BTreeMap<&str, Option<&str>> = rendered
        .agent()
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(env.get("NVIDIA_VISIBLE_DEVICES"), Some(&Some("all")), "gpu overlay: {env:?}");
    assert_eq!(env.get("NVIDIA_DRIVER_CAPABILITIES"), Some(&Some("utility")), "gpu overlay: {env:?}");
    let resources = rendered.agent().resources.as_ref().expect("resources");
    for quantities in [&resources.requests, &resources.limits].into_iter().flatten() {
        assert!(!quantities.contains_key("nvidia.com/gpu"), "the agent must not take a GPU from the device plugin");
    }
}

#[test]
fn prometheus_operator_overlay_adds_a_pod_monitor_for_the_metrics_port() {
    let rendered = render("overlays/prometheus-operator");
    check_common(&rendered);
    check_unprivileged(&rendered);
    assert!(render("base").pod_monitors().is_empty(), "the base must apply without the Prometheus Operator's CRDs");
    let monitors = rendered.pod_monitors();
    assert_eq!(monitors.len(), 1, "one PodMonitor");
    let spec = &monitors[0].spec;
    let pod_labels = rendered.daemon_set().spec.as_ref().and_then(|s| s.template.metadata.as_ref()?.labels.as_ref());
    assert!(
        labels_match(&spec.selector.match_labels.clone().unwrap_or_default(), pod_labels),
        "the PodMonitor selects the agent's pods: {:?}",
        spec.selector
    );
    assert!(
        spec.pod_metrics_endpoints.iter().any(|e| e.port == "metrics"
            && e.relabelings
                .iter()
                .any(|r| r.source_labels == ["__meta_kubernetes_pod_node_name"]
                    && r.target_label.as_deref() == Some("node"))),
        "the PodMonitor scrapes port metrics and labels each series with its node: {:?}",
        spec.pod_metrics_endpoints
    );
}

#[test]
fn the_local_image_root_holds_a_runnable_agent() {
    e2e::require_root();
    let out = tempfile::tempdir().expect("temp dir");
    let root = out.path().join("image-root");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["xtask", "image-root", "--profile", "debug", "--out"])
        .arg(&root)
        .current_dir(workspace_root())
        .status()
        .expect("running cargo xtask image-root");
    assert!(status.success(), "cargo xtask image-root failed");
    // Nothing but the binary, its libraries and two empty directories: it runs in the staged root
    // alone, as it will in a `FROM scratch` image.
    let output = std::process::Command::new("chroot")
        .arg(&root)
        .args(["/usr/local/bin/modelmeter", "--version"])
        .output()
        .expect("running chroot");
    assert!(output.status.success(), "the staged agent does not run: {}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("modelmeter "));
    let containerfile = std::fs::read_to_string(workspace_root().join("daemonset/Containerfile.local")).expect("file");
    assert!(containerfile.lines().any(|l| l.trim() == "FROM scratch"), "no registry needed");
    let registry = std::fs::read_to_string(workspace_root().join("daemonset/Containerfile")).expect("Containerfile");
    for from in registry.lines().filter(|l| l.starts_with("FROM ")) {
        assert!(from.contains("docker.io/library/"), "base images are named in full (podman): {from}");
    }
}
