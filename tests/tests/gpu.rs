//! GPU attribution end to end: the agent loads the test-only fake `libnvidia-ml.so`
//! (`tests/fake-nvml`, the real C ABI driven by a scenario file) through nvml-wrapper's library
//! path, and attributes the device to real processes in kubelet-shaped cgroups.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use e2e::{
    Agent, CgroupGuard, ChildGuard, Metrics, hex_id, http_get, modelmeter_bin, pod_uid, require_root, wait_for,
    workspace_root,
};
use serde_json::{Value, json};

const GPU: &str = "GPU-00000000-0000-0000-0000-0000000000a1";

fn fake_nvml() -> PathBuf {
    let path = workspace_root().join("target/debug/libfake_nvml.so");
    assert!(
        path.exists(),
        "{} is missing: `cargo build -p fake-nvml` builds it (cargo xtask test does)",
        path.display()
    );
    path
}

/// The scenario file, replaced atomically so the library never reads half of it.
struct Scenario {
    dir: tempfile::TempDir,
}

impl Scenario {
    fn new(scenario: &Value) -> Scenario {
        let scenario_file = Scenario { dir: tempfile::tempdir().expect("temp dir") };
        scenario_file.write(scenario);
        scenario_file
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("scenario.json")
    }

    fn write(&self, scenario: &Value) {
        let temporary = self.dir.path().join("scenario.json.tmp");
        std::fs::write(&temporary, scenario.to_string()).expect("writing the scenario");
        std::fs::rename(&temporary, self.path()).expect("replacing the scenario");
    }
}

fn pod_with_process(seed: u64) -> (CgroupGuard, String, ChildGuard) {
    let uid = pod_uid(seed);
    let cgroup = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}/{}", hex_id(seed * 7 + 3, 64)));
    let child = cgroup.spawn_workload(&["sleep"]);
    (cgroup, uid, child)
}

fn agent_with(scenario: &Scenario, extra: &str) -> Agent {
    let config = format!(
        "interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\nprobes:\n  request_tracing: false\n\
         gpu:\n  library_path: {}\n  interval: 500ms\n{extra}",
        fake_nvml().display()
    );
    Agent::start_with_env(&config, &[("FAKE_NVML_SCENARIO", scenario.path().to_str().expect("a UTF-8 path"))])
}

fn value(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.get(name, labels)
}

#[test]
fn time_sliced_pods_share_one_gpu_by_sm_time_with_xid_loss_and_a_slow_driver() {
    require_root();
    let (_a, uid_a, process_a) = pod_with_process(7101);
    let (_b, uid_b, process_b) = pod_with_process(7102);
    // A process in no pod: counted under the node.
    let outside = ChildGuard(std::process::Command::new("sleep").arg("600").spawn().expect("sleep"));
    let device = |energy_mj: u64, extra: Value| {
        let mut device = json!({
            "uuid": GPU,
            "name": "NVIDIA H100 80GB HBM3",
            "utilization": {"gpu": 90, "memory": 40},
            "memory": {"total": 85_899_345_920u64, "used": 3_221_225_472u64},
            "power_mw": 350_000,
            "energy_mj": energy_mj,
            "temperature_c": 61,
            "sm_clock_mhz": 1980,
            "processes": [
                {"pid": process_a.pid(), "used_memory": 2_147_483_648u64, "sm_util": 60},
                {"pid": process_b.pid(), "used_memory": 1_073_741_824u64, "sm_util": 20},
                {"pid": outside.pid(), "used_memory": 1_048_576, "sm_util": 10},
            ],
        });
        if let (Some(device), Some(extra)) = (device.as_object_mut(), extra.as_object()) {
            device.extend(extra.clone());
        }
        json!({"driver_version": "550.54.15", "devices": [device]})
    };
    let start_mj = 1_000_000;
    let scenario = Scenario::new(&device(start_mj, json!({})));
    let agent = agent_with(&scenario, "");
    wait_for(Duration::from_secs(30), "the GPU's first read", || {
        value(&agent.metrics(), "hw_gpu_up", &[("hw_id", GPU)])
    });
    // 100 J per step, over several reads.
    let mut energy_mj = start_mj;
    for _ in 0..6 {
        energy_mj += 100_000;
        scenario.write(&device(energy_mj, json!({})));
        std::thread::sleep(Duration::from_millis(700));
    }
    let used = (energy_mj - start_mj) as f64 / 1000.0;
    let metrics = wait_for(Duration::from_secs(30), "all of the energy attributed", || {
        let metrics = agent.metrics();
        let device = value(&metrics, "hw_gpu_energy_joules_total", &[("hw_id", GPU)])?;
        (device >= energy_mj as f64 / 1000.0).then_some(metrics)
    });
    let energy = |uid: &str| value(&metrics, "container_gpu_energy_joules_total", &[("pod_uid", uid), ("hw_id", GPU)]);
    let (a, b) = (energy(&uid_a).expect("pod a's energy"), energy(&uid_b).expect("pod b's energy"));
    let node: f64 = metrics
        .select("container_gpu_energy_joules_total", &[("hw_id", GPU)])
        .filter(|s| !s.labels.contains_key("pod_uid"))
        .map(|s| s.value)
        .sum();
    let unattributed =
        value(&metrics, "hw_gpu_energy_unattributed_joules_total", &[("hw_id", GPU)]).expect("unattributed");
    // Shares 60/20/10 of the device's time: the rest is idle. The parts add up to the device.
    assert!((a + b + node + unattributed - used).abs() < 1e-6, "{a} + {b} + {node} + {unattributed} != {used}");
    assert!((a / b - 3.0).abs() < 1e-6, "pod a used 3× pod b's SM time: {a} vs {b}");
    assert!((node - used * 0.1).abs() < 1e-6, "the process in no pod: {node}");
    let utilization = |uid: &str| value(&metrics, "container_gpu_utilization_ratio", &[("pod_uid", uid)]);
    assert_eq!((utilization(&uid_a), utilization(&uid_b)), (Some(0.6), Some(0.2)));
    assert_eq!(
        value(&metrics, "container_gpu_memory_usage_bytes", &[("pod_uid", &uid_a)]),
        Some(2_147_483_648.0),
        "pod a's GPU memory"
    );
    assert_eq!(value(&metrics, "hw_gpu_utilization_ratio", &[("hw_id", GPU)]), Some(0.9));
    assert_eq!(value(&metrics, "hw_gpu_power_watts", &[("hw_id", GPU)]), Some(350.0));
    assert_eq!(
        value(&metrics, "hw_gpu_memory_limit_bytes", &[("hw_id", GPU), ("hw_driver_version", "550.54.15")]),
        Some(85_899_345_920.0)
    );

    // An XID error: an event with the identity of each pod on the device.
    scenario.write(&device(energy_mj, json!({"xid_events": [{"xid": 79}]})));
    let xids = wait_for(Duration::from_secs(30), "the XID events", || {
        let lines: Vec<Value> = agent
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "gpu_xid")
            .collect();
        (lines.len() >= 3).then_some(lines)
    });
    for uid in [&uid_a, &uid_b] {
        assert!(
            xids.iter().any(|x| x["k8s.pod.uid"] == uid.as_str() && x["xid"] == 79.0 && x["hw.id"] == GPU),
            "no XID event for pod {uid}: {xids:?}"
        );
    }

    // Lost mid-run: its series go stale, nothing panics, and they come back with the device.
    scenario.write(&device(energy_mj, json!({"lost": true, "xid_events": [{"xid": 79}]})));
    wait_for(Duration::from_secs(30), "the device reported lost", || {
        let metrics = agent.metrics();
        let stale = value(&metrics, "hw_gpu_up", &[("hw_id", GPU)]) == Some(0.0)
            && value(&metrics, "container_gpu_energy_joules_total", &[("pod_uid", &uid_a)]).is_none();
        stale.then_some(())
    });
    scenario.write(&device(energy_mj + 50_000, json!({"xid_events": [{"xid": 79}]})));
    wait_for(Duration::from_secs(30), "the device back", || {
        let metrics = agent.metrics();
        let back = value(&metrics, "hw_gpu_up", &[("hw_id", GPU)]) == Some(1.0)
            && value(&metrics, "container_gpu_energy_joules_total", &[("pod_uid", &uid_a)]).is_some_and(|e| e >= a);
        back.then_some(())
    });

    // A slow driver (every call 3 s): the GPU thread waits, nothing else does.
    scenario.write(
        &device(energy_mj + 50_000, json!({"xid_events": [{"xid": 79}]}))
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("delay_ms".into(), json!(3000));
                Value::Object(o)
            })
            .expect("an object"),
    );
    std::thread::sleep(Duration::from_secs(2));
    for path in ["/healthz", "/metrics"] {
        let started = Instant::now();
        http_get(&agent.url(path)).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{path} took {:?} behind a slow driver",
            started.elapsed()
        );
    }
    let cpu = value(&agent.metrics(), "container_cpu_time_seconds_total", &[("pod_uid", &uid_a)]);
    assert!(cpu.is_some(), "the other sources carry on");
    let (status, log) = agent.stop();
    assert!(!log.contains("panicked"), "{log}");
    let _ = status;
}

#[test]
fn mig_instances_unsupported_calls_and_no_library() {
    require_root();
    let (_a, uid_a, process_a) = pod_with_process(7201);
    let (_b, uid_b, process_b) = pod_with_process(7202);
    let mig = json!({
        "devices": [{
            "uuid": GPU,
            "mig_mode": true,
            "memory": {"total": 85_899_345_920u64, "used": 20_000_000_000u64},
            "energy_mj": 5_000_000,
            "not_supported": ["power_usage", "temperature"],
            "mig_devices": [
                {"uuid": "MIG-a1", "memory": {"total": 40_000_000_000u64, "used": 10_000_000_000u64},
                 "processes": [{"pid": process_a.pid(), "used_memory": 9_000_000_000u64}]},
                {"uuid": "MIG-a2", "memory": {"total": 40_000_000_000u64, "used": 5_000_000_000u64},
                 "processes": [{"pid": process_b.pid(), "used_memory": 4_000_000_000u64}]},
            ],
        }],
    });
    let scenario = Scenario::new(&mig);
    let agent = agent_with(&scenario, "");
    let metrics = wait_for(Duration::from_secs(30), "the MIG instances", || {
        let metrics = agent.metrics();
        value(&metrics, "container_gpu_memory_usage_bytes", &[("pod_uid", &uid_b)]).map(|_| metrics)
    });
    assert_eq!(value(&metrics, "hw_gpu_mig_enabled", &[("hw_id", GPU)]), Some(1.0));
    assert_eq!(
        value(&metrics, "hw_gpu_memory_usage_bytes", &[("hw_id", "MIG-a1"), ("hw_parent", GPU)]),
        Some(10_000_000_000.0)
    );
    assert_eq!(
        value(&metrics, "container_gpu_memory_usage_bytes", &[("pod_uid", &uid_a), ("hw_id", "MIG-a1")]),
        Some(9_000_000_000.0)
    );
    assert_eq!(
        value(&metrics, "container_gpu_memory_usage_bytes", &[("pod_uid", &uid_b), ("hw_id", "MIG-a2")]),
        Some(4_000_000_000.0)
    );
    // Per-process utilisation is unknown under MIG: absent, not invented.
    assert!(metrics.select("container_gpu_utilization_ratio", &[]).next().is_none());
    assert!(metrics.select("container_gpu_energy_joules_total", &[]).next().is_none());
    // NOT_SUPPORTED calls: their series are absent, the rest are there.
    assert!(value(&metrics, "hw_gpu_power_watts", &[("hw_id", GPU)]).is_none());
    assert!(value(&metrics, "hw_gpu_temperature_celsius", &[("hw_id", GPU)]).is_none());
    assert!(value(&metrics, "hw_gpu_energy_joules_total", &[("hw_id", GPU)]).is_some());
    // A driver before R550 (no nvmlDeviceGetProcessesUtilizationInfo): the older per-process call
    // gives the shares.
    scenario.write(&json!({
        "devices": [{
            "uuid": GPU,
            "energy_mj": 6_000_000,
            "not_supported": ["processes_utilization_info"],
            "processes": [{"pid": process_a.pid(), "used_memory": 1_000_000, "sm_util": 50}],
        }],
    }));
    wait_for(Duration::from_secs(30), "pod a's share through the older call", || {
        (value(&agent.metrics(), "container_gpu_utilization_ratio", &[("pod_uid", &uid_a)]) == Some(0.5)).then_some(())
    });
    drop(agent);

    // No NVML library: the agent runs, without GPU series, and doctor says why.
    let missing = Path::new("/nonexistent/libnvidia-ml.so.1");
    let agent = Agent::start(&format!(
        "interval: 1s\nkubernetes:\n  watch: never\nprobes:\n  request_tracing: false\ngpu:\n  library_path: {}\n",
        missing.display()
    ));
    assert!(agent.metrics().select("hw_gpu_up", &[]).next().is_none());
    assert!(agent.log().contains("No GPU metrics"), "{}", agent.log());
    drop(agent);
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(config.path(), format!("gpu:\n  library_path: {}\n", missing.display())).expect("config");
    let doctor = std::process::Command::new(modelmeter_bin())
        .args(["doctor", "--config"])
        .arg(config.path())
        .output()
        .expect("running doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(text.contains("NVML") && text.contains("did not load") && text.contains("no GPU metrics"), "{text}");

    // With the fake library, doctor names the driver, the device, its MIG mode and what works.
    scenario.write(&mig);
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(config.path(), format!("gpu:\n  library_path: {}\n", fake_nvml().display())).expect("config");
    let doctor = std::process::Command::new(modelmeter_bin())
        .args(["doctor", "--config"])
        .arg(config.path())
        .env("FAKE_NVML_SCENARIO", scenario.path())
        .output()
        .expect("running doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(text.contains("driver 550.54.15") && text.contains(GPU) && text.contains("MIG on"), "{text}");
    assert!(text.contains("not supported: power, temperature"), "{text}");
}
