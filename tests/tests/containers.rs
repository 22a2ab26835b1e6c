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

/// Stages the test workloads (mm-workload, mm-httpd) into a container root filesystem.
fn stage_workloads(root: &Path) {
    e2e::containers::stage_root(
        &[(&workload_bin(), "/mm-workload"), (&workspace_bin("MM_HTTPD_BIN", "mm-httpd"), "/mm-httpd")],
        root,
    )
    .expect("staging the workloads' root filesystem");
}

/// Over `window`, the agent's CPU figure for `labels` moves with the cgroup `rel`'s own usage
/// (within 10%), which grows by more than `min_own` seconds (a burner is running).
fn assert_cpu_follows_cgroup(agent: &Agent, labels: &[(&str, &str)], rel: &str, window: Duration, min_own: f64) {
    let agent_cpu = || agent.metrics().get(CPU_TIME, labels).expect("the container's CPU series");
    let (agent_start, own_start) = (agent_cpu(), own_cpu_seconds(rel));
    std::thread::sleep(window);
    let (own_end, agent_end) = (own_cpu_seconds(rel), agent_cpu());
    let (agent_delta, own_delta) = (agent_end - agent_start, own_end - own_start);
    assert!(own_delta > min_own, "{rel}: the burner used {own_delta:.2} s of CPU in {window:?}");
    assert!(
        (agent_delta - own_delta).abs() <= 0.1 * own_delta,
        "{rel}: agent {agent_delta:.3} s vs its cgroup {own_delta:.3} s"
    );
}

/// The OOM and request checks of a runtime: a container `oom_id` that outgrew its 32 MiB limit
/// is counted once, and 20 requests to the server whose port is in `port_file` are counted
/// exactly on their route, both found by their container id.
fn check_oom_and_requests(agent: &Agent, runtime: &str, oom_id: &str, server_id: &str, port_file: &Path) {
    let oom_labels = [("container_id", oom_id), ("container_runtime", runtime)];
    let kills = wait_for(Duration::from_secs(30), "the OOM kill", || {
        agent.metrics().get("container_oom_kills_total", &oom_labels).filter(|k| *k >= 1.0)
    });
    assert_eq!(kills, 1.0, "{runtime}: one OOM kill");
    let port = port_from_file(port_file);
    // Discovered, then handed to the probes' watch list at the same collection: one more
    // interval (1 s) leaves room for that.
    wait_for(Duration::from_secs(20), "the server's container to be discovered", || {
        agent.metrics().get(CPU_TIME, &[("container_id", server_id)])
    });
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..20 {
        let (status, _) = http_request(port, "GET /items HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
        assert_eq!(status, 200);
    }
    let labels = [("container_id", server_id), ("http_route", "/items")];
    let count = wait_for(Duration::from_secs(20), "20 requests", || {
        agent.metrics().get("http_server_request_duration_seconds_count", &labels).filter(|c| *c >= 20.0)
    });
    assert_eq!(count, 20.0, "{runtime}: exactly the requests sent");
}

/// [`check_oom_and_requests`] for a runtime whose CLI starts containers: `run(options, args)`
/// starts one (given `--memory` and `--volume` options) and returns its id.
fn check_oom_and_requests_of(agent: &Agent, runtime: &str, run: impl Fn(&[&str], &[&str]) -> String) {
    let out = tempfile::tempdir().expect("out dir");
    let volume = format!("{}:/out", out.path().display());
    let victim = run(&["--memory", "32m"], &["/mm-workload", "oom", "1024"]);
    let server = run(&["--volume", &volume], &["/mm-httpd", "/out/port", "/out/stats.json"]);
    check_oom_and_requests(agent, runtime, &victim, &server, &out.path().join("port"));
}

#[test]
fn containerd_containers_get_cpu_memory_oom_and_requests() {
    require_root();
    let containerd = Containerd::start();
    let rootfs = containerd.rootfs_dir("workloads");
    stage_workloads(&rootfs);

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
    assert_cpu_follows_cgroup(&agent, &burner_labels, &burner_cgroup, Duration::from_secs(5), 2.0);
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
    assert!(wait_for(Duration::from_secs(20), "the victim to stop", || victim.status()).contains("STOPPED"));
    // The kubelet's CRI deletes a stopped task at once, and its cgroup with it: the kill must
    // still be reported, whether or not a collection saw the container alive.
    drop(victim);
    assert!(
        pods[2].procs_files().iter().all(|procs| !procs.with_file_name(&victim_id).exists()),
        "its cgroups are gone"
    );
    let kills = wait_for(Duration::from_secs(20), "the container's OOM kill", || {
        get("container_oom_kills_total", &victim_labels).filter(|k| *k >= 1.0)
    });
    assert_eq!(kills, 1.0);

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

    drop((burner, holder, server));
    drop(pods);
}

/// Capabilities containerd's default spec grants, all dropped so that only the DaemonSet's remain.
const CONTAINERD_DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Capability numbers (include/uapi/linux/capability.h) of the ones the DaemonSet may name.
fn capability_bit(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} is not known to this test"),
    }
}

/// The base DaemonSet's agent container as `ctr run` options: its capabilities (and no others),
/// read-only root, seccomp profile, hostPID and hostPath mounts; the config directory is `config`.
/// `without` leaves one capability out.
fn daemonset_options(config: &Path, without: Option<&str>) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(e2e::workspace_root().join("daemonset/base/daemonset.yaml")).expect("DaemonSet");
    let daemon_set: serde_json::Value = serde_yaml_ng::from_str(&text).expect("the DaemonSet is YAML");
    let pod = &daemon_set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    let mut options = Vec::new();
    let added: Vec<String> = security["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .filter(|c| Some(c.as_str()) != without)
        .collect();
    assert_eq!(security["capabilities"]["drop"][0], "ALL", "the DaemonSet drops every other capability");
    for cap in CONTAINERD_DEFAULT_CAPS {
        options.extend(["--cap-drop".to_owned(), cap.to_owned()]);
    }
    for cap in &added {
        options.extend(["--cap-add".to_owned(), format!("CAP_{cap}")]);
    }
    assert_eq!(security["readOnlyRootFilesystem"], true);
    options.push("--read-only".to_owned());
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault", "the runtime's default seccomp profile");
    options.push("--seccomp".to_owned());
    assert_eq!(pod["hostPID"], true);
    // The host's PID namespace: this test's own (pid 1's links may be unreadable in a sandbox).
    options.extend(["--with-ns".to_owned(), format!("pid:/proc/{}/ns/pid", std::process::id())]);
    let volumes = pod["volumes"].as_array().expect("volumes");
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).expect("the mount's volume");
        let source = match volume["hostPath"]["path"].as_str() {
            Some(path) => path.to_owned(),
            None => config.display().to_string(),
        };
        let mode = if mount["readOnly"] == true { "ro" } else { "rw" };
        let target = mount["mountPath"].as_str().expect("mountPath");
        options.extend(["--mount".to_owned(), format!("type=bind,src={source},dst={target},options=rbind:{mode}")]);
    }
    (options, added)
}

#[test]
fn the_agent_runs_in_a_container_with_the_daemonsets_security_context() {
    require_root();
    let containerd = Containerd::start();
    let agent_root = containerd.rootfs_dir("agent");
    e2e::containers::stage_root(&[(&e2e::modelmeter_bin(), "/usr/local/bin/modelmeter")], &agent_root)
        .expect("staging the agent");
    for dir in ["etc/modelmeter", "tmp", "host/proc", "sys/kernel/tracing", "sys/kernel/btf", "sys/fs/cgroup"] {
        std::fs::create_dir_all(agent_root.join(dir)).expect("mount points");
    }
    let workloads = containerd.rootfs_dir("workloads");
    e2e::containers::stage_root(&[(&workload_bin(), "/mm-workload")], &workloads).expect("staging the workload");
    let config = tempfile::tempdir().expect("config dir");
    let port = e2e::free_port();
    std::fs::write(
        config.path().join("config.yaml"),
        format!(
            "listen: 127.0.0.1:{port}\nproc_root: /host/proc\ninterval: 1s\nmin_collect_interval: 0s\n\
             kubernetes:\n  watch: never\n"
        ),
    )
    .expect("writing the config");
    let (options, capabilities) = daemonset_options(config.path(), None);

    // The agent, and a neighbour pod's container to attribute.
    let agent_id = format!("mm-agent-{}", std::process::id());
    let agent = containerd.run_with(
        &agent_id,
        &agent_root,
        &format!("/{agent_id}"),
        &options,
        &["/usr/local/bin/modelmeter", "run", "--config", "/etc/modelmeter/config.yaml"],
    );
    let uid = pod_uid(75);
    let id = hex_id(75, 64);
    let pod = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}"));
    let burner = containerd.run(&id, &workloads, &format!("{}/{id}", pod.rel), None, &["/mm-workload", "burn"]);
    let url = format!("http://127.0.0.1:{port}");
    wait_for(Duration::from_secs(60), "the containerised agent to be ready", || {
        e2e::http_get_any(&format!("{url}/readyz")).ok().filter(|(status, _)| *status == 200)
    });
    // It runs with exactly the DaemonSet's capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("the agent's status");
    let effective = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff").trim();
    let effective = u64::from_str_radix(effective, 16).expect("hex mask");
    let expected = capabilities.iter().fold(0u64, |mask, cap| mask | 1 << capability_bit(cap));
    assert_eq!(effective, expected, "CapEff {effective:#x}: exactly {capabilities:?}");
    // Probes loaded, and the neighbour's CPU attributed.
    let labels = [("pod_uid", uid.as_str()), ("container_id", id.as_str())];
    let cpu = wait_for(Duration::from_secs(30), "the neighbour's CPU from the containerised agent", || {
        let metrics = e2e::Metrics::parse(&e2e::http_get(&format!("{url}/metrics")).ok()?);
        metrics.get(CPU_TIME, &labels).filter(|cpu| *cpu > 0.5)
    });
    assert!(cpu > 0.5);
    let metrics = e2e::Metrics::parse(&e2e::http_get(&format!("{url}/metrics")).expect("metrics"));
    let build = metrics.select("modelmeter_build_info", &[]).next().expect("build info").labels.clone();
    assert!(["tp_btf", "raw_tracepoint", "tracepoint"].contains(&build["probe_family"].as_str()), "{build:?}");
    drop(burner);
    drop(agent);

    // One capability fewer: doctor in the same container names it and fails.
    let (fewer, _) = daemonset_options(config.path(), Some("PERFMON"));
    let output = containerd.run_to_end(
        &format!("{agent_id}-doctor"),
        &agent_root,
        &format!("/{agent_id}-doctor"),
        &fewer,
        &["/usr/local/bin/modelmeter", "doctor", "--config", "/etc/modelmeter/config.yaml"],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "doctor fails without PERFMON:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    let privileges = lines.iter().position(|l| l.starts_with("privileges ")).expect("a privileges check");
    assert!(lines[privileges].contains("missing"), "{text}");
    assert!(lines[privileges + 1].contains("fix:") && lines[privileges + 1].contains("PERFMON"), "{text}");
    drop(pod);
}

#[test]
fn podman_containers_are_attributed_with_their_runtime() {
    require_root();
    let podman = e2e::containers::Podman::start();
    let rootfs = tempfile::tempdir().expect("rootfs dir");
    stage_workloads(rootfs.path());
    podman.import(rootfs.path(), "localhost/mm-workloads:test");
    // Without the Kubernetes API, requests of every container are traced by default.
    let agent = Agent::start("interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n");
    let burner = podman.run("localhost/mm-workloads:test", &["/mm-workload", "burn"]);
    let holder = podman.run("localhost/mm-workloads:test", &["/mm-workload", "hold", "64"]);
    let burner_labels = [("container_id", burner.as_str()), ("container_runtime", "podman")];
    let holder_labels = [("container_id", holder.as_str()), ("container_runtime", "podman")];
    wait_for(Duration::from_secs(30), "the podman containers' series", || {
        agent.metrics().get("container_memory_working_set_bytes", &holder_labels).filter(|m| *m >= 60.0 * 1048576.0)
    });
    let cgroup = format!("/libpod_parent/libpod-{burner}");
    assert_cpu_follows_cgroup(&agent, &burner_labels, &cgroup, Duration::from_secs(4), 1.5);
    // Only the containers: podman's conmon monitors are not workloads.
    let containers: std::collections::BTreeSet<String> = agent
        .metrics()
        .select(CPU_TIME, &[("container_runtime", "podman")])
        .map(|s| s.labels["container_id"].clone())
        .collect();
    assert_eq!(containers, [burner.clone(), holder.clone()].into_iter().collect());

    check_oom_and_requests_of(&agent, "podman", |options, args| {
        podman.run_with("localhost/mm-workloads:test", options, args)
    });
}

#[test]
fn docker_containers_standalone_and_under_a_kubelet_parent() {
    require_root();
    let docker = e2e::containers::Docker::start();
    let rootfs = tempfile::tempdir().expect("rootfs dir");
    stage_workloads(rootfs.path());
    docker.import(rootfs.path(), "mm-workloads:test");
    let uid = pod_uid(76);
    let pod = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}"));
    let standalone = docker.run("mm-workloads:test", None, &["/mm-workload", "burn"]);
    let in_pod = docker.run("mm-workloads:test", Some(&pod.rel), &["/mm-workload", "hold", "48"]);
    let agent = Agent::start("interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n");
    // docker's own naming: a docker container with its runtime.
    let standalone_labels = [("container_id", standalone.as_str()), ("container_runtime", "docker")];
    wait_for(Duration::from_secs(30), "the standalone docker container's CPU", || {
        agent.metrics().get(CPU_TIME, &standalone_labels).filter(|cpu| *cpu > 0.5)
    });
    let cgroup = format!("/docker/{standalone}");
    assert_cpu_follows_cgroup(&agent, &standalone_labels, &cgroup, Duration::from_secs(4), 1.5);
    // Under a kubelet-style parent the id is bare: the pod's container, runtime unknown (a bare id
    // could be containerd's as well), memory attributed.
    let pod_labels = [("pod_uid", uid.as_str()), ("container_id", in_pod.as_str())];
    let working_set = wait_for(Duration::from_secs(30), "the pod container's memory", || {
        agent.metrics().get("container_memory_working_set_bytes", &pod_labels).filter(|m| *m >= 45.0 * 1048576.0)
    });
    assert!(working_set < 150.0 * 1048576.0, "{working_set}");
    let series = agent.metrics().select(CPU_TIME, &pod_labels).next().cloned().expect("the pod container's series");
    assert_eq!(series.labels["container_runtime"], "unknown", "not labelled containerd: {:?}", series.labels);

    check_oom_and_requests_of(&agent, "docker", |options, args| {
        docker.run_with("mm-workloads:test", None, options, args)
    });
    drop(agent);
    drop(docker);
    drop(pod);
}

#[test]
fn containerd_containers_at_the_systemd_drivers_paths() {
    require_root();
    // The systemd driver's names, made by runc's cgroupfs manager: no systemd runs on these
    // machines, and the agent sees only the paths.
    let containerd = Containerd::start();
    let rootfs = containerd.rootfs_dir("workloads");
    stage_workloads(&rootfs);
    let uid = pod_uid(77);
    let id = hex_id(77, 64);
    let pod = CgroupGuard::create(e2e::systemd_container_path("burstable", &uid, "").trim_end_matches('/'));
    let cgroup = format!("{}/cri-containerd-{id}.scope", pod.rel);
    let burner = containerd.run(&id, &rootfs, &cgroup, None, &["/mm-workload", "burn"]);
    let agent = Agent::start("interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n");
    let labels = [("pod_uid", uid.as_str()), ("container_id", id.as_str()), ("container_runtime", "containerd")];
    wait_for(Duration::from_secs(30), "the container at the systemd driver's path", || {
        agent.metrics().get(CPU_TIME, &labels).filter(|cpu| *cpu > 0.5)
    });
    assert_cpu_follows_cgroup(&agent, &labels, &cgroup, Duration::from_secs(4), 1.5);
    let qos = agent.metrics().select(CPU_TIME, &labels).next().expect("series").labels["qos_class"].clone();
    assert_eq!(qos, "Burstable");

    // An OOM kill and requests in containers of the same pod.
    let (victim_id, server_id) = (hex_id(78, 64), hex_id(79, 64));
    let victim = containerd.run(
        &victim_id,
        &rootfs,
        &format!("{}/cri-containerd-{victim_id}.scope", pod.rel),
        Some(32 << 20),
        &["/mm-workload", "oom", "1024"],
    );
    let server = containerd.run(
        &server_id,
        &rootfs,
        &format!("{}/cri-containerd-{server_id}.scope", pod.rel),
        None,
        &["/mm-httpd", "/port", "/stats.json"],
    );
    wait_for(Duration::from_secs(20), "the victim to stop", || victim.status());
    drop(victim);
    check_oom_and_requests(&agent, "containerd", &victim_id, &server_id, &rootfs.join("port"));
    drop((burner, server));
    drop(pod);
}
