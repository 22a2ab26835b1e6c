//! End to end, as root on this kernel: real workloads in kubelet-shaped cgroups (both drivers,
//! three runtimes), the agent with its eBPF probes, and a real Prometheus scraping it.

use std::time::Duration;

use e2e::{Agent, CgroupGuard, Metrics, Prometheus, hex_id, pod_uid, require_root, systemd_container_path, wait_for};

const CPU_TIME: &str = "container_cpu_time_seconds_total";

/// Agent CPU time of a container, scraped between two reads of the cgroup's own cpuacct figure;
/// returns (agent seconds, cgroup seconds as the mean of the two reads).
fn cpu_pair(agent: &Agent, cgroup: &CgroupGuard, labels: &[(&str, &str)]) -> (f64, f64) {
    let before = read_cpuacct(cgroup);
    let metrics = agent.metrics();
    let after = read_cpuacct(cgroup);
    let agent_seconds = metrics
        .get(CPU_TIME, labels)
        .unwrap_or_else(|| panic!("no {CPU_TIME} for {labels:?} in:\n{}", dump(&metrics, "container_cpu")));
    (agent_seconds, (before + after) / 2.0)
}

fn read_cpuacct(cgroup: &CgroupGuard) -> f64 {
    cgroup.read("cpuacct", "cpuacct.usage").trim().parse::<f64>().expect("cpuacct.usage is a number") / 1e9
}

fn dump(metrics: &Metrics, prefix: &str) -> String {
    metrics
        .samples
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .map(|s| format!("{} {:?} {}\n", s.name, s.labels, s.value))
        .collect()
}

fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= tolerance * expected.abs()
}

#[test]
fn cpu_memory_and_oom_are_attributed_to_kubelet_shaped_pods() {
    require_root();
    // Pod 1: burstable, systemd driver, containerd.
    let uid1 = pod_uid(1);
    let id1 = hex_id(11, 64);
    let pod1 = CgroupGuard::create(&systemd_container_path("burstable", &uid1, &format!("cri-containerd-{id1}.scope")));
    // Pod 2: guaranteed (no QoS level), cgroupfs driver, CRI-O.
    let uid2 = pod_uid(2);
    let id2 = hex_id(22, 64);
    let pod2 = CgroupGuard::create(&format!("/kubepods/pod{uid2}/crio-{id2}"));
    // Pod 3: burstable, cgroupfs driver (a bare id: containerd, docker or cri-dockerd), 64 MiB limit.
    let uid3 = pod_uid(3);
    let id3 = hex_id(33, 64);
    let pod3 = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid3}/{id3}"));
    pod3.write("memory", "memory.limit_in_bytes", &(64u64 << 20).to_string());

    let agent = Agent::start("interval: 2s\nmin_collect_interval: 0s\n");
    let burner = pod1.spawn_workload(&["burn"]);
    let holder = pod2.spawn_workload(&["hold", "200"]);
    let labels1 = [("pod_uid", uid1.as_str()), ("container_id", id1.as_str())];
    let labels2 = [("pod_uid", uid2.as_str()), ("container_id", id2.as_str())];
    let labels3 = [("pod_uid", uid3.as_str()), ("container_id", id3.as_str())];

    // Identity labels of each driver and runtime.
    let metrics = wait_for(Duration::from_secs(20), "series of all three pods", || {
        let m = agent.metrics();
        [&labels1[..], &labels2, &labels3].iter().all(|l| m.get(CPU_TIME, l).is_some()).then_some(m)
    });
    let sample = |labels: &[(&str, &str)]| metrics.select(CPU_TIME, labels).next().cloned().expect("sample");
    let s1 = sample(&labels1);
    assert_eq!(s1.labels["qos_class"], "Burstable");
    assert_eq!(s1.labels["container_runtime"], "containerd");
    let s2 = sample(&labels2);
    assert_eq!(s2.labels["qos_class"], "Guaranteed");
    assert_eq!(s2.labels["container_runtime"], "cri-o");
    assert_eq!(sample(&labels3).labels["qos_class"], "Burstable");
    // Without the pod watch a bare id names no runtime: no guess.
    assert_eq!(sample(&labels3).labels["container_runtime"], "unknown");

    // CPU: the agent's figure moves with the cgroup's own cpuacct over the same window.
    std::thread::sleep(Duration::from_secs(1));
    let (agent1_start, cgroup1_start) = cpu_pair(&agent, &pod1, &labels1);
    let (agent2_start, _) = cpu_pair(&agent, &pod2, &labels2);
    std::thread::sleep(Duration::from_secs(6));
    let (agent1_end, cgroup1_end) = cpu_pair(&agent, &pod1, &labels1);
    let (agent2_end, _) = cpu_pair(&agent, &pod2, &labels2);
    let agent_delta = agent1_end - agent1_start;
    let cgroup_delta = cgroup1_end - cgroup1_start;
    assert!(cgroup_delta > 3.0, "the burner should have used most of a CPU for 6 s, cpuacct says {cgroup_delta:.3} s");
    assert!(
        within(agent_delta, cgroup_delta, 0.05),
        "burner: agent {agent_delta:.4} s vs cpuacct {cgroup_delta:.4} s over the same window"
    );
    let idle_delta = agent2_end - agent2_start;
    println!(
        "burner CPU over the window: agent {agent_delta:.4} s, cpuacct {cgroup_delta:.4} s; holder: agent {:.4} s",
        agent2_end - agent2_start
    );
    assert!(idle_delta < 0.05, "the memory holder should use almost no CPU, agent says {idle_delta:.4} s");

    // Memory: the holder's working set as the cgroup itself reports it.
    let metrics = agent.metrics();
    let working_set = metrics.get("container_memory_working_set_bytes", &labels2).expect("working set of pod 2");
    let usage = pod2.read("memory", "memory.usage_in_bytes").trim().parse::<f64>().expect("usage");
    let inactive_file = pod2.read_keyed("memory", "memory.stat", "total_inactive_file") as f64;
    let own = usage - inactive_file;
    assert!(own >= 200.0 * 1048576.0, "pod 2 should hold at least 200 MiB, its cgroup says {own}");
    println!("holder working set: agent {working_set} B, cgroup {own} B");
    assert!(within(working_set, own, 0.05), "working set: agent {working_set} vs cgroup {own}");
    assert!(metrics.get("container_memory_rss_bytes", &labels2).expect("rss") >= 200.0 * 1048576.0);
    assert_eq!(metrics.get("container_memory_limit_bytes", &labels3), Some((64u64 << 20) as f64));
    assert_eq!(metrics.get("container_memory_limit_bytes", &labels2), None, "pod 2 has no limit");
    assert_eq!(metrics.get("container_oom_kills_total", &labels3), Some(0.0));

    // OOM: a process that outgrows 64 MiB is killed, and the agent counts it.
    let mut victim = pod3.spawn_workload(&["oom", "1024"]);
    let status = victim.0.wait().expect("waiting for the OOM victim");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "expected an OOM kill, got {status}"
    );
    let kills = wait_for(Duration::from_secs(10), "the OOM kill in the agent's metrics", || {
        agent.metrics().get("container_oom_kills_total", &labels3).filter(|v| *v >= 1.0)
    });
    assert_eq!(kills, 1.0);
    assert_eq!(agent.metrics().get("container_oom_kills_total", &labels1), Some(0.0));

    // Run-queue delay histogram is there for the busy container, with consistent buckets.
    let metrics = agent.metrics();
    let count = metrics.get("container_cpu_runqueue_delay_seconds_count", &labels1).expect("runqueue histogram");
    let inf = metrics
        .get("container_cpu_runqueue_delay_seconds_bucket", &[labels1[0], labels1[1], ("le", "+Inf")])
        .expect("+Inf bucket");
    assert_eq!(count, inf);

    // Series of a cgroup that disappears are removed.
    drop(victim);
    drop(pod3);
    let metrics = agent.metrics();
    assert!(metrics.select(CPU_TIME, &labels3).next().is_none(), "pod 3 is gone but still has series");
    assert!(metrics.get(CPU_TIME, &labels1).is_some());

    // Agent's own figures.
    let runs = metrics
        .select("modelmeter_probe_runs_total", &[])
        .filter(|s| s.labels["event"] == "sched/sched_switch")
        .map(|s| s.value)
        .sum::<f64>();
    assert!(runs > 0.0, "bpf_stats run count of sched_switch should be positive");
    assert_eq!(metrics.get("modelmeter_ringbuf_drops_total", &[("ring", "events")]), Some(0.0));

    drop(burner);
    drop(holder);
    let (status, log) = agent.stop();
    assert!(status.success(), "agent exited with {status} on SIGTERM:\n{log}");
    assert!(log.contains("Probes detached"), "agent did not detach its probes on SIGTERM:\n{log}");
}

/// Nanoseconds the task waited on a run queue so far, as the kernel counts them
/// (`/proc/<pid>/schedstat`: run time, wait time, runs).
fn kernel_run_delay(pid: u32) -> f64 {
    let line = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).expect("schedstat (CONFIG_SCHED_INFO)");
    line.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()).expect("schedstat's wait time")
}

#[test]
fn run_queue_delay_matches_the_kernels_own_count() {
    require_root();
    let uid = pod_uid(4);
    let id = hex_id(44, 64);
    let pod = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}/{id}"));
    let labels = [("pod_uid", uid.as_str()), ("container_id", id.as_str())];
    let agent = Agent::start("min_collect_interval: 0s\n");
    // Two burners on one CPU: each waits for the other about half the time.
    let burners = [pod.spawn_workload(&["burn"]), pod.spawn_workload(&["burn"])];
    let pids: Vec<u32> = burners.iter().map(|b| b.0.id()).collect();
    for pid in &pids {
        // SAFETY: cpu_set_t is plain data; sched_setaffinity on our own child.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(*pid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(rc, 0, "pinning burner {pid}: {}", std::io::Error::last_os_error());
    }
    let sum = "container_cpu_runqueue_delay_seconds_sum";
    wait_for(Duration::from_secs(20), "the burners' run-queue delay", || agent.metrics().get(sum, &labels));
    // The kernel's count read on both sides of each scrape, which accounts every CPU's slice so far.
    let read = || {
        let before: f64 = pids.iter().map(|p| kernel_run_delay(*p)).sum();
        let agent_seconds = agent.metrics().get(sum, &labels).expect("run-queue delay of the pod");
        let after: f64 = pids.iter().map(|p| kernel_run_delay(*p)).sum();
        (agent_seconds, (before + after) / 2e9)
    };
    let (agent_start, kernel_start) = read();
    std::thread::sleep(Duration::from_secs(3));
    let (agent_end, kernel_end) = read();
    let (agent_delta, kernel_delta) = (agent_end - agent_start, kernel_end - kernel_start);
    println!("run-queue delay over 3 s: agent {agent_delta:.4} s, kernel {kernel_delta:.4} s");
    assert!(kernel_delta > 1.5, "the burners should wait about 3 s in all, the kernel says {kernel_delta:.4} s");
    assert!(
        within(agent_delta, kernel_delta, 0.05),
        "run-queue delay: agent {agent_delta:.4} s vs the kernel's {kernel_delta:.4} s over the same window"
    );
    let count = agent.metrics().get("container_cpu_runqueue_delay_seconds_count", &labels).expect("count");
    assert!(count > 100.0, "waits counted: {count}");
    drop(burners);
    let (status, log) = agent.stop();
    assert!(status.success(), "agent exited with {status}:\n{log}");
}

#[test]
fn prometheus_scrapes_the_agent() {
    require_root();
    let uid = pod_uid(4);
    let id = hex_id(44, 64);
    let pod = CgroupGuard::create(&systemd_container_path("besteffort", &uid, &format!("docker-{id}.scope")));
    let _worker = pod.spawn_workload(&["burn"]);
    let agent = Agent::start("interval: 1s\nmin_collect_interval: 0s\n");
    let prometheus = Prometheus::start(agent.addr);
    let query = format!("{}{{pod_uid=\"{uid}\",container_id=\"{id}\"}}", CPU_TIME);
    let result = wait_for(Duration::from_secs(60), "prometheus to return the test container's CPU time", || {
        let result = prometheus.query(&query);
        (!result.is_empty()).then_some(result)
    });
    assert_eq!(result.len(), 1, "one series expected: {result:?}");
    let metric = &result[0]["metric"];
    assert_eq!(metric["__name__"], CPU_TIME);
    assert_eq!(metric["pod_uid"], uid.as_str());
    assert_eq!(metric["container_id"], id.as_str());
    assert_eq!(metric["container_runtime"], "docker");
    assert_eq!(metric["qos_class"], "BestEffort");
    let value: f64 = result[0]["value"][1].as_str().expect("value string").parse().expect("number");
    assert!(value > 0.0, "the burner's CPU time should be positive, got {value}");
    // The burner started before the agent: the counter still carries the cgroup's whole life.
    let labels = [("pod_uid", uid.as_str()), ("container_id", id.as_str())];
    let (agent_seconds, cgroup_seconds) = cpu_pair(&agent, &pod, &labels);
    assert!(
        within(agent_seconds, cgroup_seconds, 0.05),
        "lifetime CPU: agent {agent_seconds:.4} s vs cpuacct {cgroup_seconds:.4} s"
    );
    // Prometheus accepted every series of the page (a malformed page fails the whole scrape).
    let up = prometheus.query("up{job=\"modelmeter\"}");
    assert_eq!(up[0]["value"][1], "1", "scrape not healthy: {up:?}\n{}", prometheus.log());
}

#[test]
fn podman_containers_are_attributed_and_their_monitor_is_not() {
    require_root();
    // Podman's naming with the systemd driver (rootful, under machine.slice): the container's
    // scope, and its conmon monitor's scope beside it.
    let id = hex_id(55, 64);
    let container = CgroupGuard::create(&format!("/machine.slice/libpod-{id}.scope"));
    let conmon = CgroupGuard::create(&format!("/machine.slice/libpod-conmon-{id}.scope"));
    let _worker = container.spawn_workload(&["burn"]);
    let _monitor = conmon.spawn_workload(&["sleep"]);
    let agent = Agent::start("interval: 1s\nmin_collect_interval: 0s\n");
    let labels = [("container_id", id.as_str()), ("container_runtime", "podman")];
    let cpu = wait_for(Duration::from_secs(20), "the podman container's CPU", || {
        agent.metrics().get(CPU_TIME, &labels).filter(|cpu| *cpu > 0.1)
    });
    assert!(cpu > 0.1);
    let metrics = agent.metrics();
    let series: Vec<_> = metrics.select(CPU_TIME, &[("container_id", id.as_str())]).collect();
    assert_eq!(series.len(), 1, "the container once; conmon is not a workload: {series:?}");
    assert!(
        metrics.select(CPU_TIME, &[]).all(|s| !s.labels.get("systemd_unit").is_some_and(|u| u.contains("conmon"))),
        "conmon is not a systemd unit workload either"
    );
}

#[test]
fn a_container_at_other_v1_paths_than_its_v2_path_keeps_its_memory() {
    require_root();
    let hybrid = e2e::hierarchy_roots(std::path::Path::new("/sys/fs/cgroup"));
    assert!(
        hybrid.iter().any(|(name, _)| *name == "v2") && hybrid.iter().any(|(name, _)| *name == "memory"),
        "this test needs a hybrid cgroup host (v2 beside v1 controllers), found {hybrid:?}"
    );
    // Docker with a relative --cgroup-parent on a hybrid host: the v1 controllers nest the
    // container below dockerd's own cgroup, the v2 tree does not.
    let uid = pod_uid(6);
    let id = hex_id(66, 64);
    let rel = format!("/kubepods/burstable/pod{uid}/{id}");
    let v2 = CgroupGuard::create_in(&rel, &["v2"]);
    let v1 = CgroupGuard::create_in(&format!("/system.slice/docker.service{rel}"), &["cpu", "cpuacct", "memory"]);
    let procs_files: Vec<_> = v2.procs_files().into_iter().chain(v1.procs_files()).collect();
    let _holder = e2e::spawn_workload_joining(&procs_files, &["hold", "64"]);
    let agent = Agent::start("interval: 1s\nmin_collect_interval: 0s\n");
    let labels = [("pod_uid", uid.as_str()), ("container_id", id.as_str())];
    let working_set = wait_for(Duration::from_secs(20), "the container's memory from its v1 paths", || {
        agent.metrics().get("container_memory_working_set_bytes", &labels)
    });
    let own = v1.read_keyed("memory", "memory.stat", "total_rss") as f64;
    assert!(working_set >= 60.0 * 1048576.0, "64 MiB held: {working_set}");
    assert!(within(agent.metrics().get("container_memory_rss_bytes", &labels).unwrap_or(0.0), own, 0.1), "{own}");
    // The counter appears with its first error.
    let errors = agent.metrics().get("modelmeter_collection_errors_total", &[("stage", "cgroup_read")]).unwrap_or(0.0);
    assert_eq!(errors, 0.0, "read from the right paths, no error");
}
