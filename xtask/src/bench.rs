//! `cargo xtask bench`: the numbers behind the performance targets, printed, never asserted.
//!
//! 1. Probe overhead: bpf_stats `run_time_ns / run_cnt` of every probe while threads ping-pong
//!    over socket pairs (a context-switch-heavy load).
//! 2. Agent footprint: RSS and CPU of the idle agent at its default 10 s interval with 50
//!    kubelet-shaped cgroups, each with a process in it.
//! 3. Request tracing: syscall probe cost for an unwatched process doing file I/O and for a
//!    watched server's requests; the server's throughput with the agent over without; the agent's
//!    CPU at 5,000 requests/s.
//! 4. Userspace hot paths: the criterion benchmarks in `benches/`.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use e2e::{Agent, CgroupGuard, HttpServer, Metrics, hex_id, pod_uid};

use crate::{cmd, require_root, root, setup};

pub fn bench(load: Duration, idle: Duration, criterion: bool) -> anyhow::Result<()> {
    require_root("bench")?;
    setup::setup()?;
    cmd("cargo", &["build", "--release", "-p", "modelmeter", "-p", "modelmeter-e2e"])?;
    // SAFETY: set before any thread is started; the harness reads these to find the binaries.
    unsafe {
        std::env::set_var("MM_AGENT_BIN", root().join("target/release/modelmeter"));
        std::env::set_var("MM_WORKLOAD_BIN", root().join("target/release/mm-workload"));
    }
    probe_overhead(load)?;
    agent_footprint(idle)?;
    request_tracing(load)?;
    if criterion {
        cmd("cargo", &["bench", "-p", "modelmeter-benches"])?;
    }
    Ok(())
}

/// (run_time_ns, runs) per probe.
fn probe_stats(metrics: &Metrics) -> Vec<(String, f64, f64)> {
    metrics
        .select("modelmeter_probe_runs_total", &[])
        .map(|runs| {
            let probe = runs.labels["probe"].clone();
            let seconds = metrics.get("modelmeter_probe_run_time_seconds_total", &[("probe", &probe)]).unwrap_or(0.0);
            (probe, seconds * 1e9, runs.value)
        })
        .collect()
}

fn probe_overhead(load: Duration) -> anyhow::Result<()> {
    let agent = Agent::start("");
    let before = probe_stats(&agent.metrics());
    let switches = context_switch_load(load, 4);
    let after = probe_stats(&agent.metrics());
    println!(
        "\n== Probe overhead (bpf_stats) under {} s of context-switch load ({:.0} round trips/s)",
        load.as_secs(),
        switches as f64 / load.as_secs_f64()
    );
    println!("{:<24} {:>12} {:>14} {:>10}", "PROBE", "RUNS", "RUN TIME ms", "ns/RUN");
    for (probe, time_ns, runs) in &after {
        let (time0, runs0) = before.iter().find(|(p, ..)| p == probe).map(|(_, t, r)| (*t, *r)).unwrap_or((0.0, 0.0));
        let (dt, dr) = (time_ns - time0, runs - runs0);
        let per_run = if dr > 0.0 { format!("{:.1}", dt / dr) } else { "-".to_owned() };
        println!("{probe:<24} {dr:>12.0} {:>14.2} {per_run:>10}", dt / 1e6);
    }
    Ok(())
}

/// Pairs of threads bouncing one byte over a socket pair; returns round trips.
fn context_switch_load(duration: Duration, pairs: usize) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let trips = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..pairs {
        let Ok((mut a, mut b)) = UnixStream::pair() else { continue };
        let stop_a = stop.clone();
        let trips_a = trips.clone();
        threads.push(std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while !stop_a.load(Ordering::Relaxed) {
                if a.write_all(&byte).is_err() || a.read_exact(&mut byte).is_err() {
                    break;
                }
                trips_a.fetch_add(1, Ordering::Relaxed);
            }
            drop(a);
        }));
        threads.push(std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while b.read_exact(&mut byte).is_ok() {
                if b.write_all(&byte).is_err() {
                    break;
                }
            }
        }));
    }
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    trips.load(Ordering::Relaxed)
}

/// utime + stime of a process in seconds, and its RSS in bytes.
fn cpu_and_rss(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading the agent's /proc stat")?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the agent's status")?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok((ticks / hz, rss_kib * 1024))
}

fn agent_footprint(idle: Duration) -> anyhow::Result<()> {
    let mut cgroups = Vec::new();
    let mut workloads = Vec::new();
    for i in 0..50u64 {
        let uid = pod_uid(1000 + i);
        let cgroup = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}/{}", hex_id(2000 + i, 64)));
        workloads.push(cgroup.spawn_workload(&["sleep"]));
        cgroups.push(cgroup);
    }
    let agent = Agent::start("interval: 10s\n");
    let tracked = agent
        .metrics()
        .select("container_cpu_time_seconds_total", &[])
        .filter(|s| s.labels.contains_key("pod_uid"))
        .count();
    // Let start-up settle before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let (cpu0, _) = cpu_and_rss(agent.pid())?;
    let started = Instant::now();
    let mut peak_rss = 0;
    while started.elapsed() < idle {
        std::thread::sleep(Duration::from_secs(1));
        peak_rss = peak_rss.max(cpu_and_rss(agent.pid())?.1);
    }
    let (cpu1, rss) = cpu_and_rss(agent.pid())?;
    let elapsed = started.elapsed().as_secs_f64();
    println!("\n== Idle agent, 10 s interval, {tracked} pod cgroups tracked, watched {elapsed:.0} s");
    println!(
        "CPU: {:.3}% of one core   RSS: {:.1} MB now, {:.1} MB peak",
        (cpu1 - cpu0) / elapsed * 100.0,
        rss as f64 / 1e6,
        peak_rss as f64 / 1e6
    );
    drop(agent);
    drop(workloads);
    // Newest first: the first guard created the shared parents, which empty out last.
    while let Some(cgroup) = cgroups.pop() {
        drop(cgroup);
    }
    Ok(())
}

/// Per-probe (run time ns, runs) deltas between two scrapes, for probes whose name matches.
fn probe_delta(before: &[(String, f64, f64)], after: &[(String, f64, f64)], probes: &[&str]) -> (f64, f64) {
    after
        .iter()
        .filter(|(probe, ..)| probes.contains(&probe.as_str()))
        .map(|(probe, time, runs)| {
            let (t0, r0) = before.iter().find(|(p, ..)| p == probe).map(|(_, t, r)| (*t, *r)).unwrap_or((0.0, 0.0));
            (time - t0, runs - r0)
        })
        .fold((0.0, 0.0), |(t, r), (dt, dr)| (t + dt, r + dr))
}

fn per_run(time_ns: f64, runs: f64) -> String {
    if runs > 0.0 { format!("{:.1} ns/run over {runs:.0} runs", time_ns / runs) } else { "no runs".to_owned() }
}

/// A keep-alive client that speaks through read(2)/write(2) (not recvfrom/sendto), so the socket
/// probes' recvfrom/sendto figures are the server's alone.
fn request_loop(port: u16, until: Instant, pace: Option<Duration>) -> u64 {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    let _ = stream.set_nodelay(true);
    // SAFETY: the fd comes from a stream we own and give up.
    let mut file = unsafe { std::fs::File::from_raw_fd(stream.into_raw_fd()) };
    let request = b"GET /item HTTP/1.1\r\nHost: bench\r\n\r\n";
    let mut buffer = [0u8; 4096];
    let mut done = 0;
    let mut next = Instant::now();
    while Instant::now() < until {
        if let Some(pace) = pace {
            next += pace;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if file.write_all(request).is_err() {
            break;
        }
        // The response fits one read: "HTTP/1.1 200 OK" + headers + "ok\n".
        let mut got = 0;
        while !buffer[..got].ends_with(b"ok\n") {
            match file.read(&mut buffer[got..]) {
                Ok(0) | Err(_) => return done,
                Ok(n) => got += n,
            }
        }
        done += 1;
    }
    done
}

/// Requests per second of `clients` closed-loop clients for `duration` (each paced at `pace` if set).
fn throughput(port: u16, clients: usize, duration: Duration, pace: Option<Duration>) -> f64 {
    let until = Instant::now() + duration;
    let handles: Vec<_> = (0..clients).map(|_| std::thread::spawn(move || request_loop(port, until, pace))).collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / duration.as_secs_f64()
}

fn request_tracing(load: Duration) -> anyhow::Result<()> {
    let uid = pod_uid(4000);
    let pod = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}/{}", hex_id(4001, 64)));
    let server = HttpServer::start_in(&pod);
    // Without the agent first.
    let bare = throughput(server.port, 4, load, None);
    // Collect on every scrape, so the figures cover exactly each phase.
    let agent = Agent::start("min_collect_interval: 0s\nkubernetes:\n  watch: never\n");
    std::thread::sleep(Duration::from_secs(2));

    // An unwatched process doing file I/O.
    let file_probes = ["enter_read", "exit_read", "enter_write", "exit_write"];
    let before = probe_stats(&agent.metrics());
    let dir = tempfile_dir()?;
    let path = dir.join("io");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let block = [7u8; 4096];
    let mut read_back = [0u8; 4096];
    for i in 0..200_000u64 {
        if i % 2 == 0 {
            file.write_all(&block)?;
        } else {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(0))?;
            file.read_exact(&mut read_back)?;
        }
    }
    let after = probe_stats(&agent.metrics());
    let (time, runs) = probe_delta(&before, &after, &file_probes);
    println!("\n== Request tracing");
    println!("syscall probes, unwatched process doing file reads/writes: {}", per_run(time, runs));

    // A watched server's requests: its recvfrom/sendto are watched; the clients use read/write.
    let before = probe_stats(&agent.metrics());
    let traced = throughput(server.port, 4, load, None);
    let after = probe_stats(&agent.metrics());
    let watched = ["enter_recvfrom", "exit_recvfrom", "enter_sendto", "exit_sendto"];
    let (time, runs) = probe_delta(&before, &after, &watched);
    println!("syscall probes, watched server request/response (recvfrom/sendto): {}", per_run(time, runs));
    println!("server throughput: {bare:.0} req/s without the agent, {traced:.0} with: ratio {:.3}", traced / bare);

    // Agent CPU at about 5,000 requests/s (10 clients × 500/s).
    let (cpu0, _) = cpu_and_rss(agent.pid())?;
    let started = Instant::now();
    let rate = throughput(server.port, 10, load, Some(Duration::from_micros(2000)));
    let (cpu1, rss) = cpu_and_rss(agent.pid())?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "agent at {rate:.0} req/s: {:.2}% of one core, RSS {:.1} MB",
        (cpu1 - cpu0) / elapsed * 100.0,
        rss as f64 / 1e6
    );
    let counted: f64 = agent.metrics().select("http_server_request_duration_seconds_count", &[]).map(|s| s.value).sum();
    println!("requests the agent counted: {counted:.0}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("modelmeter-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
