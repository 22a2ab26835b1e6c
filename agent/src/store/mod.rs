//! One aggregation of everything collected: discovers the cgroups that identify a container, pod
//! container, docker container or systemd unit, folds the probes' per-(cgroup, process) CPU entries
//! into them, reads their cgroup files, and produces an immutable [`Snapshot`] that every exporter
//! reads. Series of a cgroup that disappears vanish from the next snapshot.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_common::{
    events::{Event, KIND_OOM_VICTIM, KIND_PROCESS_EXIT},
    sched::{TaskCpu, TaskKey},
    traffic::{FdKey, KIND_CLOSE, KIND_DATA_IN, KIND_DATA_OUT, KIND_FD_UNKNOWN},
};
use requests::{LatencyHistogram, RequestKey, RequestStore, WatchSet};

pub mod requests;

use crate::{
    collect::{
        cgroup::{CgroupStats, Layout, cgroup_id, walk},
        procfs,
    },
    config::Config,
    identity::{
        Identity, identify,
        kubernetes::{PodCache, PodLookup, PodMeta},
    },
    kernel::{self, AttachedProgram, Probes, ProgramStats},
};

/// Everything known about one attributed cgroup at one collection.
#[derive(Debug, Clone)]
pub struct ContainerSample {
    pub identity: Identity,
    /// The cgroup path (relative to the hierarchy roots) whose files were read.
    pub cgroup_path: String,
    /// On-CPU time: from the scheduler probes, or from the cgroup's own usage without probes.
    pub cpu_ns: u64,
    /// Run-queue delay histogram (probes only).
    pub runq: Option<TaskCpu>,
    /// cgroup files; `None` when this hierarchy has no files for it (e.g. a v2-only unit on a hybrid host).
    pub stats: Option<CgroupStats>,
    pub oom_kills: u64,
    /// The pod from the Kubernetes API, when known.
    pub pod: Option<Arc<PodMeta>>,
}

/// The agent's figures about itself.
#[derive(Debug, Clone, Default)]
pub struct AgentSample {
    pub collections: u64,
    pub last_collection_duration: Duration,
    /// Failures by stage (`discover`, `cgroup_read`, `probe_read`).
    pub errors: Vec<(&'static str, u64)>,
    pub probe_family: Option<&'static str>,
    pub probes: Vec<(AttachedProgram, ProgramStats)>,
    pub probe_counters: Vec<(&'static str, u64)>,
    /// CPU time of processes in no attributable cgroup (host processes, kernel threads' cgroups).
    pub unattributed_cpu_ns: u64,
    pub oom_kills_unattributed: u64,
    pub malformed_events: u64,
    pub requests: RequestsAgentSample,
}

/// One request series at one collection.
#[derive(Debug, Clone)]
pub struct RequestSample {
    pub identity: Identity,
    pub pod: Option<Arc<PodMeta>>,
    pub key: RequestKey,
    pub latency: LatencyHistogram,
}

/// Request tracing's own figures.
#[derive(Debug, Clone, Default)]
pub struct RequestsAgentSample {
    pub enabled: bool,
    pub watched_cgroups: usize,
    pub connections: usize,
    pub route_overflow: Vec<(String, u64)>,
    pub model_overflow: u64,
    pub skipped: Vec<(&'static str, u64)>,
    pub events_dropped: u64,
    pub malformed_events: u64,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: SystemTime,
    /// Sorted by identity labels, so output is stable.
    pub containers: Vec<ContainerSample>,
    pub requests: Vec<RequestSample>,
    pub agent: AgentSample,
}

impl Snapshot {
    pub fn empty() -> Self {
        Snapshot {
            taken_at: SystemTime::now(),
            containers: Vec::new(),
            requests: Vec::new(),
            agent: AgentSample::default(),
        }
    }
}

/// A tracked attributable cgroup and what outlives its processes.
#[derive(Debug)]
struct Tracked {
    path: String,
    /// CPU of processes that have exited, folded in so the counter never goes back.
    retired: TaskCpu,
    oom_kills: u64,
    /// The probes count only what ran since the agent started; this is the cgroup's own usage
    /// at first sight minus what the probes had then, so the counter carries the cgroup's whole life.
    cpu_offset_ns: Option<i64>,
    /// Last CPU figure exported, so rounding between the two sources never makes it go back.
    last_cpu_ns: u64,
}

pub struct Aggregator {
    layout: Layout,
    proc_root: PathBuf,
    max_depth: usize,
    export_docker: bool,
    export_systemd: bool,
    probes: Option<Probes>,
    pods: Option<Arc<PodCache>>,
    tracked: HashMap<Identity, Tracked>,
    by_cgroup_id: HashMap<u64, Identity>,
    /// tgid → identity from /proc, for processes whose v2 cgroup says nothing (v1 nodes).
    /// Invalidated by exit events and swept when the process is gone.
    by_tgid: HashMap<u32, Option<Identity>>,
    /// OOM kills seen before their cgroup was discovered.
    oom_by_cgroup_id: HashMap<u64, u64>,
    requests: RequestStore,
    /// fds classified as not sockets, whose already-captured data is dropped.
    not_sockets: std::collections::HashSet<FdKey>,
    /// Request tracing follows these cgroups (when not watching everything).
    watch_set: WatchSet,
    watched_cgroups: usize,
    /// The agent's own v2 cgroup, never traced.
    own_cgroup_id: Option<u64>,
    malformed_data_events: u64,
    collections: u64,
    errors: HashMap<&'static str, u64>,
    retired_unattributed_ns: u64,
    oom_kills_unattributed: u64,
    malformed_events: u64,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator").field("layout", &self.layout).field("tracked", &self.tracked.len()).finish()
    }
}

impl Aggregator {
    pub fn new(config: &Config, layout: Layout, probes: Option<Probes>, pods: Option<Arc<PodCache>>) -> Self {
        let own_cgroup_id = own_cgroup_id(&layout);
        Aggregator {
            layout,
            proc_root: config.proc_root.clone(),
            max_depth: config.attribution.max_cgroup_depth,
            export_docker: config.attribution.docker,
            export_systemd: config.attribution.systemd_units,
            probes,
            pods,
            tracked: HashMap::new(),
            by_cgroup_id: HashMap::new(),
            by_tgid: HashMap::new(),
            oom_by_cgroup_id: HashMap::new(),
            requests: RequestStore::new(config.requests.clone()),
            not_sockets: std::collections::HashSet::new(),
            watch_set: match config.requests.watch {
                WatchSet::Auto if config.kubernetes.enabled() => WatchSet::Models,
                WatchSet::Auto => WatchSet::Pods,
                other => other,
            },
            watched_cgroups: 0,
            own_cgroup_id,
            malformed_data_events: 0,
            collections: 0,
            errors: HashMap::new(),
            retired_unattributed_ns: 0,
            oom_kills_unattributed: 0,
            malformed_events: 0,
        }
    }

    fn wanted(&self, identity: &Identity) -> bool {
        match identity {
            Identity::PodContainer { .. } => true,
            Identity::Docker { .. } => self.export_docker,
            Identity::SystemdUnit { .. } => self.export_systemd,
            Identity::Pod { .. } | Identity::Other => false,
        }
    }

    fn count_error(&mut self, stage: &'static str) {
        *self.errors.entry(stage).or_default() += 1;
    }

    /// Applies one ring-buffer record.
    pub fn on_event_bytes(&mut self, bytes: &[u8]) {
        match kernel::decode_event(bytes) {
            Some(event) => self.on_event(&event),
            None => self.malformed_events += 1,
        }
    }

    pub fn on_event(&mut self, event: &Event) {
        match event.kind {
            KIND_PROCESS_EXIT => {
                self.by_tgid.remove(&event.pid);
                // Its fds closed inside exit, where no close(2) was seen.
                self.requests.forget_process(event.pid);
                self.not_sockets.retain(|key| key.tgid != event.pid);
            }
            KIND_OOM_VICTIM => {
                // In a memcg OOM the allocating task usually kills itself: then the current cgroup
                // is the victim's. Otherwise the victim is still in /proc while being killed.
                if event.pid == event.current_tgid {
                    match self.by_cgroup_id.get(&event.cgroup_id).and_then(|id| self.tracked.get_mut(id)) {
                        Some(tracked) => tracked.oom_kills += 1,
                        None => *self.oom_by_cgroup_id.entry(event.cgroup_id).or_default() += 1,
                    }
                    return;
                }
                match self.resolve_tgid(event.pid) {
                    Some(identity) => match self.tracked.get_mut(&identity) {
                        Some(tracked) => tracked.oom_kills += 1,
                        None => self.oom_kills_unattributed += 1,
                    },
                    None => self.oom_kills_unattributed += 1,
                }
            }
            _ => self.malformed_events += 1,
        }
    }

    /// Applies one record of the payload ring buffer.
    pub fn on_data_event_bytes(&mut self, bytes: &[u8]) {
        let Some((event, captured)) = kernel::decode_data_event(bytes) else {
            self.malformed_data_events += 1;
            return;
        };
        let key = FdKey { tgid: event.tgid, fd: event.fd };
        match event.kind {
            KIND_FD_UNKNOWN => {
                // A new fd, or a reused number: whatever was followed under this key is over.
                self.requests.close(key);
                match procfs::is_socket(&self.proc_root, event.tgid, event.fd) {
                    Some(is_socket) => {
                        if is_socket {
                            self.not_sockets.remove(&key);
                        } else {
                            if self.not_sockets.len() >= 65_536 {
                                self.not_sockets.clear();
                            }
                            self.not_sockets.insert(key);
                        }
                        if let Some(probes) = self.probes.as_mut() {
                            probes.classify_fd(key, is_socket);
                        }
                    }
                    // Closed before this record was read (the reader runs in batches): its data
                    // goes to the parser, which skips whatever is not HTTP.
                    None => {
                        self.not_sockets.remove(&key);
                    }
                }
            }
            KIND_CLOSE => {
                self.requests.close(key);
                self.not_sockets.remove(&key);
            }
            // Data the probes captured before the fd was classified as a file, pipe, …
            KIND_DATA_IN | KIND_DATA_OUT if self.not_sockets.contains(&key) => {}
            KIND_DATA_IN | KIND_DATA_OUT => {
                let identity = match self.by_cgroup_id.get(&event.cgroup_id) {
                    Some(identity) => identity.clone(),
                    None => match self.resolve_tgid(event.tgid) {
                        Some(identity) => identity,
                        // Watching everything: a process outside any container is its own series.
                        None => Identity::Other,
                    },
                };
                let events = self.requests.feed(key, &identity, event.kind, event.timestamp_ns, event.len, captured);
                for request in events {
                    self.print_request_event(&identity, &request);
                }
            }
            _ => self.malformed_data_events += 1,
        }
    }

    /// Slow and failed requests as JSON lines on stdout (`kubectl logs`), with their identity.
    fn print_request_event(&self, identity: &Identity, request: &requests::RequestEvent) {
        let pod = match lookup_pod(&self.pods, identity) {
            PodLookup::Known(meta) => Some(meta),
            PodLookup::Deleted | PodLookup::Unknown => None,
        };
        let line = serde_json::json!({
            "timestamp": humantime_timestamp(),
            "event": request.event,
            "http.request.method": request.method,
            "http.route": request.route,
            "http.response.status_code": request.status,
            "duration_ms": request.duration_ms,
            "ml.model.name": request.model.clone().or_else(|| pod.as_ref()?.model.as_ref().map(|m| m.name.clone())),
            "k8s.pod.uid": identity.pod_uid(),
            "container.id": identity.container_id(),
            "k8s.namespace.name": pod.as_ref().map(|p| p.namespace.clone()),
            "k8s.pod.name": pod.as_ref().map(|p| p.name.clone()),
        });
        println!("{line}");
    }

    fn resolve_tgid(&mut self, tgid: u32) -> Option<Identity> {
        if let Some(cached) = self.by_tgid.get(&tgid) {
            return cached.clone();
        }
        let resolved = procfs::read_proc_cgroup(&self.proc_root, tgid)
            .and_then(|cgroups| cgroups.paths().map(identify).find(|identity| self.wanted(identity)));
        // Bounded: a host with runaway process churn must not grow this without limit.
        if self.by_tgid.len() >= 65_536 {
            self.by_tgid.clear();
        }
        self.by_tgid.insert(tgid, resolved.clone());
        resolved
    }

    /// Points request tracing at the cgroups the watch set names.
    fn update_watched_cgroups(&mut self) {
        let Some(probes) = self.probes.as_mut() else { return };
        if !probes.has_request_tracing() {
            return;
        }
        probes.set_watch_all(self.watch_set == WatchSet::All);
        let pods = &self.pods;
        let has_model =
            |identity: &Identity| matches!(lookup_pod(pods, identity), PodLookup::Known(meta) if meta.model.is_some());
        let wanted: std::collections::HashSet<u64> = self
            .by_cgroup_id
            .iter()
            .filter(|(_, identity)| match self.watch_set {
                WatchSet::Pods | WatchSet::Auto => matches!(identity, Identity::PodContainer { .. }),
                WatchSet::Models => matches!(identity, Identity::PodContainer { .. }) && has_model(identity),
                WatchSet::All | WatchSet::None => false,
            })
            .map(|(id, _)| *id)
            .collect();
        let mut wanted = wanted;
        // The agent's own traffic (its reads of /proc and cgroups, its /metrics) would feed back.
        if let Some(own) = self.own_cgroup_id {
            wanted.remove(&own);
        }
        probes.set_watched_cgroups(&wanted);
        self.watched_cgroups = probes.watched_cgroups();
    }

    /// Walks the hierarchy and updates the set of tracked cgroups; forgets those that are gone.
    fn discover(&mut self) {
        let (root, has_ids) = match (&self.layout.v2_root(), self.layout.v1_roots()) {
            (Some(v2), _) => (v2.to_path_buf(), true),
            (None, Some(v1)) => match v1.memory.clone().or_else(|| v1.cpu.clone()) {
                Some(root) => (root, false),
                None => return,
            },
            (None, None) => return,
        };
        let paths = match walk(&root, self.max_depth) {
            Ok(paths) => paths,
            Err(e) => {
                tracing::warn!(error = %e, "Walking the cgroup hierarchy failed");
                self.count_error("discover");
                return;
            }
        };
        let mut seen: HashMap<Identity, String> = HashMap::new();
        let mut by_cgroup_id = HashMap::new();
        for path in paths {
            let identity = identify(&path);
            if !self.wanted(&identity) {
                continue;
            }
            if has_ids {
                // A cgroup removed mid-walk has no id any more; skip it.
                if let Ok(id) = cgroup_id(&root.join(path.trim_start_matches('/'))) {
                    by_cgroup_id.insert(id, identity.clone());
                }
            }
            // The shallowest cgroup of an identity is the container's own; deeper ones are its sub-cgroups.
            match seen.get_mut(&identity) {
                Some(existing) if existing.len() <= path.len() => {}
                Some(existing) => *existing = path,
                None => {
                    seen.insert(identity, path);
                }
            }
        }
        self.tracked.retain(|identity, _| seen.contains_key(identity));
        for (identity, path) in seen {
            match self.tracked.get_mut(&identity) {
                Some(tracked) => tracked.path = path,
                None => {
                    let tracked =
                        Tracked { path, retired: TaskCpu::ZERO, oom_kills: 0, cpu_offset_ns: None, last_cpu_ns: 0 };
                    self.tracked.insert(identity, tracked);
                }
            }
        }
        // OOM kills that arrived before their cgroup was known.
        let mut unattributed = 0;
        for (id, kills) in self.oom_by_cgroup_id.drain() {
            match by_cgroup_id.get(&id).and_then(|i| self.tracked.get_mut(i)) {
                Some(tracked) => tracked.oom_kills += kills,
                // Its cgroup is not one the agent attributes (or is gone): counted, not lost.
                None => unattributed += kills,
            }
        }
        self.oom_kills_unattributed += unattributed;
        self.by_cgroup_id = by_cgroup_id;
    }

    /// Reads the probes' per-task CPU, returns the live totals per identity, and folds entries of
    /// processes that are gone into their identity's retired totals (then deletes them).
    fn fold_probe_cpu(&mut self) -> ProbeCpu {
        let mut cpu = ProbeCpu::default();
        let Some(probes) = self.probes.as_ref() else { return cpu };
        // The caller ran `kernel::flush_cpu_slices` just before, outside the lock.
        let entries = match probes.read_task_cpu() {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "Reading probe maps failed");
                self.count_error("probe_read");
                return cpu;
            }
        };
        let mut finished: Vec<TaskKey> = Vec::new();
        for (key, value) in entries {
            let identity = match self.by_cgroup_id.get(&key.cgroup_id) {
                Some(identity) => Some(identity.clone()),
                None => self.resolve_tgid(key.tgid),
            };
            let is_alive =
                *cpu.alive.entry(key.tgid).or_insert_with(|| procfs::process_exists(&self.proc_root, key.tgid));
            let tracked = identity.as_ref().and_then(|i| self.tracked.get_mut(i));
            match (is_alive, tracked) {
                (true, Some(_)) => kernel::add_task_cpu(
                    cpu.live.entry(identity.expect("tracked implies identity")).or_default(),
                    &value,
                ),
                (true, None) => cpu.unattributed_ns += value.on_cpu_ns,
                (false, Some(tracked)) => kernel::add_task_cpu(&mut tracked.retired, &value),
                (false, None) => self.retired_unattributed_ns += value.on_cpu_ns,
            }
            if !is_alive {
                finished.push(key);
                self.by_tgid.remove(&key.tgid);
            }
        }
        if let Some(probes) = self.probes.as_mut() {
            probes.remove_tasks(&finished);
        }
        cpu
    }

    /// One full collection.
    pub fn collect(&mut self) -> Snapshot {
        let started = Instant::now();
        self.discover();
        self.update_watched_cgroups();
        let ProbeCpu { live, unattributed_ns: unattributed_live, alive } = self.fold_probe_cpu();
        // Connections of processes that are gone; the fold has already looked up most tgids.
        let proc_root = self.proc_root.clone();
        self.requests.forget_processes_where(|tgid| {
            !alive.get(&tgid).copied().unwrap_or_else(|| procfs::process_exists(&proc_root, tgid))
        });
        let has_probes = self.probes.is_some();
        let mut containers = Vec::with_capacity(self.tracked.len());
        let mut vanished = Vec::new();
        let mut read_errors = 0;
        let oom_from_probe = self.probes.as_ref().is_some_and(Probes::has_oom_probe);
        for (identity, tracked) in self.tracked.iter_mut() {
            let stats = match self.layout.read_stats(&tracked.path) {
                Ok(stats) => Some(stats),
                Err(e) if e.is_not_found() => None,
                Err(e) => {
                    tracing::debug!(error = %e, path = %tracked.path, "Reading cgroup files failed");
                    read_errors += 1;
                    None
                }
            };
            if stats.is_none() && !cgroup_exists(&self.layout, &tracked.path) {
                vanished.push(identity.clone());
                continue;
            }
            let usage_ns = stats.and_then(|s| s.cpu.usage_ns);
            let (cpu_ns, runq) = if has_probes {
                let mut total = tracked.retired;
                if let Some(value) = live.get(identity) {
                    kernel::add_task_cpu(&mut total, value);
                }
                let offset = *tracked
                    .cpu_offset_ns
                    .get_or_insert_with(|| usage_ns.map_or(0, |usage| usage as i64 - total.on_cpu_ns as i64));
                let cpu_ns = (total.on_cpu_ns as i64).saturating_add(offset).max(0) as u64;
                (cpu_ns, Some(total))
            } else {
                (usage_ns.unwrap_or(0), None)
            };
            let cpu_ns = cpu_ns.max(tracked.last_cpu_ns);
            tracked.last_cpu_ns = cpu_ns;
            let pod = match lookup_pod(&self.pods, identity) {
                PodLookup::Known(meta) => Some(meta),
                // Deleted in the API: its series go now, whatever the kubelet has left behind.
                PodLookup::Deleted => continue,
                PodLookup::Unknown => None,
            };
            let oom_kills =
                if oom_from_probe { tracked.oom_kills } else { stats.and_then(|s| s.memory.oom_kills).unwrap_or(0) };
            containers.push(ContainerSample {
                identity: identity.clone(),
                cgroup_path: tracked.path.clone(),
                cpu_ns,
                runq,
                stats,
                oom_kills,
                pod,
            });
        }
        for identity in vanished {
            self.tracked.remove(&identity);
        }
        for _ in 0..read_errors {
            self.count_error("cgroup_read");
        }
        containers.sort_by(|a, b| a.cgroup_path.cmp(&b.cgroup_path));
        let requests = self.request_samples(&containers);
        self.collections += 1;
        let mut errors: Vec<_> = self.errors.iter().map(|(k, v)| (*k, *v)).collect();
        errors.sort();
        let agent = AgentSample {
            collections: self.collections,
            last_collection_duration: started.elapsed(),
            errors,
            probe_family: self.probes.as_ref().map(|p| p.family().as_str()),
            probes: self.probes.as_ref().map(Probes::program_stats).unwrap_or_default(),
            probe_counters: self.probes.as_ref().map(Probes::counters).unwrap_or_default(),
            unattributed_cpu_ns: self.retired_unattributed_ns + unattributed_live,
            oom_kills_unattributed: self.oom_kills_unattributed,
            malformed_events: self.malformed_events,
            requests: RequestsAgentSample {
                enabled: self.probes.as_ref().is_some_and(Probes::has_request_tracing),
                watched_cgroups: self.watched_cgroups,
                connections: self.requests.connections(),
                route_overflow: self.requests.route_overflow.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                model_overflow: self.requests.model_overflow,
                skipped: self.requests.skipped.iter().map(|(k, v)| (*k, *v)).collect(),
                events_dropped: self.requests.events_dropped,
                malformed_events: self.malformed_data_events,
            },
        };
        Snapshot { taken_at: SystemTime::now(), containers, requests, agent }
    }
}

impl Aggregator {
    /// Request series of the identities still present (a gone container's requests go with it);
    /// series of processes outside containers (watching everything) stay while they exist.
    fn request_samples(&mut self, containers: &[ContainerSample]) -> Vec<RequestSample> {
        let present: HashMap<&Identity, &ContainerSample> = containers.iter().map(|c| (&c.identity, c)).collect();
        self.requests.retain(|identity| *identity == Identity::Other || present.contains_key(identity));
        // A request that names its pod's own model and one that names none are the same series.
        let mut merged: HashMap<(Identity, RequestKey), MergedSeries> = HashMap::new();
        for (identity, series) in &self.requests.series {
            let pod = present.get(identity).and_then(|c| c.pod.clone());
            let pod_model = pod.as_ref().and_then(|p| p.model.as_ref()).map(|m| (m.name.clone(), m.version.clone()));
            for (key, latency) in series {
                let mut key = key.clone();
                if key.model.is_some() && key.model == pod_model {
                    key.model = None;
                }
                let entry =
                    merged.entry((identity.clone(), key)).or_insert_with(|| (pod.clone(), LatencyHistogram::default()));
                entry.1.merge(latency);
            }
        }
        let mut samples: Vec<RequestSample> = merged
            .into_iter()
            .map(|((identity, key), (pod, latency))| RequestSample { identity, pod, key, latency })
            .collect();
        samples.sort_by(|a, b| a.key.cmp(&b.key));
        samples
    }
}

/// The probes' CPU as of one collection.
#[derive(Debug, Default)]
struct ProbeCpu {
    /// Totals of live processes per identity.
    live: HashMap<Identity, TaskCpu>,
    /// On-CPU time of live processes outside any attributed cgroup.
    unattributed_ns: u64,
    /// Whether each tgid seen in the map still exists.
    alive: HashMap<u32, bool>,
}

/// What the Kubernetes API says of an identity's pod; `Unknown` without a pod or without the API.
fn lookup_pod(pods: &Option<Arc<PodCache>>, identity: &Identity) -> PodLookup {
    match (identity.pod_uid(), pods) {
        (Some(uid), Some(pods)) => pods.lookup(uid),
        _ => PodLookup::Unknown,
    }
}

/// A request series' pod and observations while series are merged.
type MergedSeries = (Option<Arc<PodMeta>>, LatencyHistogram);

/// The v2 cgroup id of the agent itself.
fn own_cgroup_id(layout: &Layout) -> Option<u64> {
    let path = procfs::read_proc_cgroup(std::path::Path::new("/proc"), std::process::id())?.v2?;
    cgroup_id(&layout.v2_root()?.join(path.trim_start_matches('/'))).ok()
}

/// RFC 3339 time of now, for event lines.
fn humantime_timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Whether a tracked cgroup's directory is still there (its files may be absent in one hierarchy).
fn cgroup_exists(layout: &Layout, path: &str) -> bool {
    let rel = path.trim_start_matches('/');
    match (layout.v2_root(), layout.v1_roots()) {
        (Some(v2), _) => v2.join(rel).is_dir(),
        (None, Some(v1)) => v1.memory.iter().chain(v1.cpu.iter()).any(|root| root.join(rel).is_dir()),
        (None, None) => false,
    }
}

/// The latest snapshot, shared between the collector and every reader.
#[derive(Debug)]
pub struct SnapshotCell {
    current: std::sync::RwLock<(Instant, Arc<Snapshot>)>,
}

impl Default for SnapshotCell {
    fn default() -> Self {
        SnapshotCell { current: std::sync::RwLock::new((Instant::now(), Arc::new(Snapshot::empty()))) }
    }
}

impl SnapshotCell {
    pub fn get(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// Age of the snapshot; `None` before the first collection.
    pub fn age(&self) -> Option<Duration> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        (guard.1.agent.collections > 0).then(|| guard.0.elapsed())
    }

    pub fn set(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Instant::now(), Arc::new(snapshot));
    }
}
