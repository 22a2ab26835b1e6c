//! Golden test of the `/metrics` exposition: a fixed snapshot must encode to exactly the committed
//! text, so family names, label names, label order and series never change by accident. After an
//! intended change, regenerate with `UPDATE_GOLDEN=1 cargo test -p modelmeter --test exposition`.

use std::time::SystemTime;

use modelmeter::{
    identity::{
        Identity, Runtime, identify,
        model::{Model, ModelRule},
    },
    sinks::prometheus,
    sources::kubernetes::{PodContainerStatus, PodMeta, WatchStatus},
    store::{
        AgentRow, ContainerRow, Histogram, Memory, ProbeRow, RequestRow, Snapshot, Throttling, identity_attributes,
    },
    telemetry::{DropReason, PairPath, SkipReason, Stage, WatchErrorReason},
};

const UID: &str = "1b2c3d4e-0000-4000-8000-123456789abc";
const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn latency() -> Histogram {
    // 1, 3, 7, 20, 300 and 12,000 ms in the semantic-convention buckets.
    Histogram {
        bounds: vec![0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0],
        counts: vec![2, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1],
        sum: 12.331,
        count: 6,
    }
}

fn fixed_snapshot() -> Snapshot {
    let pod_identity = identify(&format!("/kubepods/burstable/pod{UID}/{CID}"));
    let meta = PodMeta {
        uid: UID.into(),
        namespace: "ml".into(),
        name: "bert-0".into(),
        labels: Default::default(),
        annotations: Default::default(),
        owner: None,
        qos_class: Some("Burstable".into()),
        // The cgroupfs path does not name the runtime; the pod's container status does.
        containers: [(CID.to_owned(), PodContainerStatus { name: "server".to_owned(), runtime: Runtime::Containerd })]
            .into(),
        model: Some(Model { name: "bert".into(), version: "2".into(), rule: ModelRule::Annotation }),
        ready: Some(true),
    };
    let memory = Memory { usage_bytes: 1000, working_set_bytes: 800, rss_bytes: 300, limit_bytes: Some(2000) };
    let throttling = Throttling { throttled_seconds: 0.0007, periods: 10, throttled_periods: 2 };
    let runq_bounds: Vec<f64> = (0..14).map(|i| 1e-6 * 4f64.powi(i)).collect();
    let mut runq_counts = vec![0; 15];
    runq_counts[0] = 1;
    runq_counts[2] = 4;
    runq_counts[5] = 2;
    runq_counts[14] = 1;
    let request = |identity: &Identity, pod: Option<&PodMeta>, method: &str, route: &str, status: u16, model| {
        let mut attributes = identity_attributes(identity, pod, model);
        if !attributes.iter().any(|(a, _)| *a == modelmeter::attributes::Attr::ModelName) {
            let (name, version) = model.unwrap_or(("", ""));
            attributes.push((modelmeter::attributes::Attr::ModelName, name.to_owned()));
            attributes.push((modelmeter::attributes::Attr::ModelVersion, version.to_owned()));
        }
        use modelmeter::attributes::Attr;
        attributes.extend([
            (Attr::HttpMethod, method.to_owned()),
            (Attr::HttpRoute, route.to_owned()),
            (Attr::HttpStatus, status.to_string()),
            (Attr::UrlScheme, "http".to_owned()),
            (Attr::ErrorType, if status >= 500 { status.to_string() } else { String::new() }),
        ]);
        RequestRow { attributes, duration: latency(), p50_seconds: None, p90_seconds: None, p99_seconds: None }
    };
    Snapshot {
        taken_at: SystemTime::UNIX_EPOCH,
        containers: vec![
            ContainerRow {
                attributes: identity_attributes(&identify(&format!("/docker/{CID}")), None, None),
                cgroup: format!("/docker/{CID}"),
                cpu_seconds: 2.0,
                runqueue_delay: Some(Histogram {
                    bounds: runq_bounds.clone(),
                    counts: vec![0; 15],
                    sum: 0.0,
                    count: 0,
                }),
                throttling: Some(throttling),
                memory: Some(Memory { limit_bytes: None, ..memory }),
                oom_kills: 0,
                pod_ready: None,
            },
            ContainerRow {
                attributes: identity_attributes(&pod_identity, Some(&meta), None),
                cgroup: format!("/kubepods/burstable/pod{UID}/{CID}"),
                cpu_seconds: 12.5,
                runqueue_delay: Some(Histogram { bounds: runq_bounds, counts: runq_counts, sum: 0.0015, count: 8 }),
                throttling: Some(throttling),
                memory: Some(memory),
                oom_kills: 1,
                pod_ready: Some(true),
            },
            ContainerRow {
                attributes: identity_attributes(&identify("/system.slice/ssh.service"), None, None),
                cgroup: "/system.slice/ssh.service".into(),
                cpu_seconds: 7e-9,
                runqueue_delay: None,
                throttling: None,
                memory: None,
                oom_kills: 0,
                pod_ready: None,
            },
        ],
        requests: vec![
            request(&pod_identity, Some(&meta), "GET", "/v1/models/{model}:predict", 200, Some(("resnet", "1"))),
            request(&pod_identity, Some(&meta), "POST", "/v2/models/{model}/infer", 503, None),
            request(&Identity::Other, None, "_OTHER", "_other", 500, None),
        ],
        gpus: Vec::new(),
        gpu_use: Vec::new(),
        agent: AgentRow {
            collections: 3,
            last_collection_seconds: 0.012,
            probe_family: Some("tracepoint".into()),
            probes: vec![ProbeRow {
                name: "sched_switch_tp".into(),
                event: "sched/sched_switch".into(),
                run_time_seconds: 1.5,
                runs: 42,
            }],
            ringbuf_drops: vec![("events".into(), 1), ("payloads".into(), 2)],
            probe_errors: vec![
                ("task_cpu_map_full".into(), 3),
                ("wakeup_map_errors".into(), 0),
                ("active_call_errors".into(), 0),
            ],
            collection_errors: vec![(Stage::CgroupRead, 2), (Stage::Discover, 1)],
            unattributed_cpu_seconds: Some(4.5),
            requests_traced: true,
            watched_cgroups: 2,
            connections: 5,
            route_overflow: vec![("bert".into(), 4)],
            series_overflow: vec![("workload_budget", 9), ("node_budget", 0)],
            model_overflow: 1,
            http_skipped: vec![(SkipReason::NotHttp, 6), (SkipReason::UnmatchedResponse, 1)],
            paired_requests: vec![(PairPath::Kernel, 40), (PairPath::Userspace, 2)],
            fallback_connections: 1,
            events_dropped: vec![
                (DropReason::Malformed, 0),
                (DropReason::OomVictimUnattributed, 1),
                (DropReason::MalformedPayload, 0),
                (DropReason::RequestEventRateLimited, 7),
                (DropReason::QueueFull, 0),
            ],
            cpu_seconds: Some(0.25),
            resident_bytes: Some(20_971_520),
            sinks: Vec::new(),
            pod_watch: Some(WatchStatus {
                up: false,
                synced_once: true,
                pods: 12,
                errors: WatchErrorReason::ALL
                    .iter()
                    .map(|r| (*r, if *r == WatchErrorReason::Unreachable { 3 } else { 0 }))
                    .collect(),
                last_sync_age: std::time::Duration::from_millis(42_500),
                last_error: Some((WatchErrorReason::Unreachable, "connection refused".into())),
            }),
        },
        unnamed_processes: Vec::new(),
    }
}

#[test]
fn exposition_matches_the_golden_file() {
    let text = prometheus::encode_snapshot_text(fixed_snapshot()).expect("encoding");
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/metrics.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).expect("writing the golden file");
    }
    let want = std::fs::read_to_string(&golden).expect("the golden file (UPDATE_GOLDEN=1 writes it)");
    if text != want {
        let diff: Vec<String> = want
            .lines()
            .zip(text.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "the exposition changed ({} lines now, {} in the golden file):\n{}",
            text.lines().count(),
            want.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn every_series_of_a_snapshot_is_exposed_once() {
    let text = prometheus::encode_snapshot_text(fixed_snapshot()).expect("encoding");
    let mut seen = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.rsplit_once(' ').map(|(series, _)| series).unwrap_or(line);
        assert!(seen.insert(series.to_owned()), "duplicate series {series}");
    }
    assert!(text.ends_with("# EOF\n"));
}
