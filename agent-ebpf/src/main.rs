//! modelmeter's eBPF programs: on-CPU time and run-queue delay per (cgroup, tgid) from the scheduler
//! tracepoints, and process exits and OOM kills through a ring buffer.
//!
//! Request tracing: syscall tracepoints (read, readv, recvfrom, recvmsg, write, writev, sendto,
//! sendmsg, close, accept, accept4) capture the first bytes of each socket read and write of watched
//! cgroups into a second ring buffer; userspace parses and pairs them.
//!
//! The kernel side never reads kernel structs (no CO-RE in Rust eBPF): it keys by what helpers give
//! (`bpf_get_current_pid_tgid`, `bpf_get_current_cgroup_id`) and by tracepoint arguments. Each
//! scheduler hook exists in three flavours — `tp_btf`, `raw_tracepoint`, classic `tracepoint` — and
//! the agent loads the first family that works on the running kernel.
#![no_std]
#![no_main]

use agent_common::{
    counters,
    events::{Event, KIND_OOM_VICTIM, KIND_PROCESS_EXIT},
    sched::{CpuState, TASK_CPU_DEFAULT_ENTRIES, TaskCpu, TaskKey, runq_slot},
    traffic::{
        AGENT_TGID, ActiveCall, CAPTURE_BYTES, DataEvent, FD_CLASS_DEFAULT_ENTRIES, FD_PENDING, FD_SOCKET, FdKey,
        KIND_CLOSE, KIND_DATA_IN, KIND_DATA_OUT, KIND_FD_UNKNOWN, WATCH_ALL, WATCHED_CGROUPS_DEFAULT_ENTRIES,
    },
};
use aya_ebpf::{
    Global,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::{btf_tracepoint, fentry, kprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext},
};

/// 1 when `sched_process_exit` has the `group_dead` field (kernels from 2025 on); else the exit
/// of the thread group leader stands for the process's. Set by the loader from the format file.
#[unsafe(no_mangle)]
static EXIT_HAS_GROUP_DEAD: Global<u8> = Global::new(1);

/// Payload records that wake the reader at once: beyond this much unread data. Below it the
/// reader's periodic poll picks them up, which spares a wakeup (an irq_work) per record.
const DATA_WAKEUP_BYTES: u64 = 256 * 1024;

#[map(name = "TASK_CPU")]
static TASK_CPU: PerCpuHashMap<TaskKey, TaskCpu> = PerCpuHashMap::with_max_entries(TASK_CPU_DEFAULT_ENTRIES, 0);

#[map(name = "CPU_STATE")]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WAKEUP_TS")]
static WAKEUP_TS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(TASK_CPU_DEFAULT_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(agent_common::events::EVENTS_DEFAULT_BYTES, 0);

#[map(name = "WATCHED_CGROUPS")]
static WATCHED_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(WATCHED_CGROUPS_DEFAULT_ENTRIES, 0);

#[map(name = "WATCH_CONFIG")]
static WATCH_CONFIG: Array<u32> = Array::with_max_entries(2, 0);

#[map(name = "FD_CLASS")]
static FD_CLASS: LruHashMap<FdKey, u8> = LruHashMap::with_max_entries(FD_CLASS_DEFAULT_ENTRIES, 0);

#[map(name = "ACTIVE_CALLS")]
static ACTIVE_CALLS: LruHashMap<u64, ActiveCall> = LruHashMap::with_max_entries(FD_CLASS_DEFAULT_ENTRIES, 0);

#[map(name = "DATA_EVENTS")]
static DATA_EVENTS: RingBuf = RingBuf::with_byte_size(agent_common::traffic::DATA_EVENTS_DEFAULT_BYTES, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and tracing programs do not nest on one CPU.
        unsafe { *counter += 1 };
    }
}

/// The common body of every sched_switch flavour. `prev_key`/`next_key` identify tasks the same way
/// the matching wakeup handler does; `prev_requeued` is true when prev stays runnable (preempted).
#[inline(always)]
fn on_switch(prev_key: u64, next_key: u64, prev_requeued: bool) {
    // SAFETY: helpers without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(state) = CPU_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, not shared with another CPU.
    let state = unsafe { &mut *state };
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
        account(&key, ran_ns, state.pending_valid != 0, state.pending_runq_ns);
        if prev_requeued && WAKEUP_TS.insert(&prev_key, &now, 0).is_err() {
            count(counters::WAKEUP_TS_ERRORS);
        }
    }
    state.pending_valid = 0;
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(enqueued) = unsafe { WAKEUP_TS.get(&next_key) } {
        state.pending_runq_ns = now.saturating_sub(*enqueued);
        state.pending_valid = 1;
        let _ = WAKEUP_TS.remove(&next_key);
    }
    state.last_switch_ns = now;
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
    let now = unsafe { bpf_ktime_get_ns() };
    if WAKEUP_TS.insert(&task_key, &now, 0).is_err() {
        count(counters::WAKEUP_TS_ERRORS);
    }
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
    on_switch(prev, next, preempt & 0xff != 0 || prev_state as u32 == 0);
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
    on_switch(prev, next, preempt & 0xff != 0 || prev_state as u32 == 0);
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
        on_switch(prev_pid as u64, next_pid as u64, prev_state & 0xff == 0);
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

/// Where a syscall's data is.
#[derive(Clone, Copy)]
enum Buffer {
    /// `buf` @24, `count` @32 (read, write, recvfrom, sendto).
    Direct,
    /// `struct iovec *` @24 (readv, writev): the first iovec.
    Iovec,
    /// `struct user_msghdr *` @24 (recvmsg, sendmsg): the first iovec of `msg_iov`.
    Msghdr,
}

/// Layout of `struct iovec` (include/uapi/linux/uio.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Offset of `msg_iov` in `struct user_msghdr` (include/linux/socket.h): after msg_name and msg_namelen.
const MSGHDR_IOV_OFFSET: u64 = 16;

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

/// Whether the fd's traffic is captured: known sockets, and fds not classified yet (reported to
/// userspace once, which answers before it reads their data, so a connection opened before the
/// agent started is measured from its next request). Known non-sockets are skipped.
#[inline(always)]
fn capture_fd(tgid: u32, fd: u32) -> bool {
    let key = FdKey { tgid, fd };
    // SAFETY: the value is copied out at once.
    match unsafe { FD_CLASS.get(&key) } {
        Some(class) => *class == FD_SOCKET || *class == FD_PENDING,
        None => {
            if FD_CLASS.insert(&key, &FD_PENDING, BPF_NOEXIST as u64).is_ok() {
                send_data_header(KIND_FD_UNKNOWN, tgid, fd);
            }
            true
        }
    }
}

#[inline(always)]
fn first_iovec(iov: u64) -> Option<(u64, u64)> {
    // SAFETY: a user pointer read through the helper, which fails cleanly on a bad address.
    let iovec: Iovec = unsafe { bpf_probe_read_user(iov as *const Iovec) }.ok()?;
    Some((iovec.base, iovec.len))
}

#[inline(always)]
fn on_data_enter(ctx: &TracePointContext, kind: u32, buffer: Buffer) {
    if !watched() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: offsets from the syscall tracepoints' format files.
    let (Ok(fd), Ok(arg)) = (unsafe { ctx.read_at::<u64>(16) }, unsafe { ctx.read_at::<u64>(24) }) else {
        return;
    };
    if !capture_fd((pid_tgid >> 32) as u32, fd as u32) {
        return;
    }
    let located = match buffer {
        // SAFETY: offset from the format file.
        Buffer::Direct => unsafe { ctx.read_at::<u64>(32) }.ok().map(|count| (arg, count)),
        Buffer::Iovec => first_iovec(arg),
        // SAFETY: a user pointer read through the helper.
        Buffer::Msghdr => {
            unsafe { bpf_probe_read_user((arg + MSGHDR_IOV_OFFSET) as *const u64) }.ok().and_then(first_iovec)
        }
    };
    let Some((buf, buf_len)) = located else { return };
    let call = ActiveCall { buf, buf_len, fd: fd as u32, kind };
    if ACTIVE_CALLS.insert(&pid_tgid, &call, 0).is_err() {
        count(counters::ACTIVE_CALL_ERRORS);
    }
}

#[inline(always)]
fn on_data_exit(ctx: &TracePointContext) {
    if !watched() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { ACTIVE_CALLS.get(&pid_tgid) }).copied() else { return };
    let _ = ACTIVE_CALLS.remove(&pid_tgid);
    // SAFETY: offset from the format file.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(16) }) else { return };
    if ret <= 0 {
        return;
    }
    let Some(mut entry) = DATA_EVENTS.reserve::<DataEvent>(0) else {
        count(counters::DATA_RINGBUF_DROPS);
        return;
    };
    let event = entry.as_mut_ptr();
    let mut captured = ret as u64;
    if captured > call.buf_len {
        captured = call.buf_len;
    }
    if captured > CAPTURE_BYTES as u64 {
        captured = CAPTURE_BYTES as u64;
    }
    // SAFETY: `event` points at a reserved record of the right size; the copy is bounded by
    // CAPTURE_BYTES, the size of `data`, and reads user memory through the helper.
    unsafe {
        (*event).kind = call.kind;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).fd = call.fd;
        (*event).len = ret as u64;
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        let copied = captured as u32 & (CAPTURE_BYTES as u32 * 2 - 1);
        let ok = copied > 0
            && copied <= CAPTURE_BYTES as u32
            && probe_read_user_raw((*event).data.as_mut_ptr().cast(), copied, call.buf as *const _) == 0;
        (*event).captured = if ok { copied } else { 0 };
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

/// A record with no payload (close, fd classification request).
#[inline(always)]
fn send_data_header(kind: u32, tgid: u32, fd: u32) {
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
    }
    entry.submit(data_wakeup_flags());
}

macro_rules! data_syscall {
    ($enter:ident, $exit:ident, $enter_event:literal, $exit_event:literal, $kind:expr, $buffer:expr) => {
        #[tracepoint(category = "syscalls", name = $enter_event)]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            on_data_enter(&ctx, $kind, $buffer);
            0
        }

        #[tracepoint(category = "syscalls", name = $exit_event)]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_data_exit(&ctx);
            0
        }
    };
}

data_syscall!(enter_read, exit_read, "sys_enter_read", "sys_exit_read", KIND_DATA_IN, Buffer::Direct);
data_syscall!(enter_readv, exit_readv, "sys_enter_readv", "sys_exit_readv", KIND_DATA_IN, Buffer::Iovec);
data_syscall!(enter_recvfrom, exit_recvfrom, "sys_enter_recvfrom", "sys_exit_recvfrom", KIND_DATA_IN, Buffer::Direct);
data_syscall!(enter_recvmsg, exit_recvmsg, "sys_enter_recvmsg", "sys_exit_recvmsg", KIND_DATA_IN, Buffer::Msghdr);
data_syscall!(enter_write, exit_write, "sys_enter_write", "sys_exit_write", KIND_DATA_OUT, Buffer::Direct);
data_syscall!(enter_writev, exit_writev, "sys_enter_writev", "sys_exit_writev", KIND_DATA_OUT, Buffer::Iovec);
data_syscall!(enter_sendto, exit_sendto, "sys_enter_sendto", "sys_exit_sendto", KIND_DATA_OUT, Buffer::Direct);
data_syscall!(enter_sendmsg, exit_sendmsg, "sys_enter_sendmsg", "sys_exit_sendmsg", KIND_DATA_OUT, Buffer::Msghdr);

/// close: a socket's connection state ends; the fd number may be reused for anything.
#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    if !watched() {
        return 0;
    }
    // SAFETY: offset from the format file.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(16) }) else { return 0 };
    let key = FdKey { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, fd: fd as u32 };
    // SAFETY: the value is copied out at once.
    if let Some(FD_SOCKET | FD_PENDING) = unsafe { FD_CLASS.get(&key) }.copied() {
        send_data_header(KIND_CLOSE, key.tgid, key.fd);
    }
    let _ = FD_CLASS.remove(&key);
    0
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) {
    if !watched() {
        return;
    }
    // SAFETY: offset from the format file.
    let Ok(fd) = (unsafe { ctx.read_at::<i64>(16) }) else { return };
    if fd >= 0 {
        let key = FdKey { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, fd: fd as u32 };
        let _ = FD_CLASS.insert(&key, &FD_SOCKET, 0);
        // A fresh connection on this fd number: whatever userspace knew of the number is over
        // (its close may have gone unseen, or it was a file).
        send_data_header(KIND_CLOSE, key.tgid, key.fd);
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
