//! Real containers: containerd and runc (Debian's) run the test workloads under the kubelet's
//! cgroupfs paths, and the agent attributes their CPU, memory, OOM kills and requests as it does
//! for the cgroups the other tests make by hand.

use std::{path::Path, time::Duration};

use e2e::{
    Agent, CgroupGuard, containers::Containerd, hex_id, http_request, pod_uid, port_from_file, require_root, wait_for,
    workload_bin, workspace_bin,
};

const CPU_TIME: &str = "container_cpu_time_seconds_total";

/// The cgroup's own CPU seconds (v1 cpuacct, or v2 cpu.stat) at `rel`.
fn own_cpu_seconds(rel: &str) -> f64 {
    let rel = rel.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    if let Ok(text) = std::fs::read_to_string(root.join("cpuacct").join(rel).join("cpuacct.usage")) {
        return text.trim().parse::<f64>().expect("cpuacct.usage") / 1e9;
    }
    let stat = std::fs::read_to_string(root.join(rel).join("cpu.stat")).expect("the container's cpu.stat");
    let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).expect("usage_usec");
    usec.trim().parse::<f64>().expect("usage_usec") / 1e6
}

#[test]
fn containerd_containers_get_cpu_memory_oom_and_requests() {
    require_root();
    let containerd = Containerd::start();
    let rootfs = containerd.rootfs_dir("workloads");
    e2e::containers::stage_root(
        &[(&workload_bin(), "/mm-workload"), (&workspace_bin("MM_HTTPD_BIN", "mm-httpd"), "/mm-httpd")],
        &rootfs,
    )
    .expect("staging the workloads' root filesystem");

    // Three pods of the kubelet's cgroupfs layout; runc makes each container's own cgroup.
    let (burner_uid, holder_uid, victim_uid, server_uid) = (pod_uid(71), pod_uid(72), pod_uid(73), pod_uid(74));
    let (burner_id, holder_id, victim_id, server_id) = (hex_id(71, 64), hex_id(72, 64), hex_id(73, 64), hex_id(74, 64));
    let pods: Vec<CgroupGuard> = [
        format!("/kubepods/burstable/pod{burner_uid}"),
        format!("/kubepods/besteffort/pod{holder_uid}"),
        format!("/kubepods/burstable/pod{victim_uid}"),
        format!("/kubepods/burstable/pod{server_uid}"),
    ]
    .iter()
    .map(|path| CgroupGuard::create(path))
    .collect();
    let burner_cgroup = format!("{}/{burner_id}", pods[0].rel);
    let burner = containerd.run(&burner_id, &rootfs, &burner_cgroup, None, &["/mm-workload", "burn"]);
    let holder = containerd.run(
        &holder_id,
        &rootfs,
        &format!("{}/{holder_id}", pods[1].rel),
        None,
        &["/mm-workload", "hold", "96"],
    );
    let server = containerd.run(
        &server_id,
        &rootfs,
        &format!("{}/{server_id}", pods[3].rel),
        None,
        &["/mm-httpd", "/port", "/stats.json"],
    );
    let port = port_from_file(&rootfs.join("port"));

    let agent = Agent::start("interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n");
    let burner_labels = [("pod_uid", burner_uid.as_str()), ("container_id", burner_id.as_str())];
    let get = |name: &str, labels: &[(&str, &str)]| agent.metrics().get(name, labels);
    wait_for(Duration::from_secs(30), "the containers' series", || get(CPU_TIME, &burner_labels));

    // CPU: the agent's figure moves with the container cgroup's own over the same window.
    let agent_start = get(CPU_TIME, &burner_labels).expect("burner CPU");
    let own_start = own_cpu_seconds(&burner_cgroup);
    std::thread::sleep(Duration::from_secs(5));
    let own_end = own_cpu_seconds(&burner_cgroup);
    let agent_end = get(CPU_TIME, &burner_labels).expect("burner CPU");
    let (agent_delta, own_delta) = (agent_end - agent_start, own_end - own_start);
    assert!(own_delta > 2.0, "the burner used {own_delta:.2} s of CPU in 5 s");
    assert!(
        (agent_delta - own_delta).abs() <= 0.1 * own_delta,
        "burner CPU: agent {agent_delta:.3} s vs its cgroup {own_delta:.3} s"
    );
    let runtime =
        agent.metrics().select(CPU_TIME, &burner_labels).next().expect("series").labels["container_runtime"].clone();
    assert_eq!(runtime, "unknown", "a cgroupfs id does not say which runtime, and there is no pod watch");

    // Memory: the holder's 96 MiB.
    let holder_labels = [("pod_uid", holder_uid.as_str()), ("container_id", holder_id.as_str())];
    let working_set = wait_for(Duration::from_secs(20), "the holder's memory", || {
        get("container_memory_working_set_bytes", &holder_labels).filter(|m| *m >= 90.0 * 1048576.0)
    });
    assert!(working_set < 200.0 * 1048576.0, "{working_set}");

    // OOM: a container with a 32 MiB limit that outgrows it is killed, and counted.
    let victim_labels = [("pod_uid", victim_uid.as_str()), ("container_id", victim_id.as_str())];
    let victim = containerd.run(
        &victim_id,
        &rootfs,
        &format!("{}/{victim_id}", pods[2].rel),
        Some(32 << 20),
        &["/mm-workload", "oom", "1024"],
    );
    let kills = wait_for(Duration::from_secs(20), "the container's OOM kill", || {
        get("container_oom_kills_total", &victim_labels).filter(|k| *k >= 1.0)
    });
    assert_eq!(kills, 1.0);
    assert!(wait_for(Duration::from_secs(10), "the victim to stop", || victim.status()).contains("STOPPED"));

    // Requests to the server in its container: counted exactly, per route.
    let server_labels =
        [("pod_uid", server_uid.as_str()), ("container_id", server_id.as_str()), ("http_route", "/items")];
    wait_for(Duration::from_secs(20), "request tracing to watch the server's container", || {
        (agent.metrics().get("modelmeter_http_watched_cgroups", &[]).unwrap_or(0.0) >= 1.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..30 {
        let (status, _) = http_request(port, "GET /items HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
        assert_eq!(status, 200);
    }
    let count = wait_for(Duration::from_secs(20), "30 requests", || {
        get("http_server_request_duration_seconds_count", &server_labels).filter(|c| *c >= 30.0)
    });
    assert_eq!(count, 30.0);

    drop((burner, holder, server, victim));
    drop(pods);
}
