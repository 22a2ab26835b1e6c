//! modelmeter's eBPF programs: on-CPU time and run-queue delay per (cgroup, tgid) from the scheduler
//! tracepoints, and process exits and OOM kills through a ring buffer.
//!
//! Request tracing: syscall tracepoints (read, readv, recvfrom, recvmsg, write, writev, sendto,
//! sendmsg, sendfile, close, shutdown, accept, accept4, dup, dup2, dup3, fcntl) follow each connection of
//! watched cgroups, pair HTTP/1 requests with their responses in the kernel, and send one
//! completion per request through a second ring buffer.
//!
//! Rust eBPF has no CO-RE: the probes key by what helpers give (`bpf_get_current_pid_tgid`,
//! `bpf_get_current_cgroup_id`) and by tracepoint arguments. The one kernel struct they read,
//! `task_struct.sched_info` (the kernel's own run-queue count), is at offsets the agent takes from
//! the kernel's BTF; without them, wakeup probes time each wait instead. Each scheduler hook exists
//! in three flavours — `tp_btf`, `raw_tracepoint`, classic `tracepoint` — and the agent loads the
//! first family that works on the running kernel.
#![no_std]
#![no_main]

use agent_common::{
    counters,
    events::{Event, KIND_OOM_VICTIM, KIND_PROCESS_EXIT},
    sched::{CpuState, RunDelaySeen, TASK_CPU_DEFAULT_ENTRIES, TaskCpu, TaskKey, runq_slot},
    traffic::*,
};
use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_loop,
        bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_probe_read_kernel as probe_read_kernel_raw,
            bpf_probe_read_user as probe_read_user_raw, bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, fentry, kprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext},
};

/// 1 when `sched_process_exit` has the `group_dead` field (kernels from 2025 on); else the exit
/// of the thread group leader stands for the process's. Set by the loader from the format file.
#[unsafe(no_mangle)]
static EXIT_HAS_GROUP_DEAD: Global<u8> = Global::new(1);

/// Offsets in `struct task_struct` of `sched_info.pcount` and `sched_info.run_delay`, from the
/// running kernel's BTF; 0 where the loader did not find them. With them, the switch handlers of
/// the task-pointer flavours take each run-queue wait from the kernel's own count, and the
/// wakeup handlers are not attached.
#[unsafe(no_mangle)]
static TASK_PCOUNT_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_RUN_DELAY_OFFSET: Global<u32> = Global::new(0);

/// Payload records that wake the reader at once: beyond this much unread data. Below it the
/// reader's periodic poll picks them up, which spares a wakeup (an irq_work) per record.
const DATA_WAKEUP_BYTES: u64 = 256 * 1024;

#[map(name = "TASK_CPU")]
static TASK_CPU: PerCpuHashMap<TaskKey, TaskCpu> = PerCpuHashMap::with_max_entries(TASK_CPU_DEFAULT_ENTRIES, 0);

#[map(name = "CPU_STATE")]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WAKEUP_TS")]
static WAKEUP_TS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(TASK_CPU_DEFAULT_ENTRIES, 0);

#[map(name = "RUN_DELAY_SEEN")]
static RUN_DELAY_SEEN: LruHashMap<u64, RunDelaySeen> = LruHashMap::with_max_entries(TASK_CPU_DEFAULT_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(agent_common::events::EVENTS_DEFAULT_BYTES, 0);

#[map(name = "WATCHED_CGROUPS")]
static WATCHED_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(WATCHED_CGROUPS_DEFAULT_ENTRIES, 0);

#[map(name = "WATCH_CONFIG")]
static WATCH_CONFIG: Array<u32> = Array::with_max_entries(2, 0);

#[map(name = "FD_CLASS")]
static FD_CLASS: LruHashMap<FdKey, FdInfo> = LruHashMap::with_max_entries(FD_CLASS_DEFAULT_ENTRIES, 0);

#[map(name = "ACTIVE_CALLS")]
// Only the enter/exit probe pairs use it. A plain hash: an LRU map's insert takes its list locks
// on every syscall. Entries live from a syscall's enter to its exit, one per thread at most.
static ACTIVE_CALLS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(FD_CLASS_DEFAULT_ENTRIES, 0);

#[map(name = "DATA_EVENTS")]
static DATA_EVENTS: RingBuf = RingBuf::with_byte_size(agent_common::traffic::DATA_EVENTS_DEFAULT_BYTES, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and tracing programs do not nest on one CPU.
        unsafe { *counter += 1 };
    }
}

/// What a flavour's task keys are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pointers {
    /// tids (classic tracepoints).
    None,
    /// `task_struct` addresses as plain numbers (raw_tracepoint): read through the helper.
    Untyped,
    /// `task_struct` pointers the verifier knows the type of (tp_btf): loaded directly.
    Typed,
}

/// The common body of every sched_switch flavour. `prev_key`/`next_key` identify tasks the same way
/// the matching wakeup handler does; `prev_requeued` is true when prev stays runnable (preempted).
/// `task_pointers`: whether the keys are `task_struct` pointers, whose run-queue count can be read.
#[inline(always)]
fn on_switch(prev_key: u64, next_key: u64, prev_requeued: bool, task_pointers: Pointers) {
    // SAFETY: helpers without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(state) = CPU_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, not shared with another CPU.
    let state = unsafe { &mut *state };
    let from_kernel = task_pointers != Pointers::None && TASK_RUN_DELAY_OFFSET.load() != 0;
    let pid_tgid = bpf_get_current_pid_tgid();
    // pid 0 is the idle task: its time is idle time, not anyone's CPU time.
    if pid_tgid as u32 != 0 {
        let key = TaskKey {
            // SAFETY: helper without preconditions.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            tgid: (pid_tgid >> 32) as u32,
            _pad: 0,
        };
        let ran_ns = if state.last_switch_ns != 0 { now.saturating_sub(state.last_switch_ns) } else { 0 };
        if from_kernel {
            let (waited, wait_ns) = wait_before_run(prev_key, task_pointers == Pointers::Typed);
            account(&key, ran_ns, waited, wait_ns);
        } else {
            account(&key, ran_ns, state.pending_valid != 0, state.pending_runq_ns);
            if prev_requeued {
                mark_runnable(prev_key, now);
            }
        }
    }
    state.pending_valid = 0;
    if !from_kernel && let Some(enqueued) = WAKEUP_TS.get_ptr_mut(&next_key) {
        // SAFETY: a map value pointer. 0 marks a wait already counted: the entry stays for the
        // task's next wakeup, written in place (an LRU map's insert and delete take its locks).
        unsafe {
            if *enqueued != 0 {
                state.pending_runq_ns = now.saturating_sub(*enqueued);
                state.pending_valid = 1;
                *enqueued = 0;
            }
        }
    }
    state.last_switch_ns = now;
}

/// The run-queue wait before the run of `task` that ends now, from the kernel's own count: each
/// time the task is switched in, `sched_info.run_delay` grows by the wait and `pcount` by one.
/// What they grew by since the task's previous switch-out is that one wait (migrations while it
/// waited included). Returns whether there is one, and its length: none for a task seen for the
/// first time, unless it is on its first run.
#[inline(always)]
fn wait_before_run(task: u64, typed_pointer: bool) -> (bool, u64) {
    let (pcount_at, run_delay_at) =
        (task + u64::from(TASK_PCOUNT_OFFSET.load()), task + u64::from(TASK_RUN_DELAY_OFFSET.load()));
    let (pcount, run_delay) = if typed_pointer {
        // SAFETY: `task` is tp_btf's typed `struct task_struct *` and the offsets are constants
        // of the loaded program: the verifier checks each load against the kernel's BTF and
        // makes it fault-safe. A plain load costs far less than the helper.
        unsafe {
            (core::ptr::read_volatile(pcount_at as *const u64), core::ptr::read_volatile(run_delay_at as *const u64))
        }
    } else {
        // Both values are always set: the verifier refuses to store a register left unset on a path.
        let (Some(pcount), Some(run_delay)) = (read_kernel_u64(pcount_at), read_kernel_u64(run_delay_at)) else {
            return (false, 0);
        };
        (pcount, run_delay)
    };
    let now = RunDelaySeen { pcount, run_delay };
    if let Some(seen) = RUN_DELAY_SEEN.get_ptr_mut(&task) {
        // SAFETY: a map value pointer, written in place (an LRU map's update takes its locks).
        let seen = unsafe { &mut *seen };
        // One arrival since: the same task, followed without a gap. A task whose pointer was
        // reused, or a switch-out missed, fails this and only resynchronizes.
        let one_run = pcount == seen.pcount.wrapping_add(1) && run_delay >= seen.run_delay;
        let wait = if one_run { run_delay - seen.run_delay } else { 0 };
        *seen = now;
        return (one_run, wait);
    }
    if RUN_DELAY_SEEN.insert(&task, &now, 0).is_err() {
        count(counters::WAKEUP_TS_ERRORS);
    }
    if pcount == 1 { (true, run_delay) } else { (false, 0) }
}

/// A u64 of kernel memory (through the helper, which fails cleanly on a bad address).
#[inline(always)]
fn read_kernel_u64(at: u64) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: the helper writes at most 8 bytes into `value`.
    let rc = unsafe { probe_read_kernel_raw((&mut value as *mut u64).cast(), 8, at as *const _) };
    (rc == 0).then_some(value)
}

/// The task became runnable at `now`: in place when the task has an entry, as most do.
#[inline(always)]
fn mark_runnable(task_key: u64, now: u64) {
    if let Some(enqueued) = WAKEUP_TS.get_ptr_mut(&task_key) {
        // SAFETY: a map value pointer.
        unsafe { *enqueued = now };
    } else if WAKEUP_TS.insert(&task_key, &now, 0).is_err() {
        count(counters::WAKEUP_TS_ERRORS);
    }
}

#[inline(always)]
fn add_to(value: &mut TaskCpu, ran_ns: u64, has_runq: bool, runq_ns: u64) {
    value.on_cpu_ns += ran_ns;
    if has_runq {
        value.runq_delay_ns += runq_ns;
        if let Some(slot) = value.runq_slots.get_mut(runq_slot(runq_ns)) {
            *slot += 1;
        }
    }
}

#[inline(always)]
fn account(key: &TaskKey, ran_ns: u64, has_runq: bool, runq_ns: u64) {
    if let Some(value) = TASK_CPU.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of a per-CPU value.
        add_to(unsafe { &mut *value }, ran_ns, has_runq, runq_ns);
        return;
    }
    let mut value = TaskCpu::ZERO;
    add_to(&mut value, ran_ns, has_runq, runq_ns);
    if TASK_CPU.insert(key, &value, BPF_NOEXIST as u64).is_err() {
        // Another CPU may have created the entry meanwhile: add to it; only a full map loses time.
        match TASK_CPU.get_ptr_mut(key) {
            // SAFETY: this CPU's copy of a per-CPU value.
            Some(existing) => add_to(unsafe { &mut *existing }, ran_ns, has_runq, runq_ns),
            None => count(counters::TASK_CPU_FULL),
        }
    }
}

#[inline(always)]
fn on_wakeup(task_key: u64) {
    // SAFETY: helper without preconditions.
    mark_runnable(task_key, unsafe { bpf_ktime_get_ns() });
}

// --- tp_btf: arguments are the tracepoint's TP_PROTO; tasks are keyed by their task_struct address.
// sched_switch: TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
//                        unsigned int prev_state) — include/trace/events/sched.h

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> u32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    on_switch(prev, next, preempt & 0xff != 0 || prev_state as u32 == 0, Pointers::Typed);
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup_btf(ctx: BtfTracePointContext) -> u32 {
    on_wakeup(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new_btf(ctx: BtfTracePointContext) -> u32 {
    on_wakeup(ctx.arg(0));
    0
}

// --- raw_tracepoint: the same arguments, untyped.

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> u32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    on_switch(prev, next, preempt & 0xff != 0 || prev_state as u32 == 0, Pointers::Untyped);
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> u32 {
    on_wakeup(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new_raw(ctx: RawTracePointContext) -> u32 {
    on_wakeup(ctx.arg(0));
    0
}

// --- classic tracepoints: fields at the offsets of
// /sys/kernel/tracing/events/sched/<event>/format; tasks are keyed by tid.

/// sched_switch: prev_pid @24 (i32), prev_state @32 (long), next_pid @56 (i32).
#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the event's format file.
    let fields = unsafe { (ctx.read_at::<i32>(24), ctx.read_at::<i64>(32), ctx.read_at::<i32>(56)) };
    if let (Ok(prev_pid), Ok(prev_state), Ok(next_pid)) = fields {
        // The classic event folds `preempt` into prev_state as TASK_REPORT_MAX (0x100); the low
        // bits are 0 exactly when the task stays runnable.
        on_switch(prev_pid as u64, next_pid as u64, prev_state & 0xff == 0, Pointers::None);
    }
    0
}

/// sched_wakeup / sched_wakeup_new: pid @24 (i32).
#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sched_wakeup_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the event's format file.
    if let Ok(pid) = unsafe { ctx.read_at::<i32>(24) } {
        on_wakeup(pid as u64);
    }
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn sched_wakeup_new_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the event's format file.
    if let Ok(pid) = unsafe { ctx.read_at::<i32>(24) } {
        on_wakeup(pid as u64);
    }
    0
}

// --- events through the ring buffer.

#[inline(always)]
fn send_event(kind: u32, pid: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = Event {
        kind,
        pid,
        current_tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        // SAFETY: helpers without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    };
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
        }
        None => count(counters::RINGBUF_DROPS),
    }
}

/// sched_process_exit: group_dead @32 (bool) — only the last thread of a process reports its
/// tgid. Kernels without the field report the leader's exit instead.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let process_gone = if EXIT_HAS_GROUP_DEAD.load() != 0 {
        // SAFETY: offset from the event's format file.
        matches!(unsafe { ctx.read_at::<u8>(32) }, Ok(1))
    } else {
        pid_tgid as u32 == tgid
    };
    if process_gone {
        send_event(KIND_PROCESS_EXIT, tgid);
    }
    0
}

/// oom/mark_victim: pid @8 (i32), the victim.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the event's format file.
    if let Ok(pid) = unsafe { ctx.read_at::<i32>(8) } {
        send_event(KIND_OOM_VICTIM, pid as u32);
    }
    0
}

// --- request tracing on syscall tracepoints. Every handler first asks `watched()`: that map
// lookup is all an unwatched process pays. Offsets are those of
// /sys/kernel/tracing/events/syscalls/sys_{enter,exit}_*/format: fd @16, buffer/iovec/msghdr @24,
// count @32 on enter; ret @16 on exit.
//
// Data syscalls are followed by their exit tracepoint alone, which reads the syscall's arguments
// from the registers the task saved on entry (`bpf_task_pt_regs`, Linux 5.15): one probe run per
// syscall, and none of a map entry's cost. Older kernels get the `pair_*` programs instead: the
// enter tracepoint keeps the arguments in ACTIVE_CALLS for the exit's.
//
// Each connection (all fds of one socket: `dup`s share its id) has a `Conn` in CONNS. A read that
// starts with a method token starts a request and keeps its first bytes; the first write that
// starts with a status line starts the response; the response head is scanned for its framing
// (Content-Length, chunked, none), and the body counted down to its last byte, when one
// `Completion` goes to userspace. A connection the kernel cannot follow is handed to userspace
// (PHASE_FALLBACK) as raw payload records.

/// Where a syscall's data is, given its arguments (fd, then these).
#[derive(Clone, Copy)]
enum Buffer {
    /// `buf`, `count` (read, write, recvfrom, sendto).
    Direct,
    /// `struct iovec *` (readv, writev): the first iovec.
    Iovec,
    /// `struct user_msghdr *` (recvmsg, sendmsg): the first iovec of `msg_iov`.
    Msghdr,
    /// sendfile: no user buffer, only a length.
    None,
}

/// One data syscall on a followed connection, as its exit sees it.
#[derive(Clone, Copy)]
struct Call {
    /// User buffer the data is in (the first iovec's for vectored calls; 0 for sendfile).
    buf: u64,
    /// Bytes of `buf` that belong to this call (the first iovec's length for vectored calls).
    buf_len: u64,
    conn_id: u64,
    fd: u32,
    /// The fd's `FdInfo::class` and `FdInfo::flags` as `fd_info` found them.
    fd_class: u8,
    fd_flags: u8,
}

/// Offset of `dx` in x86-64's `struct pt_regs` (arch/x86/include/asm/ptrace.h), followed by `si`
/// and `di`: the syscall's third, second and first arguments. The same layout is ptrace's
/// `user_regs_struct`, a user ABI.
const PT_REGS_DX: u64 = 96;

/// Layout of `struct iovec` (include/uapi/linux/uio.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Offset of `msg_iov` in `struct user_msghdr` (include/linux/socket.h): after msg_name and msg_namelen.
const MSGHDR_IOV_OFFSET: u64 = 16;
/// Response head bytes scanned in one write (copied `SCAN_CHUNK` at a time, into a buffer with
/// `SCAN_SLACK` more so that a word read near a piece's end stays inside it) and in all.
const SCAN_CHUNK: usize = 256;
const SCAN_SLACK: usize = 32;
const SCAN_PER_WRITE: u64 = 4096;
const MAX_HEAD_SCAN: u32 = 16 * 1024;
/// Chunk headers followed in one write.
const CHUNKS_PER_WRITE: usize = 8;
/// fcntl commands that duplicate an fd (include/uapi/asm-generic/fcntl.h, linux/fcntl.h).
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

/// Header scanner states (`Conn::scan_field`).
const SCAN_OTHER: u8 = 0;
const SCAN_NAME_LENGTH: u8 = 1;
const SCAN_NAME_ENCODING: u8 = 2;
const SCAN_VALUE_LENGTH: u8 = 3;
const SCAN_VALUE_ENCODING: u8 = 4;
const CONTENT_LENGTH: &[u8; 15] = b"content-length:";
const TRANSFER_ENCODING: &[u8; 18] = b"transfer-encoding:";
const CHUNKED: &[u8; 7] = b"chunked";

#[map(name = "CONNS")]
static CONNS: LruHashMap<u64, Conn> = LruHashMap::with_max_entries(CONNS_DEFAULT_ENTRIES, 0);

/// A fresh `Conn` is built here: it is larger than the eBPF stack.
#[map(name = "CONN_SCRATCH")]
static CONN_SCRATCH: PerCpuArray<Conn> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SCAN_SCRATCH")]
static SCAN_SCRATCH: PerCpuArray<Scan> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "FD_VERDICTS")]
static FD_VERDICTS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(FD_VERDICTS_ENTRIES, 0);

#[map(name = "CONN_IDS")]
static CONN_IDS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn watched() -> bool {
    if let Some(all) = WATCH_CONFIG.get(WATCH_ALL)
        && *all != 0
    {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        return WATCH_CONFIG.get(AGENT_TGID).is_none_or(|agent| *agent != tgid);
    }
    // SAFETY: helper without preconditions; the value is only tested for presence.
    unsafe { WATCHED_CGROUPS.get(&bpf_get_current_cgroup_id()).is_some() }
}

/// A connection id no other connection has had since the probes loaded: the CPU in the top
/// 16 bits, that CPU's count below.
#[inline(always)]
fn new_conn_id() -> u64 {
    // SAFETY: helper without preconditions.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    let Some(counter) = CONN_IDS.get_ptr_mut(0) else { return 0 };
    // SAFETY: per-CPU slot, and tracing programs do not nest on one CPU.
    unsafe {
        *counter += 1;
        (cpu << 48) | (*counter & 0xffff_ffff_ffff)
    }
}

/// The connection behind an fd, or `None` for an fd known not to be a socket. An fd never seen
/// (opened before the agent, inherited, or not a socket at all) gets an id at once and userspace
/// is asked what it is; its traffic is followed meanwhile, so a connection opened before the
/// agent is measured from its next request.
#[inline(always)]
fn fd_info(tgid: u32, fd: u32) -> Option<FdInfo> {
    let key = FdKey { tgid, fd };
    if let Some(info) = FD_CLASS.get_ptr_mut(&key) {
        // SAFETY: a map value pointer, read and updated in place.
        let info = unsafe { &mut *info };
        // Userspace's answer is keyed by the connection id, so an answer about an fd number
        // that was closed and reused meanwhile can never land on the new connection.
        if info.class == FD_PENDING
            // SAFETY: the value is copied out at once.
            && let Some(class) = unsafe { FD_VERDICTS.get(&info.conn_id) }.copied()
            // A question voided by its fd's close stays in place, to refuse a late answer.
            && class != FD_ASKED_FD_CLOSED
        {
            info.class = class;
            let _ = FD_VERDICTS.remove(&info.conn_id);
        }
        return (info.class != FD_NOT_SOCKET).then_some(*info);
    }
    let info = FdInfo { conn_id: new_conn_id(), class: FD_PENDING, flags: 0, _pad: [0; 6] };
    if FD_CLASS.insert(&key, &info, BPF_NOEXIST as u64).is_ok() {
        send_header(KIND_FD_UNKNOWN, tgid, fd, info.conn_id);
        return Some(info);
    }
    // Another thread of the process got there first.
    // SAFETY: the value is copied out at once.
    unsafe { FD_CLASS.get(&key) }.filter(|i| i.class != FD_NOT_SOCKET).copied()
}

#[inline(always)]
fn first_iovec(iov: u64) -> Option<(u64, u64)> {
    // SAFETY: a user pointer read through the helper, which fails cleanly on a bad address.
    let iovec: Iovec = unsafe { bpf_probe_read_user(iov as *const Iovec) }.ok()?;
    Some((iovec.base, iovec.len))
}

/// A syscall tracepoint's field at `offset` (8-byte aligned): a direct load from the record,
/// which the verifier allows for tracepoint programs, instead of a helper call.
#[inline(always)]
fn syscall_field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: offsets from the format files, inside the record.
    unsafe { *(ctx.as_ptr() as *const u8).add(offset).cast::<u64>() }
}

/// The current syscall's first three arguments, from the registers the task saved on entry.
#[inline(always)]
fn args_from_regs() -> Option<[u64; 3]> {
    // SAFETY: helpers without preconditions: the current task, and the user registers it saved.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    if regs.is_null() {
        return None;
    }
    let at = (PT_REGS_DX / 8) as usize;
    // SAFETY: typed loads from the task's `struct pt_regs`, which the verifier checks against the
    // kernel's BTF and turns into fault-safe loads.
    unsafe { Some([*regs.add(at + 2), *regs.add(at + 1), *regs.add(at)]) }
}

/// Enter half of a probe pair: keeps a watched syscall's first `args` arguments (@16, @24, @32;
/// up to three) for its exit. A load beyond the event's record would make the kernel refuse to
/// attach the program, so a syscall with fewer arguments keeps zeros for the rest.
#[inline(always)]
fn save_args(ctx: &TracePointContext, args: usize) {
    if !watched() {
        return;
    }
    let arg = |index: usize| if index < args { syscall_field(ctx, 16 + 8 * index) } else { 0 };
    let saved = SyscallArgs { args: [arg(0), arg(1), arg(2)] };
    if ACTIVE_CALLS.insert(&bpf_get_current_pid_tgid(), &saved, 0).is_err() {
        count(counters::ACTIVE_CALL_ERRORS);
    }
}

/// Exit half of a probe pair: the arguments its enter kept, taken out of the map.
#[inline(always)]
fn saved_args() -> Option<[u64; 3]> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let saved = unsafe { ACTIVE_CALLS.get(&pid_tgid) }.copied()?;
    let _ = ACTIVE_CALLS.remove(&pid_tgid);
    Some(saved.args)
}

/// The syscall's return value (@16 on every exit).
#[inline(always)]
fn returned(ctx: &TracePointContext) -> i64 {
    syscall_field(ctx, 16) as i64
}

/// A data syscall of a watched process that moved `ret` bytes. Each exit program handles one
/// direction: the verifier then checks one path per program.
#[inline(always)]
fn on_data(kind: u32, buffer: Buffer, args: Option<[u64; 3]>, ret: i64) {
    let Some([fd, arg, length]) = args else { return };
    if ret <= 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(info) = fd_info(tgid, fd as u32) else { return };
    let located = match buffer {
        Buffer::Direct => Some((arg, length)),
        Buffer::Iovec => first_iovec(arg),
        Buffer::Msghdr => read_user::<u64>(arg + MSGHDR_IOV_OFFSET).and_then(first_iovec),
        Buffer::None => Some((0, 0)),
    };
    let Some((buf, buf_len)) = located else { return };
    let call = Call { buf, buf_len, conn_id: info.conn_id, fd: fd as u32, fd_class: info.class, fd_flags: info.flags };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if kind == KIND_DATA_IN {
        on_read(&call, ret as u64, now);
    } else {
        on_write(&call, ret as u64, now);
    }
}

/// A request starts with a method (RFC 9110 §9: any token; in practice upper-case letters, `-`
/// and `_`, as in `M-SEARCH`), a space and a target (`/`, `*`, or an absolute `http…`).
/// Returns the method's length (0: not a request) and whether the read was too short to tell
/// (the first bytes of a request, split from the rest).
#[inline(always)]
fn method_token(head: &[u8; 16], len: u64) -> (usize, bool) {
    let mut m = 0;
    while m < 15 {
        let byte = head[m];
        if !(byte.is_ascii_uppercase() || byte == b'-' || byte == b'_') {
            break;
        }
        m += 1;
    }
    if (m as u64) >= len {
        // Every byte read so far could be a method.
        return (0, len > 0 && len < 16);
    }
    if m < 3 || m > 14 || head[m] != b' ' {
        return (0, false);
    }
    if (m as u64) + 1 >= len {
        return (0, true);
    }
    let target = head[(m + 1) & 15];
    (if matches!(target, b'/' | b'*' | b'h') { m } else { 0 }, false)
}

/// Reads a plain-bytes value from user memory (through the raw helper: a generic call returning
/// more than a register is not allowed in BPF).
#[inline(always)]
fn read_user<T: Copy>(at: u64) -> Option<T> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `value` and fails cleanly on a
    // bad address; T is a byte array or integer, valid for any bytes.
    let rc =
        unsafe { probe_read_user_raw(value.as_mut_ptr().cast(), core::mem::size_of::<T>() as u32, at as *const _) };
    // SAFETY: the helper filled it.
    (rc == 0).then(|| unsafe { value.assume_init() })
}

/// Copies up to `len` bytes at `from` into `to` (of `size` bytes); returns how many.
#[inline(always)]
fn copy_user(to: *mut u8, size: usize, from: u64, len: u64) -> u16 {
    let mut n = len;
    if n > size as u64 {
        n = size as u64;
    }
    // The mask gives the verifier a bound; the check below makes it exact.
    let n = n as u32 & ((size * 2).next_power_of_two() as u32 - 1);
    // SAFETY: `to` has `size` bytes, `n` ≤ size; user memory is read through the helper.
    if n > 0 && n <= size as u32 && unsafe { probe_read_user_raw(to.cast(), n, from as *const _) } == 0 {
        n as u16
    } else {
        0
    }
}

/// The connection's state, created (idle) when it has none.
#[inline(always)]
fn conn_state(conn_id: u64) -> Option<*mut Conn> {
    if let Some(conn) = CONNS.get_ptr_mut(&conn_id) {
        return Some(conn);
    }
    let scratch = CONN_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; only the fields a fresh connection relies on are reset.
    unsafe {
        (*scratch).phase = PHASE_IDLE;
        (*scratch).flags = 0;
        if CONNS.insert(&conn_id, &*scratch, 0).is_err() {
            count(counters::CONN_ERRORS);
            return None;
        }
    }
    CONNS.get_ptr_mut(&conn_id)
}

#[inline(always)]
fn on_read(call: &Call, ret: u64, now: u64) {
    let existing = CONNS.get_ptr_mut(&call.conn_id);
    // SAFETY: a map value pointer; tracing programs on one connection run one at a time in practice,
    // and a race costs one request's figures, never memory safety.
    let phase = existing.map_or(PHASE_IDLE, |c| unsafe { (*c).phase });
    match phase {
        PHASE_FALLBACK => send_data(KIND_DATA_IN, call, ret, now),
        PHASE_OPAQUE => {}
        PHASE_REQUEST => {
            if let Some(conn) = existing {
                // SAFETY: as above.
                unsafe { (*conn).record.header.request_bytes += ret };
            }
        }
        _ => {
            // What a request would keep goes to the scratch buffer first: one copy from user
            // memory serves the method test and the request's first bytes.
            let Some(scan) = SCAN_SCRATCH.get_ptr_mut(0) else { return };
            let available = if call.buf_len < ret { call.buf_len } else { ret };
            // SAFETY: this CPU's scratch slot, larger than REQUEST_CAPTURE.
            let (copied, head) = unsafe {
                let copied = copy_user((*scan).bytes.as_mut_ptr(), REQUEST_CAPTURE, call.buf, available);
                (copied, *(*scan).bytes.as_ptr().cast::<[u8; 16]>())
            };
            let (method, split) = method_token(&head, u64::from(copied));
            if method > 0 {
                if let Some(conn) = existing {
                    // The last response's framing was missed: it ended with its last write.
                    // SAFETY: as above.
                    unsafe {
                        if (*conn).phase != PHASE_IDLE {
                            (*conn).record.header.flags |= COMPLETION_FRAMING_GUESSED;
                            complete(&mut *conn);
                        }
                    }
                }
                start_request(existing, call, ret, now, method == 4 && head[..4] == *b"HEAD", scan, copied);
            } else if split {
                // A method split across reads: userspace reassembles this connection from here on.
                if let Some(conn) = conn_state(call.conn_id) {
                    // SAFETY: a map value pointer.
                    unsafe { (*conn).phase = PHASE_FALLBACK };
                    count(counters::FALLBACK);
                    send_data(KIND_DATA_IN, call, ret, now);
                }
            } else if phase == PHASE_IDLE {
                count_not_http(call);
            }
        }
    }
}

/// Counts a socket's traffic as not HTTP, once per fd. An fd not known to be a socket yet (a file
/// the process reads while userspace is asked) is not counted.
#[inline(always)]
fn count_not_http(call: &Call) {
    // The copy `fd_info` made tells the common case (counted already) without a look-up.
    if call.fd_class != FD_SOCKET || call.fd_flags & FD_COUNTED_NOT_HTTP != 0 {
        return;
    }
    let key = FdKey { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, fd: call.fd };
    if let Some(info) = FD_CLASS.get_ptr_mut(&key) {
        // SAFETY: a map value pointer.
        unsafe {
            if (*info).class == FD_SOCKET && (*info).flags & FD_COUNTED_NOT_HTTP == 0 {
                (*info).flags |= FD_COUNTED_NOT_HTTP;
                count(counters::NOT_HTTP);
            }
        }
    }
}

#[inline(always)]
fn start_request(
    existing: Option<*mut Conn>,
    call: &Call,
    ret: u64,
    now: u64,
    head_method: bool,
    first_bytes: *const Scan,
    captured: u16,
) {
    let Some(conn) = existing.or_else(|| conn_state(call.conn_id)) else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a map value pointer; the copy is bounded by the array's size.
    unsafe {
        let c = &mut *conn;
        c.record.header.kind = KIND_COMPLETION;
        c.record.header.tgid = (pid_tgid >> 32) as u32;
        c.record.header.conn_id = call.conn_id;
        c.record.header.cgroup_id = bpf_get_current_cgroup_id();
        c.record.header.start_ns = now;
        c.record.header.end_ns = now;
        c.record.header.request_bytes = ret;
        c.record.header.response_bytes = 0;
        c.record.header.status = 0;
        c.record.header.flags = 0;
        c.record.header.response_captured = 0;
        // Only the bytes read, through the helper: a fixed-size copy of the whole capture area
        // would touch every cache line of both buffers, most of them cold. The mask bounds the
        // length for the verifier, the test makes it exact.
        let n = u32::from(captured) & 0x1ff;
        let copied = n > 0
            && n as usize <= REQUEST_CAPTURE
            && probe_read_kernel_raw(c.record.captured.as_mut_ptr().cast(), n, (*first_bytes).bytes.as_ptr().cast())
                == 0;
        c.record.header.request_captured = if copied { n as u16 } else { 0 };
        c.phase = PHASE_REQUEST;
        c.framing = 0;
        c.flags &= CONN_SEEN_REQUEST;
        if head_method {
            c.flags |= CONN_HEAD_REQUEST;
        }
        c.scan_field = SCAN_OTHER;
        c.scan_index = 0;
        c.line_pos = 0;
        // Volatile: LLVM merges adjacent zero stores into a call to a byte-wise memset.
        core::ptr::write_volatile(&mut c.scanned, 0);
        core::ptr::write_volatile(&mut c.content_length, 0);
        core::ptr::write_volatile(&mut c.body_remaining, 0);
    }
}

/// The status of a status line at `buf`, if it is one.
#[inline(always)]
fn status_line(buf: u64) -> Option<u16> {
    parse_status(&read_user::<[u8; 13]>(buf)?)
}

/// The status of a status line starting `line`, if it is one.
#[inline(always)]
fn parse_status(line: &[u8]) -> Option<u16> {
    if line.len() < 13 {
        return None;
    }
    let version = line[0] == b'H'
        && line[1] == b'T'
        && line[2] == b'T'
        && line[3] == b'P'
        && line[4] == b'/'
        && line[5] == b'1'
        && line[6] == b'.'
        && line[8] == b' ';
    let digits = [line[9], line[10], line[11]];
    if !version || !digits.iter().all(u8::is_ascii_digit) || digits[0] == b'0' || !matches!(line[12], b' ' | b'\r') {
        return None;
    }
    Some(digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

#[inline(always)]
fn on_write(call: &Call, ret: u64, now: u64) {
    let Some(conn) = CONNS.get_ptr_mut(&call.conn_id) else {
        if call.buf != 0 && status_line(call.buf).is_some() {
            count(counters::UNMATCHED_RESPONSE);
        }
        return;
    };
    // SAFETY: a map value pointer (see `on_read`).
    let c = unsafe { &mut *conn };
    // Bytes of this call that can be read: the first iovec, and none for sendfile.
    let readable = if call.buf == 0 {
        0
    } else if call.buf_len < ret {
        call.buf_len
    } else {
        ret
    };
    let mut prefilled = false;
    match c.phase {
        PHASE_FALLBACK => {
            send_data(KIND_DATA_OUT, call, ret, now);
            return;
        }
        PHASE_IDLE => {
            if readable > 0 && status_line(call.buf).is_some() {
                count(counters::UNMATCHED_RESPONSE);
                if c.flags & CONN_SEEN_REQUEST != 0 {
                    // A response to a request never seen as one: pipelined requests in one read.
                    c.phase = PHASE_FALLBACK;
                    count(counters::FALLBACK);
                }
            }
            return;
        }
        PHASE_REQUEST => {
            if readable == 0 {
                return;
            }
            // The write's first bytes go where the head scan reads them: one copy for both.
            let Some(status) = prefill_scan(call.buf, readable).and_then(|scan| {
                // SAFETY: this CPU's scratch slot, just filled.
                let first = unsafe { &(*scan).bytes };
                parse_status(&first[..13])
            }) else {
                return;
            };
            prefilled = true;
            // An interim response (100 Continue): the final one follows.
            if (100..200).contains(&status) && status != 101 {
                return;
            }
            c.record.header.status = status;
            c.phase = PHASE_RESPONSE_HEAD;
        }
        PHASE_RESPONSE_HEAD | PHASE_RESPONSE_BODY => {}
        _ => return,
    }
    c.record.header.response_bytes += ret;
    c.record.header.end_ns = now;
    let mut body_at = 0;
    // The scan leaves this write's bytes in its scratch buffer.
    let scanned = c.phase == PHASE_RESPONSE_HEAD;
    if scanned {
        match scan_head(c, call.buf, readable, prefilled) {
            Some(end) => {
                body_at = end;
                if !framed(c) {
                    return;
                }
            }
            None => {
                if c.scanned >= MAX_HEAD_SCAN || readable < ret {
                    // The head goes on where it cannot be read: its end is a guess.
                    c.phase = PHASE_RESPONSE_BODY;
                    c.framing = FRAMING_UNKNOWN;
                }
                return;
            }
        }
    }
    if count_body(c, call.buf, readable, ret, body_at, scanned) {
        complete(c);
    }
}

/// Sets the framing once the head has ended; returns false when the response already completed.
#[inline(always)]
fn framed(c: &mut Conn) -> bool {
    c.phase = PHASE_RESPONSE_BODY;
    let status = c.record.header.status;
    if status == 101 {
        complete(c);
        c.phase = PHASE_OPAQUE;
        return false;
    }
    if c.flags & CONN_HEAD_REQUEST != 0 || status == 204 || status == 304 {
        complete(c);
        return false;
    }
    if c.flags & CONN_CHUNKED != 0 {
        c.framing = FRAMING_CHUNKED;
        c.body_remaining = 0;
    } else if c.flags & CONN_HAS_LENGTH != 0 {
        c.framing = FRAMING_LENGTH;
        c.body_remaining = c.content_length;
        if c.content_length == 0 {
            complete(c);
            return false;
        }
    } else {
        c.framing = FRAMING_UNTIL_CLOSE;
    }
    true
}

/// The scan of one response write's readable part. It lives in a map value, not on the stack:
/// the verifier then knows nothing of its fields, and checks `scan_step` once for every
/// iteration instead of following each value `pos` can take.
#[repr(C)]
struct Scan {
    buf: u64,
    readable: u64,
    /// Where the scan is, in this write.
    pos: u64,
    /// The part of the write in `bytes`: `filled` bytes from `base`.
    base: u64,
    filled: u64,
    /// Index after the head's last byte, once found; 0 before.
    end: u64,
    bytes: [u8; SCAN_CHUNK + SCAN_SLACK],
}

/// What `bpf_loop` hands `scan_step`.
#[repr(C)]
struct ScanContext {
    conn: *mut Conn,
    scan: *mut Scan,
}

const NEWLINES: u64 = u64::from_le_bytes([b'\n'; 8]);
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
/// ORed into ASCII letters, makes them lower case; leaves `-` and `:` as they are.
const LOWER_CASE: u64 = 0x2020_2020_2020_2020;
const CONTENT_: u64 = u64::from_le_bytes(*b"content-");
const LENGTH_: u64 = u64::from_le_bytes(*b"length:\0");
const TRANSFER: u64 = u64::from_le_bytes(*b"transfer");
const _ENCODIN: u64 = u64::from_le_bytes(*b"-encodin");
const G_COLON: u64 = u64::from_le_bytes(*b"g:\0\0\0\0\0\0");
/// Multiplied by a word with one bit set at the top of byte k (shifted down to its bottom), gives
/// k in the top byte.
const BYTE_INDEX: u64 = 0x0001_0203_0405_0607;

/// The little-endian word at `at` of the scratch buffer.
#[inline(always)]
fn word(scratch: &[u8; SCAN_CHUNK + SCAN_SLACK], at: usize) -> u64 {
    // Callers stay below SCAN_CHUNK + 16; the bound is for the verifier.
    let at = if at > SCAN_CHUNK + SCAN_SLACK - 8 { SCAN_CHUNK + SCAN_SLACK - 8 } else { at };
    // SAFETY: `at` + 8 is within the buffer; the map value may be read at any alignment on the
    // architectures this runs on.
    unsafe { core::ptr::read_unaligned(scratch.as_ptr().add(at).cast::<u64>()) }
}

/// One step of a `bpf_loop` over a response write: a line's start, eight bytes of a line that
/// does not matter, or one byte of a framing field's value (or of a head split across writes,
/// byte by byte as `scan_byte` keeps its state between writes). The verifier checks this once
/// instead of walking every iteration of an inline loop.
#[inline(never)]
extern "C" fn scan_step(_index: u64, context: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `bpf_loop` passes back the context `scan_head` gave it, on its stack; its pointers
    // are to map values that live through the program run.
    let context = unsafe { &mut *context.cast::<ScanContext>() };
    // SAFETY: as above.
    let (c, x) = unsafe { (&mut *context.conn, &mut *context.scan) };
    if x.pos >= x.readable {
        return 1;
    }
    let left = x.readable - x.pos;
    // The scratch buffer must hold the next 32 bytes, or what is left of the write.
    let want = if left < 32 { left } else { 32 };
    if x.pos < x.base || x.pos + want > x.base + x.filled {
        let copied = copy_user(x.bytes.as_mut_ptr(), SCAN_CHUNK, x.buf + x.pos, left);
        if copied == 0 {
            return 1;
        }
        x.base = x.pos;
        x.filled = u64::from(copied);
    }
    let at = (x.pos - x.base) as usize & (SCAN_CHUNK - 1);
    let scratch = &x.bytes;
    if c.line_pos == 0 && left >= 2 {
        let first = word(scratch, at);
        if first as u8 == b'\n' || first as u16 == u16::from_le_bytes(*b"\r\n") {
            x.pos += if first as u8 == b'\n' { 1 } else { 2 };
            x.end = x.pos;
            return 1;
        }
        if left >= 18 {
            let (lower0, lower1) = (first | LOWER_CASE, word(scratch, at + 8) | LOWER_CASE);
            if lower0 == CONTENT_ && lower1 & 0x00ff_ffff_ffff_ffff == LENGTH_ {
                start_value(c, SCAN_VALUE_LENGTH);
                c.line_pos = CONTENT_LENGTH.len() as u16;
                x.pos += CONTENT_LENGTH.len() as u64;
                return 0;
            }
            if lower0 == TRANSFER && lower1 == _ENCODIN && (word(scratch, at + 16) | LOWER_CASE) & 0xffff == G_COLON {
                start_value(c, SCAN_VALUE_ENCODING);
                c.line_pos = TRANSFER_ENCODING.len() as u16;
                x.pos += TRANSFER_ENCODING.len() as u64;
                return 0;
            }
            c.scan_field = SCAN_OTHER;
            c.line_pos = 1;
        } else if !matches!(first as u8 | 0x20, b'c' | b't') {
            c.scan_field = SCAN_OTHER;
            c.line_pos = 1;
        }
        // Else perhaps a framing field's name split across writes: byte by byte below.
    }
    if c.line_pos != 0 && c.scan_field == SCAN_OTHER {
        // The rest of a line that does not matter: on to the byte after its LF, looking at up to
        // 32 bytes a step (each step costs more than the words it tests).
        let mut offset = 0;
        while offset < 32 {
            let remaining = left - offset;
            let newlines = word(scratch, at + offset as usize) ^ NEWLINES;
            let mut found = newlines.wrapping_sub(LOW_BITS) & !newlines & HIGH_BITS;
            if remaining < 8 {
                found &= (1u64 << (8 * remaining)) - 1;
            }
            if found != 0 {
                // The lowest flagged byte is always a real LF.
                let lowest = found & found.wrapping_neg();
                x.pos += offset + ((lowest >> 7).wrapping_mul(BYTE_INDEX) >> 56) + 1;
                c.line_pos = 0;
                c.scan_index = 0;
                return 0;
            }
            if remaining <= 8 {
                x.pos += remaining;
                c.line_pos = c.line_pos.saturating_add(remaining as u16);
                return 0;
            }
            offset += 8;
        }
        x.pos += offset;
        c.line_pos = c.line_pos.saturating_add(offset as u16);
        return 0;
    }
    // A framing field's value, or a head split across writes: byte by byte, up to 8 a step, and
    // only to the end of the line, where the next step tests the line's start a word at a time.
    let mut k: u64 = 0;
    while k < 8 && k < left {
        let Some(&byte) = scratch.get(at + k as usize) else { break };
        x.pos += 1;
        if scan_byte(c, byte) {
            x.end = x.pos;
            return 1;
        }
        if byte == b'\n' {
            break;
        }
        k += 1;
    }
    0
}

/// Copies a write's first bytes into the scan's scratch buffer, where a status line is read and
/// the head scan goes on (`scan_head` with `prefilled`); at least a status line's worth.
#[inline(always)]
fn prefill_scan(buf: u64, readable: u64) -> Option<*mut Scan> {
    let scan = SCAN_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; the copy is bounded by SCAN_CHUNK.
    unsafe {
        let copied = copy_user((*scan).bytes.as_mut_ptr(), SCAN_CHUNK, buf, readable);
        if copied < 13 {
            return None;
        }
        (*scan).base = 0;
        (*scan).filled = u64::from(copied);
    }
    Some(scan)
}

/// Scans the readable part of a response write for the head's end and its framing fields;
/// returns the offset where the body starts once the head has ended. `prefilled`: the scratch
/// buffer holds the write's first bytes already.
#[inline(always)]
fn scan_head(c: &mut Conn, buf: u64, readable: u64, prefilled: bool) -> Option<u64> {
    let scan = SCAN_SCRATCH.get_ptr_mut(0)?;
    let budget = u64::from(MAX_HEAD_SCAN.saturating_sub(c.scanned));
    let mut bytes = readable;
    if bytes > budget {
        bytes = budget;
    }
    if bytes > SCAN_PER_WRITE {
        bytes = SCAN_PER_WRITE;
    }
    // SAFETY: this CPU's scratch slot.
    let (pos, end) = unsafe {
        (*scan).buf = buf;
        (*scan).readable = bytes;
        (*scan).pos = 0;
        if !prefilled {
            // Volatile: see `start_request`.
            core::ptr::write_volatile(&mut (*scan).base, 0);
            core::ptr::write_volatile(&mut (*scan).filled, 0);
        }
        (*scan).end = 0;
        let mut context = ScanContext { conn: c, scan };
        // Every step moves on by at least a byte.
        // SAFETY: a static callback and a context that outlives the call.
        bpf_loop(bytes as u32, scan_step as *mut core::ffi::c_void, (&mut context as *mut ScanContext).cast(), 0);
        ((*scan).pos, (*scan).end)
    };
    c.scanned += pos as u32;
    (end > 0).then_some(end)
}

/// One byte of a response head; true at its end (the empty line). Only Content-Length and
/// Transfer-Encoding matter; bare LF line ends are accepted (RFC 9112 §2.2).
#[inline(always)]
fn scan_byte(c: &mut Conn, byte: u8) -> bool {
    if byte == b'\r' {
        return false;
    }
    if byte == b'\n' {
        let empty = c.line_pos == 0;
        c.line_pos = 0;
        c.scan_field = SCAN_OTHER;
        c.scan_index = 0;
        return empty;
    }
    let lower = byte | 0x20;
    let index = c.scan_index as usize;
    if c.line_pos == 0 {
        c.scan_field = match lower {
            b'c' => SCAN_NAME_LENGTH,
            b't' => SCAN_NAME_ENCODING,
            _ => SCAN_OTHER,
        };
        c.scan_index = 1;
    } else {
        match c.scan_field {
            SCAN_NAME_LENGTH => match_name(c, lower, index, CONTENT_LENGTH, SCAN_VALUE_LENGTH),
            SCAN_NAME_ENCODING => match_name(c, lower, index, TRANSFER_ENCODING, SCAN_VALUE_ENCODING),
            SCAN_VALUE_LENGTH => {
                // Capped well below overflow (a 128-bit multiply is not available in BPF).
                if byte.is_ascii_digit() && c.content_length < (1 << 59) {
                    c.content_length = c.content_length * 10 + u64::from(byte - b'0');
                }
            }
            SCAN_VALUE_ENCODING => {
                let expected = if index < CHUNKED.len() { CHUNKED[index] } else { 0 };
                if lower == expected {
                    c.scan_index += 1;
                    if c.scan_index as usize == CHUNKED.len() {
                        c.flags |= CONN_CHUNKED;
                    }
                } else {
                    c.scan_index = if lower == CHUNKED[0] { 1 } else { 0 };
                }
            }
            _ => {}
        }
    }
    c.line_pos = c.line_pos.saturating_add(1);
    false
}

/// One more byte of a framing field's name (lower-cased; ':' | 0x20 is ':' too); its last byte
/// starts the field's value.
#[inline(always)]
fn match_name(c: &mut Conn, lower: u8, index: usize, name: &[u8], value: u8) {
    let expected = if index < name.len() { name[index] } else { 0 };
    if lower != expected {
        c.scan_field = SCAN_OTHER;
    } else if index + 1 == name.len() {
        start_value(c, value);
    } else {
        c.scan_index += 1;
    }
}

/// A framing field's name has ended: the scanner reads its value (`SCAN_VALUE_*`) next.
#[inline(always)]
fn start_value(c: &mut Conn, field: u8) {
    c.scan_field = field;
    c.scan_index = 0;
    if field == SCAN_VALUE_LENGTH {
        c.content_length = 0;
        c.flags |= CONN_HAS_LENGTH;
    }
}

/// Counts the body bytes of a write from `from` on; true once the body is complete. Keeps the
/// first bytes of the body (of the first chunk's data) for the model.
#[inline(always)]
fn count_body(c: &mut Conn, buf: u64, readable: u64, ret: u64, from: u64, in_scratch: bool) -> bool {
    match c.framing {
        FRAMING_LENGTH => {
            keep_body_start(c, buf, readable, from, u64::MAX, in_scratch);
            let sent = ret.saturating_sub(from);
            if sent >= c.body_remaining {
                c.body_remaining = 0;
                return true;
            }
            c.body_remaining -= sent;
            false
        }
        FRAMING_CHUNKED => count_chunks(c, buf, readable, ret, from),
        _ => {
            keep_body_start(c, buf, readable, from, u64::MAX, in_scratch);
            false
        }
    }
}

/// `in_scratch`: the scan's scratch buffer holds part of this write (its head was scanned in
/// this call); the body's first bytes are taken from there when it has them all.
#[inline(always)]
fn keep_body_start(c: &mut Conn, buf: u64, readable: u64, from: u64, limit: u64, in_scratch: bool) {
    if c.record.header.response_captured != 0 || from >= readable {
        return;
    }
    let mut len = readable - from;
    if len > limit {
        len = limit;
    }
    if len > RESPONSE_CAPTURE as u64 {
        len = RESPONSE_CAPTURE as u64;
    }
    // The response's bytes follow the request's at once, so that the record sent is no longer
    // than what was captured. The mask bounds the offset for the verifier; the test makes it exact.
    let request_len = usize::from(c.record.header.request_captured) & 0x1ff;
    if request_len > REQUEST_CAPTURE {
        return;
    }
    // SAFETY: `request_len` ≤ REQUEST_CAPTURE leaves RESPONSE_CAPTURE bytes of `captured` after it.
    let response = unsafe { c.record.captured.as_mut_ptr().add(request_len) };
    if in_scratch && let Some(scan) = SCAN_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot; the helper reads kernel memory and fails cleanly, and
        // writes at most RESPONSE_CAPTURE bytes (the mask bounds it for the verifier).
        unsafe {
            let (base, filled) = ((*scan).base, (*scan).filled);
            if from >= base && from - base + len <= filled && filled <= SCAN_CHUNK as u64 {
                let at = (from - base) as usize & (SCAN_CHUNK - 1);
                let n = len as u32 & 0xff;
                if n > 0
                    && n as usize <= RESPONSE_CAPTURE
                    && probe_read_kernel_raw(response.cast(), n, (*scan).bytes.as_ptr().add(at).cast()) == 0
                {
                    c.record.header.response_captured = n as u16;
                    return;
                }
            }
        }
    }
    c.record.header.response_captured = copy_user(response, RESPONSE_CAPTURE, buf + from, len);
}

/// Hex digit values; 16 for anything else.
static HEX_DIGITS: [u8; 256] = {
    let mut table = [16u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// What `chunk_step` works on: one response write of a chunked body.
#[repr(C)]
struct ChunkContext {
    conn: *mut Conn,
    buf: u64,
    readable: u64,
    ret: u64,
    /// Where the next chunk header starts, in this write.
    pos: u64,
    /// 1 at the last chunk, 2 when the write was followed to its end, 0 while neither.
    outcome: u64,
}

const CHUNKS_LAST: u64 = 1;
const CHUNKS_WRITE_DONE: u64 = 2;

/// Follows chunk headers through one write (RFC 9112 §7.1), at most `CHUNKS_PER_WRITE`; true at
/// the last chunk. A header that cannot be read here (split across writes, or in a later iovec)
/// makes the end a guess.
#[inline(always)]
fn count_chunks(c: &mut Conn, buf: u64, readable: u64, ret: u64, from: u64) -> bool {
    let mut context = ChunkContext { conn: c, buf, readable, ret, pos: from, outcome: 0 };
    // SAFETY: a static callback and a context that outlives the call.
    unsafe {
        bpf_loop(
            CHUNKS_PER_WRITE as u32,
            chunk_step as *mut core::ffi::c_void,
            (&mut context as *mut ChunkContext).cast(),
            0,
        );
    }
    match context.outcome {
        CHUNKS_LAST => true,
        CHUNKS_WRITE_DONE => false,
        _ => {
            c.framing = FRAMING_UNKNOWN;
            false
        }
    }
}

/// One chunk of a write: the rest of the current chunk's data, then the next chunk header.
#[inline(never)]
extern "C" fn chunk_step(_index: u64, context: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `bpf_loop` passes back the context `count_chunks` gave it; its connection pointer
    // is a map value that lives through the program run.
    let x = unsafe { &mut *context.cast::<ChunkContext>() };
    // SAFETY: as above.
    let c = unsafe { &mut *x.conn };
    if c.body_remaining > 0 {
        let left = x.ret.saturating_sub(x.pos);
        if left <= c.body_remaining {
            c.body_remaining -= left;
            x.outcome = CHUNKS_WRITE_DONE;
            return 1;
        }
        x.pos += c.body_remaining;
        c.body_remaining = 0;
    }
    if x.pos >= x.ret {
        x.outcome = CHUNKS_WRITE_DONE;
        return 1;
    }
    if x.pos + 3 > x.readable {
        c.framing = FRAMING_UNKNOWN;
        x.outcome = CHUNKS_WRITE_DONE;
        return 1;
    }
    let Some(line) = read_user::<[u8; 24]>(x.buf + x.pos) else {
        c.framing = FRAMING_UNKNOWN;
        x.outcome = CHUNKS_WRITE_DONE;
        return 1;
    };
    // chunk-size CRLF, without extensions (servers do not send them). One table look-up and
    // one branch per digit keep the verifier's paths linear.
    let (mut size, mut digits) = (0u64, 0usize);
    while digits < 15 {
        let value = HEX_DIGITS[line[digits] as usize];
        if value > 15 {
            break;
        }
        size = (size << 4) | u64::from(value);
        digits += 1;
    }
    let end = digits + 2;
    let terminated = line.get(digits) == Some(&b'\r') && line.get(digits + 1) == Some(&b'\n');
    if digits == 0 || !terminated || x.pos + end as u64 > x.readable {
        c.framing = FRAMING_UNKNOWN;
        x.outcome = CHUNKS_WRITE_DONE;
        return 1;
    }
    if size == 0 {
        x.outcome = CHUNKS_LAST;
        return 1;
    }
    x.pos += end as u64;
    keep_body_start(c, x.buf, x.readable, x.pos, size, false);
    c.body_remaining = size + 2;
    0
}

/// Sends the connection's request as one completion and makes the connection idle.
#[inline(always)]
fn complete(c: &mut Conn) {
    // Only the captured bytes go: the masks bound the length for the verifier, the tests make it
    // exact.
    let request = usize::from(c.record.header.request_captured) & 0x1ff;
    let response = usize::from(c.record.header.response_captured) & 0xff;
    let sent = if request <= REQUEST_CAPTURE && response <= RESPONSE_CAPTURE {
        // SAFETY: header, request and response bytes all lie within the record.
        let record = unsafe {
            core::slice::from_raw_parts(
                (&c.record as *const Completion).cast::<u8>(),
                core::mem::size_of::<CompletionHeader>() + request + response,
            )
        };
        DATA_EVENTS.output::<[u8]>(record, data_wakeup_flags())
    } else {
        Err(0)
    };
    if sent.is_err() {
        count(counters::DATA_RINGBUF_DROPS);
    }
    c.phase = PHASE_IDLE;
    c.flags = CONN_SEEN_REQUEST;
}

/// A raw payload record of a fallback connection.
#[inline(always)]
fn send_data(kind: u32, call: &Call, ret: u64, now: u64) {
    let Some(mut entry) = DATA_EVENTS.reserve::<DataEvent>(0) else {
        count(counters::DATA_RINGBUF_DROPS);
        return;
    };
    let event = entry.as_mut_ptr();
    let mut captured = ret;
    if captured > call.buf_len {
        captured = call.buf_len;
    }
    // SAFETY: `event` points at a reserved record of the right size; the copy is bounded by
    // CAPTURE_BYTES, the size of `data`, and reads user memory through the helper.
    unsafe {
        (*event).kind = kind;
        (*event).tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*event).fd = call.fd;
        (*event).len = ret;
        (*event).timestamp_ns = now;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).conn_id = call.conn_id;
        (*event).captured = if call.buf == 0 {
            0
        } else {
            u32::from(copy_user((*event).data.as_mut_ptr(), CAPTURE_BYTES, call.buf, captured))
        };
    }
    entry.submit(data_wakeup_flags());
}

#[inline(always)]
fn data_wakeup_flags() -> u64 {
    if DATA_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= DATA_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// A record with no payload (a fallback connection's close, an fd classification request).
#[inline(always)]
fn send_header(kind: u32, tgid: u32, fd: u32, conn_id: u64) {
    let Some(mut entry) = DATA_EVENTS.reserve::<DataEvent>(0) else {
        count(counters::DATA_RINGBUF_DROPS);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved record of the right size.
    unsafe {
        (*event).kind = kind;
        (*event).tgid = tgid;
        (*event).fd = fd;
        (*event).captured = 0;
        (*event).len = 0;
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).conn_id = conn_id;
    }
    entry.submit(data_wakeup_flags());
}

/// The programs of one data syscall: its exit alone, and the enter/exit pair of older kernels.
macro_rules! data_syscall {
    ($exit:ident, $pair_enter:ident, $pair_exit:ident, $enter_event:literal, $exit_event:literal, $kind:expr, $buffer:expr) => {
        #[tracepoint(category = "syscalls", name = $exit_event)]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            if watched() {
                let ret = returned(&ctx);
                if ret > 0 {
                    on_data($kind, $buffer, args_from_regs(), ret);
                }
            }
            0
        }

        #[tracepoint(category = "syscalls", name = $enter_event)]
        pub fn $pair_enter(ctx: TracePointContext) -> u32 {
            save_args(&ctx, 3);
            0
        }

        #[tracepoint(category = "syscalls", name = $exit_event)]
        pub fn $pair_exit(ctx: TracePointContext) -> u32 {
            if watched() {
                // Taken out whatever the result, so that the entry does not linger.
                let args = saved_args();
                on_data($kind, $buffer, args, returned(&ctx));
            }
            0
        }
    };
}

data_syscall!(
    exit_read,
    pair_enter_read,
    pair_exit_read,
    "sys_enter_read",
    "sys_exit_read",
    KIND_DATA_IN,
    Buffer::Direct
);
data_syscall!(
    exit_readv,
    pair_enter_readv,
    pair_exit_readv,
    "sys_enter_readv",
    "sys_exit_readv",
    KIND_DATA_IN,
    Buffer::Iovec
);
data_syscall!(
    exit_recvfrom,
    pair_enter_recvfrom,
    pair_exit_recvfrom,
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    KIND_DATA_IN,
    Buffer::Direct
);
data_syscall!(
    exit_recvmsg,
    pair_enter_recvmsg,
    pair_exit_recvmsg,
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    KIND_DATA_IN,
    Buffer::Msghdr
);
data_syscall!(
    exit_write,
    pair_enter_write,
    pair_exit_write,
    "sys_enter_write",
    "sys_exit_write",
    KIND_DATA_OUT,
    Buffer::Direct
);
data_syscall!(
    exit_writev,
    pair_enter_writev,
    pair_exit_writev,
    "sys_enter_writev",
    "sys_exit_writev",
    KIND_DATA_OUT,
    Buffer::Iovec
);
data_syscall!(
    exit_sendto,
    pair_enter_sendto,
    pair_exit_sendto,
    "sys_enter_sendto",
    "sys_exit_sendto",
    KIND_DATA_OUT,
    Buffer::Direct
);
data_syscall!(
    exit_sendmsg,
    pair_enter_sendmsg,
    pair_exit_sendmsg,
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    KIND_DATA_OUT,
    Buffer::Msghdr
);
// sendfile64(out_fd, in_fd, …): the body of a response sent from a file counts, unread.
data_syscall!(
    exit_sendfile,
    pair_enter_sendfile,
    pair_exit_sendfile,
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
    KIND_DATA_OUT,
    Buffer::None
);

/// The connection will send no more: a response that runs until then completes, a request
/// still without a response is counted as unfinished. On close its state goes too.
#[inline(always)]
fn writes_end(key: FdKey, info: &FdInfo, closing: bool) {
    let Some(conn) = CONNS.get_ptr_mut(&info.conn_id) else { return };
    // SAFETY: a map value pointer.
    let c = unsafe { &mut *conn };
    match c.phase {
        PHASE_RESPONSE_HEAD | PHASE_RESPONSE_BODY => {
            c.record.header.flags |=
                if c.framing == FRAMING_UNTIL_CLOSE { COMPLETION_UNTIL_CLOSE } else { COMPLETION_FRAMING_GUESSED };
            complete(c);
        }
        PHASE_REQUEST if closing => count(counters::UNFINISHED),
        PHASE_FALLBACK if closing => send_header(KIND_CLOSE, key.tgid, key.fd, info.conn_id),
        _ => {}
    }
    if closing {
        let _ = CONNS.remove(&info.conn_id);
    }
}

/// close: the connection's request ends (a response until close completes here); the fd number
/// may be reused for anything.
#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    if !watched() {
        return 0;
    }
    // SAFETY: offset from the format file.
    let fd = syscall_field(&ctx, 16);
    let key = FdKey { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, fd: fd as u32 };
    // SAFETY: the value is copied out at once.
    let Some(info) = (unsafe { FD_CLASS.get(&key) }).copied() else { return 0 };
    let _ = FD_CLASS.remove(&key);
    if info.class == FD_PENDING {
        // Userspace will look this fd number up after it is reused: void the question, unless
        // answered already (then about the right file).
        let _ = FD_VERDICTS.insert(&info.conn_id, &FD_ASKED_FD_CLOSED, BPF_NOEXIST as u64);
    }
    if info.class != FD_NOT_SOCKET {
        writes_end(key, &info, true);
    }
    0
}

/// shutdown(fd @16, how @24) with SHUT_WR or SHUT_RDWR: a response that runs until the close
/// ends here (busybox httpd shuts down and exits, with no close(2) to see).
#[tracepoint(category = "syscalls", name = "sys_enter_shutdown")]
pub fn enter_shutdown(ctx: TracePointContext) -> u32 {
    if !watched() {
        return 0;
    }
    // SAFETY: offsets from the format file.
    let (fd, how) = (syscall_field(&ctx, 16), syscall_field(&ctx, 24));
    // SHUT_WR = 1, SHUT_RDWR = 2 (include/linux/net.h).
    if how != 1 && how != 2 {
        return 0;
    }
    let key = FdKey { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, fd: fd as u32 };
    // SAFETY: the value is copied out at once.
    if let Some(info) = (unsafe { FD_CLASS.get(&key) }).copied()
        && info.class != FD_NOT_SOCKET
    {
        writes_end(key, &info, false);
    }
    0
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) {
    if !watched() {
        return;
    }
    // SAFETY: offset from the format file.
    let fd = syscall_field(ctx, 16) as i64;
    if fd >= 0 {
        let key = FdKey { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, fd: fd as u32 };
        let info = FdInfo { conn_id: new_conn_id(), class: FD_SOCKET, flags: 0, _pad: [0; 6] };
        let _ = FD_CLASS.insert(&key, &info, 0);
    }
}

/// accept/accept4: the new fd is a connected socket, classified without asking userspace.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

/// dup, dup2, dup3 and fcntl(F_DUPFD): the new fd (the return value) shares the copied fd's
/// (the first argument's) connection, so a server reading on one and writing on the other is one
/// stream. For fcntl the second argument is the command.
#[inline(always)]
fn on_dup(ctx: &TracePointContext, args: Option<[u64; 3]>, fcntl: bool) {
    let Some([fd, command, _]) = args else { return };
    if fcntl && !matches!(command, F_DUPFD | F_DUPFD_CLOEXEC) {
        return;
    }
    let new_fd = returned(ctx);
    if new_fd < 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(info) = fd_info(tgid, fd as u32) {
        let _ = FD_CLASS.insert(&FdKey { tgid, fd: new_fd as u32 }, &info, 0);
    }
}

/// The programs of one fd-copying syscall, as `data_syscall!`.
macro_rules! dup_syscall {
    ($exit:ident, $pair_enter:ident, $pair_exit:ident, $enter_event:literal, $exit_event:literal, $args:literal, $fcntl:expr) => {
        #[tracepoint(category = "syscalls", name = $exit_event)]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            if watched() {
                on_dup(&ctx, args_from_regs(), $fcntl);
            }
            0
        }

        #[tracepoint(category = "syscalls", name = $enter_event)]
        pub fn $pair_enter(ctx: TracePointContext) -> u32 {
            // Only fcntl's fd-copying commands (cmd @24) are kept: the others are many and moot.
            if !$fcntl || matches!(syscall_field(&ctx, 24), F_DUPFD | F_DUPFD_CLOEXEC) {
                save_args(&ctx, $args);
            }
            0
        }

        #[tracepoint(category = "syscalls", name = $exit_event)]
        pub fn $pair_exit(ctx: TracePointContext) -> u32 {
            if watched() {
                on_dup(&ctx, saved_args(), $fcntl);
            }
            0
        }
    };
}

dup_syscall!(exit_dup, pair_enter_dup, pair_exit_dup, "sys_enter_dup", "sys_exit_dup", 1, false);
dup_syscall!(exit_dup2, pair_enter_dup2, pair_exit_dup2, "sys_enter_dup2", "sys_exit_dup2", 2, false);
dup_syscall!(exit_dup3, pair_enter_dup3, pair_exit_dup3, "sys_enter_dup3", "sys_exit_dup3", 3, false);
dup_syscall!(exit_fcntl, pair_enter_fcntl, pair_exit_fcntl, "sys_enter_fcntl", "sys_exit_fcntl", 3, true);

// --- calibration for `cargo xtask bench` (`probes.calibration`): empty programs on the hooks the
// request probes use, to give their cost a floor measured in the same run, and the alternative
// hook design, one raw_tracepoint on every syscall that switches on the syscall number.

macro_rules! empty_tracepoint {
    ($name:ident, $event:literal) => {
        #[tracepoint(category = "syscalls", name = $event)]
        pub fn $name(_ctx: TracePointContext) -> u32 {
            0
        }
    };
}

empty_tracepoint!(calibrate_enter_recvfrom, "sys_enter_recvfrom");
empty_tracepoint!(calibrate_exit_recvfrom, "sys_exit_recvfrom");
empty_tracepoint!(calibrate_enter_sendto, "sys_enter_sendto");
empty_tracepoint!(calibrate_exit_sendto, "sys_exit_sendto");

/// x86-64 numbers of the syscalls the request probes hook (arch/x86/entry/syscalls/syscall_64.tbl).
#[inline(always)]
fn traced_syscall(id: u64) -> bool {
    matches!(id, 0 | 1 | 3 | 19 | 20 | 32 | 33 | 40 | 43 | 44 | 45 | 46 | 47 | 48 | 72 | 288 | 292)
}

/// sys_enter(struct pt_regs *regs, long id): what dispatching on the syscall number costs before
/// the same watched check the per-syscall probes start with.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn calibrate_raw_sys_enter(ctx: RawTracePointContext) -> u32 {
    let id: u64 = ctx.arg(1);
    if traced_syscall(id) && watched() {
        count(counters::CALIBRATION);
    }
    0
}

/// sys_exit(struct pt_regs *regs, long ret): the number is not an argument here; every exit pays
/// the watched check.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn calibrate_raw_sys_exit(_ctx: RawTracePointContext) -> u32 {
    if watched() {
        count(counters::CALIBRATION);
    }
    0
}

// --- probes that `modelmeter doctor` loads to report what this kernel allows; never attached in `run`.

#[kprobe]
pub fn doctor_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "do_exit")]
pub fn doctor_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
