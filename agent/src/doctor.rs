//! `modelmeter doctor`: what this machine allows, in one table (or JSON) — kernel, BTF, each eBPF
//! program type, cgroup layout, tracefs/bpffs, privileges, seccomp, sysctls, NVML — each check
//! that fails with the fix, and a verdict: whether the agent can do its main job here.

use std::{fmt, path::Path};

use serde::Serialize;

use crate::{
    config::{Config, SyscallHooks},
    sources::{
        cgroup::Layout,
        kernel::{self, ProbeCheck},
        kubernetes::{self, KubernetesConfig},
    },
};

/// Where the fixes point: the manifest the DaemonSet is deployed from.
const DAEMONSET: &str = "daemonset/base/daemonset.yaml";
const CONTAINER: &str = "spec.template.spec.containers[modelmeter]";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Needed for the main job (loading the probes, reading cgroups): the agent will not start
    /// here, or attributes nothing.
    Missing,
    /// An optional capability is missing: the agent runs and reports less.
    Degraded,
    /// Worth knowing; changes nothing for the agent.
    Info,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Degraded => "degraded",
            Status::Info => "info",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to change so that the check passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(check: impl Into<String>, status: Status, detail: impl Into<String>, fix: Option<String>) -> Check {
        Check { check: check.into(), status, detail: detail.into(), fix }
    }

    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Ok, detail, None)
    }

    fn info(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Info, detail, None)
    }
}

/// Capability numbers from include/uapi/linux/capability.h.
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

fn proc_self_status() -> String {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default()
}

/// The value of a `Name:` line of /proc/<pid>/status.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

/// The effective capability set from /proc/<pid>/status.
fn parse_effective_caps(status: &str) -> Option<u64> {
    status_field(status, "CapEff").and_then(|hex| u64::from_str_radix(hex, 16).ok())
}

/// The seccomp mode from /proc/<pid>/status: 0 disabled, 1 strict, 2 filter.
fn parse_seccomp(status: &str) -> Option<u8> {
    status_field(status, "Seccomp")?.parse().ok()
}

/// Whether this process has a capability in its effective set (from /proc/self/status).
pub fn has_capability(cap: u32) -> bool {
    parse_effective_caps(&proc_self_status()).is_some_and(|mask| mask & (1 << cap) != 0)
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

/// A sysctl's value read from /proc/sys, `None` when this kernel has no such file.
fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/"))).ok().map(|v| v.trim().to_owned())
}

/// The active mode in /sys/kernel/security/lockdown, written `none [integrity] confidentiality`.
fn parse_lockdown(text: &str) -> Option<&str> {
    text.split_whitespace().find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
}

/// The inode of a namespace link's target, written `pid:[4026531836]`.
fn parse_namespace_inode(link: &str) -> Option<u64> {
    link.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// PROC_PID_INIT_INO (include/linux/proc_ns.h): the initial PID namespace's fixed inode, which
/// the PIDs the probes report belong to.
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// Signs a container runtime leaves; none of them is certain, together they cover Kubernetes,
/// Docker and Podman.
fn in_container() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || Path::new("/.dockerenv").exists()
        || Path::new("/run/.containerenv").exists()
}

/// A fix that adds a hostPath volume and its mount to the DaemonSet, and the command that does
/// the same on a host, if there is one.
fn mount_fix(volume: &str, path: &str, on_a_host: Option<&str>) -> String {
    let in_a_pod = format!(
        "in a pod: add spec.template.spec.volumes[{volume}] (hostPath {path}) and \
         {CONTAINER}.volumeMounts[{volume}] (mountPath {path}) ({DAEMONSET})"
    );
    match on_a_host {
        Some(command) => format!("{in_a_pod}; on a host: {command}"),
        None => in_a_pod,
    }
}

/// The fix for missing probe privileges, naming only the capabilities that are absent.
fn privileges_fix(has_bpf: bool, has_perfmon: bool, kernel_knows_cap_bpf: bool) -> String {
    if !kernel_knows_cap_bpf {
        return format!(
            "this kernel predates CAP_BPF (Linux 5.8), so loading probes needs CAP_SYS_ADMIN: \
             kubectl apply -k daemonset/overlays/privileged (sets {CONTAINER}.securityContext.privileged: true), \
             or run as root; or set probes.enabled: false"
        );
    }
    let absent: Vec<&str> = [(has_bpf, "BPF"), (has_perfmon, "PERFMON")]
        .into_iter()
        .filter(|(has, _)| !has)
        .map(|(_, name)| name)
        .collect();
    format!(
        "add {} to {CONTAINER}.securityContext.capabilities.add ({DAEMONSET}); outside Kubernetes run as root; \
         or set probes.enabled: false",
        absent.join(" and ")
    )
}

/// The fix for a seccomp profile that blocks bpf(2).
fn seccomp_fix() -> String {
    format!(
        "install daemonset/seccomp/modelmeter.json on the node and apply daemonset/overlays/seccomp-localhost \
         ({CONTAINER}.securityContext.seccompProfile: {{type: Localhost, localhostProfile: modelmeter.json}}), \
         or another profile that allows bpf ({DAEMONSET})"
    )
}

fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::ENOMEM => "ENOMEM",
        libc::E2BIG => "E2BIG",
        libc::EFAULT => "EFAULT",
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}

/// Why a minimal BPF_MAP_CREATE failed, and the fix: (detail, fix).
/// `privileged`: CAP_BPF or CAP_SYS_ADMIN is there; `missing_privileges_fix` is the fix when not.
fn explain_bpf_failure(
    errno: i32,
    privileged: bool,
    seccomp: Option<u8>,
    missing_privileges_fix: String,
) -> (String, String) {
    let name = errno_name(errno);
    let filtered = seccomp == Some(2);
    match errno {
        libc::EPERM | libc::EACCES if privileged && filtered => (
            format!("BPF_MAP_CREATE failed with {name}: the privileges are there, so the seccomp profile blocks bpf()"),
            seccomp_fix(),
        ),
        libc::EPERM | libc::EACCES if privileged => (
            format!(
                "BPF_MAP_CREATE failed with {name} despite the privileges: a security module (SELinux, AppArmor) \
                 denies bpf(), or (before Linux 5.11) RLIMIT_MEMLOCK is too low"
            ),
            format!(
                "allow bpf for the container in the node's SELinux or AppArmor policy \
                 ({CONTAINER}.securityContext.seLinuxOptions or appArmorProfile); before Linux 5.11 add \
                 CAP_SYS_RESOURCE so the agent raises RLIMIT_MEMLOCK (daemonset/overlays/old-kernel)"
            ),
        ),
        libc::EPERM | libc::EACCES => (
            format!("BPF_MAP_CREATE failed with {name}: bpf() needs CAP_BPF (or CAP_SYS_ADMIN)"),
            missing_privileges_fix,
        ),
        libc::ENOSYS if filtered => (
            format!("bpf() answered {name}: the seccomp profile blocks it, or the kernel has no bpf()"),
            format!("{}; the kernel needs CONFIG_BPF_SYSCALL=y", seccomp_fix()),
        ),
        libc::ENOSYS => (
            format!("bpf() answered {name}: the kernel was built without it"),
            "a kernel built with CONFIG_BPF_SYSCALL=y".to_owned(),
        ),
        _ => (
            format!("BPF_MAP_CREATE of a 1-entry array failed with {name}: the kernel is too old or refuses it"),
            "Linux 5.8 or later with CONFIG_BPF_SYSCALL=y".to_owned(),
        ),
    }
}

/// The leading fields of `union bpf_attr` for BPF_MAP_CREATE, zero-padded. The kernel accepts an
/// attr shorter or longer than its own as long as the bytes it does not know are zero.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    rest: [u32; 28],
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// Creates and closes a 1-entry array map: whether bpf(2) itself gets through, past seccomp and
/// security modules. `Err` holds the errno.
fn try_bpf_map_create() -> Result<(), i32> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let attr =
        MapCreateAttr { map_type: BPF_MAP_TYPE_ARRAY, key_size: 4, value_size: 4, max_entries: 1, rest: [0; 28] };
    // SAFETY: `attr` is a valid, fully initialised buffer of the size passed, and outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            std::mem::size_of::<MapCreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: bpf() returned a new file descriptor that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
    Ok(())
}

/// Whether this kernel knows CAP_BPF (Linux 5.8 and later).
fn kernel_knows_cap_bpf() -> bool {
    read_sysctl("kernel.cap_last_cap").and_then(|v| v.parse::<u32>().ok()).is_none_or(|last| last >= CAP_BPF)
}

/// A check that only matters when the probes are on: `missing` then; with probes off `info`, and
/// nothing to fix.
fn needed_for_probes(config: &Config, check: &str, detail: String, fix: Option<String>) -> Check {
    if config.probes.enabled {
        Check::new(check, Status::Missing, detail, fix)
    } else {
        Check::new(check, Status::Info, format!("{detail}; not needed with probes.enabled: false"), None)
    }
}

fn privileges_check(config: &Config) -> Check {
    let has = |cap| has_capability(cap);
    let caps: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        .into_iter()
        .filter(|(cap, _)| has(*cap))
        .map(|(_, name)| name)
        .collect();
    if can_load_probes() {
        return Check::ok("privileges", caps.join(", "));
    }
    let detail = if caps.is_empty() {
        "no CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN: the probes cannot load".to_owned()
    } else {
        format!("only {}: the probes need CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN", caps.join(", "))
    };
    let fix = privileges_fix(has(CAP_BPF), has(CAP_PERFMON), kernel_knows_cap_bpf());
    needed_for_probes(config, "privileges", detail, Some(fix))
}

fn seccomp_mode_text(mode: Option<u8>) -> String {
    match mode {
        Some(0) => "0 (disabled)".to_owned(),
        Some(1) => "1 (strict)".to_owned(),
        Some(2) => "2 (filter): a seccomp profile filters this process's syscalls".to_owned(),
        Some(other) => format!("{other} (unknown mode)"),
        None => "no Seccomp line in /proc/self/status".to_owned(),
    }
}

fn bpf_syscall_check(config: &Config, seccomp: Option<u8>) -> Check {
    let privileged = has_capability(CAP_BPF) || has_capability(CAP_SYS_ADMIN);
    match try_bpf_map_create() {
        Ok(()) => Check::ok("bpf() syscall", "BPF_MAP_CREATE of a 1-entry array works"),
        Err(errno) => {
            let privileges = privileges_fix(false, has_capability(CAP_PERFMON), kernel_knows_cap_bpf());
            let (detail, fix) = explain_bpf_failure(errno, privileged, seccomp, privileges);
            needed_for_probes(config, "bpf() syscall", detail, Some(fix))
        }
    }
}

fn lockdown_check(config: &Config) -> Check {
    const NAME: &str = "kernel lockdown";
    let Ok(text) = std::fs::read_to_string("/sys/kernel/security/lockdown") else {
        return Check::info(NAME, "/sys/kernel/security/lockdown not readable (no lockdown LSM, or no securityfs)");
    };
    match parse_lockdown(&text) {
        Some("confidentiality") => needed_for_probes(
            config,
            NAME,
            "confidentiality: the kernel refuses bpf_probe_read of kernel memory, perf events and tracefs".to_owned(),
            Some(
                "boot with lockdown=integrity or lockdown=none on the kernel command line \
                 (lockdown cannot be lowered while the kernel runs)"
                    .to_owned(),
            ),
        ),
        Some(mode) => Check::ok(NAME, format!("{mode}: the probes need nothing it forbids")),
        None => Check::info(NAME, format!("unrecognised: {}", text.trim())),
    }
}

fn sysctl_checks() -> Vec<Check> {
    let bpf = has_capability(CAP_BPF) || has_capability(CAP_SYS_ADMIN);
    let perfmon = has_capability(CAP_PERFMON) || has_capability(CAP_SYS_ADMIN);
    let absent = |name: &str| Check::info(name, format!("/proc/sys/{} does not exist here", name.replace('.', "/")));
    let mut checks = Vec::new();

    const UNPRIVILEGED: &str = "kernel.unprivileged_bpf_disabled";
    checks.push(match read_sysctl(UNPRIVILEGED) {
        Some(value) => {
            let effect = match (value.as_str(), bpf) {
                (_, true) => "no effect on this process: it has CAP_BPF",
                ("0", false) => "bpf() is open to unprivileged users, but the probes still need CAP_BPF",
                (_, false) => "bpf() needs CAP_BPF, which this process lacks (see privileges)",
            };
            Check::info(UNPRIVILEGED, format!("{value}: {effect}"))
        }
        None => absent(UNPRIVILEGED),
    });

    const PARANOID: &str = "kernel.perf_event_paranoid";
    checks.push(match read_sysctl(PARANOID) {
        Some(value) if perfmon => {
            Check::info(PARANOID, format!("{value}: no effect on this process: it has CAP_PERFMON"))
        }
        Some(value) if value == "-1" => {
            Check::info(PARANOID, format!("{value}: tracepoints attach without CAP_PERFMON"))
        }
        Some(value) => {
            Check::info(PARANOID, format!("{value}: without CAP_PERFMON, tracepoints attach only when it is -1"))
        }
        None => absent(PARANOID),
    });

    const STATS: &str = "kernel.bpf_stats_enabled";
    checks.push(match read_sysctl(STATS) {
        Some(value) => Check::info(
            STATS,
            format!(
                "{value}: probe run times are counted only when it is 1 or probes.bpf_stats is on with \
                 CAP_SYS_ADMIN; only `cargo xtask bench` relies on them"
            ),
        ),
        None => absent(STATS),
    });
    checks
}

/// Whether the agent sees the host's processes: the probes report PIDs of the initial PID
/// namespace, and the resolver and NVML's processes must match them.
fn host_pid_check(pid_namespace: Option<u64>, in_container: bool) -> Check {
    const NAME: &str = "hostPID";
    match pid_namespace {
        Some(INITIAL_PID_NAMESPACE) => Check::ok(NAME, "in the host's PID namespace"),
        Some(inode) if in_container => Check::new(
            NAME,
            Status::Degraded,
            format!(
                "in PID namespace pid:[{inode}], not the host's: the probes' PIDs do not match this container's \
                 processes"
            ),
            Some(format!(
                "set spec.template.spec.hostPID: true ({DAEMONSET}); if it is set, the node itself runs in a \
                 PID namespace (kind, nested containers)"
            )),
        ),
        Some(inode) => {
            Check::info(NAME, format!("in PID namespace pid:[{inode}], not the initial one the probes' PIDs belong to"))
        }
        None => Check::info(NAME, "/proc/self/ns/pid not readable"),
    }
}

fn own_pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    parse_namespace_inode(&link.to_string_lossy())
}

/// Which of the agent's needs a program-type check stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeRole {
    /// One scheduler hook family must attach: tp_btf, raw_tracepoint or tracepoint.
    Scheduler,
    Oom,
    /// Request tracing: the exit-only probe (bpf_task_pt_regs) or the enter/exit pair.
    RequestsExitOnly,
    RequestsPair,
    /// Maps every probe writes to: the object does not load without them.
    RequiredMap,
    /// The kernel's run-queue count (`task_struct.sched_info`), read by sched_switch.
    RunDelayCount,
    /// Checked for the record; the agent does not use the type.
    Unused,
}

fn probe_role(check: &ProbeCheck) -> ProbeRole {
    match (check.program_type, check.hook.as_str()) {
        ("tp_btf" | "raw_tracepoint", "sched_switch") | ("tracepoint", "sched/sched_switch") => ProbeRole::Scheduler,
        ("tracepoint", "oom/mark_victim") => ProbeRole::Oom,
        ("tracepoint", hook) if hook.contains("bpf_task_pt_regs") => ProbeRole::RequestsExitOnly,
        ("tracepoint", hook) if hook.starts_with("syscalls/") => ProbeRole::RequestsPair,
        (kind, _) if kind.ends_with(" map") => ProbeRole::RequiredMap,
        (kernel::RUN_DELAY_CHECK, _) => ProbeRole::RunDelayCount,
        _ => ProbeRole::Unused,
    }
}

/// Turns the program-type results into checks: a failure is `missing` only when the agent has no
/// alternative, `degraded` when a feature goes, `info` when another hook does the same job.
fn program_type_checks(config: &Config, types: &[ProbeCheck], tracefs: bool) -> Vec<Check> {
    let works = |role: ProbeRole| types.iter().any(|t| t.ok && probe_role(t) == role);
    let pair_works = types.iter().filter(|t| probe_role(t) == ProbeRole::RequestsPair).all(|t| t.ok)
        && types.iter().any(|t| probe_role(t) == ProbeRole::RequestsPair);
    let requests_work = match config.probes.syscall_hooks {
        SyscallHooks::Auto => works(ProbeRole::RequestsExitOnly) || pair_works,
        SyscallHooks::ExitOnly => works(ProbeRole::RequestsExitOnly),
        SyscallHooks::EnterExit => pair_works,
    };
    let scheduler = types.iter().find(|t| t.ok && probe_role(t) == ProbeRole::Scheduler);
    let tracefs_fix = || (!tracefs).then(|| format!("mount tracefs: {}", tracefs_mount_fix()));
    types
        .iter()
        .map(|t| {
            let name = format!("{} {}", t.program_type, t.hook);
            if t.ok {
                return Check::ok(name, &t.detail);
            }
            let role = probe_role(t);
            match role {
                ProbeRole::Scheduler => match scheduler {
                    Some(used) => {
                        Check::info(name, format!("{}; the agent uses {} instead", t.detail, used.program_type))
                    }
                    None => needed_for_probes(
                        config,
                        &name,
                        format!("{}; no scheduler hook attaches, so no CPU time per process", t.detail),
                        Some(
                            "one of: kernel BTF (CONFIG_DEBUG_INFO_BTF=y) for tp_btf, Linux 4.17+ for raw_tracepoint, \
                             tracefs for tracepoint"
                                .to_owned(),
                        ),
                    ),
                },
                ProbeRole::Oom => Check::new(
                    name,
                    Status::Degraded,
                    format!("{}; no OOM-kill events", t.detail),
                    Some(tracefs_fix().unwrap_or_else(|| "a kernel with the oom/mark_victim tracepoint".to_owned())),
                ),
                ProbeRole::RequestsExitOnly | ProbeRole::RequestsPair => {
                    // syscall_hooks may rule out one of the two ways; its failure then costs nothing.
                    let unused = matches!(
                        (config.probes.syscall_hooks, role),
                        (SyscallHooks::ExitOnly, ProbeRole::RequestsPair)
                            | (SyscallHooks::EnterExit, ProbeRole::RequestsExitOnly)
                    );
                    if !config.probes.request_tracing {
                        Check::info(name, format!("{}; probes.request_tracing is off", t.detail))
                    } else if requests_work || unused {
                        Check::info(name, format!("{}; request tracing uses the other syscall hooks", t.detail))
                    } else {
                        let fix = tracefs_fix().unwrap_or_else(|| {
                            "syscall tracepoints (CONFIG_FTRACE_SYSCALLS=y); exit-only hooks also need Linux 5.15 \
                             and kernel BTF"
                                .to_owned()
                        });
                        Check::new(name, Status::Degraded, format!("{}; no request tracing", t.detail), Some(fix))
                    }
                }
                ProbeRole::RequiredMap => needed_for_probes(
                    config,
                    &name,
                    t.detail.clone(),
                    Some("Linux 5.8 or later (ring buffer maps)".to_owned()),
                ),
                ProbeRole::RunDelayCount => Check::info(
                    name,
                    format!("{}; wakeup probes time each run-queue wait instead (a probe run per wakeup)", t.detail),
                ),
                ProbeRole::Unused => Check::info(name, format!("{}; the agent does not use this type", t.detail)),
            }
        })
        .collect()
}

fn tracefs_mount_fix() -> String {
    mount_fix("tracefs", kernel::TRACEFS, Some(&format!("mount -t tracefs nodev {}", kernel::TRACEFS)))
}

/// NVML: the library, the driver, each device with its MIG mode, and which of the calls the GPU
/// source makes work there. No library is not an error: GPU metrics are simply off.
fn gpu_checks(config: &crate::sources::gpu::GpuConfig) -> Vec<Check> {
    use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
    let library = config.library_path.as_ref().map_or("libnvidia-ml.so.1".to_owned(), |p| p.display().to_string());
    if config.enabled == crate::sources::gpu::GpuMode::Never {
        return vec![Check::info("NVML", "gpu.enabled: never")];
    }
    let nvml = match crate::sources::gpu::open(config) {
        Ok(nvml) => nvml,
        Err(error) => {
            return vec![Check::info(
                "NVML",
                format!(
                    "{library} did not load ({error}): no GPU metrics. On a GPU node, run the agent with the \
                     NVIDIA container runtime (daemonset/overlays/gpu) or set gpu.library_path"
                ),
            )];
        }
    };
    let driver = nvml.sys_driver_version().unwrap_or_else(|e| format!("unknown ({e})"));
    let count = nvml.device_count().unwrap_or(0);
    let mut checks = vec![Check::ok("NVML", format!("{library} loads; driver {driver}; {count} device(s)"))];
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(device) => device,
            Err(error) => {
                checks.push(Check::new(
                    format!("GPU {index}"),
                    Status::Degraded,
                    format!("not readable: {error}; no metrics for this GPU"),
                    Some("check the GPU and its driver on the node (nvidia-smi)".to_owned()),
                ));
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
        checks.push(Check::info(format!("GPU {index}"), detail));
    }
    checks
}

pub fn run(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    checks.push(Check::info("kernel", release.trim()));

    checks.push(if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Check::ok("BTF", "/sys/kernel/btf/vmlinux")
    } else {
        Check::new(
            "BTF",
            Status::Degraded,
            "no /sys/kernel/btf/vmlinux: tp_btf and the exit-only request hooks cannot load (the agent falls back)",
            Some(format!("a kernel built with CONFIG_DEBUG_INFO_BTF=y; {}", mount_fix("btf", "/sys/kernel/btf", None))),
        )
    });

    checks.push(privileges_check(config));
    let seccomp = parse_seccomp(&proc_self_status());
    let bpf = bpf_syscall_check(config, seccomp);
    let mut seccomp_detail = seccomp_mode_text(seccomp);
    if seccomp == Some(2) {
        seccomp_detail.push_str(if bpf.status == Status::Ok { "; bpf() gets through" } else { "; see bpf() syscall" });
    }
    checks.push(Check::info("seccomp", seccomp_detail));
    let bpf_fix = bpf.fix.clone();
    checks.push(bpf);
    checks.push(lockdown_check(config));
    checks.extend(sysctl_checks());
    checks.push(host_pid_check(own_pid_namespace(), in_container()));

    if !mounted("tracefs", kernel::TRACEFS) && has_capability(CAP_SYS_ADMIN) {
        // The agent mounts it itself when it can; doctor reports the state after that attempt.
        let _ = kernel::ensure_tracefs();
    }
    let tracefs = mounted("tracefs", kernel::TRACEFS);
    checks.push(if tracefs {
        Check::ok("tracefs", kernel::TRACEFS)
    } else {
        Check::new(
            "tracefs",
            Status::Degraded,
            format!(
                "not mounted at {}: classic tracepoints cannot attach (no exit or OOM events, no request tracing)",
                kernel::TRACEFS
            ),
            Some(tracefs_mount_fix()),
        )
    });

    checks.push(if mounted("bpf", "/sys/fs/bpf") {
        Check::ok("bpffs", "/sys/fs/bpf")
    } else {
        Check::info("bpffs", "not mounted at /sys/fs/bpf; the agent pins nothing, so nothing is lost")
    });

    checks.push(match Layout::detect(&config.cgroup_root) {
        Ok(layout) => Check::ok("cgroup layout", layout.describe()),
        Err(e) => Check::new(
            "cgroup layout",
            Status::Missing,
            format!("{:#}: nothing can be attributed to containers", anyhow::Error::new(e)),
            Some(format!(
                "mount the host's cgroup filesystem and point the config key cgroup_root at it (now {}): {}",
                config.cgroup_root.display(),
                mount_fix("cgroup", "/sys/fs/cgroup", Some("mount -t cgroup2 none /sys/fs/cgroup"))
            )),
        ),
    });

    if can_load_probes() {
        match kernel::check_program_types(&config.probes) {
            Ok(types) => checks.extend(program_type_checks(config, &types, tracefs)),
            Err(e) => {
                let fix = match &e {
                    kernel::KernelError::NoObject => {
                        "a modelmeter built with its eBPF programs (without MODELMETER_EBPF_PLACEHOLDER=1)".to_owned()
                    }
                    // The object's maps are the first bpf() calls; the check above has the cause.
                    _ => bpf_fix.unwrap_or_else(|| "Linux 5.8 or later (ring buffer maps)".to_owned()),
                };
                checks.push(needed_for_probes(
                    config,
                    "eBPF object",
                    format!("{:#}", anyhow::Error::new(e)),
                    Some(fix),
                ));
            }
        }
    } else {
        checks.push(Check::info("eBPF program types", "not checked: needs CAP_BPF and CAP_PERFMON, or root"));
    }
    checks.extend(gpu_checks(&config.gpu));
    checks.extend(kubernetes_checks(&config.kubernetes));
    checks
}

/// The verbs the pod watch needs on pods, cluster-wide (it lists with a field selector).
const WATCH_VERBS: [&str; 2] = ["list", "watch"];

/// Without the API server the agent still attributes, with pods named by UID only.
fn kubernetes_down(url: &str, detail: impl fmt::Display) -> Vec<Check> {
    let at = if url.is_empty() { String::new() } else { format!("{url}: ") };
    vec![Check::new(
        "kubernetes API",
        Status::Degraded,
        format!("{at}{detail}; pods are named by UID only"),
        Some(
            "check kubernetes.kubeconfig, or in a pod the service account (spec.template.spec.serviceAccountName) \
             and the network path to the API server"
                .to_owned(),
        ),
    )]
}

/// With the Kubernetes API on: whether the API server answers, and whether it lets this agent
/// list and watch pods (asked with a SelfSubjectAccessReview, which every authenticated user may).
fn kubernetes_checks(config: &KubernetesConfig) -> Vec<Check> {
    if !config.enabled() {
        let detail = "not configured: no in-cluster service account or kubeconfig (pods named by UID only)";
        return vec![Check::info("kubernetes API", detail)];
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return kubernetes_down("", format_args!("cannot start a runtime: {e}")),
    };
    runtime.block_on(async {
        let client_config = match kubernetes::client_config(config).await {
            Ok(client_config) => client_config,
            Err(e) => return kubernetes_down("", format_args!("{:#}", anyhow::Error::new(e))),
        };
        let url = client_config.cluster_url.to_string();
        let client = match kube::Client::try_from(client_config) {
            Ok(client) => client,
            Err(e) => return kubernetes_down(&url, e),
        };
        let timeout = std::time::Duration::from_secs(5);
        let version = match tokio::time::timeout(timeout, client.apiserver_version()).await {
            Ok(Ok(info)) => info.git_version,
            Ok(Err(e)) => return kubernetes_down(&url, e),
            Err(_) => return kubernetes_down(&url, "no answer within 5s"),
        };
        let reachable = Check::ok("kubernetes API", format!("{url} answers ({version})"));
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
            Check::ok("kubernetes RBAC", "may list and watch pods")
        } else {
            Check::new(
                "kubernetes RBAC",
                Status::Degraded,
                format!(
                    "may not {} pods: the ClusterRole `modelmeter` is not bound to this service account; pods are \
                     named by UID only",
                    denied.join(", ")
                ),
                Some(
                    "apply daemonset/base/clusterrole.yaml (pods: get, list, watch) and \
                     daemonset/base/clusterrolebinding.yaml, which binds it to the service account in \
                     spec.template.spec.serviceAccountName"
                        .to_owned(),
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

/// Whether the agent can do its main job here, and what it lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Checks whose failure stops the agent or leaves it attributing nothing.
    pub missing: Vec<String>,
    /// Checks whose failure costs a feature.
    pub degraded: Vec<String>,
}

impl Verdict {
    pub fn can_run(&self) -> bool {
        self.missing.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.can_run() {
            return write!(f, "modelmeter cannot do its main job here: {}", self.missing.join(", "));
        }
        write!(f, "modelmeter can run here: nothing it needs is missing")?;
        if !self.degraded.is_empty() {
            write!(f, "; degraded: {}", self.degraded.join(", "))?;
        }
        Ok(())
    }
}

pub fn verdict(checks: &[Check]) -> Verdict {
    let named = |status: Status| checks.iter().filter(|c| c.status == status).map(|c| c.check.clone()).collect();
    Verdict { missing: named(Status::Missing), degraded: named(Status::Degraded) }
}

/// The checks as an aligned table, each fix on its own line under its check (fixes are long and
/// a column for them would not fit a terminal), then the verdict.
pub fn table(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(5).max(5);
    let mut out = format!("{:width$}  {:8}  DETAIL\n", "CHECK", "STATUS");
    for c in checks {
        out.push_str(&format!("{:width$}  {:8}  {}\n", c.check, c.status.as_str(), c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("    fix: {fix}\n"));
        }
    }
    out.push_str(&format!("\n{}\n", verdict(checks)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tmodelmeter\nCapInh:\t0000000000000000\nCapEff:\t000000c000000000\n\
                          NoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn reads_the_seccomp_mode_and_capabilities_from_proc_status() {
        assert_eq!(parse_seccomp(STATUS), Some(2));
        assert_eq!(parse_seccomp("Seccomp:\t0\n"), Some(0));
        assert_eq!(parse_seccomp("Seccomp_filters:\t1\n"), None);
        assert_eq!(parse_seccomp(""), None);
        let caps = parse_effective_caps(STATUS).expect("CapEff");
        assert!(caps & (1 << CAP_BPF) != 0 && caps & (1 << CAP_PERFMON) != 0 && caps & (1 << CAP_SYS_ADMIN) == 0);
    }

    #[test]
    fn reads_the_bracketed_lockdown_mode() {
        assert_eq!(parse_lockdown("none [integrity] confidentiality\n"), Some("integrity"));
        assert_eq!(parse_lockdown("[none] integrity confidentiality"), Some("none"));
        assert_eq!(parse_lockdown("none integrity [confidentiality]"), Some("confidentiality"));
        assert_eq!(parse_lockdown("none integrity confidentiality"), None);
    }

    #[test]
    fn host_pid_namespace_from_its_fixed_inode() {
        assert_eq!(parse_namespace_inode("pid:[4026531836]"), Some(INITIAL_PID_NAMESPACE));
        assert_eq!(parse_namespace_inode("pid:[4026532301]"), Some(4026532301));
        assert_eq!(parse_namespace_inode("garbage"), None);
        assert_eq!(host_pid_check(Some(INITIAL_PID_NAMESPACE), true).status, Status::Ok);
        let container = host_pid_check(Some(4026532301), true);
        assert_eq!(container.status, Status::Degraded);
        assert!(container.fix.is_some_and(|f| f.contains("spec.template.spec.hostPID: true")));
        let host = host_pid_check(Some(4026532301), false);
        assert_eq!((host.status, host.fix), (Status::Info, None));
    }

    #[test]
    fn a_blocked_bpf_call_is_blamed_on_seccomp_only_with_the_privileges() {
        let privileges = || privileges_fix(false, true, true);
        let (detail, fix) = explain_bpf_failure(libc::EPERM, true, Some(2), privileges());
        assert!(detail.contains("EPERM") && detail.contains("seccomp"), "{detail}");
        assert!(fix.contains(&format!("{CONTAINER}.securityContext.seccompProfile")), "{fix}");
        let (detail, fix) = explain_bpf_failure(libc::EPERM, false, Some(2), privileges());
        assert!(detail.contains("CAP_BPF"), "{detail}");
        assert!(fix.contains(&format!("{CONTAINER}.securityContext.capabilities.add")), "{fix}");
        let (detail, fix) = explain_bpf_failure(libc::ENOSYS, true, Some(0), privileges());
        assert!(detail.contains("ENOSYS") && fix.contains("CONFIG_BPF_SYSCALL=y"), "{detail} / {fix}");
        assert_eq!(errno_name(libc::EACCES), "EACCES");
        assert_eq!(errno_name(4095), "errno 4095");
    }

    #[test]
    fn the_privileges_fix_names_only_what_is_absent() {
        let fix = privileges_fix(true, false, true);
        assert!(fix.starts_with(&format!("add PERFMON to {CONTAINER}.securityContext.capabilities.add")), "{fix}");
        assert!(privileges_fix(false, false, true).starts_with("add BPF and PERFMON to"));
        assert!(privileges_fix(false, false, false).contains("daemonset/overlays/privileged"));
    }

    fn probe(program_type: &'static str, hook: &str, ok: bool) -> ProbeCheck {
        ProbeCheck { program_type, hook: hook.to_owned(), ok, detail: if ok { "works" } else { "refused" }.to_owned() }
    }

    #[test]
    fn a_refused_program_type_is_missing_only_without_an_alternative() {
        let config = Config::default();
        let status = |checks: &[Check], name: &str| checks.iter().find(|c| c.check == name).map(|c| c.status);
        let fallback = [
            probe("tp_btf", "sched_switch", false),
            probe("raw_tracepoint", "sched_switch", true),
            probe("tracepoint", "syscalls/sys_exit_read (bpf_task_pt_regs)", false),
            probe("tracepoint", "syscalls/sys_enter_read", true),
            probe("tracepoint", "syscalls/sys_exit_read", true),
            probe("kprobe", "do_exit", false),
            probe("ringbuf map", "EVENTS", true),
        ];
        let checks = program_type_checks(&config, &fallback, true);
        assert_eq!(status(&checks, "tp_btf sched_switch"), Some(Status::Info));
        assert_eq!(status(&checks, "tracepoint syscalls/sys_exit_read (bpf_task_pt_regs)"), Some(Status::Info));
        assert_eq!(status(&checks, "kprobe do_exit"), Some(Status::Info));
        assert!(verdict(&checks).can_run());

        let refused = [
            probe("tp_btf", "sched_switch", false),
            probe("raw_tracepoint", "sched_switch", false),
            probe("tracepoint", "sched/sched_switch", false),
            probe("tracepoint", "oom/mark_victim", false),
            probe("tracepoint", "syscalls/sys_exit_read (bpf_task_pt_regs)", false),
            probe("tracepoint", "syscalls/sys_enter_read", true),
            probe("tracepoint", "syscalls/sys_exit_read", false),
            probe("ringbuf map", "EVENTS", false),
        ];
        let checks = program_type_checks(&config, &refused, false);
        assert_eq!(status(&checks, "raw_tracepoint sched_switch"), Some(Status::Missing));
        assert_eq!(status(&checks, "tracepoint oom/mark_victim"), Some(Status::Degraded));
        assert_eq!(status(&checks, "tracepoint syscalls/sys_exit_read"), Some(Status::Degraded));
        assert_eq!(status(&checks, "ringbuf map EVENTS"), Some(Status::Missing));
        let oom = checks.iter().find(|c| c.check == "tracepoint oom/mark_victim").and_then(|c| c.fix.clone());
        assert!(oom.is_some_and(|f| f.contains("mount -t tracefs nodev /sys/kernel/tracing")));
        assert!(checks.iter().filter(|c| c.status != Status::Ok).all(|c| c.fix.is_some()));

        let mut without_probes = Config::default();
        without_probes.probes.enabled = false;
        let checks = program_type_checks(&without_probes, &refused, false);
        assert!(verdict(&checks).can_run(), "{:?}", verdict(&checks));
    }

    fn sample() -> Vec<Check> {
        vec![
            Check::info("kernel", "6.8.0"),
            Check::ok("BTF", "/sys/kernel/btf/vmlinux"),
            Check::new("tracefs", Status::Degraded, "not mounted", Some(tracefs_mount_fix())),
            Check::new("privileges", Status::Missing, "no CAP_BPF", Some(privileges_fix(false, false, true))),
        ]
    }

    #[test]
    fn verdict_names_what_is_missing_and_what_is_degraded() {
        let checks = sample();
        let verdict = verdict(&checks);
        assert!(!verdict.can_run());
        assert_eq!(verdict.missing, ["privileges"]);
        assert_eq!(verdict.to_string(), "modelmeter cannot do its main job here: privileges");
        let runs = super::verdict(&checks[..3]);
        assert!(runs.can_run());
        assert_eq!(runs.to_string(), "modelmeter can run here: nothing it needs is missing; degraded: tracefs");
        assert_eq!(super::verdict(&checks[..2]).to_string(), "modelmeter can run here: nothing it needs is missing");
    }

    #[test]
    fn table_puts_each_fix_under_its_check_and_ends_with_the_verdict() {
        let table = table(&sample());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "CHECK       STATUS    DETAIL");
        assert_eq!(lines[1], "kernel      info      6.8.0");
        assert_eq!(lines[2], "BTF         ok        /sys/kernel/btf/vmlinux");
        assert_eq!(lines[3], "tracefs     degraded  not mounted");
        assert!(lines[4].starts_with("    fix: in a pod: add spec.template.spec.volumes[tracefs]"), "{}", lines[4]);
        assert!(lines[4].ends_with("on a host: mount -t tracefs nodev /sys/kernel/tracing"), "{}", lines[4]);
        assert_eq!(lines[5], "privileges  missing   no CAP_BPF");
        assert!(lines[6].starts_with("    fix: add BPF and PERFMON to "), "{}", lines[6]);
        assert_eq!(lines[7], "");
        assert_eq!(lines[8], "modelmeter cannot do its main job here: privileges");
        assert_eq!(lines.len(), 9);
    }

    #[test]
    fn json_carries_the_fix_only_when_there_is_one() {
        let json = serde_json::to_value(sample()).expect("serializes");
        assert_eq!(json[0], serde_json::json!({"check": "kernel", "status": "info", "detail": "6.8.0"}));
        assert_eq!(json[2]["status"], "degraded");
        assert!(json[2]["fix"].as_str().is_some_and(|f| f.contains("volumeMounts[tracefs]")));
    }
}
