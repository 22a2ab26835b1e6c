//! `#[repr(C)]` types shared by the eBPF programs (agent-ebpf) and the agent: map names, keys,
//! values and ring-buffer events. Layouts are pinned with size asserts; no `bool`, no implicit padding.
#![no_std]

/// Scheduler accounting: on-CPU time and run-queue delay per (cgroup id, tgid).
pub mod sched {
    /// `PerCpuHashMap<TaskKey, TaskCpu>`.
    pub const TASK_CPU_MAP: &str = "TASK_CPU";
    /// `LruHashMap<u64, u64>`: task key (task pointer, or tid for the classic tracepoints) → enqueue time.
    pub const WAKEUP_TS_MAP: &str = "WAKEUP_TS";
    /// Default `max_entries` of [`TASK_CPU_MAP`]; the agent overrides it from its config.
    pub const TASK_CPU_DEFAULT_ENTRIES: u32 = 16_384;

    /// Run-queue delay histogram slots. Slot 0 counts delays under 1 µs, slot `i` (1 ≤ i < last)
    /// counts delays in `[2^(i-1), 2^i)` µs, the last slot everything from `2^(RUNQ_SLOTS-2)` µs on.
    pub const RUNQ_SLOTS: usize = 28;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct TaskKey {
        /// cgroup v2 id (inode of the v2 directory), from `bpf_get_current_cgroup_id()`.
        pub cgroup_id: u64,
        pub tgid: u32,
        pub _pad: u32,
    }
    const _: () = assert!(core::mem::size_of::<TaskKey>() == 16);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TaskCpu {
        pub on_cpu_ns: u64,
        pub runq_delay_ns: u64,
        pub runq_slots: [u64; RUNQ_SLOTS],
    }
    const _: () = assert!(core::mem::size_of::<TaskCpu>() == 16 + 8 * RUNQ_SLOTS);

    impl TaskCpu {
        pub const ZERO: TaskCpu = TaskCpu { on_cpu_ns: 0, runq_delay_ns: 0, runq_slots: [0; RUNQ_SLOTS] };
    }

    impl Default for TaskCpu {
        fn default() -> Self {
            Self::ZERO
        }
    }

    /// Per-CPU scratch state of the sched_switch handler.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct CpuState {
        /// When the task now on this CPU was switched in.
        pub last_switch_ns: u64,
        /// Run-queue delay of the task now on this CPU, attributed when it is switched out
        /// (only then is it `current`, so its tgid and cgroup are known without reading task_struct).
        pub pending_runq_ns: u64,
        /// 1 when `pending_runq_ns` holds a value.
        pub pending_valid: u64,
    }
    const _: () = assert!(core::mem::size_of::<CpuState>() == 24);

    /// Maps a delay to its histogram slot; written without `leading_zeros`, which the BPF backend lowers
    /// to a libcall.
    #[inline(always)]
    pub fn runq_slot(delay_ns: u64) -> usize {
        let mut us = delay_ns / 1_000;
        if us == 0 {
            return 0;
        }
        let mut log2 = 0usize;
        if us >= 1 << 32 {
            us >>= 32;
            log2 += 32;
        }
        if us >= 1 << 16 {
            us >>= 16;
            log2 += 16;
        }
        if us >= 1 << 8 {
            us >>= 8;
            log2 += 8;
        }
        if us >= 1 << 4 {
            us >>= 4;
            log2 += 4;
        }
        if us >= 1 << 2 {
            us >>= 2;
            log2 += 2;
        }
        if us >= 1 << 1 {
            log2 += 1;
        }
        let slot = log2 + 1;
        if slot >= RUNQ_SLOTS { RUNQ_SLOTS - 1 } else { slot }
    }

    /// Upper bound (exclusive) of a slot in seconds, `None` for the last, open-ended one.
    pub fn runq_slot_upper_seconds(slot: usize) -> Option<f64> {
        if slot + 1 >= RUNQ_SLOTS {
            return None;
        }
        Some((1u64 << slot) as f64 * 1e-6)
    }
}

/// Events sent through the ring buffer.
pub mod events {
    pub const EVENTS_MAP: &str = "EVENTS";
    pub const EVENTS_DEFAULT_BYTES: u32 = 256 * 1024;

    pub const KIND_PROCESS_EXIT: u32 = 1;
    pub const KIND_OOM_VICTIM: u32 = 2;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Event {
        pub kind: u32,
        /// Exit: the exiting tgid. OOM: the victim's pid (from `oom/mark_victim`).
        pub pid: u32,
        /// tgid of the task that was current when the event fired.
        pub current_tgid: u32,
        pub _pad: u32,
        /// cgroup v2 id of the current task.
        pub cgroup_id: u64,
        pub timestamp_ns: u64,
    }
    const _: () = assert!(core::mem::size_of::<Event>() == 32);
}

/// Socket payload capture for request tracing: syscall probes on watched cgroups send the first
/// bytes of each read and write on a socket; userspace pairs requests and responses.
pub mod traffic {
    /// `HashMap<u64, u8>`: cgroup v2 ids whose processes are traced.
    pub const WATCHED_CGROUPS_MAP: &str = "WATCHED_CGROUPS";
    /// `Array<u32>`: [`WATCH_ALL`] is 1 to trace every process (standalone use); [`AGENT_TGID`]
    /// is the agent itself, never traced (its own socket traffic would feed back).
    pub const WATCH_CONFIG_MAP: &str = "WATCH_CONFIG";
    pub const WATCH_ALL: u32 = 0;
    pub const AGENT_TGID: u32 = 1;
    /// `LruHashMap<FdKey, u8>`: what an fd is, as far as the probes know.
    pub const FD_CLASS_MAP: &str = "FD_CLASS";
    /// `LruHashMap<u64, ActiveCall>`: syscalls between enter and exit, by pid_tgid.
    pub const ACTIVE_CALLS_MAP: &str = "ACTIVE_CALLS";
    /// `RingBuf` of [`DataEvent`]s.
    pub const DATA_EVENTS_MAP: &str = "DATA_EVENTS";
    pub const WATCHED_CGROUPS_DEFAULT_ENTRIES: u32 = 4096;
    pub const FD_CLASS_DEFAULT_ENTRIES: u32 = 65_536;
    pub const DATA_EVENTS_DEFAULT_BYTES: u32 = 1024 * 1024;

    /// Bytes of payload captured per syscall: enough for a request line, headers and the start of
    /// a JSON body, or a response's status line and headers.
    pub const CAPTURE_BYTES: usize = 512;

    pub const FD_SOCKET: u8 = 1;
    pub const FD_NOT_SOCKET: u8 = 2;
    /// Userspace was asked ([`KIND_FD_UNKNOWN`]) and has not answered yet.
    pub const FD_PENDING: u8 = 3;

    /// Data a watched process read from a socket.
    pub const KIND_DATA_IN: u32 = 1;
    /// Data a watched process wrote to a socket.
    pub const KIND_DATA_OUT: u32 = 2;
    /// A watched process closed a socket.
    pub const KIND_CLOSE: u32 = 3;
    /// A watched process used an fd the probes have not classified: userspace looks at
    /// `/proc/<tgid>/fd/<fd>` and writes the verdict to [`FD_CLASS_MAP`].
    pub const KIND_FD_UNKNOWN: u32 = 4;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FdKey {
        pub tgid: u32,
        pub fd: u32,
    }
    const _: () = assert!(core::mem::size_of::<FdKey>() == 8);

    /// A syscall in flight between its enter and exit tracepoints (keyed by pid_tgid).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct ActiveCall {
        /// User buffer the data is in (the first iovec's for vectored calls).
        pub buf: u64,
        /// Bytes of `buf` that belong to this call (the first iovec's length for vectored calls).
        pub buf_len: u64,
        pub fd: u32,
        /// [`KIND_DATA_IN`] or [`KIND_DATA_OUT`].
        pub kind: u32,
    }
    const _: () = assert!(core::mem::size_of::<ActiveCall>() == 24);

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct DataEvent {
        pub kind: u32,
        pub tgid: u32,
        pub fd: u32,
        /// Valid bytes in `data`.
        pub captured: u32,
        /// What the syscall returned: the real size of the read or write.
        pub len: u64,
        /// At the syscall's exit.
        pub timestamp_ns: u64,
        pub cgroup_id: u64,
        pub data: [u8; CAPTURE_BYTES],
    }
    const _: () = assert!(core::mem::size_of::<DataEvent>() == 40 + CAPTURE_BYTES);
}

/// Per-CPU error counters, so that no failure in a handler is silent.
pub mod counters {
    /// `PerCpuArray<u64>` indexed by the constants below.
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const RINGBUF_DROPS: u32 = 0;
    pub const TASK_CPU_FULL: u32 = 1;
    pub const WAKEUP_TS_ERRORS: u32 = 2;
    /// Payload events lost because the data ring buffer was full.
    pub const DATA_RINGBUF_DROPS: u32 = 3;
    /// A syscall's enter could not be remembered for its exit.
    pub const ACTIVE_CALL_ERRORS: u32 = 4;
    pub const COUNT: u32 = 5;

    pub const NAMES: [&str; COUNT as usize] =
        ["ringbuf_drops", "task_cpu_map_full", "wakeup_map_errors", "data_ringbuf_drops", "active_call_errors"];
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding (layouts asserted above).
    unsafe impl aya::Pod for super::sched::TaskKey {}
    unsafe impl aya::Pod for super::sched::TaskCpu {}
    unsafe impl aya::Pod for super::sched::CpuState {}
    unsafe impl aya::Pod for super::events::Event {}
    unsafe impl aya::Pod for super::traffic::FdKey {}
    unsafe impl aya::Pod for super::traffic::ActiveCall {}
}

#[cfg(test)]
mod tests {
    use super::sched::*;

    #[test]
    fn runq_slots_are_log2_microseconds() {
        assert_eq!(runq_slot(0), 0);
        assert_eq!(runq_slot(999), 0);
        assert_eq!(runq_slot(1_000), 1);
        assert_eq!(runq_slot(1_999), 1);
        assert_eq!(runq_slot(2_000), 2);
        assert_eq!(runq_slot(1_024_000), 11);
        assert_eq!(runq_slot(u64::MAX), RUNQ_SLOTS - 1);
        for slot in 1..RUNQ_SLOTS - 1 {
            let upper_ns = (runq_slot_upper_seconds(slot).unwrap() * 1e9).round() as u64;
            assert_eq!(runq_slot(upper_ns - 1_000), slot, "slot {slot}");
            assert_eq!(runq_slot(upper_ns), slot + 1, "slot {slot}");
        }
        assert_eq!(runq_slot_upper_seconds(RUNQ_SLOTS - 1), None);
    }
}
