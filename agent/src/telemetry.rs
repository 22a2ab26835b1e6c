//! The agent's figures about itself, in one typed registry. Each internal event is a small type
//! whose `emit` logs (where a person should hear of it) and counts in one place; the exporters read
//! the counters by their typed keys, never by splitting strings. Counters are atomics, so any
//! thread may emit without a lock.

use std::{
    fmt::Display,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Declares a label enum with its exported spellings, in export order (alphabetical where the
/// exposition has always listed them so).
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// How many there are: the size of the counter array indexed by them.
            pub const COUNT: usize = Self::ALL.len();

            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }
    };
}

label_enum!(
    /// The step of a collection that failed.
    Stage { CgroupRead => "cgroup_read", Discover => "discover", ProbeRead => "probe_read" }
);

label_enum!(
    /// Why a kernel event or a derived record was not used.
    DropReason {
        Malformed => "malformed",
        OomVictimUnattributed => "oom_victim_unattributed",
        MalformedPayload => "malformed_payload",
        RequestEventRateLimited => "request_event_rate_limited",
        QueueFull => "queue_full",
    }
);

label_enum!(
    /// Why captured socket traffic did not become a request.
    SkipReason {
        HeadTooLarge => "head_too_large",
        NotHttp => "not_http",
        TooManyConnections => "too_many_connections",
        // From a process of a watched cgroup that belongs to no workload (a shared cgroup
        // watched for a standalone process).
        Unattributed => "unattributed",
        Uncaptured => "uncaptured",
        Unfinished => "unfinished",
        UnmatchedResponse => "unmatched_response",
    }
);

label_enum!(
    /// Why the pod watch failed.
    WatchErrorReason {
        Expired => "expired",
        Forbidden => "forbidden",
        Other => "other",
        ServerError => "server_error",
        Throttled => "throttled",
        Unauthorized => "unauthorized",
        Unreachable => "unreachable",
    }
);

label_enum!(
    /// Where a request was paired with its response.
    PairPath { Kernel => "kernel", Userspace => "userspace" }
);

#[derive(Debug, Default)]
pub struct Telemetry {
    collections: AtomicU64,
    last_collection_ns: AtomicU64,
    collection_errors: [AtomicU64; Stage::COUNT],
    dropped: [AtomicU64; DropReason::COUNT],
    skipped: [AtomicU64; SkipReason::COUNT],
    connections: AtomicU64,
    paired: [AtomicU64; PairPath::COUNT],
}

impl Telemetry {
    pub fn collections(&self) -> u64 {
        self.collections.load(Relaxed)
    }

    pub fn last_collection_duration(&self) -> Duration {
        Duration::from_nanos(self.last_collection_ns.load(Relaxed))
    }

    pub fn collection_errors(&self) -> Vec<(Stage, u64)> {
        nonzero(Stage::ALL, &self.collection_errors)
    }

    /// Every reason, zero or not: the family has a fixed set of series.
    pub fn dropped(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL.iter().map(|r| (*r, self.dropped[*r as usize].load(Relaxed))).collect()
    }

    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Relaxed)
    }

    pub fn skipped_for(&self, reason: SkipReason) -> u64 {
        self.skipped[reason as usize].load(Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// Every path, zero or not.
    pub fn paired(&self) -> Vec<(PairPath, u64)> {
        PairPath::ALL.iter().map(|p| (*p, self.paired[*p as usize].load(Relaxed))).collect()
    }
}

fn nonzero<T: Copy>(keys: &[T], counters: &[AtomicU64]) -> Vec<(T, u64)> {
    keys.iter().zip(counters).map(|(k, c)| (*k, c.load(Relaxed))).filter(|(_, n)| *n > 0).collect()
}

/// A collection finished.
pub struct Collected {
    pub duration: Duration,
}

impl Collected {
    pub fn emit(self, telemetry: &Telemetry) {
        telemetry.collections.fetch_add(1, Relaxed);
        telemetry.last_collection_ns.store(self.duration.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }
}

/// A step of a collection failed; the next collection tries again.
pub struct CollectionFailed<'a> {
    pub stage: Stage,
    pub error: &'a dyn Display,
}

impl CollectionFailed<'_> {
    pub fn emit(self, telemetry: &Telemetry) {
        // Cgroups vanish mid-read all the time: a person needs the count, not a line each.
        match self.stage {
            Stage::CgroupRead => {
                tracing::debug!(error = %self.error, stage = self.stage.label(), "Collection step failed")
            }
            _ => tracing::warn!(error = %self.error, stage = self.stage.label(), "Collection step failed"),
        }
        telemetry.collection_errors[self.stage as usize].fetch_add(1, Relaxed);
    }
}

/// Events that could not be used.
pub struct EventsDropped {
    pub reason: DropReason,
    pub count: u64,
}

impl EventsDropped {
    pub fn emit(self, telemetry: &Telemetry) {
        if self.reason == DropReason::QueueFull && telemetry.dropped_for(DropReason::QueueFull) == 0 {
            tracing::warn!("An internal queue is full: events are dropped and counted until it drains");
        }
        telemetry.dropped[self.reason as usize].fetch_add(self.count, Relaxed);
    }
}

/// Captured traffic that did not become a request.
pub struct TrafficSkipped {
    pub reason: SkipReason,
}

impl TrafficSkipped {
    pub fn emit(self, telemetry: &Telemetry) {
        telemetry.skipped[self.reason as usize].fetch_add(1, Relaxed);
    }
}

/// Requests paired with their responses.
pub struct RequestsPaired {
    pub path: PairPath,
    pub count: u64,
}

impl RequestsPaired {
    pub fn emit(self, telemetry: &Telemetry) {
        telemetry.paired[self.path as usize].fetch_add(self.count, Relaxed);
    }
}

/// How many connections request tracing follows now.
pub struct ConnectionsFollowed(pub usize);

impl ConnectionsFollowed {
    pub fn emit(self, telemetry: &Telemetry) {
        telemetry.connections.store(self.0 as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_typed_key() {
        let t = Telemetry::default();
        CollectionFailed { stage: Stage::ProbeRead, error: &"boom" }.emit(&t);
        EventsDropped { reason: DropReason::QueueFull, count: 3 }.emit(&t);
        TrafficSkipped { reason: SkipReason::NotHttp }.emit(&t);
        Collected { duration: Duration::from_millis(7) }.emit(&t);
        assert_eq!(t.collection_errors(), vec![(Stage::ProbeRead, 1)]);
        assert_eq!(t.dropped_for(DropReason::QueueFull), 3);
        assert_eq!(t.dropped().len(), DropReason::ALL.len());
        assert_eq!((t.skipped_for(SkipReason::NotHttp), t.skipped_for(SkipReason::Uncaptured)), (1, 0));
        assert_eq!((t.collections(), t.last_collection_duration()), (1, Duration::from_millis(7)));
    }
}
