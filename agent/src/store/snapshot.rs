//! What the store hands every sink: a [`Snapshot`] of typed rows (containers, request series, the
//! agent itself) with their attributes, and [`LogRecord`]s. Consumer types only: nothing here is a
//! probe's or a map's own type.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;

use crate::{
    attributes::{Attr, Attributes},
    telemetry::{DropReason, SkipReason, Stage},
};

/// A histogram: `counts[i]` observations with value ≤ `bounds[i]` (not cumulative), the last
/// count above every bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    /// `None` when unlimited.
    pub limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttling {
    pub throttled_seconds: f64,
    pub periods: u64,
    pub throttled_periods: u64,
}

/// One attributed container (or docker container, or systemd unit).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRow {
    pub attributes: Attributes,
    /// Its cgroup, relative to the hierarchy roots.
    pub cgroup: String,
    pub cpu_seconds: f64,
    /// With the scheduler probes only.
    pub runqueue_delay: Option<Histogram>,
    /// `None` when its cgroup has no files in the hierarchy read (a v2-only unit on a hybrid host).
    pub throttling: Option<Throttling>,
    pub memory: Option<Memory>,
    pub oom_kills: u64,
    /// Its pod's `Ready` condition, where the API server said.
    pub pod_ready: Option<bool>,
}

/// One request series.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    /// Whose, then the semantic-convention attributes of the request.
    pub attributes: Attributes,
    pub duration: Histogram,
    pub p50_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    pub name: String,
    pub event: String,
    pub run_time_seconds: f64,
    pub runs: u64,
}

/// One container's use of one GPU (or MIG instance).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuUseRow {
    /// Whose (the usual identity, none for processes in no container), then `hw.id`.
    pub attributes: Attributes,
    pub utilization: Option<f64>,
    pub memory_bytes: u64,
    pub energy_joules: Option<f64>,
}

/// The agent's figures about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentRow {
    pub collections: u64,
    pub last_collection_seconds: f64,
    /// The scheduler probe family in use; `None` without probes.
    pub probe_family: Option<String>,
    pub probes: Vec<ProbeRow>,
    /// Ring buffer drops by ring (`events`, `payloads`).
    pub ringbuf_drops: Vec<(String, u64)>,
    pub probe_errors: Vec<(String, u64)>,
    pub collection_errors: Vec<(Stage, u64)>,
    /// With the scheduler probes only.
    pub unattributed_cpu_seconds: Option<f64>,
    pub requests_traced: bool,
    pub watched_cgroups: u64,
    pub connections: u64,
    pub route_overflow: Vec<(String, u64)>,
    /// Requests folded into `_other` series by the series budgets, by budget.
    pub series_overflow: Vec<(&'static str, u64)>,
    pub model_overflow: u64,
    pub http_skipped: Vec<(SkipReason, u64)>,
    /// Requests paired in the kernel and in userspace.
    pub paired_requests: Vec<(crate::telemetry::PairPath, u64)>,
    /// Connections the probes handed to userspace.
    pub fallback_connections: u64,
    pub events_dropped: Vec<(DropReason, u64)>,
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    /// `None` without the Kubernetes API.
    pub pod_watch: Option<crate::sources::kubernetes::WatchStatus>,
    /// Each push sink's delivery figures.
    pub sinks: Vec<SinkRow>,
}

/// A push sink's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkRow {
    pub name: &'static str,
    pub sent: u64,
    pub retried: u64,
    pub duplicates: u64,
    /// By reason; reasons with nothing dropped left out.
    pub dropped: Vec<(&'static str, u64)>,
    pub queued: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub taken_at: SystemTime,
    /// Sorted by cgroup, so output is stable.
    pub containers: Vec<ContainerRow>,
    /// Sorted by request attributes.
    pub requests: Vec<RequestRow>,
    /// GPUs and MIG instances, by `hw.id`.
    pub gpus: Vec<super::gpu::GpuDeviceRow>,
    pub gpu_use: Vec<GpuUseRow>,
    pub agent: AgentRow,
    /// The busiest processes no model rule names, busiest first.
    pub unnamed_processes: Vec<crate::identity::resolver::UnnamedProcess>,
}

impl Snapshot {
    pub fn empty() -> Self {
        Snapshot {
            taken_at: SystemTime::now(),
            containers: Vec::new(),
            requests: Vec::new(),
            gpus: Vec::new(),
            gpu_use: Vec::new(),
            agent: AgentRow::default(),
            unnamed_processes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }

    /// The OpenTelemetry log data model's severity number (INFO 9, WARN 13, ERROR 17).
    pub fn otel_number(self) -> i32 {
        match self {
            Severity::Info => 9,
            Severity::Warn => 13,
            Severity::Error => 17,
        }
    }
}

/// The kinds of structured event (DESIGN §5), by the name every sink shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventName {
    OomKill,
    SlowRequest,
    FailedRequest,
    CpuThrottled,
    ModelDiscovered,
    ModelGone,
    ProbeFailure,
    SinkFailure,
    SinkRecovered,
    GpuXid,
}

impl EventName {
    pub const ALL: [EventName; 10] = [
        EventName::OomKill,
        EventName::SlowRequest,
        EventName::FailedRequest,
        EventName::CpuThrottled,
        EventName::ModelDiscovered,
        EventName::ModelGone,
        EventName::ProbeFailure,
        EventName::SinkFailure,
        EventName::SinkRecovered,
        EventName::GpuXid,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventName::OomKill => "oom_kill",
            EventName::SlowRequest => "slow_request",
            EventName::FailedRequest => "failed_request",
            EventName::CpuThrottled => "cpu_throttled",
            EventName::ModelDiscovered => "model_discovered",
            EventName::ModelGone => "model_gone",
            EventName::ProbeFailure => "probe_failure",
            EventName::SinkFailure => "sink_failure",
            EventName::SinkRecovered => "sink_recovered",
            EventName::GpuXid => "gpu_xid",
        }
    }

    pub fn parse(name: &str) -> Option<EventName> {
        EventName::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// One structured event.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Unique per event and kept through retries (and the disk spool), so a backend that
    /// deduplicates (Elasticsearch `_id`) stores a retried event once: 32 lowercase hex digits.
    pub id: String,
    pub time: SystemTime,
    pub severity: Severity,
    pub name: EventName,
    /// One line for people, e.g. `POST /v1/chat took 812 ms (status 200)`.
    pub message: String,
    /// Identity and event attributes; `None` values are known to be unknown.
    pub attributes: Vec<(Attr, Option<String>)>,
    /// Event-specific numbers, e.g. `duration_ms`.
    pub fields: Vec<(EventField, f64)>,
}

/// The numbers an event may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventField {
    DurationMs,
    Kills,
    ThrottledShare,
    Xid,
}

impl EventField {
    pub const ALL: [EventField; 4] =
        [EventField::DurationMs, EventField::Kills, EventField::ThrottledShare, EventField::Xid];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventField::DurationMs => "duration_ms",
            EventField::Kills => "kills",
            EventField::ThrottledShare => "throttled_share",
            EventField::Xid => "xid",
        }
    }

    pub fn parse(name: &str) -> Option<EventField> {
        EventField::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

/// Makes event ids: the agent's start time and a random salt, then a sequence number, so ids
/// never repeat across restarts of one agent or between agents.
#[derive(Debug)]
pub struct EventIds {
    prefix: u64,
    next: std::sync::atomic::AtomicU64,
}

impl EventIds {
    pub fn new() -> Self {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        let salt = crate::backoff::Jitter::seeded().next_u64();
        EventIds { prefix: nanos ^ salt.rotate_left(32), next: std::sync::atomic::AtomicU64::new(0) }
    }

    pub fn next(&self) -> String {
        let sequence = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{:016x}{:016x}", self.prefix, sequence)
    }
}

impl Default for EventIds {
    fn default() -> Self {
        Self::new()
    }
}

/// The latest snapshot, shared between the collector and every reader without a lock, with its
/// encoded exposition once a scrape asked for it.
#[derive(Debug)]
pub struct SnapshotCell {
    current: ArcSwap<Published>,
    /// The one before, for rates between the two.
    previous: ArcSwap<Option<Arc<Snapshot>>>,
}

#[derive(Debug)]
struct Published {
    at: Instant,
    snapshot: Arc<Snapshot>,
    /// Held while encoding, so concurrent scrapes encode once and wait for it.
    encoded: std::sync::Mutex<Option<axum::body::Bytes>>,
}

impl Published {
    fn new(snapshot: Snapshot) -> Self {
        Self::shared(Arc::new(snapshot))
    }

    fn shared(snapshot: Arc<Snapshot>) -> Self {
        Published { at: Instant::now(), snapshot, encoded: std::sync::Mutex::new(None) }
    }
}

impl Default for SnapshotCell {
    fn default() -> Self {
        SnapshotCell {
            current: ArcSwap::from_pointee(Published::new(Snapshot::empty())),
            previous: ArcSwap::from_pointee(None),
        }
    }
}

impl SnapshotCell {
    pub fn get(&self) -> Arc<Snapshot> {
        self.current.load().snapshot.clone()
    }

    /// Age of the snapshot; `None` before the first collection.
    pub fn age(&self) -> Option<Duration> {
        let current = self.current.load();
        (current.snapshot.agent.collections > 0).then(|| current.at.elapsed())
    }

    pub fn set(&self, snapshot: Snapshot) {
        self.set_shared(Arc::new(snapshot));
    }

    /// Publishes a snapshot other readers (the push sinks) share.
    pub fn set_shared(&self, snapshot: Arc<Snapshot>) {
        let before = self.current.swap(Arc::new(Published::shared(snapshot)));
        if before.snapshot.agent.collections > 0 {
            self.previous.store(Arc::new(Some(before.snapshot.clone())));
        }
    }

    /// The snapshot before the current one, if any.
    pub fn previous(&self) -> Option<Arc<Snapshot>> {
        self.previous.load().as_ref().clone()
    }

    /// The current snapshot encoded by `encode`, which runs once per snapshot: concurrent callers
    /// wait for the first and share its bytes.
    pub fn encoded<E>(
        &self,
        encode: impl FnOnce(&Arc<Snapshot>) -> Result<axum::body::Bytes, E>,
    ) -> Result<axum::body::Bytes, E> {
        let current = self.current.load_full();
        let mut encoded = current.encoded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = encoded.as_ref() {
            return Ok(bytes.clone());
        }
        let bytes = encode(&current.snapshot)?;
        *encoded = Some(bytes.clone());
        Ok(bytes)
    }
}
