//! modelmeter's eBPF programs: on-CPU time and run-queue delay per (cgroup, tgid) from the scheduler
//! tracepoints, and process exits and OOM kills through a ring buffer.
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
    sched::{CpuState, RUNQ_SLOTS, TASK_CPU_DEFAULT_ENTRIES, TaskCpu, TaskKey, runq_slot},
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, fentry, kprobe, map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext},
};

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
fn account(key: &TaskKey, ran_ns: u64, has_runq: bool, runq_ns: u64) {
    if let Some(value) = TASK_CPU.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of a per-CPU value.
        let value = unsafe { &mut *value };
        value.on_cpu_ns += ran_ns;
        if has_runq {
            value.runq_delay_ns += runq_ns;
            if let Some(slot) = value.runq_slots.get_mut(runq_slot(runq_ns)) {
                *slot += 1;
            }
        }
        return;
    }
    let mut value = TaskCpu::ZERO;
    value.on_cpu_ns = ran_ns;
    if has_runq {
        value.runq_delay_ns = runq_ns;
        let slot = runq_slot(runq_ns);
        if slot < RUNQ_SLOTS {
            value.runq_slots[slot] = 1;
        }
    }
    if TASK_CPU.insert(key, &value, BPF_NOEXIST as u64).is_err() {
        count(counters::TASK_CPU_FULL);
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

/// sched_process_exit: group_dead @32 (bool) — only the last thread of a process reports its tgid.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the event's format file.
    if let Ok(1) = unsafe { ctx.read_at::<u8>(32) } {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
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
