//! The store: folds what the sources observed into a [`Snapshot`] of typed rows and into
//! [`LogRecord`]s. It does no I/O: identities come from a [`Resolve`], cgroup files and probe maps
//! arrive already read as [`Readings`], so every rule here is unit-tested without root.
//!
//! What it guarantees: a container's CPU counter never goes back (exited processes are folded into
//! it, the cgroup's life before the agent is carried, a failed map read repeats the last figures);
//! a cgroup that is gone, or a pod the API deleted, has no series from the next fold (but a
//! container with an OOM kill to report keeps them for [`OOM_LINGER`], even one never discovered); request
//! routes and request-named models are budgeted (overflow goes to `_other`, counted).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

pub mod gpu;
pub mod requests;
pub mod snapshot;

use requests::{DURATION_BUCKETS, LatencyHistogram, RequestKey, RequestStore};
pub use snapshot::{
    AgentRow, ContainerRow, EventField, EventIds, EventName, GpuUseRow, Histogram, LogRecord, Memory, ProbeRow,
    RequestRow, Severity, SinkRow, Snapshot, SnapshotCell, Throttling,
};

use crate::{
    attributes::{self, Attr, Attributes},
    config::Config,
    identity::{
        Identity, Runtime,
        resolver::{Resolve, UnnamedProcess},
    },
    sources::{
        Observation, OomKill,
        cgroup::CgroupStats,
        kernel::{self, TaskCpu},
        kubernetes::{PodLookup, PodMeta, WatchStatus},
        procfs::OwnUsage,
        protocol::http1::Exchange,
    },
    telemetry::{DropReason, EventsDropped, SkipReason, Telemetry, TrafficSkipped},
};

/// What reading one attributed cgroup's files gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CgroupRead {
    Stats(CgroupStats),
    /// The cgroup exists but its files could not be read (absent in this hierarchy, or an error).
    NoFiles,
    /// The cgroup is gone.
    Gone,
}

/// One attributed cgroup at a collection.
#[derive(Debug, Clone)]
pub struct CgroupReading {
    pub identity: Identity,
    pub path: String,
    pub read: CgroupRead,
}

/// One probe CPU entry: a process in a cgroup, summed over CPUs.
#[derive(Debug, Clone, Copy)]
pub struct CpuEntry {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub cpu: TaskCpu,
    /// Whether the process still exists; a finished one is folded for the last time.
    pub alive: bool,
}

/// The probes' own state at a collection.
#[derive(Debug, Clone, Default)]
pub struct ProbeHealth {
    pub family: &'static str,
    pub programs: Vec<ProbeRow>,
    pub counters: kernel::ProbeCounters,
    pub has_oom_probe: bool,
    pub requests_traced: bool,
    pub watched_cgroups: usize,
}

/// Everything read at one collection, handed to [`Store::fold`].
#[derive(Debug, Clone, Default)]
pub struct Readings {
    /// Every attributed cgroup the resolver knows.
    pub cgroups: Vec<CgroupReading>,
    /// `None` without probes; `Err` when reading the map failed (the last figures stand).
    pub cpu: Option<Result<Vec<CpuEntry>, ()>>,
    pub probes: Option<ProbeHealth>,
    pub own: Option<OwnUsage>,
    /// `None` without the Kubernetes API.
    pub pod_watch: Option<WatchStatus>,
    pub sinks: Vec<SinkRow>,
    /// The busiest processes no model rule names.
    pub unnamed_processes: Vec<UnnamedProcess>,
}

/// A tracked attributable cgroup and what outlives its processes.
#[derive(Debug, Default)]
struct Tracked {
    /// CPU of processes that have exited, folded in so the counter never goes back.
    retired: TaskCpu,
    oom_kills: u64,
    /// The probes count only what ran since the agent started; this is the cgroup's own usage
    /// minus what the probes had then (the smallest such estimate), so the counter carries the
    /// cgroup's whole life.
    cpu_offset_ns: Option<i64>,
    /// Last CPU figure exported, so rounding between the two sources never makes it go back.
    last_cpu_ns: u64,
    /// Live processes' totals at the last good map read, used when a read fails.
    last_live: TaskCpu,
    /// OOM kills already announced as events.
    oom_kills_announced: u64,
    /// CFS periods and throttled periods at the last collection.
    last_periods: Option<(u64, u64)>,
    /// Collections in a row with at least `THROTTLED_SHARE` of periods throttled.
    throttled_streak: u32,
    /// Its cgroup, relative to the hierarchy roots, for the rows it has after its cgroup went.
    cgroup: String,
    /// When its cgroup was first seen gone, while it lingers to report an OOM kill.
    departed_at: Option<SystemTime>,
}

impl Tracked {
    /// What the probes saw of it: its exited processes' CPU and its live ones'.
    fn probe_total(&self, live: Option<&TaskCpu>) -> TaskCpu {
        let mut total = self.retired;
        if let Some(value) = live {
            kernel::add_task_cpu(&mut total, value);
        }
        total
    }

    /// Its CPU counter from the probes' total, with the cgroup's life before the agent.
    fn cpu_from_probes(&self, total: &TaskCpu) -> u64 {
        (total.on_cpu_ns as i64).saturating_add(self.cpu_offset_ns.unwrap_or(0)).max(0) as u64
    }
}

/// How long a container whose process the OOM killer killed keeps its series after its cgroup
/// goes. Runtimes remove a killed container's cgroup within a second, long before a scrape or a
/// collection; without this its kill would never reach a sink.
const OOM_LINGER: std::time::Duration = std::time::Duration::from_secs(60);

/// A collection interval counts as throttled when this share of its CFS periods was.
const THROTTLED_SHARE: f64 = 0.25;
/// Throttled intervals in a row before a `cpu_throttled` event (once, until it recovers).
const THROTTLED_STREAK: u32 = 3;

pub struct Store {
    tracked: HashMap<Identity, Tracked>,
    /// OOM kills seen before their cgroup was discovered.
    oom_by_cgroup_id: HashMap<u64, u64>,
    /// v2 cgroup ids of containers with an OOM kill, kept while they are tracked: the resolver
    /// forgets a gone cgroup (or never saw one that came and went between collections), and the
    /// probes' CPU of its processes must still land there.
    oom_victim_ids: HashMap<u64, Identity>,
    requests: RequestStore,
    event_ids: EventIds,
    gpu: gpu::GpuStore,
    /// Events of the last fold, for the collector to hand to the sinks.
    events: Vec<LogRecord>,
    /// Models seen at the last fold (name, version), for `model_discovered` / `model_gone`.
    models: std::collections::BTreeSet<(String, String)>,
    retired_unattributed_ns: u64,
    /// Live processes' unattributed CPU at the last good map read, used when a read fails.
    last_unattributed_live_ns: u64,
    telemetry: Arc<Telemetry>,
}

impl Store {
    pub fn new(config: &Config, telemetry: Arc<Telemetry>) -> Self {
        Store {
            tracked: HashMap::new(),
            oom_by_cgroup_id: HashMap::new(),
            oom_victim_ids: HashMap::new(),
            requests: RequestStore::new(config.requests.clone()),
            event_ids: EventIds::new(),
            gpu: gpu::GpuStore::default(),
            events: Vec::new(),
            models: Default::default(),
            retired_unattributed_ns: 0,
            last_unattributed_live_ns: 0,
            telemetry,
        }
    }

    /// Applies one observation (or a batch); requests worth an event add log records to `logs`.
    /// Process exits are the resolver's business, not the store's.
    pub fn apply(
        &mut self,
        observation: Observation,
        resolver: &mut impl Resolve,
        now: Instant,
        logs: &mut Vec<LogRecord>,
    ) {
        match observation {
            Observation::ProcessExit { .. } => {}
            Observation::Batch(batch) => {
                for observation in batch {
                    self.apply(observation, resolver, now, logs);
                }
            }
            Observation::OomKill(kill) => self.apply_oom(&kill, resolver),
            Observation::Gpu(sample) => self.gpu.apply(&sample, resolver),
            Observation::GpuXid(error) => logs.extend(self.xid_events(&error, resolver)),
            Observation::Exchange { cgroup_id, tgid, exchange } => {
                let identity = resolver
                    .by_cgroup_id(cgroup_id)
                    .or_else(|| resolver.by_tgid(tgid))
                    // Watching everything: a process outside any container is its own series.
                    .or_else(|| resolver.traces_everything().then_some(Identity::Other));
                match identity {
                    Some(identity) => logs.extend(self.apply_exchange(identity, &exchange, resolver, now)),
                    // A neighbour of a standalone workload in the cgroup watched for it.
                    None => TrafficSkipped { reason: SkipReason::Unattributed }.emit(&self.telemetry),
                }
            }
        }
    }

    fn apply_oom(&mut self, kill: &OomKill, resolver: &mut impl Resolve) {
        let victim_cgroups = kill.victim_cgroups.as_ref();
        let found = kill
            .victim_is_current
            .then(|| resolver.by_cgroup_id(kill.current_cgroup_id))
            .flatten()
            .or_else(|| victim_cgroups.and_then(|cgroups| resolver.by_paths(cgroups)))
            .map(|identity| (identity, None))
            .or_else(|| {
                if kill.victim_is_current {
                    // Reaped before its cgroups were read: its cgroup, if still there, by its id.
                    resolver.find_cgroup_id(kill.current_cgroup_id).map(|(identity, path)| (identity, Some(path)))
                } else {
                    resolver.by_tgid(kill.victim_tgid).map(|identity| (identity, None))
                }
            });
        let Some((identity, found_path)) = found else {
            if kill.victim_is_current {
                // Its cgroup may be discovered by the next fold.
                *self.oom_by_cgroup_id.entry(kill.current_cgroup_id).or_default() += 1;
            } else {
                EventsDropped { reason: DropReason::OomVictimUnattributed, count: 1 }.emit(&self.telemetry);
            }
            return;
        };
        // A container not tracked yet (it may be gone by the fold) is tracked from its kill on,
        // with the cgroup path read as its process died.
        let tracked = self.tracked.entry(identity.clone()).or_default();
        tracked.oom_kills += 1;
        if tracked.cgroup.is_empty()
            && let Some(path) = found_path.or_else(|| {
                victim_cgroups
                    .and_then(|c| c.paths().find(|p| crate::identity::identify(p) == identity))
                    .map(str::to_owned)
            })
        {
            tracked.cgroup = path;
        }
        if kill.victim_is_current {
            self.oom_victim_ids.insert(kill.current_cgroup_id, identity);
        }
    }

    fn apply_exchange(
        &mut self,
        identity: Identity,
        exchange: &Exchange,
        resolver: &impl Resolve,
        now: Instant,
    ) -> Option<LogRecord> {
        let pod = || resolver.pod(&identity).known();
        let event = self.requests.record(&identity, || series_budget_of(&identity, pod().as_deref()), exchange, now)?;
        let pod = pod();
        let model = event.model.clone().or_else(|| pod.as_ref()?.model.as_ref().map(|m| m.name.clone()));
        let severity = if event.status >= 500 { Severity::Error } else { Severity::Warn };
        let message = match event.event {
            EventName::FailedRequest => {
                format!(
                    "{} {} failed with status {} after {:.1} ms",
                    event.method, event.route, event.status, event.duration_ms
                )
            }
            _ => format!("{} {} took {:.1} ms (status {})", event.method, event.route, event.duration_ms, event.status),
        };
        Some(LogRecord {
            id: self.event_ids.next(),
            time: SystemTime::now(),
            severity,
            name: event.event,
            message,
            attributes: vec![
                (Attr::HttpMethod, Some(event.method.to_owned())),
                (Attr::HttpRoute, Some(event.route)),
                (Attr::HttpStatus, Some(event.status.to_string())),
                (Attr::ModelName, model),
                (Attr::PodUid, identity.pod_uid().map(str::to_owned)),
                (Attr::ContainerId, identity.container_id().map(str::to_owned)),
                (Attr::Namespace, pod.as_ref().map(|p| p.namespace.clone())),
                (Attr::PodName, pod.as_ref().map(|p| p.name.clone())),
            ],
            fields: vec![(EventField::DurationMs, event.duration_ms)],
        })
    }

    /// Folds one collection's readings into a snapshot.
    pub fn fold(&mut self, readings: Readings, resolver: &mut impl Resolve, taken_at: SystemTime) -> Snapshot {
        // Forget cgroups the resolver no longer knows, or that vanished since.
        let present: HashMap<&Identity, &CgroupReading> =
            readings.cgroups.iter().filter(|c| c.read != CgroupRead::Gone).map(|c| (&c.identity, c)).collect();
        let oom_from_probe = readings.probes.as_ref().is_some_and(|p| p.has_oom_probe);
        // A gone container lingers while it has an OOM kill to report (see OOM_LINGER).
        self.tracked.retain(|identity, tracked| {
            if present.contains_key(identity) {
                tracked.departed_at = None;
                return true;
            }
            match tracked.departed_at {
                Some(at) => taken_at.duration_since(at).unwrap_or_default() < OOM_LINGER,
                None if oom_from_probe && tracked.oom_kills > tracked.oom_kills_announced => {
                    tracked.departed_at = Some(taken_at);
                    true
                }
                None => false,
            }
        });
        let tracked = &self.tracked;
        self.oom_victim_ids.retain(|_, identity| tracked.contains_key(identity));
        for (identity, reading) in &present {
            let tracked = self.tracked.entry((*identity).clone()).or_default();
            if tracked.cgroup.is_empty() {
                tracked.cgroup = reading.path.clone();
            }
        }
        // OOM kills that arrived before their cgroup was known.
        for (id, kills) in std::mem::take(&mut self.oom_by_cgroup_id) {
            match resolver.by_cgroup_id(id).and_then(|identity| self.tracked.get_mut(&identity)) {
                Some(tracked) => tracked.oom_kills += kills,
                // Its cgroup is not one the agent attributes (or is gone): counted, not lost.
                None => EventsDropped { reason: DropReason::OomVictimUnattributed, count: kills }.emit(&self.telemetry),
            }
        }
        let has_probes = readings.cpu.is_some();
        let (live, unattributed_live) = match &readings.cpu {
            Some(Ok(entries)) => {
                let (live, unattributed) = self.fold_cpu(entries, resolver);
                for (identity, tracked) in self.tracked.iter_mut() {
                    tracked.last_live = live.get(identity).copied().unwrap_or(TaskCpu::ZERO);
                }
                self.last_unattributed_live_ns = unattributed;
                (live, unattributed)
            }
            // A failed read: the last good figures stand, so nothing dips.
            Some(Err(())) | None => {
                let live = self.tracked.iter().map(|(identity, t)| (identity.clone(), t.last_live)).collect();
                (live, self.last_unattributed_live_ns)
            }
        };
        let mut containers = Vec::with_capacity(self.tracked.len());
        for (identity, reading) in &present {
            let Some(tracked) = self.tracked.get_mut(*identity) else { continue };
            let stats = match reading.read {
                CgroupRead::Stats(stats) => Some(stats),
                CgroupRead::NoFiles | CgroupRead::Gone => None,
            };
            let usage_ns = stats.and_then(|s| s.cpu.usage_ns);
            let (cpu_ns, runq) = if has_probes {
                let total = tracked.probe_total(live.get(*identity));
                // The cgroup's life before the agent: its own usage minus what the probes saw.
                // The files are read after the probe map, so a busy cgroup's usage already holds
                // time the map did not (a fork storm's map read takes tens of ms): every estimate
                // is too high by that skew, never too low, and the smallest seen is the best.
                // A first read that fails leaves it unset rather than losing the history.
                if let Some(usage) = usage_ns {
                    let estimate = usage as i64 - total.on_cpu_ns as i64;
                    tracked.cpu_offset_ns = Some(tracked.cpu_offset_ns.map_or(estimate, |o| o.min(estimate)));
                }
                (tracked.cpu_from_probes(&total), Some(total))
            } else {
                (usage_ns.unwrap_or(0), None)
            };
            let cpu_ns = cpu_ns.max(tracked.last_cpu_ns);
            tracked.last_cpu_ns = cpu_ns;
            let pod = match resolver.pod(identity) {
                PodLookup::Known(meta) => Some(meta),
                // Deleted in the API: its series go now, whatever the kubelet has left behind.
                PodLookup::Deleted => continue,
                PodLookup::Unknown => None,
            };
            let oom_kills =
                if oom_from_probe { tracked.oom_kills } else { stats.and_then(|s| s.memory.oom_kills).unwrap_or(0) };
            containers.push(ContainerRow {
                attributes: identity_attributes(identity, pod.as_deref(), None),
                cgroup: reading.path.clone(),
                cpu_seconds: cpu_ns as f64 / 1e9,
                runqueue_delay: runq.map(|r| runq_histogram(&r)),
                throttling: stats.map(|s| Throttling {
                    throttled_seconds: s.cpu.throttled_ns as f64 / 1e9,
                    periods: s.cpu.periods,
                    throttled_periods: s.cpu.throttled_periods,
                }),
                memory: stats.map(|s| Memory {
                    usage_bytes: s.memory.usage_bytes,
                    working_set_bytes: s.memory.working_set_bytes,
                    rss_bytes: s.memory.rss_bytes,
                    limit_bytes: s.memory.limit_bytes,
                }),
                oom_kills,
                pod_ready: pod.as_ref().and_then(|p| p.ready),
            });
        }
        // Containers gone since, lingering with an OOM kill: their last CPU figure and the kills.
        let mut departed = HashMap::new();
        for (identity, tracked) in self.tracked.iter_mut().filter(|(_, t)| t.departed_at.is_some()) {
            let total = tracked.probe_total(live.get(identity));
            tracked.last_cpu_ns = tracked.last_cpu_ns.max(tracked.cpu_from_probes(&total));
            let pod = resolver.pod(identity).known();
            containers.push(ContainerRow {
                attributes: identity_attributes(identity, pod.as_deref(), None),
                cgroup: tracked.cgroup.clone(),
                cpu_seconds: tracked.last_cpu_ns as f64 / 1e9,
                runqueue_delay: None,
                throttling: None,
                memory: None,
                oom_kills: tracked.oom_kills,
                pod_ready: None,
            });
            departed.insert(tracked.cgroup.clone(), identity.clone());
        }
        containers.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        self.container_events(&present, &departed, &containers, taken_at);
        let requests = self.request_rows(resolver);
        self.gpu.retain(|identity| self.tracked.contains_key(identity));
        let gpus = self.gpu.device_rows();
        let gpu_use = self
            .gpu
            .container_rows()
            .into_iter()
            .map(|row| {
                let pod = resolver.pod(&row.identity).known();
                let mut attributes = identity_attributes(&row.identity, pod.as_deref(), None);
                attributes.push((Attr::HwId, row.device));
                GpuUseRow {
                    attributes,
                    utilization: row.utilization,
                    memory_bytes: row.memory_bytes,
                    energy_joules: row.energy_joules,
                }
            })
            .collect();
        let agent = self.agent_row(&readings, has_probes.then_some(self.retired_unattributed_ns + unattributed_live));
        Snapshot { taken_at, containers, requests, gpus, gpu_use, agent, unnamed_processes: readings.unnamed_processes }
    }

    /// An XID error as one event per container on the device (one without identity when none).
    fn xid_events(&self, error: &crate::sources::gpu::XidError, resolver: &impl Resolve) -> Vec<LogRecord> {
        let on_device = self.gpu.xid(error);
        let mut identities = on_device.identities;
        if identities.is_empty() {
            identities.push(Identity::Other);
        }
        identities
            .iter()
            .map(|identity| {
                let pod = resolver.pod(identity).known();
                let mut attributes = identity_attributes(identity, pod.as_deref(), None);
                attributes.retain(|(_, v)| !v.is_empty());
                attributes.push((Attr::HwId, on_device.device.clone()));
                let who = attributes::get(&attributes, Attr::PodName).unwrap_or("the node").to_owned();
                let message = format!("GPU {} reported XID {} while {who} used it", on_device.device, on_device.xid);
                self.event(
                    SystemTime::now(),
                    Severity::Error,
                    EventName::GpuXid,
                    message,
                    &attributes,
                    vec![(EventField::Xid, on_device.xid as f64)],
                )
            })
            .collect()
    }

    /// A push sink started or stopped failing, as an event for the other sinks (and for the
    /// failing one, which delivers it once it recovers).
    pub fn sink_event(&mut self, notice: &crate::sinks::SinkNotice) {
        let (severity, name, message) = if notice.failing {
            (Severity::Error, EventName::SinkFailure, format!("sink {} fails: {}", notice.sink, notice.reason))
        } else {
            (Severity::Info, EventName::SinkRecovered, format!("sink {} delivers again", notice.sink))
        };
        let record = self.event(SystemTime::now(), severity, name, message, &[], Vec::new());
        self.events.push(record);
    }

    /// The events of the last fold (OOM kills, sustained throttling, models discovered or gone).
    pub fn take_events(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.events)
    }

    fn event(
        &self,
        time: SystemTime,
        severity: Severity,
        name: EventName,
        message: String,
        attributes: &[(Attr, String)],
        fields: Vec<(EventField, f64)>,
    ) -> LogRecord {
        LogRecord {
            id: self.event_ids.next(),
            time,
            severity,
            name,
            message,
            attributes: attributes.iter().map(|(a, v)| (*a, Some(v.clone()))).collect(),
            fields,
        }
    }

    /// Compares this fold's containers with the last: new OOM kills, CPU throttled for
    /// `THROTTLED_STREAK` collections in a row, and models that appeared or went.
    fn container_events(
        &mut self,
        present: &HashMap<&Identity, &CgroupReading>,
        departed: &HashMap<String, Identity>,
        rows: &[ContainerRow],
        now: SystemTime,
    ) {
        let mut events = Vec::new();
        let mut models = std::collections::BTreeSet::new();
        let by_cgroup: HashMap<&str, &Identity> = present.iter().map(|(id, r)| (r.path.as_str(), *id)).collect();
        for row in rows {
            // Named only for an event: a fold of every container need not format them all.
            let who = || {
                let name = attributes::get(&row.attributes, Attr::PodName)
                    .or_else(|| attributes::get(&row.attributes, Attr::SystemdUnit))
                    .unwrap_or(row.cgroup.as_str());
                match attributes::get(&row.attributes, Attr::ContainerName) {
                    Some(container) => format!("{name} container {container}"),
                    None => name.to_owned(),
                }
            };
            if let Some(model) = attributes::get(&row.attributes, Attr::ModelName) {
                let version = attributes::get(&row.attributes, Attr::ModelVersion).unwrap_or_default();
                models.insert((model.to_owned(), version.to_owned()));
            }
            let identity = by_cgroup.get(row.cgroup.as_str()).copied().or_else(|| departed.get(&row.cgroup));
            let Some(tracked) = identity.and_then(|id| self.tracked.get_mut(id)) else {
                continue;
            };
            let new_kills = row.oom_kills.saturating_sub(tracked.oom_kills_announced);
            tracked.oom_kills_announced = row.oom_kills;
            let mut throttled = None;
            if let Some(t) = row.throttling {
                if let Some((periods, throttled_periods)) = tracked.last_periods {
                    let elapsed = t.periods.saturating_sub(periods);
                    let share = t.throttled_periods.saturating_sub(throttled_periods) as f64 / elapsed.max(1) as f64;
                    if elapsed > 0 && share >= THROTTLED_SHARE {
                        tracked.throttled_streak += 1;
                        if tracked.throttled_streak == THROTTLED_STREAK {
                            throttled = Some(share);
                        }
                    } else {
                        tracked.throttled_streak = 0;
                    }
                }
                tracked.last_periods = Some((t.periods, t.throttled_periods));
            }
            if new_kills > 0 {
                let message = format!("{new_kills} process(es) of {} killed by the OOM killer", who());
                events.push((
                    Severity::Error,
                    EventName::OomKill,
                    message,
                    &row.attributes,
                    vec![(EventField::Kills, new_kills as f64)],
                ));
            }
            if let Some(share) = throttled {
                let message = format!(
                    "{} throttled in {:.0}% of its CPU periods for {THROTTLED_STREAK} collections in a row",
                    who(),
                    share * 100.0
                );
                events.push((
                    Severity::Warn,
                    EventName::CpuThrottled,
                    message,
                    &row.attributes,
                    vec![(EventField::ThrottledShare, share)],
                ));
            }
        }
        let mut records: Vec<LogRecord> = events
            .into_iter()
            .map(|(severity, name, message, attributes, fields)| {
                self.event(now, severity, name, message, attributes, fields)
            })
            .collect();
        for (model, version) in models.difference(&self.models) {
            let attributes = model_attributes(model, version);
            let message = format!("model {model}{} discovered on this node", version_suffix(version));
            records.push(self.event(now, Severity::Info, EventName::ModelDiscovered, message, &attributes, Vec::new()));
        }
        for (model, version) in self.models.difference(&models) {
            let attributes = model_attributes(model, version);
            let message = format!("model {model}{} no longer runs on this node", version_suffix(version));
            records.push(self.event(now, Severity::Info, EventName::ModelGone, message, &attributes, Vec::new()));
        }
        self.models = models;
        self.events.extend(records);
    }

    /// Live CPU per identity and live unattributed CPU; finished processes are folded into their
    /// identity's retired totals (the caller's source deletes their map entries).
    fn fold_cpu(&mut self, entries: &[CpuEntry], resolver: &mut impl Resolve) -> (HashMap<Identity, TaskCpu>, u64) {
        let mut live: HashMap<Identity, TaskCpu> = HashMap::new();
        let mut unattributed = 0;
        for entry in entries {
            let identity = resolver
                .by_cgroup_id(entry.cgroup_id)
                .or_else(|| self.oom_victim_ids.get(&entry.cgroup_id).cloned())
                .or_else(|| resolver.by_tgid(entry.tgid));
            let tracked = identity.as_ref().and_then(|i| self.tracked.get_mut(i));
            match (entry.alive, tracked) {
                (true, Some(_)) => kernel::add_task_cpu(
                    live.entry(identity.expect("tracked implies identity")).or_insert(TaskCpu::ZERO),
                    &entry.cpu,
                ),
                (true, None) => unattributed += entry.cpu.on_cpu_ns,
                (false, Some(tracked)) => kernel::add_task_cpu(&mut tracked.retired, &entry.cpu),
                (false, None) => self.retired_unattributed_ns += entry.cpu.on_cpu_ns,
            }
        }
        (live, unattributed)
    }

    /// Request series of the identities still present (a gone container's requests go with it);
    /// series of processes outside containers (watching everything) stay.
    fn request_rows(&mut self, resolver: &impl Resolve) -> Vec<RequestRow> {
        let tracked = &self.tracked;
        self.requests.retain(|identity| *identity == Identity::Other || tracked.contains_key(identity));
        // A request that names its pod's own model and one that names none are the same series.
        let mut merged: HashMap<(Identity, RequestKey), MergedSeries> = HashMap::new();
        for (identity, series) in self.requests.series() {
            let pod = match resolver.pod(identity) {
                PodLookup::Known(meta) => Some(meta),
                PodLookup::Deleted => continue,
                PodLookup::Unknown => None,
            };
            let workload_model = match identity {
                Identity::Process { model, version, .. } => Some((model.to_string(), version.to_string())),
                _ => pod.as_ref().and_then(|p| p.model.as_ref()).map(|m| (m.name.clone(), m.version.clone())),
            };
            for (key, latency) in series {
                let mut key = key.clone();
                // The workload's own model, named by the request without a version (a body's
                // `"model"` has none), is the workload's series, with its version.
                if let (Some((name, version)), Some((own, own_version))) = (&key.model, &workload_model)
                    && name == own
                    && (version.is_empty() || version == own_version)
                {
                    key.model = None;
                }
                let entry =
                    merged.entry((identity.clone(), key)).or_insert_with(|| (pod.clone(), LatencyHistogram::default()));
                entry.1.merge(latency);
            }
        }
        let mut rows: Vec<(RequestKey, RequestRow)> = merged
            .into_iter()
            .map(|((identity, key), (pod, latency))| {
                let row = RequestRow {
                    attributes: request_attributes(&identity, pod.as_deref(), &key),
                    duration: Histogram {
                        bounds: DURATION_BUCKETS.to_vec(),
                        counts: latency.buckets.to_vec(),
                        sum: latency.sum_ns as f64 / 1e9,
                        count: latency.count,
                    },
                    p50_seconds: latency.quantile(0.5),
                    p90_seconds: latency.quantile(0.9),
                    p99_seconds: latency.quantile(0.99),
                };
                (key, row)
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.attributes.cmp(&b.1.attributes)));
        rows.into_iter().map(|(_, row)| row).collect()
    }

    fn agent_row(&self, readings: &Readings, unattributed_cpu_ns: Option<u64>) -> AgentRow {
        let telemetry = &self.telemetry;
        let probes = readings.probes.clone().unwrap_or_default();
        let counters = &probes.counters;
        AgentRow {
            collections: telemetry.collections(),
            last_collection_seconds: telemetry.last_collection_duration().as_secs_f64(),
            probe_family: readings.probes.as_ref().map(|p| p.family.to_owned()),
            probes: probes.programs,
            ringbuf_drops: match readings.probes {
                Some(_) => vec![
                    ("events".to_owned(), counters.events_ring_drops),
                    ("payloads".to_owned(), counters.payload_ring_drops),
                ],
                None => Vec::new(),
            },
            probe_errors: counters.errors.iter().map(|(name, n)| (name.to_string(), *n)).collect(),
            collection_errors: telemetry.collection_errors(),
            unattributed_cpu_seconds: unattributed_cpu_ns.map(|ns| ns as f64 / 1e9),
            requests_traced: probes.requests_traced,
            watched_cgroups: probes.watched_cgroups as u64,
            connections: telemetry.connections(),
            route_overflow: self.requests.route_overflow.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            series_overflow: [requests::SeriesOverflow::Workload, requests::SeriesOverflow::Node]
                .into_iter()
                .map(|reason| (reason.label(), self.requests.series_overflow.get(&reason).copied().unwrap_or(0)))
                .collect(),
            model_overflow: self.requests.model_overflow,
            // Skips counted here and in the probes, one figure per reason.
            http_skipped: SkipReason::ALL
                .iter()
                .map(|&reason| {
                    let kernel: u64 = counters.skipped.iter().filter(|(r, _)| *r == reason).map(|(_, n)| n).sum();
                    (reason, telemetry.skipped_for(reason) + kernel)
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            paired_requests: telemetry.paired(),
            fallback_connections: counters.fallback_connections,
            events_dropped: {
                let mut dropped = telemetry.dropped();
                let limited = self.requests.events_dropped;
                for (reason, n) in &mut dropped {
                    if *reason == DropReason::RequestEventRateLimited {
                        *n += limited;
                    }
                }
                dropped
            },
            cpu_seconds: readings.own.map(|o| o.cpu_seconds),
            resident_bytes: readings.own.map(|o| o.resident_bytes),
            pod_watch: readings.pod_watch.clone(),
            sinks: readings.sinks.clone(),
        }
    }
}

/// The workload whose series budget an identity's request series count against: its pod's
/// controller (a ReplicaSet counts as its Deployment), else the pod, else the identity itself.
fn series_budget_of(identity: &Identity, pod: Option<&PodMeta>) -> Arc<str> {
    if let Some(pod) = pod
        && let Some(owner) = &pod.owner
    {
        let name = crate::identity::model::workload_name(owner, &pod.labels).unwrap_or_else(|| owner.name.clone());
        let kind = if owner.kind == "ReplicaSet" && name != owner.name { "Deployment" } else { owner.kind.as_str() };
        return format!("{}/{kind}/{name}", pod.namespace).into();
    }
    match (identity.pod_uid(), identity.container_id()) {
        (Some(uid), _) => format!("pod/{uid}").into(),
        (None, Some(id)) => format!("container/{id}").into(),
        (None, None) => format!("{identity:?}").into(),
    }
}

/// A request series' pod and observations while series are merged.
type MergedSeries = (Option<Arc<PodMeta>>, LatencyHistogram);

/// Run-queue delay as a histogram: two log2 slots per bucket (1 µs, 4 µs, 16 µs … 67 s, +Inf).
fn runq_histogram(runq: &TaskCpu) -> Histogram {
    let buckets = kernel::runq_buckets(&runq.runq_slots);
    Histogram {
        bounds: buckets.iter().map(|(upper, _)| *upper).filter(|u| u.is_finite()).collect(),
        counts: buckets.iter().map(|(_, n)| *n).collect(),
        sum: runq.runq_delay_ns as f64 / 1e9,
        count: runq.runq_slots.iter().sum(),
    }
}

/// Whose series it is. Pod containers always carry the Kubernetes names (empty until the API
/// server tells them), so a series keeps one attribute set per family. `model` overrides the
/// pod's model (a request that names its own).
pub fn identity_attributes(identity: &Identity, pod: Option<&PodMeta>, model: Option<(&str, &str)>) -> Attributes {
    let model = model.or_else(|| pod?.model.as_ref().map(|m| (m.name.as_str(), m.version.as_str())));
    let (model_name, model_version) = model.map(|(n, v)| (n.to_owned(), v.to_owned())).unwrap_or_default();
    match identity {
        Identity::PodContainer { pod_uid, container_id, runtime, qos } => {
            let status = pod.and_then(|p| p.containers.get(&**container_id));
            vec![
                (Attr::Namespace, pod.map(|p| p.namespace.clone()).unwrap_or_default()),
                (Attr::PodName, pod.map(|p| p.name.clone()).unwrap_or_default()),
                (Attr::ContainerName, status.map(|s| s.name.clone()).unwrap_or_default()),
                (Attr::ModelName, model_name),
                (Attr::ModelVersion, model_version),
                (Attr::PodUid, pod_uid.to_string()),
                (Attr::ContainerId, container_id.to_string()),
                // A bare cgroupfs id does not say; the pod's container status does.
                (
                    Attr::ContainerRuntime,
                    match runtime {
                        Runtime::Unknown => status.map_or(*runtime, |s| s.runtime),
                        known => *known,
                    }
                    .as_str()
                    .to_owned(),
                ),
                (Attr::QosClass, qos.as_str().to_owned()),
            ]
        }
        Identity::Pod { pod_uid, qos } => {
            vec![(Attr::PodUid, pod_uid.to_string()), (Attr::QosClass, qos.as_str().to_owned())]
        }
        Identity::Container { runtime, container_id } => {
            vec![(Attr::ContainerId, container_id.to_string()), (Attr::ContainerRuntime, runtime.as_str().to_owned())]
        }
        Identity::SystemdUnit { unit } => vec![(Attr::SystemdUnit, unit.to_string())],
        // A request may name another model than the rule's (Ollama serves many): the request's wins.
        Identity::Process { pid, name, model: own, version: own_version } => vec![
            (Attr::ModelName, if model.is_some() { model_name } else { own.to_string() }),
            (Attr::ModelVersion, if model.is_some() { model_version } else { own_version.to_string() }),
            (Attr::ProcessPid, pid.to_string()),
            (Attr::ProcessName, name.to_string()),
        ],
        Identity::Other => Vec::new(),
    }
}

/// A request series' attributes: whose, then the semantic-convention attributes.
fn request_attributes(identity: &Identity, pod: Option<&PodMeta>, key: &RequestKey) -> Attributes {
    let mut attributes = identity_attributes(identity, pod, key.model.as_ref().map(|(n, v)| (n.as_str(), v.as_str())));
    // Pod containers carry the model already; other identities have only the request's own.
    if !attributes.iter().any(|(a, _)| *a == Attr::ModelName) {
        let (name, version) = key.model.clone().unwrap_or_default();
        attributes.push((Attr::ModelName, name));
        attributes.push((Attr::ModelVersion, version));
    }
    let status = key.status;
    attributes.extend([
        (Attr::HttpMethod, key.method.to_owned()),
        (Attr::HttpRoute, key.route.to_string()),
        (Attr::HttpStatus, status.to_string()),
        (Attr::UrlScheme, "http".to_owned()),
        // Semantic conventions: a server's 5xx is an error, named by its status code.
        (Attr::ErrorType, if status >= 500 { status.to_string() } else { String::new() }),
    ]);
    attributes
}

#[cfg(test)]
mod tests;

fn model_attributes(model: &str, version: &str) -> Vec<(Attr, String)> {
    let mut attributes = vec![(Attr::ModelName, model.to_owned())];
    if !version.is_empty() {
        attributes.push((Attr::ModelVersion, version.to_owned()));
    }
    attributes
}

fn version_suffix(version: &str) -> String {
    if version.is_empty() { String::new() } else { format!(" version {version}") }
}
