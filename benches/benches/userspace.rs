//! Userspace hot paths: identity of a cgroup path, cgroup file readers, /proc/<pid>/cgroup
//! parsing, the request pipeline (payload source → store), folding 2,000 containers, encoding a
//! 50-container snapshot as `/metrics` text and as OTLP, and events through each sink's encoder.

use std::{
    collections::HashMap,
    hint::black_box,
    sync::Arc,
    time::{Instant, SystemTime},
};

use agent_common::sched::{TaskCpu, runq_slot};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use modelmeter::{
    attributes::Attr,
    config::Config,
    identity::{Identity, identify, resolver::Resolve},
    sinks::{elasticsearch, loki, otlp, prometheus, stdout},
    sources::{
        Outbox, cgroup,
        gpu::{GpuSource, Reader},
        kubernetes::PodLookup,
        procfs::{self, ProcCgroups},
    },
    store::{
        AgentRow, CgroupRead, CgroupReading, ContainerRow, CpuEntry, EventField, EventName, Histogram, LogRecord,
        Readings, Severity, Snapshot, Store, gpu::GpuStore,
    },
    telemetry::Telemetry,
};

/// Identities by cgroup id, as discovery would have found them.
struct Table(HashMap<u64, Identity>);

impl Resolve for Table {
    fn by_cgroup_id(&self, id: u64) -> Option<Identity> {
        self.0.get(&id).cloned()
    }

    fn by_tgid(&mut self, _: u32) -> Option<Identity> {
        None
    }

    fn by_paths(&self, _: &ProcCgroups) -> Option<Identity> {
        None
    }

    fn pod(&self, _: &Identity) -> PodLookup {
        PodLookup::Unknown
    }
}

const SYSTEMD_PATH: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_4000_8000_123456789abc.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";

fn identity(c: &mut Criterion) {
    c.bench_function("identify systemd container path", |b| b.iter(|| identify(black_box(SYSTEMD_PATH))));
    c.bench_function("identify systemd unit path", |b| b.iter(|| identify(black_box("/system.slice/ssh.service"))));
    c.bench_function("runq_slot", |b| b.iter(|| runq_slot(black_box(123_456_789))));
}

/// The standalone rules: every built-in tried on a command line none of them names (the common
/// case on a node), one that the first rule names, and the /proc scan they run on.
fn standalone(c: &mut Criterion) {
    use modelmeter::identity::rules::{ProcessFacts, Rules};
    let rules = Rules::compile(&[], true).expect("the built-in rules compile");
    let argv = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let unnamed = argv("/usr/bin/python3 /srv/app/worker.py --queue default --concurrency 8");
    let vllm = argv("/usr/bin/python3 /usr/local/bin/vllm serve meta-llama/Llama-3.1-8B-Instruct --port 8000");
    let facts = |cmdline| ProcessFacts { exe: "python3.11", cmdline, cgroup: "/user.slice/user-1000.slice" };
    c.bench_function("rules: a process no rule names", |b| b.iter(|| rules.match_process(black_box(&facts(&unnamed)))));
    c.bench_function("rules: vllm serve", |b| b.iter(|| rules.match_process(black_box(&facts(&vllm)))));
    c.bench_function("scan /proc (every process)", |b| {
        b.iter(|| procfs::scan_processes(black_box(std::path::Path::new("/proc"))))
    });
}

fn readers(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("fixture");
    write("memory.current", "210239488\n");
    write("memory.max", "max\n");
    write("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n");
    write(
        "memory.stat",
        "anon 209715200\nfile 524288\nkernel 1048576\nactive_anon 209715200\ninactive_anon 0\nactive_file 262144\ninactive_file 262144\npgfault 51200\n",
    );
    write(
        "cpu.stat",
        "usage_usec 6004000\nuser_usec 6000000\nsystem_usec 4000\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
    );
    c.bench_function("read v2 memory stats", |b| {
        b.iter(|| cgroup::read_memory_v2(black_box(dir.path())).expect("read"))
    });
    c.bench_function("read v2 cpu stats", |b| b.iter(|| cgroup::read_cpu_v2(black_box(dir.path())).expect("read")));
    let proc_cgroup = "12:memory:/kubepods/burstable/podx/abc\n4:cpu,cpuacct:/kubepods/burstable/podx/abc\n1:name=systemd:/\n0::/kubepods/burstable/podx/abc\n";
    c.bench_function("parse /proc/<pid>/cgroup", |b| b.iter(|| procfs::parse_proc_cgroup(black_box(proc_cgroup))));
}

fn encode(c: &mut Criterion) {
    let containers = (0..50)
        .map(|i| {
            let path = format!("/kubepods/burstable/pod1b2c3d4e-0000-4000-8000-{i:012}/{:064x}", i);
            ContainerRow {
                attributes: modelmeter::store::identity_attributes(&identify(&path), None, None),
                cgroup: path,
                cpu_seconds: i as f64 / 1000.0,
                runqueue_delay: Some(Histogram {
                    bounds: vec![1e-6, 4e-6, 16e-6],
                    counts: vec![0, 100, 0, 0],
                    sum: 0.001,
                    count: 100,
                }),
                throttling: None,
                memory: None,
                oom_kills: 0,
                pod_ready: None,
            }
        })
        .collect();
    let snapshot = Arc::new(Snapshot {
        taken_at: SystemTime::now(),
        containers,
        requests: Vec::new(),
        gpus: Vec::new(),
        gpu_use: Vec::new(),
        agent: AgentRow::default(),
        unnamed_processes: Vec::new(),
    });
    c.bench_function("encode /metrics, 50 containers", |b| {
        b.iter(|| prometheus::encode(black_box(snapshot.clone())).expect("encode"))
    });
    let resource = otlp::resource("node-a", &|_| None);
    c.bench_function("encode OTLP metrics, 50 containers", |b| {
        b.iter(|| {
            let request = otlp::encode_metrics(black_box(&snapshot), &resource, SystemTime::UNIX_EPOCH);
            prost::Message::encode_to_vec(&request)
        })
    });
}

/// Events per second through each sink's encoder, one batch of 1,000 events at a time.
fn encode_events(c: &mut Criterion) {
    let events: Vec<LogRecord> = (0..1000)
        .map(|n| LogRecord {
            id: format!("{n:032x}"),
            time: SystemTime::now(),
            severity: Severity::Warn,
            name: EventName::SlowRequest,
            message: format!("POST /v1/chat/completions took {n}.5 ms (status 200)"),
            attributes: vec![
                (Attr::HttpMethod, Some("POST".into())),
                (Attr::HttpRoute, Some("/v1/chat/completions".into())),
                (Attr::HttpStatus, Some("200".into())),
                (Attr::ModelName, Some(format!("model-{}", n % 3))),
                (Attr::PodUid, Some("1b2c3d4e-0000-4000-8000-123456789abc".into())),
                (Attr::ContainerId, Some(format!("{n:064x}"))),
                (Attr::Namespace, Some("ml".into())),
                (Attr::PodName, Some(format!("server-{}", n % 10))),
            ],
            fields: vec![(EventField::DurationMs, n as f64 + 0.5)],
        })
        .collect();
    let mut group = c.benchmark_group("encode 1,000 events");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("stdout JSON lines", |b| {
        b.iter(|| black_box(&events).iter().map(|e| stdout::json(e).to_string().len()).sum::<usize>())
    });
    group.bench_function("Loki protobuf+snappy", |b| b.iter(|| loki::encode_protobuf(black_box(&events), "node-a")));
    group.bench_function("Loki JSON", |b| b.iter(|| loki::encode_json(black_box(&events), "node-a")));
    group.bench_function("Elasticsearch bulk", |b| {
        b.iter(|| elasticsearch::encode_bulk(black_box(&events), "node-a", "logs-modelmeter-default"))
    });
    let resource = otlp::resource("node-a", &|_| None);
    group.bench_function("OTLP logs protobuf", |b| {
        b.iter(|| prost::Message::encode_to_vec(&otlp::encode_logs(black_box(&events), &resource)))
    });
    group.finish();
}

fn fold(c: &mut Criterion) {
    let identities: Vec<(u64, Identity, String)> = (0..2000u64)
        .map(|i| {
            let path = format!("/kubepods/burstable/pod1b2c3d4e-0000-4000-8000-{i:012}/{:064x}", i);
            (i, identify(&path), path)
        })
        .collect();
    let mut resolver = Table(identities.iter().map(|(id, identity, _)| (*id, identity.clone())).collect());
    let readings = Readings {
        cgroups: identities
            .iter()
            .map(|(_, identity, path)| CgroupReading {
                identity: identity.clone(),
                path: path.clone(),
                read: CgroupRead::Stats(cgroup::CgroupStats::default()),
            })
            .collect(),
        cpu: Some(Ok(identities
            .iter()
            .map(|(id, _, _)| CpuEntry { cgroup_id: *id, tgid: *id as u32, cpu: TaskCpu::ZERO, alive: true })
            .collect())),
        probes: None,
        own: None,
        pod_watch: None,
        sinks: Vec::new(),
        unnamed_processes: Vec::new(),
    };
    let mut store = Store::new(&Config::default(), Arc::new(Telemetry::default()));
    c.bench_function("fold 2,000 containers", |b| {
        b.iter(|| black_box(store.fold(readings.clone(), &mut resolver, SystemTime::now())))
    });
}

/// A raw payload record of a fallback connection as the probes write it: header fields in
/// `DataEvent` order (connection id 9), then the data.
fn record(kind: u32, timestamp_ns: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(48 + payload.len());
    for field in [kind, 42, 7, payload.len() as u32] {
        bytes.extend_from_slice(&field.to_ne_bytes());
    }
    for field in [payload.len() as u64, timestamp_ns, 1234, 9] {
        bytes.extend_from_slice(&field.to_ne_bytes());
    }
    bytes.extend_from_slice(payload);
    bytes
}

fn pipeline(c: &mut Criterion) {
    use agent_common::traffic::{CompletionHeader, KIND_COMPLETION, KIND_DATA_IN, KIND_DATA_OUT};
    use modelmeter::sources::{kernel, payload::Connections};
    let request = record(
        KIND_DATA_IN,
        1_000,
        b"POST /v2/models/resnet50/versions/3/infer HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\n\r\n{}",
    );
    let response = record(KIND_DATA_OUT, 2_000_000, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let mut resolver = Table([(1234, identify(SYSTEMD_PATH))].into_iter().collect());
    let telemetry = Telemetry::default();
    let mut connections = Connections::default();
    let mut store = Store::new(&Config::default(), Arc::new(Telemetry::default()));
    let mut out = Vec::new();
    let mut group = c.benchmark_group("request pipeline");
    group.throughput(Throughput::Elements(2));
    group.bench_function("userspace path: decode → pair → resolve → histogram, per request (2 events)", |b| {
        b.iter(|| {
            for bytes in [&request, &response] {
                connections.apply(black_box(bytes), &mut out, &telemetry);
            }
            let mut logs = Vec::new();
            for observation in out.drain(..) {
                store.apply(observation, &mut resolver, Instant::now(), &mut logs);
            }
            black_box(logs);
        })
    });
    group.finish();

    // The kernel path: one completion per request, as the probes pair them.
    let header = CompletionHeader {
        kind: KIND_COMPLETION,
        tgid: 42,
        conn_id: 9,
        cgroup_id: 1234,
        start_ns: 1_000,
        end_ns: 2_000_000,
        request_bytes: 90,
        response_bytes: 40,
        status: 200,
        ..CompletionHeader::default()
    };
    let head = b"POST /v2/models/resnet50/versions/3/infer HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\n\r\n{}";
    let completion = kernel::encode_completion(header, head, b"");
    let mut group = c.benchmark_group("request pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("kernel path: completion → resolve → histogram, per request", |b| {
        b.iter(|| {
            connections.apply(black_box(&completion), &mut out, &telemetry);
            let mut logs = Vec::new();
            for observation in out.drain(..) {
                store.apply(observation, &mut resolver, Instant::now(), &mut logs);
            }
            black_box(logs);
        })
    });
    group.finish();
}

/// One GPU round with 8 devices and 64 processes on the fake NVML library (`tests/fake-nvml`,
/// built in release by `cargo xtask bench`): the source's read through nvml-wrapper, and the
/// store's attribution of it.
fn gpu_round(c: &mut Criterion) {
    let library = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/libfake_nvml.so");
    if !library.exists() {
        eprintln!("GPU round not measured: {} is missing (`cargo build --release -p fake-nvml`)", library.display());
        return;
    }
    let devices: Vec<String> = (0..8)
        .map(|d| {
            let processes: Vec<String> = (0..8)
                .map(|p| format!(r#"{{"pid": {}, "used_memory": 1073741824, "sm_util": {}}}"#, 10_000 + d * 8 + p, 5 + p))
                .collect();
            format!(
                r#"{{"utilization": {{"gpu": 80, "memory": 40}}, "power_mw": 300000, "energy_mj": {}, "temperature_c": 60, "sm_clock_mhz": 1980, "processes": [{}]}}"#,
                1_000_000 + d,
                processes.join(",")
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let scenario = dir.path().join("scenario.json");
    std::fs::write(&scenario, format!(r#"{{"devices": [{}]}}"#, devices.join(","))).expect("scenario");
    // SAFETY: no other thread of this process reads the environment now.
    unsafe { std::env::set_var("FAKE_NVML_SCENARIO", &scenario) };
    let nvml = match nvml_wrapper::Nvml::builder().lib_path(library.as_os_str()).init() {
        Ok(nvml) => nvml,
        Err(e) => {
            eprintln!("GPU round not measured: the fake NVML did not load: {e}");
            return;
        }
    };
    let (tx, _rx) = crossbeam_channel::bounded(1);
    let source = GpuSource {
        nvml,
        interval: std::time::Duration::from_secs(5),
        observations: Outbox::new(tx, Arc::new(Telemetry::default())),
    };
    let mut reader = Reader::default();
    let sample = source.read(&mut reader);
    assert_eq!(sample.devices.iter().map(|d| d.processes.len()).sum::<usize>(), 64);
    c.bench_function("GPU round: read 8 devices, 64 processes (fake NVML)", |b| b.iter(|| source.read(&mut reader)));
    let mut store = GpuStore::default();
    let mut resolver = Table(HashMap::new());
    c.bench_function("GPU round: attribute 8 devices, 64 processes", |b| {
        b.iter(|| store.apply(black_box(&sample), &mut resolver))
    });
}

criterion_group!(benches, identity, standalone, readers, encode, encode_events, fold, pipeline, gpu_round);
criterion_main!(benches);
