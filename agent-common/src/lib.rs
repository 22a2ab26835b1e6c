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

/// Per-CPU error counters, so that no failure in a handler is silent.
pub mod counters {
    /// `PerCpuArray<u64>` indexed by the constants below.
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const RINGBUF_DROPS: u32 = 0;
    pub const TASK_CPU_FULL: u32 = 1;
    pub const WAKEUP_TS_ERRORS: u32 = 2;
    pub const COUNT: u32 = 3;

    pub const NAMES: [&str; COUNT as usize] = ["ringbuf_drops", "task_cpu_map_full", "wakeup_map_errors"];
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding (layouts asserted above).
    unsafe impl aya::Pod for super::sched::TaskKey {}
    unsafe impl aya::Pod for super::sched::TaskCpu {}
    unsafe impl aya::Pod for super::sched::CpuState {}
    unsafe impl aya::Pod for super::events::Event {}
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
