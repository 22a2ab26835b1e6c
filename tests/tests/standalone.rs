//! Standalone: a process outside any container that a model rule names is a workload of its own,
//! with its children, its CPU, memory and request latency labelled with the rule's model; its
//! neighbours in the same cgroup stay out (counted), and the busiest of them are listed.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use e2e::{Agent, CgroupGuard, HttpServer, free_port, http_request, require_root, wait_for, workload_bin};

#[test]
fn a_rule_names_a_process_and_its_child_with_cpu_memory_and_requests() {
    require_root();
    // A cgroup that is nobody's container (no kubelet, docker or systemd naming), shared by the
    // model server and a neighbour.
    let cgroup = CgroupGuard::create(&format!("/mm-standalone-{}", std::process::id()));
    let models = tempfile::Builder::new().suffix("-toy-models").tempdir().expect("temp dir");
    std::fs::write(models.path().join("index.html"), "hello\n").expect("writing the page");
    let port = free_port();
    // The server starts a CPU burner as its child, then becomes `python3 -m http.server`.
    let script = format!(
        "{} burn & exec python3 -m http.server {port} --bind 127.0.0.1 --directory {}",
        workload_bin().display(),
        models.path().display()
    );
    let server = cgroup.spawn_command(Command::new("sh").args(["-c", &script]).stderr(Stdio::null()));
    let neighbour = HttpServer::start_in(&cgroup);
    // The model comes from an argument through a capture group; the version is literal.
    let agent = Agent::start(
        "interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\nstandalone:\n  busiest_unnamed: 1000\n  \
         rules:\n    - name: toy\n      cmdline: '-m http\\.server .*--directory \\S*-(?P<model>[a-z]+)-models'\n      \
         model: '${model}'\n      version: '1'\n",
    );
    let pid = server.pid().to_string();
    let toy = [("model", "toy"), ("model_version", "1"), ("pid", pid.as_str())];
    wait_for(Duration::from_secs(30), "the toy workload's series", || {
        agent.metrics().get("container_memory_working_set_bytes", &toy).filter(|m| *m > 0.0)
    });
    wait_for(Duration::from_secs(30), "request tracing to follow the toy's cgroup", || {
        (agent.metrics().get("modelmeter_http_watched_cgroups", &[]).unwrap_or(0.0) >= 1.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));

    // CPU: the burner is the server's child, so about a core goes to the toy.
    let cpu = |agent: &Agent| agent.metrics().get("container_cpu_time_seconds_total", &toy).expect("toy's CPU");
    let before = cpu(&agent);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu(&agent) - before;
    assert!(used > 1.0, "the child's CPU counts with its parent's workload: {used:.2} s in 3 s");
    let memory = agent.metrics().get("container_memory_working_set_bytes", &toy).expect("toy's memory");
    assert!(memory > 4.0 * 1048576.0, "python's resident memory: {memory}");
    let labels =
        agent.metrics().select("container_cpu_time_seconds_total", &toy).next().expect("series").labels.clone();
    assert!(labels["process"].starts_with("python3"), "the workload's executable: {labels:?}");

    // Requests: exact counts for the toy; the neighbour's are not invented into any series.
    for _ in 0..25 {
        let (status, _) = http_request(port, "GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("request to the toy");
        assert_eq!(status, 200);
    }
    for _ in 0..10 {
        http_request(neighbour.port, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("neighbour");
    }
    let metrics = wait_for(Duration::from_secs(20), "25 toy requests", || {
        let m = agent.metrics();
        let count: f64 = m.select("http_server_request_duration_seconds_count", &toy).map(|s| s.value).sum();
        (count >= 25.0).then_some(m)
    });
    let count: f64 = metrics.select("http_server_request_duration_seconds_count", &toy).map(|s| s.value).sum();
    assert_eq!(count, 25.0, "exactly the requests sent");
    let all: f64 = metrics.select("http_server_request_duration_seconds_count", &[]).map(|s| s.value).sum();
    assert_eq!(all, 25.0, "no series for the neighbour");
    let skipped = wait_for(Duration::from_secs(10), "the neighbour's requests counted as skipped", || {
        agent.metrics().get("modelmeter_http_skipped_total", &[("reason", "unattributed")]).filter(|n| *n >= 10.0)
    });
    assert!(skipped >= 10.0);

    // The snapshot: the toy as a model with one replica; the neighbour among the unnamed
    // processes, the toy's own processes not.
    let view = agent.snapshot();
    let model = view["models"].as_array().expect("models").iter().find(|m| m["name"] == "toy").expect("toy").clone();
    assert_eq!(model["version"], "1");
    assert_eq!(model["replicas"], 1, "{model}");
    let unnamed: Vec<u64> =
        view["processes"].as_array().expect("processes").iter().filter_map(|p| p["pid"].as_u64()).collect();
    assert!(unnamed.contains(&u64::from(neighbour_pid(&cgroup, server.pid()))), "{unnamed:?}");
    assert!(!unnamed.contains(&u64::from(server.pid())), "a named process is not listed as unnamed");
    let table = Command::new(e2e::modelmeter_bin())
        .args(["snapshot", "--agent", &agent.url("")])
        .output()
        .expect("running modelmeter snapshot");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.lines().any(|l| l.starts_with("toy:1")), "{table}");
    assert!(table.contains("Busiest processes no model rule names"), "{table}");
}

/// The neighbour: the process in the shared cgroup that is neither the server nor its child.
fn neighbour_pid(cgroup: &CgroupGuard, server: u32) -> u32 {
    let pids = cgroup.pids();
    let parent_of = |pid: i32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    pids.into_iter()
        .find(|pid| *pid as u32 != server && parent_of(*pid) != Some(server))
        .map(|pid| pid as u32)
        .expect("the neighbour in the cgroup")
}
