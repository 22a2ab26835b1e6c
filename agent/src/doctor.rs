//! `modelmeter doctor`: what this machine allows, in one table (or JSON) — kernel, BTF, each eBPF
//! program type, cgroup layout, tracefs/bpffs, privileges, NVML.

use std::path::Path;

use serde::Serialize;

use crate::{
    config::Config,
    sources::{
        cgroup::Layout,
        kernel,
        kubernetes::{self, KubernetesConfig},
    },
};

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    /// `ok`, `missing` or `info`.
    pub status: &'static str,
    pub detail: String,
}

fn check(check: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check { check: check.into(), status: if ok { "ok" } else { "missing" }, detail: detail.into() }
}

/// Capability numbers from include/uapi/linux/capability.h.
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Whether this process has a capability in its effective set (from /proc/self/status).
pub fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

/// Whether the probes can be loaded with the privileges this process has.
pub fn can_load_probes() -> bool {
    has_capability(CAP_SYS_ADMIN) || (has_capability(CAP_BPF) && has_capability(CAP_PERFMON))
}

fn mounted(fs_type: &str, at: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|mounts| {
            mounts.lines().any(|line| {
                let mut fields = line.split_whitespace();
                let (_, point, kind) = (fields.next(), fields.next(), fields.next());
                point == Some(at) && kind == Some(fs_type)
            })
        })
        .unwrap_or(false)
}

/// NVML: the library, the driver, each device with its MIG mode, and which of the calls the GPU
/// source makes work there. No library is not an error: GPU metrics are simply off.
fn gpu_checks(config: &crate::sources::gpu::GpuConfig) -> Vec<Check> {
    use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
    let library = config.library_path.as_ref().map_or("libnvidia-ml.so.1".to_owned(), |p| p.display().to_string());
    if config.enabled == crate::sources::gpu::GpuMode::Never {
        return vec![Check { check: "NVML".into(), status: "info", detail: "gpu.enabled: never".into() }];
    }
    let nvml = match crate::sources::gpu::open(config) {
        Ok(nvml) => nvml,
        Err(error) => {
            return vec![Check {
                check: "NVML".into(),
                status: "info",
                detail: format!(
                    "{library} did not load ({error}): no GPU metrics. On a GPU node, run the agent with the \
                     NVIDIA container runtime (daemonset/overlays/gpu) or set gpu.library_path"
                ),
            }];
        }
    };
    let driver = nvml.sys_driver_version().unwrap_or_else(|e| format!("unknown ({e})"));
    let count = nvml.device_count().unwrap_or(0);
    let mut checks = vec![check("NVML", true, format!("{library} loads; driver {driver}; {count} device(s)"))];
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(device) => device,
            Err(error) => {
                checks.push(check(format!("GPU {index}"), false, format!("not readable: {error}")));
                continue;
            }
        };
        let name = device.name().unwrap_or_default();
        let uuid = device.uuid().unwrap_or_default();
        let mig = match device.mig_mode() {
            Ok(mode) if mode.current == 1 => "MIG on".to_owned(),
            Ok(_) => "MIG off".to_owned(),
            Err(error) => format!("MIG mode unknown ({error})"),
        };
        let calls: [(&str, bool); 8] = [
            ("utilization", device.utilization_rates().is_ok()),
            ("memory", device.memory_info().is_ok()),
            ("power", device.power_usage().is_ok()),
            ("energy", device.total_energy_consumption().is_ok()),
            ("temperature", device.temperature(TemperatureSensor::Gpu).is_ok()),
            ("sm clock", device.clock_info(Clock::SM).is_ok()),
            ("processes", device.running_compute_processes().is_ok()),
            ("process utilization", device.process_utilization_stats(None).is_ok()),
        ];
        let working: Vec<&str> = calls.iter().filter(|(_, ok)| *ok).map(|(name, _)| *name).collect();
        let failing: Vec<&str> = calls.iter().filter(|(_, ok)| !*ok).map(|(name, _)| *name).collect();
        let detail = if failing.is_empty() {
            format!("{name} {uuid}, {mig}; every call works")
        } else {
            format!("{name} {uuid}, {mig}; works: {}; not supported: {}", working.join(", "), failing.join(", "))
        };
        checks.push(Check { check: format!("GPU {index}"), status: "info", detail });
    }
    checks
}

pub fn run(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    checks.push(Check { check: "kernel".into(), status: "info", detail: release.trim().to_owned() });
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    checks.push(check(
        "BTF",
        btf,
        if btf { "/sys/kernel/btf/vmlinux" } else { "no /sys/kernel/btf/vmlinux: tp_btf and fentry cannot load" },
    ));
    let root = has_capability(CAP_SYS_ADMIN);
    let caps: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        .into_iter()
        .filter(|(cap, _)| has_capability(*cap))
        .map(|(_, name)| name)
        .collect();
    checks.push(check(
        "privileges",
        can_load_probes(),
        if caps.is_empty() {
            "no CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN: probes cannot load".to_owned()
        } else {
            caps.join(", ")
        },
    ));
    if !mounted("tracefs", kernel::TRACEFS) && root {
        // The agent mounts it itself when it can; doctor reports the state after that attempt.
        let _ = kernel::ensure_tracefs();
    }
    let tracefs = mounted("tracefs", kernel::TRACEFS);
    checks.push(check(
        "tracefs",
        tracefs,
        if tracefs {
            kernel::TRACEFS.to_owned()
        } else {
            format!("not mounted at {}: classic tracepoints cannot attach", kernel::TRACEFS)
        },
    ));
    let bpffs = mounted("bpf", "/sys/fs/bpf");
    checks.push(check(
        "bpffs",
        bpffs,
        if bpffs { "/sys/fs/bpf" } else { "not mounted at /sys/fs/bpf (only needed for pinning)" },
    ));
    match Layout::detect(&config.cgroup_root) {
        Ok(layout) => checks.push(check("cgroup layout", true, layout.describe())),
        Err(e) => checks.push(check("cgroup layout", false, e.to_string())),
    }
    if can_load_probes() {
        match kernel::check_program_types(&config.probes) {
            Ok(types) => checks
                .extend(types.into_iter().map(|t| check(format!("{} {}", t.program_type, t.hook), t.ok, t.detail))),
            Err(e) => checks.push(check("eBPF object", false, e.to_string())),
        }
    } else {
        checks.push(check("eBPF program types", false, "not checked: needs CAP_BPF and CAP_PERFMON, or root"));
    }
    checks.extend(gpu_checks(&config.gpu));
    checks.extend(kubernetes_checks(&config.kubernetes));
    checks
}

/// The verbs the pod watch needs on pods, cluster-wide (it lists with a field selector).
const WATCH_VERBS: [&str; 2] = ["list", "watch"];

/// With the Kubernetes API on: whether the API server answers, and whether it lets this agent
/// list and watch pods (asked with a SelfSubjectAccessReview, which every authenticated user may).
fn kubernetes_checks(config: &KubernetesConfig) -> Vec<Check> {
    if !config.enabled() {
        let detail = "not configured: no in-cluster service account or kubeconfig (pods named by UID only)";
        return vec![Check { check: "kubernetes API".into(), status: "info", detail: detail.into() }];
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return vec![check("kubernetes API", false, format!("cannot start a runtime: {e}"))],
    };
    runtime.block_on(async {
        let client_config = match kubernetes::client_config(config).await {
            Ok(client_config) => client_config,
            Err(e) => return vec![check("kubernetes API", false, format!("{:#}", anyhow::Error::new(e)))],
        };
        let url = client_config.cluster_url.to_string();
        let client = match kube::Client::try_from(client_config) {
            Ok(client) => client,
            Err(e) => return vec![check("kubernetes API", false, format!("{url}: {e}"))],
        };
        let timeout = std::time::Duration::from_secs(5);
        let version = match tokio::time::timeout(timeout, client.apiserver_version()).await {
            Ok(Ok(info)) => info.git_version,
            Ok(Err(e)) => return vec![check("kubernetes API", false, format!("{url}: {e}"))],
            Err(_) => return vec![check("kubernetes API", false, format!("{url}: no answer within 5s"))],
        };
        let reachable = check("kubernetes API", true, format!("{url} answers ({version})"));
        let mut denied = Vec::new();
        for verb in WATCH_VERBS {
            match tokio::time::timeout(timeout, may(&client, verb)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => denied.push(verb.to_owned()),
                Ok(Err(e)) => denied.push(format!("{verb} (review failed: {e})")),
                Err(_) => denied.push(format!("{verb} (no answer within 5s)")),
            }
        }
        let rbac = if denied.is_empty() {
            check("kubernetes RBAC", true, "may list and watch pods")
        } else {
            check(
                "kubernetes RBAC",
                false,
                format!(
                    "may not {} pods: apply the ClusterRole `modelmeter` from daemonset/base (pods: get, list, \
                     watch) and bind it to the agent's service account",
                    denied.join(", ")
                ),
            )
        };
        vec![reachable, rbac]
    })
}

/// Whether the API server lets this client do `verb` on pods in every namespace.
async fn may(client: &kube::Client, verb: &str) -> Result<bool, kube::Error> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                resource: Some("pods".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: kube::Api<SelfSubjectAccessReview> = kube::Api::all(client.clone());
    let answer = api.create(&kube::api::PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The checks as an aligned table.
pub fn table(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(5).max(5);
    let mut out = format!("{:width$}  {:7}  DETAIL\n", "CHECK", "STATUS");
    for c in checks {
        out.push_str(&format!("{:width$}  {:7}  {}\n", c.check, c.status, c.detail));
    }
    out
}
