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

use super::{Identity, identify, model::ModelRule};
use crate::{
    config::Config,
    sources::{
        cgroup::{CgroupError, Layout, cgroup_id, walk},
        kubernetes::{PodCache, PodLookup},
        procfs::{self, ProcCgroups},
    },
    store::requests::WatchSet,
};

/// tgid look-ups remembered; the cache is cleared when it reaches this.
const MAX_TGIDS: usize = 65_536;
/// A process not (yet) in an attributable cgroup is looked at again after this: runtimes move a
/// container's first process into its cgroup after it starts.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// What the store needs to resolve an observation's keys. The real resolver reads /proc on a
/// tgid miss; tests use a table.
pub trait Resolve {
    /// The identity whose cgroup has this v2 id, among the discovered ones.
    fn by_cgroup_id(&self, id: u64) -> Option<Identity>;
    /// The identity of a process, by its cgroups (v1 nodes, hosts without v2 ids).
    fn by_tgid(&mut self, tgid: u32) -> Option<Identity>;
    /// The identity named by a process's cgroup paths, if it is one the agent attributes.
    fn by_paths(&self, cgroups: &ProcCgroups) -> Option<Identity>;
    /// What the Kubernetes API says of the identity's pod.
    fn pod(&self, identity: &Identity) -> PodLookup;
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
            export_systemd: config.attribution.systemd_units,
            watch_set: match config.requests.watch {
                WatchSet::Auto if pods.is_some() => WatchSet::Models,
                WatchSet::Auto => WatchSet::Pods,
                other => other,
            },
            pods,
            table: IdentityTable::default(),
            by_tgid: HashMap::new(),
            exited: Vec::new(),
            own_cgroup_id,
        }
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
            Identity::Docker { .. } => self.export_docker,
            Identity::SystemdUnit { .. } => self.export_systemd,
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
        Ok(())
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
                WatchSet::Pods | WatchSet::Auto => matches!(identity, Identity::PodContainer { .. }),
                WatchSet::Models => matches!(identity, Identity::PodContainer { .. }) && has_explicit_model(identity),
                WatchSet::All | WatchSet::None => false,
            })
            .map(|(id, _)| *id)
            .collect();
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
        if let Some((cached, at)) = self.by_tgid.get(&tgid)
            && (cached.is_some() || at.elapsed() < NEGATIVE_TTL)
        {
            return cached.clone();
        }
        let resolved = procfs::read_proc_cgroup(&self.proc_root, tgid).and_then(|cgroups| self.by_paths(&cgroups));
        if self.by_tgid.len() >= MAX_TGIDS {
            self.by_tgid.clear();
        }
        self.by_tgid.insert(tgid, (resolved.clone(), Instant::now()));
        resolved
    }

    fn by_paths(&self, cgroups: &ProcCgroups) -> Option<Identity> {
        cgroups.paths().map(identify).find(|identity| self.wanted(identity))
    }

    fn pod(&self, identity: &Identity) -> PodLookup {
        match (identity.pod_uid(), &self.pods) {
            (Some(uid), Some(pods)) => pods.lookup(uid),
            _ => PodLookup::Unknown,
        }
    }
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
