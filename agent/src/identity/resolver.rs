//! The one identity resolver: owns the map from the kernel's keys (v2 cgroup id, tgid) to an
//! [`Identity`] and its pod, found by walking the cgroup hierarchy and, for processes whose
//! cgroup id says nothing (v1 nodes), by reading `/proc/<tgid>/cgroup`, and decides which cgroups
//! request tracing follows. It lives on the collector thread beside the store, its only reader
//! today; the [`IdentityTable`] is replaced whole at each discovery, so a reader on another
//! thread (the GPU source) can be given it through an `ArcSwap` without a lock.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Identity, Runtime, identify,
    model::{Model, ModelRule},
    rules::{ProcessFacts, Rules},
};
use crate::{
    config::Config,
    sources::{
        cgroup::{CgroupError, Layout, cgroup_id, walk},
        kubernetes::{PodCache, PodLookup, PodMeta},
        procfs::{self, ProcCgroups, ProcessInfo},
    },
    store::requests::WatchSet,
};

/// tgid look-ups remembered; the cache is cleared when it reaches this.
const MAX_TGIDS: usize = 65_536;
/// A process not (yet) in an attributable cgroup is looked at again after this: runtimes move a
/// container's first process into its cgroup after it starts.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Parents looked through to find a new process's workload (a child started since the scan).
const MAX_PARENT_HOPS: usize = 32;
/// The command line shown for a process no rule names is cut here.
const SHOWN_CMDLINE_CHARS: usize = 200;

/// A standalone workload at the last scan: its processes' summed figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessWorkload {
    pub processes: usize,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// The v2 ids of its processes' cgroups, for request tracing.
    pub cgroup_ids: Vec<u64>,
}

/// One of the busiest processes no rule names (outside attributed containers), so a user sees
/// what to write a rule for.
#[derive(Debug, Clone, PartialEq)]
pub struct UnnamedProcess {
    pub pid: u32,
    pub name: String,
    pub cmdline: String,
    /// Over the time since the previous scan; `None` on its first.
    pub cpu_cores: Option<f64>,
    pub rss_bytes: u64,
}

/// A process's facts and the rule that matched them.
#[derive(Debug)]
struct RuleVerdict {
    exe: String,
    cmdline: Vec<String>,
    cgroup: String,
    matched: Option<super::rules::Matched>,
}

/// What the model rules found at the last scan of /proc.
#[derive(Debug, Default)]
pub struct ProcessTable {
    /// Each process of a standalone workload.
    pub by_tgid: HashMap<u32, Identity>,
    pub workloads: HashMap<Identity, ProcessWorkload>,
    /// Pod containers the API names no model for, with the model a rule gave their processes.
    pub pod_models: HashMap<Identity, Arc<PodMeta>>,
    /// Busiest first.
    pub unnamed: Vec<UnnamedProcess>,
}

/// What the store needs to resolve an observation's keys. The real resolver reads /proc on a
/// tgid miss; tests use a table.
pub trait Resolve {
    /// The identity whose cgroup has this v2 id, among the discovered ones.
    fn by_cgroup_id(&self, id: u64) -> Option<Identity>;
    /// The identity of a process, by its cgroups (v1 nodes, hosts without v2 ids).
    fn by_tgid(&mut self, tgid: u32) -> Option<Identity>;
    /// The identity named by a process's cgroup paths, if it is one the agent attributes.
    fn by_paths(&self, cgroups: &ProcCgroups) -> Option<Identity>;
    /// The attributed cgroup with this v2 id and its path, searched in the hierarchy now (one
    /// walk): for a rare event in a cgroup made since the last discovery, which may be gone by
    /// the next.
    fn find_cgroup_id(&self, _id: u64) -> Option<(Identity, String)> {
        None
    }
    /// What the Kubernetes API says of the identity's pod.
    fn pod(&self, identity: &Identity) -> PodLookup;
    /// Whether requests of every process are traced (`requests.watch: all`), so that one outside
    /// any workload is a series of its own rather than dropped.
    fn traces_everything(&self) -> bool {
        false
    }
}

/// The resolver's knowledge at the last discovery.
#[derive(Debug, Default)]
pub struct IdentityTable {
    pub by_cgroup_id: HashMap<u64, Identity>,
    /// Each attributed identity and the cgroup (relative to the hierarchy roots) that is its own.
    pub cgroups: HashMap<Identity, String>,
}

pub struct Resolver {
    layout: Layout,
    proc_root: PathBuf,
    max_depth: usize,
    export_docker: bool,
    export_podman: bool,
    export_systemd: bool,
    pods: Option<Arc<PodCache>>,
    watch_set: WatchSet,
    table: IdentityTable,
    by_tgid: HashMap<u32, (Option<Identity>, Instant)>,
    /// Processes that exited since the last collection: their entries serve that collection's
    /// fold (which folds their CPU into their container) and go after it.
    exited: Vec<u32>,
    /// The agent's own v2 cgroup, never traced.
    own_cgroup_id: Option<u64>,
    /// `None` when standalone attribution is off.
    rules: Option<Rules>,
    busiest_unnamed: usize,
    processes: ProcessTable,
    /// Members at the scan before: a process that exited since still folds its last CPU there.
    previous_members: HashMap<u32, Identity>,
    /// What the rules said of each process at the last scan, and of which facts.
    rule_verdicts: HashMap<u32, RuleVerdict>,
    /// Each process's CPU seconds at the last scan, for the unnamed ones' rates.
    previous_cpu: HashMap<u32, f64>,
    previous_scan: Option<Instant>,
}

impl Resolver {
    pub fn new(config: &Config, layout: Layout, pods: Option<Arc<PodCache>>) -> Self {
        let own_cgroup_id = procfs::read_proc_cgroup(std::path::Path::new("/proc"), std::process::id())
            .and_then(|cgroups| cgroups.v2)
            .and_then(|path| cgroup_id(&layout.v2_root()?.join(path.trim_start_matches('/'))).ok());
        Resolver {
            layout,
            proc_root: config.proc_root.clone(),
            max_depth: config.attribution.max_cgroup_depth,
            export_docker: config.attribution.docker,
            export_podman: config.attribution.podman,
            export_systemd: config.attribution.systemd_units,
            watch_set: match config.requests.watch {
                WatchSet::Auto if pods.is_some() => WatchSet::Models,
                WatchSet::Auto => WatchSet::Containers,
                other => other,
            },
            pods,
            table: IdentityTable::default(),
            by_tgid: HashMap::new(),
            exited: Vec::new(),
            own_cgroup_id,
            // The config was validated at load: rules that do not compile were refused there.
            rules: config.standalone.compile().ok().flatten(),
            busiest_unnamed: config.standalone.busiest_unnamed,
            processes: ProcessTable::default(),
            previous_members: HashMap::new(),
            rule_verdicts: HashMap::new(),
            previous_cpu: HashMap::new(),
            previous_scan: None,
        }
    }

    /// What the model rules found at the last scan.
    pub fn processes(&self) -> &ProcessTable {
        &self.processes
    }

    pub fn table(&self) -> &IdentityTable {
        &self.table
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn wanted(&self, identity: &Identity) -> bool {
        match identity {
            Identity::PodContainer { .. } => true,
            Identity::Container { runtime: Runtime::Podman, .. } => self.export_podman,
            Identity::Container { .. } => self.export_docker,
            Identity::SystemdUnit { .. } => self.export_systemd,
            Identity::Process { .. } => true,
            Identity::Pod { .. } | Identity::Other => false,
        }
    }

    /// Walks the hierarchy and publishes the attributed cgroups found.
    pub fn discover(&mut self) -> Result<(), CgroupError> {
        let (root, has_ids) = match (self.layout.v2_root(), self.layout.v1_roots()) {
            (Some(v2), _) => (v2.to_path_buf(), true),
            (None, Some(v1)) => match v1.memory.clone().or_else(|| v1.cpu.clone()) {
                Some(root) => (root, false),
                None => return Ok(()),
            },
            (None, None) => return Ok(()),
        };
        let paths = walk(&root, self.max_depth)?;
        let mut cgroups: HashMap<Identity, String> = HashMap::new();
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
            match cgroups.get_mut(&identity) {
                Some(existing) if existing.len() <= path.len() => {}
                Some(existing) => *existing = path,
                None => {
                    cgroups.insert(identity, path);
                }
            }
        }
        self.table = IdentityTable { by_cgroup_id, cgroups };
        self.scan_processes();
        Ok(())
    }

    /// Scans /proc with the model rules: a matched process outside attributed containers starts
    /// a workload that its descendants join (the topmost matched ancestor is the workload's
    /// first process); a matched process in a pod container names that pod's model where the
    /// API names none; the busiest of the rest are listed.
    fn scan_processes(&mut self) {
        let Some(rules) = &self.rules else { return };
        let scanned = procfs::scan_processes(&self.proc_root);
        let now = Instant::now();
        let own = std::process::id();
        let by_pid: HashMap<u32, &ProcessInfo> = scanned.iter().map(|p| (p.tgid, p)).collect();
        // Rules are tried again only for a process whose facts changed since the last scan.
        let mut verdicts = HashMap::with_capacity(scanned.len());
        let mut matched: HashMap<u32, super::rules::Matched> = HashMap::new();
        for p in scanned.iter().filter(|p| p.tgid != own) {
            let cgroup = p.cgroups.paths().next().unwrap_or("");
            let verdict = match self.rule_verdicts.remove(&p.tgid) {
                Some(old) if old.exe == p.exe && old.cmdline == p.cmdline && old.cgroup == cgroup => old,
                _ => RuleVerdict {
                    exe: p.exe.clone(),
                    cmdline: p.cmdline.clone(),
                    cgroup: cgroup.to_owned(),
                    matched: rules.match_process(&ProcessFacts { exe: &p.exe, cmdline: &p.cmdline, cgroup }),
                },
            };
            if let Some(found) = &verdict.matched {
                matched.insert(p.tgid, found.clone());
            }
            verdicts.insert(p.tgid, verdict);
        }
        self.rule_verdicts = verdicts;
        let v2_root = self.layout.v2_root().map(std::path::Path::to_path_buf);
        let mut cgroup_ids: HashMap<&str, Option<u64>> = HashMap::new();
        let mut table = ProcessTable::default();
        let mut unnamed = Vec::new();
        let elapsed = self.previous_scan.map(|at| now.duration_since(at).as_secs_f64()).filter(|s| *s > 0.0);
        for process in &scanned {
            if process.tgid == own {
                continue;
            }
            match self.by_paths(&process.cgroups) {
                Some(identity @ Identity::PodContainer { .. }) => {
                    if let Some(found) = matched.get(&process.tgid)
                        && !table.pod_models.contains_key(&identity)
                        && let Some(meta) = self.pod_with_rule_model(&identity, found)
                    {
                        table.pod_models.insert(identity, meta);
                    }
                    continue;
                }
                // Docker containers and systemd units are workloads of their own.
                Some(_) => continue,
                None => {}
            }
            let Some(root) = topmost_matched(process.tgid, &by_pid, &matched) else {
                let cpu_cores = elapsed
                    .zip(self.previous_cpu.get(&process.tgid))
                    .map(|(seconds, before)| ((process.cpu_seconds - before) / seconds).max(0.0));
                unnamed.push(UnnamedProcess {
                    pid: process.tgid,
                    name: process.exe.clone(),
                    cmdline: process.cmdline.join(" ").chars().take(SHOWN_CMDLINE_CHARS).collect(),
                    cpu_cores,
                    rss_bytes: process.rss_bytes,
                });
                continue;
            };
            let found = &matched[&root];
            let identity = Identity::Process {
                pid: root,
                name: by_pid.get(&root).map_or("", |p| p.exe.as_str()).into(),
                model: found.model.as_str().into(),
                version: found.version.as_str().into(),
            };
            let workload = table.workloads.entry(identity.clone()).or_default();
            workload.processes += 1;
            workload.cpu_seconds += process.cpu_seconds;
            workload.rss_bytes += process.rss_bytes;
            if let (Some(root), Some(path)) = (&v2_root, process.cgroups.v2.as_deref()) {
                let id =
                    *cgroup_ids.entry(path).or_insert_with(|| cgroup_id(&root.join(path.trim_start_matches('/'))).ok());
                if let Some(id) = id.filter(|id| !workload.cgroup_ids.contains(id)) {
                    workload.cgroup_ids.push(id);
                }
            }
            table.by_tgid.insert(process.tgid, identity);
        }
        unnamed.sort_by(|a, b| {
            let cores = |p: &UnnamedProcess| p.cpu_cores.unwrap_or(0.0);
            cores(b).total_cmp(&cores(a)).then(b.rss_bytes.cmp(&a.rss_bytes))
        });
        unnamed.truncate(self.busiest_unnamed);
        table.unnamed = unnamed;
        self.previous_cpu = scanned.iter().map(|p| (p.tgid, p.cpu_seconds)).collect();
        self.previous_scan = Some(now);
        self.previous_members = std::mem::replace(&mut self.processes, table).by_tgid;
    }

    /// The pod's metadata with the model a rule gave its process, unless the API names one
    /// (the owner-workload fallback is only a display name, and gives way).
    fn pod_with_rule_model(&self, identity: &Identity, found: &super::rules::Matched) -> Option<Arc<PodMeta>> {
        let model = Model { name: found.model.clone(), version: found.version.clone(), rule: ModelRule::Process };
        let mut meta = match self.api_pod(identity) {
            PodLookup::Known(meta) if meta.model.as_ref().is_some_and(|m| m.rule != ModelRule::Owner) => return None,
            PodLookup::Known(meta) => (*meta).clone(),
            PodLookup::Deleted => return None,
            PodLookup::Unknown => PodMeta {
                uid: identity.pod_uid()?.to_owned(),
                namespace: String::new(),
                name: String::new(),
                labels: Default::default(),
                annotations: Default::default(),
                owner: None,
                qos_class: None,
                containers: Default::default(),
                model: None,
                ready: None,
            },
        };
        meta.model = Some(model);
        Some(Arc::new(meta))
    }

    fn api_pod(&self, identity: &Identity) -> PodLookup {
        match (identity.pod_uid(), &self.pods) {
            (Some(uid), Some(pods)) => pods.lookup(uid),
            _ => PodLookup::Unknown,
        }
    }

    /// The workload of a process the last scan did not see (started since): its nearest
    /// ancestor's.
    fn workload_of_new_process(&self, tgid: u32) -> Option<Identity> {
        let mut current = tgid;
        for _ in 0..MAX_PARENT_HOPS {
            current = procfs::parent_of(&self.proc_root, current)?;
            if current <= 1 {
                return None;
            }
            if let Some(identity) = self.processes.by_tgid.get(&current) {
                return Some(identity.clone());
            }
        }
        None
    }

    /// The v2 ids of the cgroups whose requests are traced, and whether to trace everything.
    pub fn watched(&self) -> (HashSet<u64>, bool) {
        let has_explicit_model = |identity: &Identity| match self.pod(identity) {
            // The owner-workload fallback names a model for display; tracing follows only pods
            // whose model someone declared (annotation, KServe, Seldon, app labels).
            PodLookup::Known(meta) => meta.model.as_ref().is_some_and(|m| m.rule != ModelRule::Owner),
            PodLookup::Deleted | PodLookup::Unknown => false,
        };
        let mut wanted: HashSet<u64> = self
            .table
            .by_cgroup_id
            .iter()
            .filter(|(_, identity)| match self.watch_set {
                WatchSet::Pods => matches!(identity, Identity::PodContainer { .. }),
                WatchSet::Containers | WatchSet::Auto => {
                    matches!(identity, Identity::PodContainer { .. } | Identity::Container { .. })
                }
                WatchSet::Models => matches!(identity, Identity::PodContainer { .. }) && has_explicit_model(identity),
                WatchSet::All | WatchSet::None => false,
            })
            .map(|(id, _)| *id)
            .collect();
        // Standalone workloads declared their model through a rule: traced unless nothing is.
        if !matches!(self.watch_set, WatchSet::None | WatchSet::All) {
            for workload in self.processes.workloads.values() {
                wanted.extend(&workload.cgroup_ids);
            }
        }
        // The agent's own traffic (its reads of /proc and cgroups, its /metrics) would feed back.
        if let Some(own) = self.own_cgroup_id {
            wanted.remove(&own);
        }
        (wanted, self.watch_set == WatchSet::All)
    }

    /// A process exited: its identity (cached, or from the cgroups read as it exited) serves one
    /// more fold, then goes.
    pub fn note_exit(&mut self, tgid: u32, cgroups: Option<&ProcCgroups>) {
        let cached = matches!(self.by_tgid.get(&tgid), Some((Some(_), _)));
        if let (false, Some(identity)) = (cached, cgroups.and_then(|c| self.by_paths(c))) {
            self.by_tgid.insert(tgid, (Some(identity), Instant::now()));
        }
        self.exited.push(tgid);
    }

    /// Forgets a process whose CPU entries were folded as finished.
    pub fn forget_tgid(&mut self, tgid: u32) {
        self.by_tgid.remove(&tgid);
    }

    /// Ends a collection: exited processes are forgotten.
    pub fn end_collection(&mut self) {
        for tgid in std::mem::take(&mut self.exited) {
            self.by_tgid.remove(&tgid);
        }
    }
}

impl Resolve for Resolver {
    fn by_cgroup_id(&self, id: u64) -> Option<Identity> {
        self.table.by_cgroup_id.get(&id).cloned()
    }

    fn by_tgid(&mut self, tgid: u32) -> Option<Identity> {
        if let Some(identity) = self.processes.by_tgid.get(&tgid).or_else(|| self.previous_members.get(&tgid)) {
            return Some(identity.clone());
        }
        if let Some((cached, at)) = self.by_tgid.get(&tgid)
            && (cached.is_some() || at.elapsed() < NEGATIVE_TTL)
        {
            return cached.clone();
        }
        let resolved = match procfs::read_proc_cgroup(&self.proc_root, tgid) {
            // Outside containers: a child of a standalone workload belongs to it.
            Some(cgroups) => self.by_paths(&cgroups).or_else(|| {
                if self.processes.workloads.is_empty() { None } else { self.workload_of_new_process(tgid) }
            }),
            None => None,
        };
        if self.by_tgid.len() >= MAX_TGIDS {
            self.by_tgid.clear();
        }
        self.by_tgid.insert(tgid, (resolved.clone(), Instant::now()));
        resolved
    }

    fn by_paths(&self, cgroups: &ProcCgroups) -> Option<Identity> {
        cgroups.paths().map(identify).find(|identity| self.wanted(identity))
    }

    fn find_cgroup_id(&self, id: u64) -> Option<(Identity, String)> {
        let root = self.layout.v2_root()?;
        walk(root, self.max_depth).ok()?.into_iter().find_map(|path| {
            let identity = identify(&path);
            (self.wanted(&identity) && cgroup_id(&root.join(path.trim_start_matches('/'))).ok() == Some(id))
                .then_some((identity, path))
        })
    }

    fn pod(&self, identity: &Identity) -> PodLookup {
        match self.processes.pod_models.get(identity) {
            Some(meta) => PodLookup::Known(meta.clone()),
            None => self.api_pod(identity),
        }
    }

    fn traces_everything(&self) -> bool {
        self.watch_set == WatchSet::All
    }
}

/// The topmost process that a rule matched among `tgid` and its ancestors, stopping at the
/// first ancestor that is not in the scan (or init).
fn topmost_matched(
    tgid: u32,
    by_pid: &HashMap<u32, &ProcessInfo>,
    matched: &HashMap<u32, super::rules::Matched>,
) -> Option<u32> {
    let mut found = None;
    let mut current = tgid;
    for _ in 0..=MAX_PARENT_HOPS {
        if matched.contains_key(&current) {
            found = Some(current);
        }
        match by_pid.get(&current) {
            Some(process) if process.ppid > 1 && process.ppid != current => current = process.ppid,
            _ => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt};

    use super::*;

    const POD: &str = "/kubepods/burstable/pod1b2c3d4e-0000-4000-8000-123456789abc";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A pure v2 tree with one pod container (and a sub-cgroup of it), and a /proc with one process.
    fn fixture() -> (tempfile::TempDir, tempfile::TempDir, Resolver, u64) {
        let cgroups = tempfile::tempdir().unwrap();
        fs::write(cgroups.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let container = cgroups.path().join(format!("{}/{CID}", &POD[1..]));
        fs::create_dir_all(container.join("sub")).unwrap();
        let id = fs::metadata(&container).unwrap().ino();
        let proc = tempfile::tempdir().unwrap();
        fs::create_dir_all(proc.path().join("4242")).unwrap();
        fs::write(proc.path().join("4242/cgroup"), format!("0::{POD}/{CID}\n")).unwrap();
        let config = Config { proc_root: proc.path().to_owned(), ..Config::default() };
        let layout = Layout::detect(cgroups.path()).unwrap();
        (cgroups, proc, Resolver::new(&config, layout, None), id)
    }

    #[test]
    fn discovery_finds_containers_by_cgroup_id() {
        let (_cgroups, _proc, mut resolver, id) = fixture();
        resolver.discover().unwrap();
        let identity = resolver.by_cgroup_id(id).expect("the container by its v2 id");
        assert_eq!(identity.container_id(), Some(CID));
        assert_eq!(resolver.table().cgroups[&identity], format!("{POD}/{CID}"), "its own cgroup, not the sub-cgroup");
        let (watched, all) = resolver.watched();
        assert_eq!((watched.contains(&id), all), (true, false), "watch: auto without the API follows pods");
    }

    #[test]
    fn tgids_resolve_through_proc_and_misses_are_retried() {
        let (_cgroups, proc, mut resolver, _) = fixture();
        assert_eq!(resolver.by_tgid(4242).and_then(|i| i.container_id().map(str::to_owned)).as_deref(), Some(CID));
        // Not yet in a container: a miss, looked at again once NEGATIVE_TTL has passed.
        fs::create_dir_all(proc.path().join("77")).unwrap();
        fs::write(proc.path().join("77/cgroup"), "0::/user.slice\n").unwrap();
        assert_eq!(resolver.by_tgid(77), None);
        fs::write(proc.path().join("77/cgroup"), format!("0::{POD}/{CID}\n")).unwrap();
        assert_eq!(resolver.by_tgid(77), None, "cached for a moment");
        resolver.by_tgid.get_mut(&77).unwrap().1 -= NEGATIVE_TTL;
        assert!(resolver.by_tgid(77).is_some(), "retried after the TTL");
    }

    #[test]
    fn a_workload_starts_at_the_topmost_matched_ancestor() {
        let process = |tgid, ppid| ProcessInfo { tgid, ppid, ..ProcessInfo::default() };
        // 1 ← 10 (shell) ← 20 (server, matched) ← 30 (worker, matched too) ← 40 (helper)
        let processes = [process(10, 1), process(20, 10), process(30, 20), process(40, 30), process(50, 10)];
        let by_pid: HashMap<u32, &ProcessInfo> = processes.iter().map(|p| (p.tgid, p)).collect();
        let found = |model: &str| super::super::rules::Matched {
            rule: "r".into(),
            model: model.into(),
            version: String::new(),
        };
        let matched: HashMap<u32, _> = [(20, found("a")), (30, found("a"))].into();
        assert_eq!(topmost_matched(40, &by_pid, &matched), Some(20), "a grandchild joins the first server");
        assert_eq!(topmost_matched(30, &by_pid, &matched), Some(20), "a matched child too");
        assert_eq!(topmost_matched(50, &by_pid, &matched), None, "a sibling does not");
        assert_eq!(topmost_matched(10, &by_pid, &matched), None);
        // A cycle in a damaged /proc ends at the hop limit.
        let looped = [process(7, 8), process(8, 7)];
        let by_pid: HashMap<u32, &ProcessInfo> = looped.iter().map(|p| (p.tgid, p)).collect();
        assert_eq!(topmost_matched(7, &by_pid, &HashMap::new()), None);
    }

    #[test]
    fn an_exited_process_keeps_its_identity_for_one_fold() {
        let (_cgroups, _proc, mut resolver, _) = fixture();
        let cgroups = ProcCgroups { v1_memory: Some(format!("{POD}/{CID}")), ..ProcCgroups::default() };
        // Gone from /proc already; its cgroups were read as it exited.
        resolver.note_exit(999, Some(&cgroups));
        assert!(resolver.by_tgid(999).is_some(), "the last fold still finds it");
        resolver.end_collection();
        assert!(!resolver.by_tgid.get(&999).is_some_and(|(i, _)| i.is_some()), "then it is forgotten");
    }
}
