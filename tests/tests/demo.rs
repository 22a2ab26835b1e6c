//! `cargo xtask run -- --demo` exactly as the README shows it: the demo's model shows with its
//! CPU, memory and p50/p99 latency within seconds, and Ctrl-C (SIGINT to the whole process group,
//! as a terminal sends it) ends it with status 0, leaving no process and no cgroup behind.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use e2e::require_root;

/// The first run builds xtask and the release agent (and its eBPF programs): 5m44s from a clean
/// target directory on a 2-core machine, seconds once built.
const FIRST_SUMMARY_WITHIN: Duration = Duration::from_secs(900);

/// The demo's process group, stopped (SIGINT, then SIGKILL) if the test ends early, with the
/// demo's pod cgroups removed if xtask could not do it.
struct DemoGuard {
    child: Child,
    pod_dirs: Vec<PathBuf>,
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let group = -(self.child.id() as libc::pid_t);
            // SAFETY: signalling the process group this test started.
            unsafe { libc::kill(group, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: as above.
            unsafe { libc::kill(group, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        for pod in &self.pod_dirs {
            let containers: Vec<PathBuf> = std::fs::read_dir(pod)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            for dir in containers.iter().chain([pod]) {
                for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: a process in the demo's own pod cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            for dir in containers.iter().chain([pod]) {
                for _ in 0..50 {
                    if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// The number after `key` in a summary line (`cpu 0.153 cores  memory 70.1 MiB  …`).
fn figure(line: &str, key: &str) -> Option<f64> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == key)?;
    words.next()?.parse().ok()
}

/// The word after `prefix` at the start of a line of the demo's header.
fn header<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `{prefix}` line in the demo's output:\n{}", lines.join("\n")))
}

/// Command lines of every process whose command line contains any of `needles`.
fn processes_with(needles: &[&str]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("reading /proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| needles.iter().any(|n| c.contains(n)))
        .collect()
}

#[test]
fn demo_shows_the_model_then_ctrl_c_leaves_nothing_behind() {
    require_root();
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO"));
    command
        .args(["xtask", "run", "--", "--demo"])
        .current_dir(e2e::workspace_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // As a terminal runs it: the demo's own foreground group, which Ctrl-C signals as a whole.
        .process_group(0);
    // `cargo test` gives this test its package's variables; an inner cargo that inherits them
    // rebuilds dependencies (as xtask's own `command` explains). The agent's own settings go too.
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if (name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR")
            || name.starts_with("MODELMETER_")
        {
            command.env_remove(&var);
        }
    }
    let mut child = command.spawn().expect("starting cargo xtask run -- --demo");
    let stdout = child.stdout.take().expect("piped stdout");
    // The build's and xtask's messages, through the test's own (captured) output.
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("demo! {line}");
        }
    });
    let mut demo = DemoGuard { child, pod_dirs: Vec::new() };
    let (send, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("demo| {line}");
            if send.send(line).is_err() {
                break;
            }
        }
    });

    // The header (after the build), then the first summary of the model.
    let mut seen: Vec<String> = Vec::new();
    let mut header_at = None;
    let summary = loop {
        let left = FIRST_SUMMARY_WITHIN.saturating_sub(started.elapsed());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no summary of demo-llm within {FIRST_SUMMARY_WITHIN:?} (exit status {:?}); the demo printed:\n{}",
                demo.child.try_wait(),
                seen.join("\n")
            )
        });
        if line.starts_with("modelmeter demo") {
            header_at = Some(started.elapsed());
        }
        if line.starts_with("  cgroup ") && demo.pod_dirs.is_empty() {
            let path = line.split_whitespace().nth(1).expect("the cgroup path").to_owned();
            let pod = Path::new(&path).parent().expect("the pod's directory").to_owned();
            demo.pod_dirs = e2e::hierarchy_roots(Path::new("/sys/fs/cgroup"))
                .into_iter()
                .map(|(_, root)| root.join(pod.strip_prefix("/").expect("an absolute cgroup path")))
                .collect();
        }
        let summary = seen.last().is_some_and(|l| l.starts_with("First figures")) && line.starts_with("demo-llm");
        assert!(
            !line.starts_with("No complete figures"),
            "the agent did not show demo-llm complete within the demo's wait:\n{}\n{line}\n{}",
            seen.join("\n"),
            lines.recv_timeout(Duration::from_secs(2)).into_iter().collect::<Vec<_>>().join("\n")
        );
        seen.push(line.clone());
        if summary {
            break line;
        }
    };
    let header_at = header_at.expect("the demo's header came before its summary");
    eprintln!(
        "build and setup: {:.1} s; first summary {:.1} s after the header",
        header_at.as_secs_f64(),
        (started.elapsed() - header_at).as_secs_f64()
    );
    let agent_url = header(&seen, "  agent    ").to_owned();
    let config = seen
        .iter()
        .find_map(|l| l.split("(config ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .expect("the demo prints its config's path")
        .to_owned();
    let server = header(&seen, "  server   ").to_owned();
    let server_port = server.rsplit(':').next().and_then(|p| p.split('/').next()).expect("the server's port");
    assert!(agent_url.starts_with("http://127.0.0.1:"), "{agent_url}");
    assert!(!demo.pod_dirs.is_empty(), "the demo prints its cgroup:\n{}", seen.join("\n"));
    assert!(demo.pod_dirs.iter().all(|d| d.is_dir()), "the demo's pod cgroups exist: {:?}", demo.pod_dirs);

    let cpu = figure(&summary, "cpu").unwrap_or_else(|| panic!("no CPU figure: {summary}"));
    let memory_mib = figure(&summary, "memory").unwrap_or_else(|| panic!("no memory figure: {summary}"));
    let p50 = figure(&summary, "p50").unwrap_or_else(|| panic!("no p50: {summary}"));
    let p99 = figure(&summary, "p99").unwrap_or_else(|| panic!("no p99: {summary}"));
    assert!(cpu > 0.0, "the server does real work per request: {summary}");
    assert!(memory_mib > 32.0, "the server holds 64 MiB: {summary}");
    assert!(p50 > 0.0 && p99 >= p50, "p50 ≤ p99: {summary}");

    // A refreshed line within the next few seconds, naming the model again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no refreshed summary; the demo printed:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if line.starts_with('[') && line.contains("demo-llm") && figure(&line, "p99").is_some() {
            break;
        }
    }

    // Ctrl-C, as a terminal sends it: to the whole foreground process group.
    // SAFETY: signalling the process group this test started.
    unsafe { libc::kill(-(demo.child.id() as libc::pid_t), libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = demo.child.try_wait().expect("waiting for the demo") {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop within 60 s of SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    seen.extend(lines.try_iter());
    std::thread::sleep(Duration::from_millis(200));
    seen.extend(lines.try_iter());
    let output = seen.join("\n");
    assert!(status.success(), "the demo exits 0 after Ctrl-C, got {status}:\n{output}");
    assert!(output.contains("Removed the pod's cgroups"), "{output}");

    let port_arg = format!("--port {server_port} ");
    let left: Vec<String> = processes_with(&["model_server.py", &config])
        .into_iter()
        .filter(|c| c.contains(&config) || c.contains(&port_arg))
        .collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let cgroups_left: Vec<&PathBuf> = demo.pod_dirs.iter().filter(|d| d.exists()).collect();
    assert!(cgroups_left.is_empty(), "cgroups left behind: {cgroups_left:?}");
    assert!(e2e::http_get(&format!("{agent_url}/healthz")).is_err(), "the agent still answers at {agent_url}");
}

#[test]
fn figures_are_read_after_their_names() {
    let line = "demo-llm:1   cpu 0.153 cores  memory 70.0 MiB  19.6 req/s  p50 3.2 ms  p99 38.0 ms  pods 1";
    assert_eq!(figure(line, "cpu"), Some(0.153));
    assert_eq!(figure(line, "memory"), Some(70.0));
    assert_eq!(figure(line, "p50"), Some(3.2));
    assert_eq!(figure(line, "p99"), Some(38.0));
    assert_eq!(figure("demo-llm cpu - cores", "cpu"), None);
}
