//! The only code that touches aya: loads modelmeter's eBPF object into the kernel, attaches the
//! scheduler, exit and OOM probes (choosing the first hook family the kernel accepts), and reads
//! their maps, counters, ring buffer and bpf_stats.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
};

use std::collections::HashSet;

use agent_common::{
    counters,
    events::{EVENTS_MAP, Event},
    sched::TASK_CPU_MAP,
    traffic::{
        self, Completion, CompletionHeader, DATA_EVENTS_MAP, DataEvent, FD_NOT_SOCKET, FD_SOCKET, FD_VERDICTS_MAP,
        WATCH_CONFIG_MAP, WATCHED_CGROUPS_MAP,
    },
};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, FEntry, KProbe, Program, ProgramError, RawTracePoint, TracePoint},
};

mod btf_fields;

use crate::{
    config::{ProbesConfig, SyscallHooks},
    telemetry::SkipReason,
};

/// The probes' per-(cgroup, process) CPU entry and its key.
pub use agent_common::sched::{TaskCpu, TaskKey};
use btf_fields::RunDelayOffsets;

/// The eBPF object built from agent-ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/modelmeter.bpf.o"));

pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this modelmeter binary was built without eBPF programs (MODELMETER_EBPF_PLACEHOLDER=1)")]
    NoObject,
    #[error("loading the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("no scheduler probe family could be attached: {0}")]
    NoSchedulerHook(String),
    #[error("map {name} is missing or has the wrong type")]
    Map {
        name: &'static str,
        #[source]
        source: Option<aya::maps::MapError>,
    },
    #[error("reading map {name}")]
    ReadMap {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Which flavour of the scheduler hooks is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookFamily {
    BtfTracepoint,
    RawTracepoint,
    Tracepoint,
}

impl HookFamily {
    pub const ALL: [HookFamily; 3] = [HookFamily::BtfTracepoint, HookFamily::RawTracepoint, HookFamily::Tracepoint];

    pub fn as_str(self) -> &'static str {
        match self {
            HookFamily::BtfTracepoint => "tp_btf",
            HookFamily::RawTracepoint => "raw_tracepoint",
            HookFamily::Tracepoint => "tracepoint",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            HookFamily::BtfTracepoint => "btf",
            HookFamily::RawTracepoint => "raw",
            HookFamily::Tracepoint => "tp",
        }
    }
}

/// The scheduler events every family hooks, as (tracepoint category, name); sched_switch first,
/// the only one where the kernel's run-queue count is read.
const SCHED_EVENTS: [(&str, &str); 3] =
    [("sched", "sched_switch"), ("sched", "sched_wakeup"), ("sched", "sched_wakeup_new")];
/// Classic tracepoints attached in every family: (program, category, name).
const EVENT_PROBES: [(&str, &str, &str); 2] =
    [("sched_process_exit", "sched", "sched_process_exit"), ("oom_mark_victim", "oom", "mark_victim")];

/// Syscalls whose arguments the request probes read: (name in the programs' names, syscall
/// tracepoint name). Each has an exit-only program `exit_<name>` and an enter/exit pair
/// `pair_enter_<name>`, `pair_exit_<name>`.
const ARGUMENT_SYSCALLS: [(&str, &str); 13] = [
    ("read", "read"),
    ("readv", "readv"),
    ("recvfrom", "recvfrom"),
    ("recvmsg", "recvmsg"),
    ("write", "write"),
    ("writev", "writev"),
    ("sendto", "sendto"),
    ("sendmsg", "sendmsg"),
    ("sendfile", "sendfile64"),
    ("dup", "dup"),
    ("dup2", "dup2"),
    ("dup3", "dup3"),
    ("fcntl", "fcntl"),
];

/// Request probes that need no saved arguments: (program, event in category `syscalls`).
const TRAFFIC_PROBES: [(&str, &str); 4] = [
    ("enter_close", "sys_enter_close"),
    ("enter_shutdown", "sys_enter_shutdown"),
    ("exit_accept4", "sys_exit_accept4"),
    ("exit_accept", "sys_exit_accept"),
];

/// The request probes of one way to see syscall arguments: (program, event).
fn syscall_probes(exit_only: bool) -> Vec<(String, String)> {
    let mut probes = Vec::new();
    for (name, syscall) in ARGUMENT_SYSCALLS {
        if exit_only {
            probes.push((format!("exit_{name}"), format!("sys_exit_{syscall}")));
        } else {
            probes.push((format!("pair_enter_{name}"), format!("sys_enter_{syscall}")));
            probes.push((format!("pair_exit_{name}"), format!("sys_exit_{syscall}")));
        }
    }
    probes.extend(TRAFFIC_PROBES.iter().map(|(program, event)| ((*program).to_owned(), (*event).to_owned())));
    probes
}

/// The maps of request tracing, when its probes are attached.
struct Traffic {
    watched: BpfHashMap<MapData, u64, u8>,
    watch_config: Array<MapData, u32>,
    payload: Option<PayloadRing>,
    /// What `watched` holds now, to update it by difference.
    watched_now: HashSet<u64>,
    /// What the switch in `watch_config` says now; `None` until it is written.
    watch_all_now: Option<bool>,
}

/// A ring buffer the kernel fills, read by one source's thread.
pub struct Ring {
    ring: RingBuf<MapData>,
}

impl Ring {
    /// Waits until the kernel signals records or `timeout` passes; `Err` when polling fails.
    pub fn wait(&self, timeout: std::time::Duration) -> std::io::Result<()> {
        let mut fd = libc::pollfd { fd: self.ring.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut fd, 1, millis) };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Hands up to `max` records to `apply`, in place; returns how many.
    pub fn drain(&mut self, max: usize, mut apply: impl FnMut(&[u8])) -> usize {
        let mut applied = 0;
        while applied < max {
            let Some(item) = self.ring.next() else { break };
            apply(&item);
            applied += 1;
        }
        applied
    }
}

/// The payload ring and the map through which userspace tells the probes what an fd is.
pub struct PayloadRing {
    pub ring: Ring,
    pub fd_classes: FdClasses,
}

/// `bpf_map_update_elem`'s flag: only where the key has no entry (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

/// Where userspace answers the probes' questions about fds.
pub struct FdClasses {
    verdicts: BpfHashMap<MapData, u64, u8>,
}

impl FdClasses {
    /// Tells the probes what the fd they gave `conn_id` is (they follow it meanwhile). Keyed by
    /// the connection id: an fd closed and reused since the question keeps its new identity.
    /// Never over an entry: the probes void a question whose fd closed before the answer
    /// (`FD_ASKED_FD_CLOSED`), since the answer may be about the file now under that number.
    pub fn classify_fd(&mut self, conn_id: u64, is_socket: bool) {
        let class = if is_socket { FD_SOCKET } else { FD_NOT_SOCKET };
        if let Err(e) = self.verdicts.insert(conn_id, class, BPF_NOEXIST) {
            tracing::debug!(error = %e, conn_id, "Classifying an fd failed, or its question was voided by its close");
        }
    }
}

/// What the probes count about themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Exit and OOM events lost to a full ring buffer.
    pub events_ring_drops: u64,
    /// Payload records lost to a full ring buffer.
    pub payload_ring_drops: u64,
    /// Failures inside the probes, by kind (`task_cpu_map_full`, …).
    pub errors: Vec<(&'static str, u64)>,
    /// Traffic the probes saw and did not make a request of, by reason.
    pub skipped: Vec<(SkipReason, u64)>,
    /// Connections the probes handed to userspace to follow.
    pub fallback_connections: u64,
}

/// One attached program, for bpf_stats and `doctor`.
#[derive(Debug, Clone)]
pub struct AttachedProgram {
    pub name: String,
    /// `tp_btf`, `raw_tracepoint` or `tracepoint`.
    pub kind: &'static str,
    /// The kernel event it runs on, e.g. `sched/sched_switch`.
    pub event: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ProgramStats {
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Loaded and attached probes. Dropping it detaches and unloads everything.
pub struct Probes {
    ebpf: Ebpf,
    family: HookFamily,
    attached: Vec<AttachedProgram>,
    /// Probes that could not be attached, with the reason (the agent runs without them).
    pub missing: Vec<(String, String)>,
    task_cpu: PerCpuHashMap<MapData, TaskKey, TaskCpu>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<Ring>,
    traffic: Option<Traffic>,
    /// Keeps BPF_ENABLE_STATS on while held.
    _stats: Option<OwnedFd>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").field("family", &self.family).field("attached", &self.attached).finish()
    }
}

/// Mounts tracefs at its usual place when it is not there yet (classic tracepoints need it to
/// resolve event ids). Returns why it is unusable, if it is.
pub fn ensure_tracefs() -> Result<(), String> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    // SAFETY: constant NUL-terminated strings; mount(2) has no memory-safety preconditions.
    let rc = unsafe {
        libc::mount(c"tracefs".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(format!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Whether this kernel's `sched_process_exit` carries `group_dead` (added in 2025).
fn exit_has_group_dead() -> u8 {
    let format = Path::new(TRACEFS).join("events/sched/sched_process_exit/format");
    u8::from(std::fs::read_to_string(format).is_ok_and(|f| f.contains("group_dead")))
}

/// The kernel's BTF, read once for both uses: aya's parse of it (tp_btf, fentry), and the
/// offsets of the run-queue count or why they cannot be had.
fn kernel_btf() -> (Option<Btf>, Result<RunDelayOffsets, String>) {
    match std::fs::read(btf_fields::VMLINUX_BTF) {
        Ok(bytes) => (Btf::parse(&bytes, aya::Endianness::default()).ok(), btf_fields::run_delay_offsets_in(&bytes)),
        Err(e) => (None, Err(format!("reading {}: {e}", btf_fields::VMLINUX_BTF))),
    }
}

/// Loads the object. With the kernel's own run-queue count located (`run_delay`), the switch
/// handlers read it and the wakeup handlers are left out.
fn load_object(config: &ProbesConfig, run_delay: Option<RunDelayOffsets>) -> Result<Ebpf, KernelError> {
    if EBPF_OBJECT.is_empty() {
        return Err(KernelError::NoObject);
    }
    let group_dead = exit_has_group_dead();
    let (pcount, run_delay) = run_delay.map_or((0, 0), |o| (o.pcount, o.run_delay));
    EbpfLoader::new()
        .override_global("EXIT_HAS_GROUP_DEAD", &group_dead, true)
        .override_global("TASK_PCOUNT_OFFSET", &pcount, true)
        .override_global("TASK_RUN_DELAY_OFFSET", &run_delay, true)
        .map_max_entries(TASK_CPU_MAP, config.task_map_entries.get())
        .map_max_entries(agent_common::sched::WAKEUP_TS_MAP, config.task_map_entries.get())
        .map_max_entries(agent_common::sched::RUN_DELAY_SEEN_MAP, config.task_map_entries.get())
        .map_max_entries(EVENTS_MAP, config.ring_buffer_bytes.get())
        .map_max_entries(DATA_EVENTS_MAP, config.data_ring_buffer_bytes.get())
        .load(EBPF_OBJECT)
        .map_err(|e| KernelError::Load(Box::new(e)))
}

impl Probes {
    /// Loads the object and attaches: the scheduler hooks of the first family that works
    /// (tp_btf → raw_tracepoint → tracepoint), then the exit and OOM tracepoints.
    pub fn load(config: &ProbesConfig) -> Result<Probes, KernelError> {
        let tracefs = ensure_tracefs();
        let (btf, run_delay) = kernel_btf();
        let run_delay = run_delay
            .inspect_err(|reason| {
                tracing::info!(reason = %reason, "The kernel's run-queue count is out of reach; wakeup probes time the waits instead")
            })
            .ok();
        let mut ebpf = load_object(config, run_delay)?;
        let mut failures = Vec::new();
        let mut chosen = None;
        for family in HookFamily::ALL {
            match attach_family(&mut ebpf, family, btf.as_ref(), run_delay.is_some()) {
                Ok(attached) => {
                    chosen = Some((family, attached));
                    break;
                }
                Err(reason) => {
                    tracing::info!(family = family.as_str(), reason = %reason, "Scheduler probe family unavailable, trying the next");
                    failures.push(format!("{}: {reason}", family.as_str()));
                }
            }
        }
        let Some((family, mut attached)) = chosen else {
            return Err(KernelError::NoSchedulerHook(failures.join("; ")));
        };
        let mut missing = Vec::new();
        for (program, category, name) in EVENT_PROBES {
            match attach_tracepoint(&mut ebpf, program, category, name) {
                Ok(()) => attached.push(AttachedProgram {
                    name: program.to_owned(),
                    kind: "tracepoint",
                    event: format!("{category}/{name}"),
                }),
                Err(e) => {
                    let reason = with_tracefs_reason(e, &tracefs);
                    tracing::warn!(program, reason = %reason, "Probe not attached");
                    missing.push((program.to_owned(), reason));
                }
            }
        }
        let traffic = if config.request_tracing {
            attach_traffic(&mut ebpf, config.syscall_hooks, &mut attached, &mut missing)?
        } else {
            None
        };
        if config.calibration {
            attach_calibration(&mut ebpf, &mut attached);
        }
        let stats = if config.bpf_stats {
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .inspect_err(|e| tracing::warn!(error = %e, "bpf_stats unavailable; probe run times will read 0"))
                .ok()
        } else {
            None
        };
        let task_cpu = take_map(&mut ebpf, TASK_CPU_MAP)?;
        let counters = take_map(&mut ebpf, counters::COUNTERS_MAP)?;
        let events = Some(Ring { ring: take_map(&mut ebpf, EVENTS_MAP)? });
        drop(btf);
        // Parsing the kernel's BTF and the object took megabytes of heap that glibc would
        // otherwise keep for the agent's whole life.
        #[cfg(target_env = "gnu")]
        // SAFETY: no preconditions; it only gives free heap pages back to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(Probes { ebpf, family, attached, missing, task_cpu, counters, events, traffic, _stats: stats })
    }

    pub fn family(&self) -> HookFamily {
        self.family
    }

    pub fn attached(&self) -> &[AttachedProgram] {
        &self.attached
    }

    /// Whether the OOM probe is attached (otherwise OOM kills come from cgroup files).
    pub fn has_oom_probe(&self) -> bool {
        self.attached.iter().any(|p| p.name == "oom_mark_victim")
    }

    /// The ring buffer of exit and OOM events; can be taken once.
    pub fn take_events(&mut self) -> Option<Ring> {
        self.events.take()
    }

    /// Whether request tracing's syscall probes are attached.
    pub fn has_request_tracing(&self) -> bool {
        self.traffic.is_some()
    }

    /// The ring buffer of socket payload events and the fd classification map; can be taken once.
    pub fn take_payload(&mut self) -> Option<PayloadRing> {
        self.traffic.as_mut().and_then(|t| t.payload.take())
    }

    /// How many cgroups the probes trace now.
    pub fn watched_cgroups(&self) -> usize {
        self.traffic.as_ref().map_or(0, |t| t.watched_now.len())
    }

    /// Makes the probes trace exactly these cgroups (by v2 id).
    pub fn set_watched_cgroups(&mut self, wanted: &HashSet<u64>) {
        let Some(traffic) = self.traffic.as_mut() else { return };
        for gone in traffic.watched_now.difference(wanted).copied().collect::<Vec<_>>() {
            if traffic.watched.remove(&gone).is_ok() {
                traffic.watched_now.remove(&gone);
            }
        }
        for new in wanted.difference(&traffic.watched_now).copied().collect::<Vec<_>>() {
            match traffic.watched.insert(new, 1, 0) {
                Ok(()) => {
                    traffic.watched_now.insert(new);
                }
                Err(e) => tracing::warn!(error = %e, cgroup_id = new, "Watching a cgroup for requests failed"),
            }
        }
    }

    /// Traces every process but the agent itself (standalone use), or only the watched cgroups.
    pub fn set_watch_all(&mut self, all: bool) {
        let Some(traffic) = self.traffic.as_mut() else { return };
        // Called at every collection: the map is written only when the switch changes.
        if traffic.watch_all_now == Some(all) {
            return;
        }
        let results = [
            traffic.watch_config.set(traffic::AGENT_TGID, std::process::id(), 0),
            traffic.watch_config.set(traffic::WATCH_ALL, u32::from(all), 0),
        ];
        match results.into_iter().find_map(Result::err) {
            Some(e) => tracing::warn!(error = %e, "Setting the request tracing switch failed"),
            None => traffic.watch_all_now = Some(all),
        }
    }

    /// Every (cgroup, tgid) entry, summed over CPUs.
    pub fn read_task_cpu(&self) -> Result<Vec<(TaskKey, TaskCpu)>, KernelError> {
        let mut out = Vec::new();
        for entry in self.task_cpu.iter() {
            let (key, per_cpu) = match entry {
                Ok(entry) => entry,
                // An entry deleted between get_next_key and lookup: skip it.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => return Err(KernelError::ReadMap { name: TASK_CPU_MAP, source }),
            };
            let mut total = TaskCpu::ZERO;
            for value in per_cpu.iter() {
                add_task_cpu(&mut total, value);
            }
            out.push((key, total));
        }
        Ok(out)
    }

    /// Removes entries of processes that are gone, after their totals were folded elsewhere.
    pub fn remove_tasks(&mut self, keys: &[TaskKey]) {
        for key in keys {
            if let Err(e) = self.task_cpu.remove(key) {
                tracing::debug!(error = %e, tgid = key.tgid, "Removing task entry failed");
            }
        }
    }

    /// The per-CPU counters of the probes, summed.
    pub fn counters(&self) -> ProbeCounters {
        let read = |index: u32| self.counters.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0);
        ProbeCounters {
            events_ring_drops: read(counters::RINGBUF_DROPS),
            payload_ring_drops: read(counters::DATA_RINGBUF_DROPS),
            errors: [
                counters::TASK_CPU_FULL,
                counters::WAKEUP_TS_ERRORS,
                counters::ACTIVE_CALL_ERRORS,
                counters::CONN_ERRORS,
            ]
            .into_iter()
            .map(|index| (counters::NAMES[index as usize], read(index)))
            .collect(),
            skipped: [
                (SkipReason::NotHttp, counters::NOT_HTTP),
                (SkipReason::UnmatchedResponse, counters::UNMATCHED_RESPONSE),
                (SkipReason::Unfinished, counters::UNFINISHED),
            ]
            .into_iter()
            .map(|(reason, index)| (reason, read(index)))
            .collect(),
            fallback_connections: read(counters::FALLBACK),
        }
    }

    /// Run time and count of each attached program (zero unless bpf_stats is on).
    pub fn program_stats(&self) -> Vec<(AttachedProgram, ProgramStats)> {
        self.attached
            .iter()
            .map(|program| {
                let stats = self
                    .ebpf
                    .program(&program.name)
                    .and_then(|p| p.info().ok())
                    .map(|info| ProgramStats {
                        run_time_ns: info.run_time().as_nanos() as u64,
                        run_count: info.run_count(),
                    })
                    .unwrap_or_default();
                (program.clone(), stats)
            })
            .collect()
    }
}

/// The calibration programs of `cargo xtask bench`: (program, category, event); an empty category
/// is a raw tracepoint.
const CALIBRATION_PROBES: [(&str, &str, &str); 6] = [
    ("calibrate_enter_recvfrom", "syscalls", "sys_enter_recvfrom"),
    ("calibrate_exit_recvfrom", "syscalls", "sys_exit_recvfrom"),
    ("calibrate_enter_sendto", "syscalls", "sys_enter_sendto"),
    ("calibrate_exit_sendto", "syscalls", "sys_exit_sendto"),
    ("calibrate_raw_sys_enter", "", "sys_enter"),
    ("calibrate_raw_sys_exit", "", "sys_exit"),
];

fn attach_calibration(ebpf: &mut Ebpf, attached: &mut Vec<AttachedProgram>) {
    for (program, category, event) in CALIBRATION_PROBES {
        let (result, kind, name) = if category.is_empty() {
            (attach_raw(ebpf, program, event), "raw_tracepoint", event.to_owned())
        } else {
            (attach_tracepoint(ebpf, program, category, event), "tracepoint", format!("{category}/{event}"))
        };
        match result {
            Ok(()) => attached.push(AttachedProgram { name: program.to_owned(), kind, event: name }),
            Err(reason) => tracing::warn!(program, reason = %reason, "Calibration probe not attached"),
        }
    }
}

/// Attaches the syscall probes of request tracing; all or none (a partial set would pair reads
/// without writes). With `SyscallHooks::Auto` the exit-only set is tried first, then the
/// enter/exit pairs. Returns `None`, with the reason in `missing`, when the kernel refuses them.
fn attach_traffic(
    ebpf: &mut Ebpf,
    hooks: SyscallHooks,
    attached: &mut Vec<AttachedProgram>,
    missing: &mut Vec<(String, String)>,
) -> Result<Option<Traffic>, KernelError> {
    let choices: &[bool] = match hooks {
        SyscallHooks::Auto => &[true, false],
        SyscallHooks::ExitOnly => &[true],
        SyscallHooks::EnterExit => &[false],
    };
    let mut failure = None;
    for &exit_only in choices {
        let probes = syscall_probes(exit_only);
        if let Err((program, reason)) = attach_all(ebpf, &probes) {
            if exit_only && choices.len() > 1 {
                tracing::info!(program, reason = %reason, "Exit-only request probes unavailable, using enter/exit pairs");
            } else {
                tracing::warn!(program, reason = %reason, "Request tracing unavailable");
            }
            failure = Some((program, reason));
            continue;
        }
        attached.extend(probes.into_iter().map(|(name, event)| AttachedProgram {
            name,
            kind: "tracepoint",
            event: format!("syscalls/{event}"),
        }));
        return Ok(Some(Traffic {
            watched: take_map(ebpf, WATCHED_CGROUPS_MAP)?,
            watch_config: take_map(ebpf, WATCH_CONFIG_MAP)?,
            payload: Some(PayloadRing {
                ring: Ring { ring: take_map(ebpf, DATA_EVENTS_MAP)? },
                fd_classes: FdClasses { verdicts: take_map(ebpf, FD_VERDICTS_MAP)? },
            }),
            watched_now: HashSet::new(),
            watch_all_now: None,
        }));
    }
    missing.extend(failure);
    Ok(None)
}

/// Loads and attaches every program of `probes`; on a failure unloads those it did, and returns
/// the program and the reason.
fn attach_all(ebpf: &mut Ebpf, probes: &[(String, String)]) -> Result<(), (String, String)> {
    for (index, (program, event)) in probes.iter().enumerate() {
        if let Err(reason) = attach_tracepoint(ebpf, program, "syscalls", event) {
            for (done, _) in &probes[..=index] {
                if let Some(p) = ebpf.program_mut(done) {
                    let _ = unload(p);
                }
            }
            return Err((program.clone(), reason));
        }
    }
    Ok(())
}

/// The kind of a payload ring record (its first field).
pub fn record_kind(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// Decodes one raw payload record: its header and the captured bytes; `None` for a short record.
pub fn decode_data_event(bytes: &[u8]) -> Option<(DataEvent, &[u8])> {
    let header = std::mem::offset_of!(DataEvent, data);
    if bytes.len() < header {
        return None;
    }
    let field = |offset: usize, width: usize| -> u64 {
        let mut raw = [0u8; 8];
        raw[..width].copy_from_slice(&bytes[offset..offset + width]);
        u64::from_ne_bytes(raw)
    };
    let event = DataEvent {
        kind: field(std::mem::offset_of!(DataEvent, kind), 4) as u32,
        tgid: field(std::mem::offset_of!(DataEvent, tgid), 4) as u32,
        fd: field(std::mem::offset_of!(DataEvent, fd), 4) as u32,
        captured: field(std::mem::offset_of!(DataEvent, captured), 4) as u32,
        len: field(std::mem::offset_of!(DataEvent, len), 8),
        timestamp_ns: field(std::mem::offset_of!(DataEvent, timestamp_ns), 8),
        cgroup_id: field(std::mem::offset_of!(DataEvent, cgroup_id), 8),
        conn_id: field(std::mem::offset_of!(DataEvent, conn_id), 8),
        data: [0; traffic::CAPTURE_BYTES],
    };
    let captured = (event.captured as usize).min(traffic::CAPTURE_BYTES).min(bytes.len() - header);
    Some((event, &bytes[header..header + captured]))
}

/// A completion record, read in place: its fixed fields, and its captured bytes borrowed.
#[derive(Debug, Clone, Copy)]
pub struct CompletionView<'a> {
    pub header: CompletionHeader,
    /// The request's first bytes.
    pub request: &'a [u8],
    /// The response body's first bytes.
    pub response: &'a [u8],
}

/// Decodes one completion record (its header, then the request's and the response's captured
/// bytes) without copying its captures; `None` for one shorter than its header says, or claiming
/// more than the probes capture.
pub fn decode_completion(bytes: &[u8]) -> Option<CompletionView<'_>> {
    let header_size = std::mem::size_of::<CompletionHeader>();
    if bytes.len() < header_size {
        return None;
    }
    // SAFETY: `bytes` holds at least a header, which is plain integers (valid for any bytes);
    // the read makes no alignment assumption.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<CompletionHeader>()) };
    let (request, response) = (usize::from(header.request_captured), usize::from(header.response_captured));
    if request > traffic::REQUEST_CAPTURE || response > traffic::RESPONSE_CAPTURE {
        return None;
    }
    let captured = bytes.get(header_size..header_size + request + response)?;
    let (request, response) = captured.split_at(request);
    Some(CompletionView { header, request, response })
}

/// A completion record as the probes send it: `header` (whose captured lengths are set from the
/// slices), then `request`'s bytes, then `response`'s.
pub fn encode_completion(mut header: CompletionHeader, request: &[u8], response: &[u8]) -> Vec<u8> {
    header.request_captured = request.len() as u16;
    header.response_captured = response.len() as u16;
    let mut record = Completion { header, captured: [0; traffic::REQUEST_CAPTURE + traffic::RESPONSE_CAPTURE] };
    record.captured[..request.len()].copy_from_slice(request);
    record.captured[request.len()..request.len() + response.len()].copy_from_slice(response);
    let size = std::mem::size_of::<CompletionHeader>() + request.len() + response.len();
    // SAFETY: Completion is plain old data, and `size` is within it.
    unsafe { std::slice::from_raw_parts((&record as *const Completion).cast::<u8>(), size) }.to_vec()
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::Map { name, source: None })?;
    T::try_from(map).map_err(|e| KernelError::Map { name, source: Some(e) })
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| format!("program {name} is not in the object"))?;
    program.try_into().map_err(|e: ProgramError| format!("{name}: {e}"))
}

/// Full error chain of a program error on one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Adds why tracefs is unusable, if it is, to a classic tracepoint's failure.
fn with_tracefs_reason(error: String, tracefs: &Result<(), String>) -> String {
    match tracefs {
        Err(why) => format!("{error}; {why}"),
        Ok(()) => error,
    }
}

fn attach_btf(ebpf: &mut Ebpf, program: &str, function: &str, btf: Option<&Btf>) -> Result<(), String> {
    let btf = btf.ok_or("kernel BTF (/sys/kernel/btf/vmlinux) is unavailable")?;
    let p: &mut BtfTracePoint = program_mut(ebpf, program)?;
    p.load(function, btf).map_err(|e| describe(&e))?;
    p.attach().map(drop).map_err(|e| describe(&e))
}

fn attach_raw(ebpf: &mut Ebpf, program: &str, tracepoint: &str) -> Result<(), String> {
    let p: &mut RawTracePoint = program_mut(ebpf, program)?;
    p.load().map_err(|e| describe(&e))?;
    p.attach(tracepoint).map(drop).map_err(|e| describe(&e))
}

fn attach_tracepoint(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<(), String> {
    let tp: &mut TracePoint = program_mut(ebpf, program)?;
    tp.load().map_err(|e| format!("loading {program}: {}", describe(&e)))?;
    tp.attach(category, name).map_err(|e| format!("attaching {program}: {}", describe(&e)))?;
    Ok(())
}

/// Loads and attaches one family's scheduler programs; on any failure unloads what it loaded, so
/// the next family starts clean. `kernel_run_delay`: the switch handlers of the task-pointer
/// families read each wait from the kernel's count, so those families need no wakeup handler.
fn attach_family(
    ebpf: &mut Ebpf,
    family: HookFamily,
    btf: Option<&Btf>,
    kernel_run_delay: bool,
) -> Result<Vec<AttachedProgram>, String> {
    let switch_only = kernel_run_delay && family != HookFamily::Tracepoint;
    let events = if switch_only { &SCHED_EVENTS[..1] } else { &SCHED_EVENTS[..] };
    let mut attached = Vec::new();
    let result = events.iter().try_for_each(|(category, event)| {
        let name = format!("{event}_{}", family.suffix());
        let outcome = match family {
            HookFamily::BtfTracepoint => attach_btf(ebpf, &name, event, btf),
            HookFamily::RawTracepoint => attach_raw(ebpf, &name, event),
            HookFamily::Tracepoint => attach_tracepoint(ebpf, &name, category, event),
        };
        outcome.map_err(|e| format!("{name}: {e}"))?;
        attached.push(AttachedProgram { name, kind: family.as_str(), event: format!("{category}/{event}") });
        Ok::<(), String>(())
    });
    if let Err(reason) = result {
        for program in &attached {
            if let Some(p) = ebpf.program_mut(&program.name) {
                let _ = unload(p);
            }
        }
        return Err(reason);
    }
    Ok(attached)
}

fn unload(program: &mut Program) -> Result<(), ProgramError> {
    match program {
        Program::BtfTracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        _ => Ok(()),
    }
}

/// Decodes one ring-buffer record; `None` for a record of the wrong size (counted by the caller).
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: `Event` is `#[repr(C)]` plain data of the size checked above; read_unaligned copes
    // with any alignment of the record.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Makes every CPU switch once, so that a task running uninterrupted on it has its time so far
/// accounted by sched_switch before the maps are read. Costs one migration per CPU.
pub fn flush_cpu_slices() {
    let Ok(cpus) = aya::util::online_cpus() else { return };
    let _ = std::thread::Builder::new()
        .name("cpu-flush".into())
        .spawn(move || {
            for cpu in cpus {
                // SAFETY: cpu_set_t is plain data; sched_setaffinity on the calling thread (pid 0)
                // migrates it to `cpu` before returning, which is a context switch there.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu as usize, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
            }
        })
        .map(|handle| handle.join());
}

/// `ProbeCheck::program_type` of the look for the kernel's run-queue count in its BTF.
pub const RUN_DELAY_CHECK: &str = "kernel BTF";

/// One program type's verdict for `doctor`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeCheck {
    pub program_type: &'static str,
    pub hook: String,
    pub ok: bool,
    pub detail: String,
}

/// Loads and attaches one program of each type this object has, then detaches them all, and says
/// which work on this kernel and why not.
pub fn check_program_types(config: &ProbesConfig) -> Result<Vec<ProbeCheck>, KernelError> {
    let tracefs = ensure_tracefs();
    let (btf, run_delay) = kernel_btf();
    let mut ebpf = load_object(config, run_delay.as_ref().ok().copied())?;
    let mut checks = Vec::new();
    let mut record = |program_type: &'static str, hook: &str, result: Result<(), String>| {
        let works = if program_type.ends_with(" map") {
            "created"
        } else if program_type == RUN_DELAY_CHECK {
            "found: sched_switch reads each run-queue wait from it, no wakeup probe"
        } else {
            "loads and attaches"
        };
        checks.push(ProbeCheck {
            program_type,
            hook: hook.to_owned(),
            ok: result.is_ok(),
            detail: result.err().unwrap_or_else(|| works.to_owned()),
        });
    };
    record(RUN_DELAY_CHECK, "task_struct.sched_info", run_delay.map(drop));
    record("tp_btf", "sched_switch", attach_btf(&mut ebpf, "sched_switch_btf", "sched_switch", btf.as_ref()));
    record("raw_tracepoint", "sched_switch", attach_raw(&mut ebpf, "sched_switch_raw", "sched_switch"));
    let switch_tp = attach_tracepoint(&mut ebpf, "sched_switch_tp", "sched", "sched_switch");
    record("tracepoint", "sched/sched_switch", switch_tp.map_err(|e| with_tracefs_reason(e, &tracefs)));
    record("tracepoint", "oom/mark_victim", attach_tracepoint(&mut ebpf, "oom_mark_victim", "oom", "mark_victim"));
    // Request tracing: exit probes that read the saved registers (Linux 5.15+), else pairs.
    record(
        "tracepoint",
        "syscalls/sys_exit_read (bpf_task_pt_regs)",
        attach_tracepoint(&mut ebpf, "exit_read", "syscalls", "sys_exit_read"),
    );
    record(
        "tracepoint",
        "syscalls/sys_enter_read",
        attach_tracepoint(&mut ebpf, "pair_enter_read", "syscalls", "sys_enter_read"),
    );
    record(
        "tracepoint",
        "syscalls/sys_exit_read",
        attach_tracepoint(&mut ebpf, "pair_exit_read", "syscalls", "sys_exit_read"),
    );
    record(
        "kprobe",
        "do_exit",
        (|| {
            let p: &mut KProbe = program_mut(&mut ebpf, "doctor_kprobe")?;
            p.load().map_err(|e| describe(&e))?;
            p.attach("do_exit", 0).map(drop).map_err(|e| describe(&e))
        })(),
    );
    record(
        "fentry",
        "do_exit",
        (|| {
            let btf = btf.as_ref().ok_or("kernel BTF (/sys/kernel/btf/vmlinux) is unavailable")?;
            let p: &mut FEntry = program_mut(&mut ebpf, "doctor_fentry")?;
            p.load("do_exit", btf).map_err(|e| describe(&e))?;
            p.attach().map(drop).map_err(|e| describe(&e))
        })(),
    );
    let ring: Result<RingBuf<MapData>, _> = take_map(&mut ebpf, EVENTS_MAP);
    record("ringbuf map", "EVENTS", ring.map(drop).map_err(|e| describe(&e)));
    let per_cpu: Result<PerCpuHashMap<MapData, TaskKey, TaskCpu>, _> = take_map(&mut ebpf, TASK_CPU_MAP);
    record("percpu_hash map", "TASK_CPU", per_cpu.map(drop).map_err(|e| describe(&e)));
    drop(ebpf);
    Ok(checks)
}

/// Run-queue slots as (upper bound in seconds, count in this bucket alone) for the exposition,
/// two log2 slots per bucket (1 µs, 4 µs, 16 µs … 67 s, +Inf) to keep the series count per
/// container modest.
pub fn runq_buckets(slots: &[u64]) -> Vec<(f64, u64)> {
    let mut buckets = Vec::with_capacity(slots.len() / 2 + 1);
    let mut pending = 0;
    for (slot, count) in slots.iter().enumerate() {
        pending += count;
        match agent_common::sched::runq_slot_upper_seconds(slot) {
            // A bucket closes at every even slot's bound; odd slots fold into the next one.
            Some(upper) if slot % 2 == 0 => {
                buckets.push((upper, pending));
                pending = 0;
            }
            Some(_) => {}
            None => {
                buckets.push((f64::INFINITY, pending));
                pending = 0;
            }
        }
    }
    buckets
}

/// Sum of two slot arrays, for folding a finished process into its container.
pub fn add_task_cpu(into: &mut TaskCpu, from: &TaskCpu) {
    into.on_cpu_ns += from.on_cpu_ns;
    into.runq_delay_ns += from.runq_delay_ns;
    for (a, b) in into.runq_slots.iter_mut().zip(from.runq_slots) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use agent_common::sched::RUNQ_SLOTS;

    use super::*;

    #[test]
    fn data_events_decode_from_their_wire_layout() {
        let mut bytes = Vec::new();
        for field in [agent_common::traffic::KIND_DATA_OUT, 42, 7, 5] {
            bytes.extend_from_slice(&field.to_ne_bytes());
        }
        for field in [1000u64, 123_456, 99, 5] {
            bytes.extend_from_slice(&field.to_ne_bytes());
        }
        bytes.extend_from_slice(b"HTTP/");
        bytes.resize(std::mem::size_of::<DataEvent>(), 0xAA);
        let (event, captured) = decode_data_event(&bytes).unwrap();
        assert_eq!((event.kind, event.tgid, event.fd, event.len), (agent_common::traffic::KIND_DATA_OUT, 42, 7, 1000));
        assert_eq!((event.timestamp_ns, event.cgroup_id, event.conn_id), (123_456, 99, 5));
        assert_eq!(captured, b"HTTP/");
        // A record shorter than its header, or claiming more than it carries, is cut, never read past.
        assert!(decode_data_event(&bytes[..20]).is_none());
        bytes[12..16].copy_from_slice(&10_000u32.to_ne_bytes());
        assert_eq!(decode_data_event(&bytes[..58]).unwrap().1.len(), 10);
        assert_eq!(record_kind(&bytes), Some(agent_common::traffic::KIND_DATA_OUT));
        assert_eq!(record_kind(&bytes[..3]), None);
        assert!(decode_completion(&bytes[..100]).is_none(), "shorter than a completion");
    }

    #[test]
    fn runq_buckets_pair_slots() {
        let slots: Vec<u64> = (0..RUNQ_SLOTS as u64).collect();
        let buckets = runq_buckets(&slots);
        let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
        assert_eq!(bounds[..4], [1e-6, 4e-6, 16e-6, 64e-6]);
        assert_eq!(*bounds.last().unwrap(), f64::INFINITY);
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), slots.iter().sum::<u64>());
        assert_eq!(buckets[1].1, 1 + 2);
        assert_eq!(buckets.len(), 15);
    }
}
