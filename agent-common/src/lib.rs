//! `#[repr(C)]` types shared by the eBPF programs (agent-ebpf) and the agent: map names, keys,
//! values and ring-buffer events. Layouts are pinned with size asserts; no `bool`, no implicit padding.
#![no_std]

/// Scheduler accounting: on-CPU time and run-queue delay per (cgroup id, tgid).
pub mod sched {
    /// `PerCpuHashMap<TaskKey, TaskCpu>`.
    pub const TASK_CPU_MAP: &str = "TASK_CPU";
    /// `LruHashMap<u64, u64>`: task key (task pointer, or tid for the classic tracepoints) → enqueue time.
    pub const WAKEUP_TS_MAP: &str = "WAKEUP_TS";
    /// `LruHashMap<u64, RunDelaySeen>`: task pointer → the kernel's run-queue count for that task at
    /// its last switch-out. Used instead of [`WAKEUP_TS_MAP`] (and the wakeup probes) where the
    /// agent found `task_struct.sched_info` in the kernel's BTF.
    pub const RUN_DELAY_SEEN_MAP: &str = "RUN_DELAY_SEEN";
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

    /// A task's `sched_info.pcount` (runs so far) and `sched_info.run_delay` (ns waited on a run
    /// queue so far), as the kernel kept them, read when the task was last switched out.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RunDelaySeen {
        pub pcount: u64,
        pub run_delay: u64,
    }
    const _: () = assert!(core::mem::size_of::<RunDelaySeen>() == 16);

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

/// Request tracing: syscall probes on watched cgroups follow each connection in the kernel, pair
/// every HTTP/1 request with its response, and send one [`Completion`] per request. A connection
/// the kernel cannot follow (a request split before its method, pipelining) falls back to raw
/// payload records ([`DataEvent`]) that userspace parses.
pub mod traffic {
    /// `HashMap<u64, u8>`: cgroup v2 ids whose processes are traced.
    pub const WATCHED_CGROUPS_MAP: &str = "WATCHED_CGROUPS";
    /// `Array<u32>`: [`WATCH_ALL`] is 1 to trace every process (standalone use); [`AGENT_TGID`]
    /// is the agent itself, never traced (its own socket traffic would feed back).
    pub const WATCH_CONFIG_MAP: &str = "WATCH_CONFIG";
    pub const WATCH_ALL: u32 = 0;
    pub const AGENT_TGID: u32 = 1;
    /// `LruHashMap<FdKey, FdInfo>`: what an fd is, and the connection behind it. Only the probes
    /// write it.
    pub const FD_CLASS_MAP: &str = "FD_CLASS";
    /// `LruHashMap<u64, u8>`: userspace's answer ([`FD_SOCKET`] or [`FD_NOT_SOCKET`]) about a
    /// [`KIND_FD_UNKNOWN`] fd, by its connection id; the probes apply it at the fd's next use.
    pub const FD_VERDICTS_MAP: &str = "FD_VERDICTS";
    pub const FD_VERDICTS_ENTRIES: u32 = 4096;
    /// `HashMap<u64, SyscallArgs>`: syscalls between enter and exit, by pid_tgid (enter/exit probes only).
    pub const ACTIVE_CALLS_MAP: &str = "ACTIVE_CALLS";
    /// `LruHashMap<u64, Conn>`: each followed connection's request in progress, by connection id.
    pub const CONNS_MAP: &str = "CONNS";
    /// `RingBuf` of [`Completion`]s and [`DataEvent`]s (told apart by `kind`).
    pub const DATA_EVENTS_MAP: &str = "DATA_EVENTS";
    pub const WATCHED_CGROUPS_DEFAULT_ENTRIES: u32 = 4096;
    pub const FD_CLASS_DEFAULT_ENTRIES: u32 = 65_536;
    /// Connections followed at once; the least recently used go first.
    pub const CONNS_DEFAULT_ENTRIES: u32 = 8192;
    pub const DATA_EVENTS_DEFAULT_BYTES: u32 = 1024 * 1024;

    /// Bytes of payload per raw record on a fallback connection: a request line, headers and the
    /// start of a JSON body, or a response's status line and headers.
    pub const CAPTURE_BYTES: usize = 512;
    /// The first bytes of a request a completion carries: its request line (method and target),
    /// and a small request's body, where a `"model"` may be.
    pub const REQUEST_CAPTURE: usize = 256;
    /// The first bytes of a response body a completion carries: an OpenAI-compatible server
    /// names the `"model"` within them.
    pub const RESPONSE_CAPTURE: usize = 192;

    pub const FD_SOCKET: u8 = 1;
    pub const FD_NOT_SOCKET: u8 = 2;
    /// Userspace was asked ([`KIND_FD_UNKNOWN`]) and has not answered yet.
    pub const FD_PENDING: u8 = 3;
    /// In [`FD_VERDICTS_MAP`], written by the probes: the fd asked about was closed before an
    /// answer came, so its number may name another file by the time userspace looks (a forked
    /// server moves its socket to fd 0 and opens the file it serves under the old number).
    /// Userspace answers with `BPF_NOEXIST`, so such an answer is refused; the connection's
    /// other fds stay followed as a socket.
    pub const FD_ASKED_FD_CLOSED: u8 = 4;

    /// Data a watched process read from a socket (fallback connections).
    pub const KIND_DATA_IN: u32 = 1;
    /// Data a watched process wrote to a socket (fallback connections).
    pub const KIND_DATA_OUT: u32 = 2;
    /// A fallback connection closed.
    pub const KIND_CLOSE: u32 = 3;
    /// A watched process used an fd the probes have not classified: userspace looks at
    /// `/proc/<tgid>/fd/<fd>` and writes the verdict to [`FD_CLASS_MAP`].
    pub const KIND_FD_UNKNOWN: u32 = 4;
    /// A request paired in the kernel: a [`Completion`].
    pub const KIND_COMPLETION: u32 = 5;

    /// [`CompletionHeader::flags`]: the response's end was not known from its framing (a head too large
    /// to scan, a chunk header split across writes); it ended at the next request or the close.
    pub const COMPLETION_FRAMING_GUESSED: u16 = 1;
    /// [`CompletionHeader::flags`]: the response ran until the connection closed.
    pub const COMPLETION_UNTIL_CLOSE: u16 = 2;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FdKey {
        pub tgid: u32,
        pub fd: u32,
    }
    const _: () = assert!(core::mem::size_of::<FdKey>() == 8);

    /// What the probes know of an fd. `dup`, `dup2`, `dup3` and `fcntl(F_DUPFD)` copy it, so every
    /// fd of one socket shares its connection id.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FdInfo {
        /// Unique per connection while the agent runs (the CPU in the top bits, a per-CPU count below).
        pub conn_id: u64,
        /// [`FD_SOCKET`], [`FD_NOT_SOCKET`] or [`FD_PENDING`].
        pub class: u8,
        /// [`FD_COUNTED_NOT_HTTP`]: this fd's not-HTTP traffic was counted once.
        pub flags: u8,
        pub _pad: [u8; 6],
    }

    /// [`FdInfo::flags`]: the fd's first read that was not a request was counted.
    pub const FD_COUNTED_NOT_HTTP: u8 = 1;
    const _: () = assert!(core::mem::size_of::<FdInfo>() == 16);

    /// The first three arguments of a syscall in flight, kept from its enter tracepoint to its
    /// exit (keyed by pid_tgid) where the kernel cannot give the exit program the task's saved
    /// registers (`bpf_task_pt_regs`, from Linux 5.15).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct SyscallArgs {
        pub args: [u64; 3],
    }
    const _: () = assert!(core::mem::size_of::<SyscallArgs>() == 24);

    /// One request, paired in the kernel: from the first byte of it read to the last byte of its
    /// response written. A ring record holds only what was captured: the header, the request's
    /// `request_captured` bytes, then the response's `response_captured` bytes. Most records are
    /// a fifth of the full size, and each byte is written on one CPU and read on another.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Completion {
        pub header: CompletionHeader,
        /// The request's first bytes, then at once the start of the response body (of its first
        /// chunk's data when chunked).
        pub captured: [u8; REQUEST_CAPTURE + RESPONSE_CAPTURE],
    }

    /// A [`Completion`]'s fixed fields: integers only, so any 64 bytes are a valid header.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CompletionHeader {
        pub kind: u32,
        /// The process that read the request.
        pub tgid: u32,
        pub conn_id: u64,
        pub cgroup_id: u64,
        /// Exit of the read that brought the request's first byte.
        pub start_ns: u64,
        /// Exit of the write that sent the response's last byte.
        pub end_ns: u64,
        pub request_bytes: u64,
        pub response_bytes: u64,
        /// The final status (101 included; interim 1xx skipped).
        pub status: u16,
        pub flags: u16,
        /// Valid bytes in `request` and `response`.
        pub request_captured: u16,
        pub response_captured: u16,
    }
    const _: () = assert!(core::mem::size_of::<CompletionHeader>() == 64);
    const _: () = assert!(core::mem::size_of::<Completion>() == 64 + REQUEST_CAPTURE + RESPONSE_CAPTURE);

    /// Where a connection is.
    pub const PHASE_IDLE: u8 = 0;
    /// Reading a request; no response yet.
    pub const PHASE_REQUEST: u8 = 1;
    /// Writing a response whose head has not ended yet.
    pub const PHASE_RESPONSE_HEAD: u8 = 2;
    /// Writing a response body.
    pub const PHASE_RESPONSE_BODY: u8 = 3;
    /// Not HTTP/1 any more (after a 101 upgrade): ignored until closed.
    pub const PHASE_OPAQUE: u8 = 4;
    /// Followed by userspace through raw payload records.
    pub const PHASE_FALLBACK: u8 = 5;

    /// How the response body ends.
    pub const FRAMING_LENGTH: u8 = 1;
    pub const FRAMING_CHUNKED: u8 = 2;
    pub const FRAMING_UNTIL_CLOSE: u8 = 3;
    /// Lost (see [`COMPLETION_FRAMING_GUESSED`]).
    pub const FRAMING_UNKNOWN: u8 = 4;

    /// A connection's state in the kernel.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Conn {
        pub record: Completion,
        /// Length framing: body bytes left. Chunked: bytes left of the current chunk (data and CRLF).
        pub body_remaining: u64,
        /// The response head's Content-Length as scanned.
        pub content_length: u64,
        /// Response head bytes scanned so far.
        pub scanned: u32,
        pub phase: u8,
        pub framing: u8,
        /// Header scanner: which field name is being matched or read (`SCAN_*` in the probes).
        pub scan_field: u8,
        /// Header scanner: bytes of the field name (or of `chunked`) matched so far.
        pub scan_index: u8,
        /// Header scanner: bytes into the current line.
        pub line_pos: u16,
        /// `CONN_*` bits.
        pub flags: u8,
        pub _pad: [u8; 5],
    }
    const _: () = assert!(core::mem::size_of::<Conn>() == core::mem::size_of::<Completion>() + 32);

    /// [`Conn::flags`]: a request was paired on this connection (a response with none pending then
    /// means a pipelined request was missed).
    pub const CONN_SEEN_REQUEST: u8 = 1;
    /// [`Conn::flags`]: the request was HEAD (no response body).
    pub const CONN_HEAD_REQUEST: u8 = 4;
    /// [`Conn::flags`]: the response head had a Content-Length.
    pub const CONN_HAS_LENGTH: u8 = 8;
    /// [`Conn::flags`]: the response head's Transfer-Encoding was chunked.
    pub const CONN_CHUNKED: u8 = 16;

    /// A raw payload record of a fallback connection (or an fd classification request).
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
        pub conn_id: u64,
        pub data: [u8; CAPTURE_BYTES],
    }
    const _: () = assert!(core::mem::size_of::<DataEvent>() == 48 + CAPTURE_BYTES);
}

/// Per-CPU error counters, so that no failure in a handler is silent.
pub mod counters {
    /// `PerCpuArray<u64>` indexed by the constants below.
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const RINGBUF_DROPS: u32 = 0;
    pub const TASK_CPU_FULL: u32 = 1;
    /// A task's entry in the per-task map of run-queue accounting (`WAKEUP_TS`, or
    /// `RUN_DELAY_SEEN` where the kernel's own count is read) could not be stored.
    pub const WAKEUP_TS_ERRORS: u32 = 2;
    /// Payload events lost because the data ring buffer was full.
    pub const DATA_RINGBUF_DROPS: u32 = 3;
    /// A syscall's enter could not be remembered for its exit.
    pub const ACTIVE_CALL_ERRORS: u32 = 4;
    /// A connection's state could not be stored.
    pub const CONN_ERRORS: u32 = 5;
    /// Connections whose first read was not an HTTP/1 request (counted once each).
    pub const NOT_HTTP: u32 = 6;
    /// Responses written with no request pending.
    pub const UNMATCHED_RESPONSE: u32 = 7;
    /// Requests whose connection closed before a response.
    pub const UNFINISHED: u32 = 8;
    /// Connections handed to userspace (a request split inside its method, pipelining).
    pub const FALLBACK: u32 = 9;
    /// Watched syscalls the calibration programs of `cargo xtask bench` saw.
    pub const CALIBRATION: u32 = 10;
    pub const COUNT: u32 = 11;

    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_drops",
        "task_cpu_map_full",
        "wakeup_map_errors",
        "data_ringbuf_drops",
        "active_call_errors",
        "conn_errors",
        "not_http",
        "unmatched_response",
        "unfinished",
        "fallback",
        "calibration",
    ];
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding (layouts asserted above).
    unsafe impl aya::Pod for super::sched::TaskKey {}
    unsafe impl aya::Pod for super::sched::TaskCpu {}
    unsafe impl aya::Pod for super::sched::CpuState {}
    unsafe impl aya::Pod for super::sched::RunDelaySeen {}
    unsafe impl aya::Pod for super::events::Event {}
    unsafe impl aya::Pod for super::traffic::FdKey {}
    unsafe impl aya::Pod for super::traffic::SyscallArgs {}
    unsafe impl aya::Pod for super::traffic::FdInfo {}
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
