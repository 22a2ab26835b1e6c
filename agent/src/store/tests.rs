//! The store's rules, without root: a fake resolver stands in for cgroup discovery and /proc.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::*;
use crate::{
    attributes,
    identity::{
        identify,
        model::{Model, ModelRule},
    },
    sources::{
        cgroup::{CgroupStats, CpuStats, MemoryStats},
        kubernetes::PodContainerStatus,
        procfs::ProcCgroups,
    },
};

const UID: &str = "1b2c3d4e-0000-4000-8000-123456789abc";

fn container(n: u8) -> (Identity, String) {
    let path = format!("/kubepods/burstable/pod{UID}/{}", format!("{n:02x}").repeat(32));
    (identify(&path), path)
}

#[derive(Default)]
struct FakeResolver {
    cgroups: HashMap<u64, Identity>,
    /// Cgroups in the hierarchy but not discovered yet: found only by a walk.
    undiscovered: HashMap<u64, (Identity, String)>,
    tgids: HashMap<u32, Identity>,
    pods: HashMap<String, PodLookup>,
}

impl Resolve for FakeResolver {
    fn by_cgroup_id(&self, id: u64) -> Option<Identity> {
        self.cgroups.get(&id).cloned()
    }

    fn by_tgid(&mut self, tgid: u32) -> Option<Identity> {
        self.tgids.get(&tgid).cloned()
    }

    fn by_paths(&self, cgroups: &ProcCgroups) -> Option<Identity> {
        cgroups.paths().map(identify).find(|i| matches!(i, Identity::PodContainer { .. }))
    }

    fn find_cgroup_id(&self, id: u64) -> Option<(Identity, String)> {
        self.undiscovered.get(&id).cloned()
    }

    fn pod(&self, identity: &Identity) -> PodLookup {
        identity.pod_uid().and_then(|uid| self.pods.get(uid).cloned()).unwrap_or(PodLookup::Unknown)
    }
}

fn store() -> (Store, Arc<Telemetry>) {
    let telemetry = Arc::new(Telemetry::default());
    (Store::new(&Config::default(), telemetry.clone()), telemetry)
}

fn stats(usage_ns: Option<u64>) -> CgroupRead {
    CgroupRead::Stats(CgroupStats {
        memory: MemoryStats {
            usage_bytes: 100,
            working_set_bytes: 80,
            rss_bytes: 50,
            limit_bytes: None,
            oom_kills: None,
        },
        cpu: CpuStats { usage_ns, ..CpuStats::default() },
    })
}

fn cpu(on_cpu_ns: u64) -> TaskCpu {
    let mut cpu = TaskCpu::ZERO;
    cpu.on_cpu_ns = on_cpu_ns;
    cpu.runq_slots[3] = on_cpu_ns / 1000;
    cpu
}

fn entry(cgroup_id: u64, tgid: u32, on_cpu_ns: u64, alive: bool) -> CpuEntry {
    CpuEntry { cgroup_id, tgid, cpu: cpu(on_cpu_ns), alive }
}

fn readings(cgroups: &[(Identity, String, CgroupRead)], cpu: Option<Result<Vec<CpuEntry>, ()>>) -> Readings {
    Readings {
        cgroups: cgroups
            .iter()
            .map(|(identity, path, read)| CgroupReading { identity: identity.clone(), path: path.clone(), read: *read })
            .collect(),
        cpu,
        probes: None,
        own: None,
        pod_watch: None,
        sinks: Vec::new(),
        unnamed_processes: Vec::new(),
    }
}

fn cpu_of(snapshot: &Snapshot, identity: &Identity) -> Option<f64> {
    let id = identity.container_id()?;
    snapshot
        .containers
        .iter()
        .find(|c| attributes::get(&c.attributes, Attr::ContainerId) == Some(id))
        .map(|c| c.cpu_seconds)
}

#[test]
fn cpu_never_goes_back_across_process_exits() {
    let (mut store, _) = store();
    let (id, path) = container(1);
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(10, id.clone());
    let fold = |store: &mut Store, resolver: &mut FakeResolver, entries| {
        store.fold(readings(&[(id.clone(), path.clone(), stats(None))], Some(Ok(entries))), resolver, SystemTime::now())
    };
    let first =
        fold(&mut store, &mut resolver, vec![entry(10, 1, 2_000_000_000, true), entry(10, 2, 1_000_000_000, true)]);
    assert_eq!(cpu_of(&first, &id), Some(3.0));
    // Process 2 exits: its last figure is folded once, then its entry is gone from the map.
    let second =
        fold(&mut store, &mut resolver, vec![entry(10, 1, 2_500_000_000, true), entry(10, 2, 1_200_000_000, false)]);
    assert_eq!(cpu_of(&second, &id), Some(3.7));
    let third = fold(&mut store, &mut resolver, vec![entry(10, 1, 2_600_000_000, true)]);
    assert_eq!(cpu_of(&third, &id), Some(3.8));
    // The run-queue histogram never dips either.
    let count = |s: &Snapshot| s.containers[0].runqueue_delay.as_ref().unwrap().count;
    assert!(count(&third) >= count(&second) && count(&second) >= count(&first));
}

#[test]
fn a_failed_map_read_repeats_the_last_figures() {
    let (mut store, _) = store();
    let (id, path) = container(2);
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(20, id.clone());
    let cgroups = [(id.clone(), path.clone(), stats(Some(0)))];
    // Process 6 runs outside any attributed cgroup.
    let entries = vec![entry(20, 5, 4_000_000_000, true), entry(999, 6, 1_000_000_000, true)];
    let good = store.fold(readings(&cgroups, Some(Ok(entries))), &mut resolver, SystemTime::now());
    let failed = store.fold(readings(&cgroups, Some(Err(()))), &mut resolver, SystemTime::now());
    assert_eq!(cpu_of(&failed, &id), cpu_of(&good, &id));
    assert_eq!(good.agent.unattributed_cpu_seconds, Some(1.0));
    assert_eq!(failed.agent.unattributed_cpu_seconds, Some(1.0), "unattributed CPU does not dip either");
    assert_eq!(failed.containers[0].runqueue_delay, good.containers[0].runqueue_delay, "no dip after a failed read");
}

#[test]
fn the_cgroup_life_before_the_agent_survives_a_failed_first_read() {
    let (mut store, _) = store();
    let (id, path) = container(3);
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(30, id.clone());
    let first = store.fold(
        readings(&[(id.clone(), path.clone(), CgroupRead::NoFiles)], Some(Ok(vec![entry(30, 1, 1_000_000_000, true)]))),
        &mut resolver,
        SystemTime::now(),
    );
    assert_eq!(cpu_of(&first, &id), Some(1.0));
    // The cgroup had run 100 s before the agent started; the probes saw 2 s of it by now.
    let second = store.fold(
        readings(
            &[(id.clone(), path, stats(Some(100_000_000_000)))],
            Some(Ok(vec![entry(30, 1, 2_000_000_000, true)])),
        ),
        &mut resolver,
        SystemTime::now(),
    );
    assert_eq!(cpu_of(&second, &id), Some(100.0));
}

#[test]
fn a_removed_cgroup_vanishes_and_a_recreated_one_never_goes_back() {
    let (mut store, _) = store();
    let (id, path) = container(4);
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(40, id.clone());
    let with = |read| [(id.clone(), path.clone(), read)];
    let before = store.fold(readings(&with(stats(Some(5_000_000_000))), None), &mut resolver, SystemTime::now());
    assert_eq!(cpu_of(&before, &id), Some(5.0));
    let gone = store.fold(readings(&with(CgroupRead::Gone), None), &mut resolver, SystemTime::now());
    assert!(gone.containers.is_empty(), "a gone cgroup's series vanish at the next fold");
    let not_listed = store.fold(readings(&[], None), &mut resolver, SystemTime::now());
    assert!(not_listed.containers.is_empty());
    // The same container id re-created: a new series starting from the new cgroup's own figure.
    let again = store.fold(readings(&with(stats(Some(1_000_000_000))), None), &mut resolver, SystemTime::now());
    assert_eq!(cpu_of(&again, &id), Some(1.0));
    // …which never goes back, even when the cgroup's own counter reads lower.
    let lower = store.fold(readings(&with(stats(Some(900_000_000))), None), &mut resolver, SystemTime::now());
    assert_eq!(cpu_of(&lower, &id), Some(1.0));
}

#[test]
fn exited_processes_of_a_v1_node_keep_their_container() {
    // On v1 nodes the cgroup id says nothing: the tgid is resolved, also for the last fold.
    let (mut store, _) = store();
    let (id, path) = container(5);
    let mut resolver = FakeResolver::default();
    resolver.tgids.insert(77, id.clone());
    let cgroups = [(id.clone(), path, stats(None))];
    store.fold(
        readings(&cgroups, Some(Ok(vec![entry(999, 77, 1_000_000_000, true)]))),
        &mut resolver,
        SystemTime::now(),
    );
    let after = store.fold(
        readings(&cgroups, Some(Ok(vec![entry(999, 77, 3_000_000_000, false)]))),
        &mut resolver,
        SystemTime::now(),
    );
    assert_eq!(cpu_of(&after, &id), Some(3.0));
    assert_eq!(after.agent.unattributed_cpu_seconds, Some(0.0));
}

/// Pod `bert-0` in namespace `ml`, serving model bert version 2, with `container` named `server`.
fn bert_pod(container: &Identity) -> PodMeta {
    PodMeta {
        uid: UID.into(),
        namespace: "ml".into(),
        name: "bert-0".into(),
        labels: Default::default(),
        annotations: Default::default(),
        owner: None,
        qos_class: None,
        containers: [(
            container.container_id().unwrap().to_owned(),
            // A status without a scheme this agent knows: the cgroup's bare id says no runtime either.
            PodContainerStatus { name: "server".to_owned(), runtime: Runtime::Unknown },
        )]
        .into(),
        model: Some(Model { name: "bert".into(), version: "2".into(), rule: ModelRule::Annotation }),
        ready: Some(true),
    }
}

#[test]
fn deleted_pods_lose_their_series_and_known_ones_carry_names() {
    let (mut store, _) = store();
    let (id, path) = container(6);
    let mut resolver = FakeResolver::default();
    resolver.pods.insert(UID.into(), PodLookup::Known(Arc::new(bert_pod(&id))));
    let cgroups = [(id.clone(), path, stats(Some(0)))];
    let known = store.fold(readings(&cgroups, None), &mut resolver, SystemTime::now());
    let attributes = &known.containers[0].attributes;
    assert_eq!(attributes::get(attributes, Attr::PodName), Some("bert-0"));
    assert_eq!(attributes::get(attributes, Attr::ContainerName), Some("server"));
    assert_eq!(attributes::get(attributes, Attr::ModelName), Some("bert"));
    resolver.pods.insert(UID.into(), PodLookup::Deleted);
    let deleted = store.fold(readings(&cgroups, None), &mut resolver, SystemTime::now());
    assert!(deleted.containers.is_empty(), "the API deleted the pod: its series go");
}

fn request(target: &str) -> Observation {
    Observation::Exchange {
        cgroup_id: 60,
        tgid: 1,
        exchange: Box::new(Exchange {
            start_ns: 0,
            end_ns: 2_000_000,
            method: "GET",
            target: target.into(),
            status: 200,
            request_body_prefix: Vec::new(),
            response_body_prefix: Vec::new(),
            request_bytes: None,
            response_bytes: None,
        }),
    }
}

#[test]
fn request_routes_overflow_to_other_and_vanish_with_their_container() {
    let telemetry = Arc::new(Telemetry::default());
    let mut config = Config::default();
    config.requests.route_budget = 3;
    let mut store = Store::new(&config, telemetry);
    let (id, path) = container(7);
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(60, id.clone());
    let cgroups = [(id.clone(), path, stats(Some(0)))];
    store.fold(readings(&cgroups, None), &mut resolver, SystemTime::now());
    for i in 0..10 {
        let mut logs = Vec::new();
        store.apply(request(&format!("/page{i}x")), &mut resolver, Instant::now(), &mut logs);
        assert!(logs.is_empty(), "neither slow nor failed");
    }
    let snapshot = store.fold(readings(&cgroups, None), &mut resolver, SystemTime::now());
    let routes: Vec<&str> =
        snapshot.requests.iter().filter_map(|r| attributes::get(&r.attributes, Attr::HttpRoute)).collect();
    assert_eq!(routes.len(), 4, "{routes:?}");
    let other = snapshot.requests.iter().find(|r| attributes::get(&r.attributes, Attr::HttpRoute) == Some("_other"));
    assert_eq!(other.map(|r| r.duration.count), Some(7));
    assert_eq!(snapshot.agent.route_overflow, vec![(String::new(), 7)]);
    let gone = store.fold(readings(&[], None), &mut resolver, SystemTime::now());
    assert!(gone.requests.is_empty(), "a gone container's request series go with it");
}

/// An OOM kill of process `tgid` by the task in cgroup `current_cgroup_id` (itself when
/// `victim_is_current`), with the victim's v2 path as read from /proc, if it was still there.
fn oom_kill(tgid: u32, current_cgroup_id: u64, victim_is_current: bool, victim_path: Option<&str>) -> Observation {
    Observation::OomKill(Box::new(OomKill {
        victim_tgid: tgid,
        current_cgroup_id,
        victim_is_current,
        victim_cgroups: victim_path.map(|path| ProcCgroups { v2: Some(path.to_owned()), ..ProcCgroups::default() }),
    }))
}

/// Readings with the OOM probe attached and these probe CPU entries.
fn readings_with_oom_probe(cgroups: &[(Identity, String, CgroupRead)], entries: Vec<CpuEntry>) -> Readings {
    let mut readings = readings(cgroups, Some(Ok(entries)));
    readings.probes = Some(ProbeHealth { has_oom_probe: true, family: "tracepoint", ..ProbeHealth::default() });
    readings
}

#[test]
fn oom_kills_land_in_their_container_or_are_counted() {
    let (mut store, telemetry) = store();
    let (id, path) = container(8);
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(80, id.clone());
    let cgroups = [(id.clone(), path.clone(), stats(Some(0)))];
    // Before discovery: kept by cgroup id, applied at the fold.
    store.apply(oom_kill(5, 80, true, None), &mut resolver, Instant::now(), &mut Vec::new());
    let with_probes = readings_with_oom_probe(&cgroups, Vec::new());
    let first = store.fold(with_probes.clone(), &mut resolver, SystemTime::now());
    assert_eq!(first.containers[0].oom_kills, 1);
    // A victim killed by another task: found by the cgroups read while it was killed.
    store.apply(oom_kill(6, 1, false, Some(&path)), &mut resolver, Instant::now(), &mut Vec::new());
    // And one that belongs to nothing attributed.
    store.apply(oom_kill(7, 1, false, None), &mut resolver, Instant::now(), &mut Vec::new());
    let second = store.fold(with_probes, &mut resolver, SystemTime::now());
    assert_eq!(second.containers[0].oom_kills, 2);
    assert_eq!(telemetry.dropped_for(DropReason::OomVictimUnattributed), 1);
}

#[test]
fn a_container_killed_and_removed_between_collections_keeps_its_kill_for_a_while() {
    let (mut store, _) = store();
    let with_probes = readings_with_oom_probe;
    let oom_rows = |snapshot: &Snapshot| -> Vec<(String, u64, f64)> {
        let mut rows: Vec<_> = snapshot
            .containers
            .iter()
            .map(|c| {
                (attributes::get(&c.attributes, Attr::ContainerId).unwrap_or("").to_owned(), c.oom_kills, c.cpu_seconds)
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    };
    let (known, known_path) = container(9);
    let (unseen, unseen_path) = container(10);
    let (reaped, reaped_path) = container(11);
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(90, known.clone());
    let start = SystemTime::now();
    store.fold(with_probes(&[(known.clone(), known_path.clone(), stats(Some(0)))], vec![]), &mut resolver, start);
    // The known container's process kills itself and its runtime removes the cgroup; another
    // container is created, killed and removed before any discovery (its id unknown, its path
    // read from /proc while it was being killed).
    store.apply(oom_kill(5, 90, true, None), &mut resolver, Instant::now(), &mut Vec::new());
    resolver.cgroups.clear();
    store.apply(oom_kill(6, 100, true, Some(&unseen_path)), &mut resolver, Instant::now(), &mut Vec::new());
    // A third, reaped before /proc was read: its cgroup is still there, found by its id.
    resolver.undiscovered.insert(110, (reaped.clone(), reaped_path));
    store.apply(oom_kill(7, 110, true, None), &mut resolver, Instant::now(), &mut Vec::new());
    // Both report their kill, with the CPU their processes had (the unseen one's by its id).
    let later = start + Duration::from_secs(1);
    let gone = store.fold(with_probes(&[], vec![entry(100, 6, 250_000_000, false)]), &mut resolver, later);
    let ids = [&known, &unseen, &reaped].map(|i| i.container_id().unwrap().to_owned());
    assert_eq!(oom_rows(&gone), [(ids[0].clone(), 1, 0.0), (ids[1].clone(), 1, 0.25), (ids[2].clone(), 1, 0.0)]);
    assert!(gone.containers.iter().all(|c| c.memory.is_none()), "no memory for a gone cgroup");
    let events = store.take_events();
    let kills: Vec<_> = events.iter().filter(|e| e.name == EventName::OomKill).collect();
    assert_eq!(kills.len(), 3, "{events:?}");
    // They stay for OOM_LINGER, then go; the kill is announced once.
    let still = store.fold(with_probes(&[], vec![]), &mut resolver, later + OOM_LINGER - Duration::from_secs(1));
    assert_eq!(oom_rows(&still).len(), 3);
    assert!(store.take_events().iter().all(|e| e.name != EventName::OomKill));
    let after = store.fold(with_probes(&[], vec![]), &mut resolver, later + OOM_LINGER);
    assert!(after.containers.is_empty(), "{:?}", oom_rows(&after));
}

#[test]
fn series_budgets_per_workload_and_node_fold_into_other() {
    let telemetry = Arc::new(Telemetry::default());
    let mut config = Config::default();
    config.requests.workload_series_budget = 5;
    config.requests.node_series_budget = 8;
    let mut store = Store::new(&config, telemetry);
    let (a, path_a) = container(9);
    let path_b = format!("/kubepods/besteffort/pod2b2c3d4e-0000-4000-8000-123456789abc/{}", "0a".repeat(32));
    let b = identify(&path_b);
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(60, a.clone());
    resolver.cgroups.insert(61, b.clone());
    let cgroups = [(a.clone(), path_a, stats(None)), (b.clone(), path_b, stats(None))];
    store.fold(readings(&cgroups, None), &mut resolver, SystemTime::now());
    let send = |store: &mut Store, resolver: &mut FakeResolver, cgroup_id: u64, target: &str, status: u16| {
        let Observation::Exchange { exchange, .. } = request(target) else { unreachable!() };
        let exchange = Box::new(Exchange { status, ..*exchange });
        store.apply(Observation::Exchange { cgroup_id, tgid: 1, exchange }, resolver, Instant::now(), &mut Vec::new());
    };
    // Container a (its own pod here, without the API): 12 routes → 5 kept, 7 folded.
    for i in 0..12 {
        send(&mut store, &mut resolver, 60, &format!("/r{i}x"), if i % 2 == 0 { 200 } else { 503 });
    }
    // Container b of another pod: 3 routes fit the node budget (8), 2 do not.
    for i in 0..5 {
        send(&mut store, &mut resolver, 61, &format!("/s{i}x"), 200);
    }
    let snapshot = store.fold(readings(&cgroups, None), &mut resolver, SystemTime::now());
    let routes_of = |id: &Identity| -> Vec<(String, String)> {
        snapshot
            .requests
            .iter()
            .filter(|r| attributes::get(&r.attributes, Attr::ContainerId) == id.container_id())
            .map(|r| {
                let get = |attr| attributes::get(&r.attributes, attr).unwrap_or_default().to_owned();
                (get(Attr::HttpRoute), get(Attr::HttpStatus))
            })
            .collect()
    };
    let a_routes = routes_of(&a);
    assert_eq!(a_routes.iter().filter(|(route, _)| route != "_other").count(), 5, "{a_routes:?}");
    // Folded requests keep their status: one `_other` series per status.
    let a_other: Vec<&String> = a_routes.iter().filter(|(route, _)| route == "_other").map(|(_, s)| s).collect();
    assert_eq!(a_other, ["200", "503"], "{a_routes:?}");
    let b_routes = routes_of(&b);
    assert_eq!(b_routes.iter().filter(|(route, _)| route != "_other").count(), 3, "{b_routes:?}");
    assert_eq!(snapshot.agent.series_overflow, vec![("workload_budget", 7), ("node_budget", 2)]);
    let total: u64 = snapshot.requests.iter().map(|r| r.duration.count).sum();
    assert_eq!(total, 17, "every request is still counted");
    // A gone container gives its series back to the budgets.
    let only_b = [cgroups[1].clone()];
    store.fold(readings(&only_b, None), &mut resolver, SystemTime::now());
    send(&mut store, &mut resolver, 61, "/s9x", 200);
    let after = store.fold(readings(&only_b, None), &mut resolver, SystemTime::now());
    assert!(
        after.requests.iter().any(|r| attributes::get(&r.attributes, Attr::HttpRoute) == Some("/s9x")),
        "room again once a's series left"
    );
}

#[test]
fn a_skewed_first_estimate_of_the_pre_agent_history_is_corrected() {
    let (mut store, _) = store();
    let (id, path) = container(11);
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(70, id.clone());
    let fold = |store: &mut Store, resolver: &mut FakeResolver, usage_s: f64, probes_s: f64| {
        let cgroups = [(id.clone(), path.clone(), stats(Some((usage_s * 1e9) as u64)))];
        let entries = vec![entry(70, 1, (probes_s * 1e9) as u64, true)];
        cpu_of(&store.fold(readings(&cgroups, Some(Ok(entries))), resolver, SystemTime::now()), &id).unwrap()
    };
    // 10 s before the agent; at first sight the files were read 0.08 s of CPU after the map.
    assert!((fold(&mut store, &mut resolver, 12.08, 2.0) - 12.08).abs() < 1e-9);
    // With the first estimate kept, the counter would now run 0.08 s ahead of the cgroup.
    // A quiet collection (files and map agree) corrects it: it follows the probes from there,
    // never above the cgroup's own figure and never back.
    assert!((fold(&mut store, &mut resolver, 12.5, 2.5) - 12.5).abs() < 1e-9);
    assert!((fold(&mut store, &mut resolver, 13.0, 3.0) - 13.0).abs() < 1e-9);
    // A busy read again (files 0.05 s ahead): the estimate is not raised by it.
    assert!((fold(&mut store, &mut resolver, 14.05, 4.0) - 14.0).abs() < 1e-9);
}

#[test]
fn container_changes_become_events_once() {
    let (mut store, _) = store();
    let (id, path) = container(7);
    let mut resolver = FakeResolver::default();
    resolver.pods.insert(UID.into(), PodLookup::Known(Arc::new(bert_pod(&id))));
    let read = |oom_kills: u64, periods: u64, throttled_periods: u64| {
        let mut read = stats(Some(0));
        if let CgroupRead::Stats(s) = &mut read {
            s.memory.oom_kills = Some(oom_kills);
            s.cpu.periods = periods;
            s.cpu.throttled_periods = throttled_periods;
        }
        read
    };
    let mut fold = |store: &mut Store, read: CgroupRead| {
        store.fold(readings(&[(id.clone(), path.clone(), read)], None), &mut resolver, SystemTime::now());
        store.take_events()
    };
    let names = |events: &[LogRecord]| events.iter().map(|e| e.name).collect::<Vec<_>>();

    let first = fold(&mut store, read(0, 100, 0));
    assert_eq!(names(&first), [EventName::ModelDiscovered]);
    assert_eq!(first[0].message, "model bert version 2 discovered on this node");
    // Throttled in half the periods for three collections: one event, not one per collection.
    let mut throttled = Vec::new();
    for step in 1..=5 {
        throttled.extend(fold(&mut store, read(0, 100 + step * 100, step * 50)));
    }
    assert_eq!(names(&throttled), [EventName::CpuThrottled]);
    assert_eq!(attributes_of(&throttled[0], Attr::PodName), Some("bert-0"));
    let oom = fold(&mut store, read(2, 600, 250));
    assert_eq!(names(&oom), [EventName::OomKill]);
    assert_eq!(oom[0].fields, vec![(EventField::Kills, 2.0)]);
    assert!(oom[0].message.contains("bert-0 container server"), "{}", oom[0].message);
    assert!(fold(&mut store, read(2, 700, 250)).is_empty(), "the same kills are not announced twice");
    let gone = {
        store.fold(readings(&[], None), &mut resolver, SystemTime::now());
        store.take_events()
    };
    assert_eq!(names(&gone), [EventName::ModelGone]);
    let ids: std::collections::HashSet<_> =
        first.iter().chain(&throttled).chain(&oom).chain(&gone).map(|e| &e.id).collect();
    assert_eq!(ids.len(), 4, "ids are unique");
}

fn attributes_of(record: &LogRecord, attr: Attr) -> Option<&str> {
    record.attributes.iter().find(|(a, _)| *a == attr).and_then(|(_, v)| v.as_deref())
}

#[test]
fn a_process_workload_keeps_its_version_for_its_own_model_and_takes_a_request_named_other() {
    let (mut store, _) = store();
    let identity = Identity::Process { pid: 42, name: "python3".into(), model: "toy".into(), version: "1".into() };
    let mut resolver = FakeResolver::default();
    resolver.cgroups.insert(60, identity.clone());
    let cgroups = [(identity.clone(), "/proc/42".to_owned(), stats(Some(0)))];
    store.fold(readings(&cgroups, None), &mut resolver, SystemTime::now());
    let chat = |model: &str| {
        let Observation::Exchange { cgroup_id, tgid, mut exchange } = request("/v1/chat/completions") else {
            unreachable!("request() builds an exchange")
        };
        exchange.method = "POST";
        exchange.request_body_prefix = format!(r#"{{"messages":[],"model":"{model}"}}"#).into_bytes();
        Observation::Exchange { cgroup_id, tgid, exchange }
    };
    let mut logs = Vec::new();
    for model in ["toy", "toy", "llama3"] {
        store.apply(chat(model), &mut resolver, Instant::now(), &mut logs);
    }
    let snapshot = store.fold(readings(&cgroups, None), &mut resolver, SystemTime::now());
    let series: Vec<(Option<&str>, Option<&str>, u64)> = snapshot
        .requests
        .iter()
        .map(|r| {
            let get = |attr| attributes::get(&r.attributes, attr);
            (get(Attr::ModelName), get(Attr::ModelVersion), r.duration.count)
        })
        .collect();
    assert!(series.contains(&(Some("toy"), Some("1"), 2)), "the rule's model with its version: {series:?}");
    assert!(series.contains(&(Some("llama3"), Some(""), 1)), "another model the request names: {series:?}");
    let pid = attributes::get(&snapshot.requests[0].attributes, Attr::ProcessPid);
    assert_eq!(pid, Some("42"));
}
