//! `cargo xtask bench`: the numbers behind the performance targets, printed, never asserted.
//!
//! 1. Probe overhead: bpf_stats `run_time_ns / run_cnt` of every probe while threads ping-pong
//!    over socket pairs (a context-switch-heavy load).
//! 2. Agent footprint: RSS and CPU of the idle agent at its default 10 s interval with 50
//!    kubelet-shaped cgroups, each with a process in it.
//! 3. Request tracing, as medians of interleaved with/without pairs: (a) the throughput ratio of a
//!    loopback server that answers at once, (b) the ratio and p99 change with a 2 ms handler,
//!    (c) probe ns and agent CPU per watched request, (d) the cost to an unwatched process's
//!    syscalls, beside a raw_tracepoint sys_enter/sys_exit design, (e) each probe's ns/run beside
//!    an empty program on the same hook; and the agent's CPU at 5,000 requests/s.
//! 4. The pipeline under load: the longest `/healthz` answer while collections run with 2,000 pod
//!    cgroups and 5,000 traced requests/s; agent CPU per traced request, quiet and while 1,000
//!    pod cgroups are created and removed; agent CPU for a fork storm of 20,000 short processes.
//! 5. Push sinks with their backend down: the agent's memory with a full event queue (bounded by
//!    `sinks.queue_events`), and with the disk spool instead.
//! 6. Userspace hot paths: the criterion benchmarks in `benches/` (among them events/s through
//!    each sink's encoder).

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
use e2e::{Agent, CgroupGuard, CgroupStack, HttpServer, Metrics, hex_id, pod_uid};

use crate::{cmd, require_root, root, setup};

pub fn bench(load: Duration, idle: Duration, criterion: bool, only: Option<&str>) -> anyhow::Result<()> {
    require_root("bench")?;
    setup::setup()?;
    cmd("cargo", &["build", "--release", "-p", "modelmeter", "-p", "modelmeter-e2e"])?;
    // SAFETY: set before any thread is started; the harness reads these to find the binaries.
    // An agent binary given in MM_AGENT_BIN (another build, to compare against) is kept.
    let other_agent = std::env::var_os("MM_AGENT_BIN").is_some();
    unsafe {
        if !other_agent {
            std::env::set_var("MM_AGENT_BIN", root().join("target/release/modelmeter"));
        }
        std::env::set_var("MM_WORKLOAD_BIN", root().join("target/release/mm-workload"));
        std::env::set_var("MM_HTTPD_BIN", root().join("target/release/mm-httpd"));
    }
    let run = |section: &str| only.is_none_or(|o| o == section);
    if let Some(section) = only
        && !["probes", "footprint", "requests", "pipeline", "sinks"].contains(&section)
    {
        anyhow::bail!("--only takes probes, footprint, requests, pipeline or sinks, not {section:?}");
    }
    if run("probes") {
        probe_overhead(load)?;
    }
    if run("footprint") {
        agent_footprint(idle)?;
    }
    if run("requests") {
        request_tracing(load, !other_agent)?;
    }
    if run("pipeline") {
        pipeline_under_load(load)?;
    }
    if run("sinks") {
        sink_queue_memory()?;
    }
    if criterion && only.is_none() {
        // The GPU round's fake NVML library.
        cmd("cargo", &["build", "--release", "-p", "fake-nvml"])?;
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

/// The agent's memory while Loki is unreachable and events pile up: in memory up to
/// `sinks.queue_events` (the rest dropped and counted), or in the disk spool.
fn sink_queue_memory() -> anyhow::Result<()> {
    const EVENTS: usize = 30_000;
    const QUEUE: usize = 10_000;
    println!("\n== Push sinks with the backend down: {EVENTS} events (every request a slow_request event)");
    for spool in [false, true] {
        let uid = pod_uid(4242);
        let cgroup = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}/{}", hex_id(4243, 64)));
        let server = HttpServer::start_in(&cgroup);
        let dir = tempfile::tempdir()?;
        // Port 9 (discard) refuses connections on a machine that runs no such service.
        let agent = Agent::start(&format!(
            "interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n\
             requests:\n  slow_threshold: 0s\n  events_per_second: 1000000\n\
             sinks:\n  stdout: false\n  queue_events: {QUEUE}\n  loki:\n    url: http://127.0.0.1:9\n\
             \x20 spool:\n    enabled: {spool}\n    path: {}\n    max_bytes: 16777216\n",
            dir.path().display()
        ));
        std::thread::sleep(Duration::from_secs(3));
        let (_, rss_before) = cpu_and_rss(agent.pid())?;
        e2e::drive_load(server.port, &vec!["/".to_owned(); EVENTS], 4);
        let settled = Instant::now();
        let queued = loop {
            let metrics = agent.metrics();
            let queued = metrics.get("modelmeter_sink_queue_items", &[("sink", "loki")]).unwrap_or(0.0);
            let dropped: f64 = metrics
                .select("modelmeter_sink_dropped_total", &[("sink", "loki")])
                .map(|s| s.value)
                .sum::<f64>()
                .abs();
            if queued + dropped >= EVENTS as f64 || settled.elapsed() > Duration::from_secs(60) {
                break (queued, dropped);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let (_, rss_after) = cpu_and_rss(agent.pid())?;
        let on_disk: u64 = walk_bytes(dir.path());
        let what = if spool { "disk spool (16 MiB cap)" } else { "memory queue" };
        println!(
            "{what:<24} queued {:>6.0}, dropped {:>6.0}; RSS {:.1} MB → {:.1} MB ({:+.0} bytes per queued event); spool on disk {:.1} MB",
            queued.0,
            queued.1,
            rss_before as f64 / 1e6,
            rss_after as f64 / 1e6,
            (rss_after as f64 - rss_before as f64) / queued.0.max(1.0),
            on_disk as f64 / 1e6
        );
        drop(agent);
        drop(server);
    }
    Ok(())
}

/// Bytes of the files under `dir` (0 when it does not exist).
pub fn walk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            // The entry's own type: a link to a directory is not walked (and cannot loop).
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk_bytes(&entry.path())
            } else {
                entry.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
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

/// What closed-loop clients did: requests and each request's round trip.
#[derive(Debug, Default)]
struct Load {
    requests: u64,
    latencies: Vec<Duration>,
}

impl Load {
    fn per_second(&self, duration: Duration) -> f64 {
        self.requests as f64 / duration.as_secs_f64()
    }

    fn p99(&mut self) -> Duration {
        self.latencies.sort_unstable();
        self.latencies.get(self.latencies.len() * 99 / 100).copied().unwrap_or_default()
    }
}

/// A keep-alive client that speaks through read(2)/write(2) (not recvfrom/sendto), so the socket
/// probes' recvfrom/sendto figures are the server's alone.
fn request_loop(port: u16, path: &str, until: Instant, pace: Option<Duration>) -> Load {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let mut load = Load::default();
    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return load };
    let _ = stream.set_nodelay(true);
    // SAFETY: the fd comes from a stream we own and give up.
    let mut file = unsafe { std::fs::File::from_raw_fd(stream.into_raw_fd()) };
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut buffer = [0u8; 4096];
    let mut next = Instant::now();
    while Instant::now() < until {
        if let Some(pace) = pace {
            next += pace;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let sent = Instant::now();
        if file.write_all(request.as_bytes()).is_err() {
            break;
        }
        // mm-httpd's bodies are one line ("ok\n", "fast\n") after the head.
        let complete = |bytes: &[u8]| {
            bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|end| bytes.len() > end + 4 && bytes.ends_with(b"\n"))
        };
        let mut got = 0;
        while !complete(&buffer[..got]) {
            match file.read(&mut buffer[got..]) {
                Ok(0) | Err(_) => return load,
                Ok(n) => got += n,
            }
        }
        load.latencies.push(sent.elapsed());
        load.requests += 1;
    }
    load
}

/// `clients` closed-loop clients for `duration` (each paced at `pace` if set).
fn drive(port: u16, path: &'static str, clients: usize, duration: Duration, pace: Option<Duration>) -> Load {
    let until = Instant::now() + duration;
    let handles: Vec<_> =
        (0..clients).map(|_| std::thread::spawn(move || request_loop(port, path, until, pace))).collect();
    let mut total = Load::default();
    for handle in handles {
        let load = handle.join().unwrap_or_default();
        total.requests += load.requests;
        total.latencies.extend(load.latencies);
    }
    total
}

/// Requests per second of `clients` closed-loop clients of `/item` (answered at once).
fn throughput(port: u16, clients: usize, duration: Duration, pace: Option<Duration>) -> f64 {
    drive(port, "/item", clients, duration, pace).per_second(duration)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The agent with request tracing, collecting on every scrape; ready once its probes watch the pod.
/// `bpf_stats`: keep the kernel's probe statistics on (two clock reads per probe run); the
/// DaemonSet's base has them off (they need CAP_SYS_ADMIN). `MM_SYSCALL_HOOKS` (`exit_only`,
/// `enter_exit`) benches that way of following syscalls.
fn traced_agent(calibration: bool, bpf_stats: bool) -> Agent {
    bench_agent(calibration, bpf_stats, "")
}

/// [`traced_agent`], followed by `extra` config (top-level keys after `probes`).
fn bench_agent(calibration: bool, bpf_stats: bool, extra: &str) -> Agent {
    // Only when asked: an older build in MM_AGENT_BIN does not know the setting.
    let hooks = std::env::var("MM_SYSCALL_HOOKS").map(|h| format!("  syscall_hooks: {h}\n")).unwrap_or_default();
    let agent = Agent::start(&format!(
        "min_collect_interval: 0s\nkubernetes:\n  watch: never\nprobes:\n  calibration: {calibration}\n  bpf_stats: {bpf_stats}\n{hooks}{extra}"
    ));
    // Discovery puts the pod's cgroup in the watched set at the first collection.
    std::thread::sleep(Duration::from_secs(2));
    agent
}

/// One with/without pair per round, interleaved, so that drift of the machine hits both alike;
/// every other round runs its traced half first, so that a trend across a pair (or the machine
/// settling after the agent starts or exits) does not fall on one side only.
/// The agent runs as the DaemonSet deploys it: without bpf_stats.
struct Pairs {
    ratios: Vec<f64>,
    p99_changes: Vec<f64>,
    agent_us_per_request: Vec<f64>,
    /// The p99 of all traced requests against that of all bare ones, when asked to pool them.
    pooled_p99_change: Option<f64>,
}

fn interleaved_pairs(
    port: u16,
    path: &'static str,
    rounds: usize,
    load: Duration,
    pool: bool,
) -> anyhow::Result<Pairs> {
    let mut pairs = Pairs {
        ratios: Vec::new(),
        p99_changes: Vec::new(),
        agent_us_per_request: Vec::new(),
        pooled_p99_change: None,
    };
    let (mut all_bare, mut all_traced) = (Load::default(), Load::default());
    for round in 0..rounds {
        let traced_first = round % 2 == 1;
        let mut bare = if traced_first { Load::default() } else { drive(port, path, 4, load, None) };
        let agent = traced_agent(false, false);
        let (cpu0, _) = cpu_and_rss(agent.pid())?;
        let mut traced = drive(port, path, 4, load, None);
        let (cpu1, _) = cpu_and_rss(agent.pid())?;
        drop(agent);
        if traced_first {
            // The probes go with the agent's exit; give the kernel a moment to free them.
            std::thread::sleep(Duration::from_secs(1));
            bare = drive(port, path, 4, load, None);
        }
        pairs.ratios.push(traced.requests as f64 / bare.requests.max(1) as f64);
        let (bare_p99, traced_p99) = (bare.p99().as_secs_f64(), traced.p99().as_secs_f64());
        pairs.p99_changes.push((traced_p99 - bare_p99) / bare_p99);
        pairs.agent_us_per_request.push((cpu1 - cpu0) * 1e6 / traced.requests.max(1) as f64);
        if pool {
            all_bare.latencies.append(&mut bare.latencies);
            all_traced.latencies.append(&mut traced.latencies);
        }
    }
    if pool {
        let (bare_p99, traced_p99) = (all_bare.p99().as_secs_f64(), all_traced.p99().as_secs_f64());
        pairs.pooled_p99_change = Some((traced_p99 - bare_p99) / bare_p99);
    }
    Ok(pairs)
}

/// Medians of (a)'s ratio with the agent's scheduler probes alone (`requests.watch: none`) and
/// with its request probes attached but watching nothing (`models` without the Kubernetes API):
/// what the kernel's syscall tracing path costs before any request is followed.
fn floor_pairs(port: u16, rounds: usize, load: Duration) -> anyhow::Result<(f64, f64)> {
    let (mut sched_only, mut unwatched) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let bare = drive(port, "/item", 4, load, None).requests.max(1) as f64;
        for (ratios, watch) in [(&mut sched_only, "none"), (&mut unwatched, "models")] {
            let agent = bench_agent(false, false, &format!("requests:\n  watch: {watch}\n"));
            ratios.push(drive(port, "/item", 4, load, None).requests as f64 / bare);
            drop(agent);
        }
    }
    Ok((median(&mut sched_only), median(&mut unwatched)))
}

/// Wall-clock ns per syscall of this (unwatched) process over about `syscalls` of them on a file: half
/// reads and writes (hooked), half lseeks (not).
fn file_syscall_ns(file: &mut std::fs::File, syscalls: u64) -> anyhow::Result<f64> {
    use std::io::Seek;
    let block = [7u8; 4096];
    let mut read_back = [0u8; 4096];
    let started = Instant::now();
    let rounds = syscalls / 4;
    for _ in 0..rounds {
        file.seek(std::io::SeekFrom::Start(0))?;
        file.write_all(&block)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        file.read_exact(&mut read_back)?;
    }
    Ok(started.elapsed().as_nanos() as f64 / (rounds * 4) as f64)
}

/// (d) by the clock: an unwatched process's read/write with and without the agent, interleaved;
/// beyond the probe's own run (bpf_stats), each hooked syscall takes the kernel's tracing path.
/// Medians (without, with), in ns per syscall.
fn unwatched_wall_cost(file: &mut std::fs::File) -> anyhow::Result<(f64, f64)> {
    const SYSCALLS: u64 = 200_000;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        without.push(file_syscall_ns(file, SYSCALLS)?);
        let agent = traced_agent(false, false);
        with.push(file_syscall_ns(file, SYSCALLS)?);
        drop(agent);
    }
    Ok((median(&mut without), median(&mut with)))
}

/// Probe run time per request, from bpf_stats, under closed-loop load on `path`: (the server's
/// request probes, the scheduler probes of every task).
fn probe_ns_per_request(port: u16, path: &'static str, load: Duration) -> (f64, f64) {
    let agent = traced_agent(false, true);
    let before = probe_stats(&agent.metrics());
    let requests = drive(port, path, 4, load, None).requests.max(1) as f64;
    let after = probe_stats(&agent.metrics());
    let (request_ns, _) = probe_delta(&before, &after, &TRAFFIC_PROBES);
    let (scheduler_ns, _) = probe_delta(&before, &after, &SCHEDULER_PROBES);
    (request_ns / requests, scheduler_ns / requests)
}

/// Every flavour of the CPU probes (one is attached).
const SCHEDULER_PROBES: [&str; 9] = [
    "sched_switch_btf",
    "sched_wakeup_btf",
    "sched_wakeup_new_btf",
    "sched_switch_raw",
    "sched_wakeup_raw",
    "sched_wakeup_new_raw",
    "sched_switch_tp",
    "sched_wakeup_tp",
    "sched_wakeup_new_tp",
];

/// The request probes of the server's syscalls (its reads are recvfrom, its writes sendto): the
/// exit-only programs, the enter/exit pairs, and the names of builds before the pairs were named.
const TRAFFIC_PROBES: [&str; 8] = [
    "exit_recvfrom",
    "exit_sendto",
    "pair_enter_recvfrom",
    "pair_exit_recvfrom",
    "pair_enter_sendto",
    "pair_exit_sendto",
    "enter_recvfrom",
    "enter_sendto",
];

/// `calibrate`: run (d) and (e), which need this build's calibration probes.
fn request_tracing(load: Duration, calibrate: bool) -> anyhow::Result<()> {
    const ROUNDS: usize = 7;
    const HANDLER_ROUNDS: usize = 11;
    let uid = pod_uid(4000);
    let pod = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}/{}", hex_id(4001, 64)));
    let server = HttpServer::start_in(&pod);
    println!("\n== Request tracing ({ROUNDS} interleaved with/without pairs of {} s, 4 clients)", load.as_secs());

    // (a) A server that answers at once: the worst case for the probes' share of each request.
    let mut at_once = interleaved_pairs(server.port, "/item", ROUNDS, load, false)?;
    println!(
        "(a) answered at once: throughput with/without (agent as deployed, no bpf_stats), median {:.3} (pairs {:.3?})",
        median(&mut at_once.ratios.clone()),
        at_once.ratios
    );
    // Where (a)'s cost lies: the same pairs with parts of the agent only.
    let floor = floor_pairs(server.port, ROUNDS, load)?;
    println!(
        "    floor: scheduler probes alone {:.3}; request probes attached but nothing watched {:.3} (medians of {ROUNDS} interleaved rounds)",
        floor.0, floor.1
    );
    // (b) A 2 ms handler: what a model server's requests look like. Its p99 is the 200th-slowest
    // of about 20,000 requests a side, which this machine's own hiccups move by a few per cent a
    // pair: more pairs, and the p99 of all requests of each side beside the median.
    let handler = interleaved_pairs(server.port, "/fast", HANDLER_ROUNDS, load, true)?;
    println!(
        "(b) 2 ms handler ({HANDLER_ROUNDS} pairs): throughput with/without, median {:.4} (pairs {:.4?}); p99 change median {:+.2}% (pairs {:+.2?}%), pooled {:+.2}%",
        median(&mut handler.ratios.clone()),
        handler.ratios,
        median(&mut handler.p99_changes.clone()) * 100.0,
        handler.p99_changes.iter().map(|c| c * 100.0).collect::<Vec<_>>(),
        handler.pooled_p99_change.unwrap_or(f64::NAN) * 100.0
    );
    // (c) Per watched request: the probes' run time (bpf_stats, in runs of their own) and the
    // agent's CPU. Under the 2 ms handler the probes run with caches the handler's sleep and the
    // other threads have cooled: what they add to its latency.
    let (hot_request, hot_scheduler) = probe_ns_per_request(server.port, "/item", load);
    let (cold_request, cold_scheduler) = probe_ns_per_request(server.port, "/fast", load);
    println!(
        "(c) per watched request: probes {hot_request:.0} ns (sum over its probe runs), agent CPU {:.2} µs (median of (a))",
        median(&mut at_once.agent_us_per_request)
    );
    println!(
        "    with scheduler probes: {:.0} ns answered at once; {:.0} ns with the 2 ms handler (request probes {cold_request:.0}, scheduler probes {cold_scheduler:.0})",
        hot_request + hot_scheduler,
        cold_request + cold_scheduler
    );

    if calibrate {
        unwatched_and_floor_costs(server.port, load)?;
    } else {
        println!("(d), (e): need this build's calibration probes; skipped for the agent in MM_AGENT_BIN");
    }
    agent_cpu_at_5000(server.port, load)
}

/// (d) and (e): the calibration programs beside the probes.
fn unwatched_and_floor_costs(port: u16, load: Duration) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let path = dir.join("io");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    // By the clock first, with agents of its own: the calibration programs would weigh on it.
    let (without, with) = unwatched_wall_cost(&mut file)?;
    let agent = traced_agent(true, true);
    let file_probes =
        ["exit_read", "exit_write", "pair_enter_read", "pair_exit_read", "pair_enter_write", "pair_exit_write"];
    let raw = ["calibrate_raw_sys_enter", "calibrate_raw_sys_exit"];
    let before = probe_stats(&agent.metrics());
    let syscalls = 200_000u64;
    file_syscall_ns(&mut file, syscalls)?;
    let after = probe_stats(&agent.metrics());
    let (time, runs) = probe_delta(&before, &after, &file_probes);
    println!(
        "(d) an unwatched process's read/write: {} (the watched check, then nothing); {:.1} ns per syscall",
        per_run(time, runs),
        time / syscalls as f64
    );
    let (raw_time, raw_runs) = probe_delta(&before, &after, &raw);
    println!(
        "    raw_tracepoint sys_enter/sys_exit alternative over the same time: {} — on every syscall of every process",
        per_run(raw_time, raw_runs)
    );
    println!(
        "    by the clock (read/write/lseek loop, medians of 5 pairs): {without:.0} ns per syscall without the agent, \
         {with:.0} ns with it (+{:.0} ns)",
        with - without
    );

    let before = probe_stats(&agent.metrics());
    let requests = drive(port, "/item", 4, load, None).requests.max(1) as f64;
    let after = probe_stats(&agent.metrics());
    println!("(e) each probe beside an empty program on the same hook, same run ({requests:.0} requests):");
    println!("{:<28} {:>14} {:>12} {:>16}", "PROBE", "ns/RUN", "RUNS/REQ", "EMPTY ns/RUN");
    for (probe, empty) in [
        ("exit_recvfrom", "calibrate_exit_recvfrom"),
        ("exit_sendto", "calibrate_exit_sendto"),
        ("pair_enter_recvfrom", "calibrate_enter_recvfrom"),
        ("pair_exit_recvfrom", "calibrate_exit_recvfrom"),
        ("pair_enter_sendto", "calibrate_enter_sendto"),
        ("pair_exit_sendto", "calibrate_exit_sendto"),
        ("calibrate_raw_sys_enter", ""),
        ("calibrate_raw_sys_exit", ""),
        // The CPU probes run on every context switch a request causes, and count in (a) too.
        ("sched_switch_btf", ""),
        ("sched_wakeup_btf", ""),
    ] {
        let (time, runs) = probe_delta(&before, &after, &[probe]);
        let floor = if empty.is_empty() {
            "-".to_owned()
        } else {
            let (t, r) = probe_delta(&before, &after, &[empty]);
            if r > 0.0 { format!("{:.1}", t / r) } else { "-".to_owned() }
        };
        let per = if runs > 0.0 { format!("{:.1}", time / runs) } else { "-".to_owned() };
        println!("{probe:<28} {per:>14} {:>12.2} {floor:>16}", runs / requests);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The agent's CPU at about 5,000 requests/s (10 clients × 500/s).
fn agent_cpu_at_5000(port: u16, load: Duration) -> anyhow::Result<()> {
    let agent = traced_agent(false, false);
    let (cpu0, _) = cpu_and_rss(agent.pid())?;
    let started = Instant::now();
    let rate = throughput(port, 10, load, Some(Duration::from_micros(2000)));
    let (cpu1, rss) = cpu_and_rss(agent.pid())?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "agent at {rate:.0} req/s: {:.2}% of one core, RSS {:.1} MB",
        (cpu1 - cpu0) / elapsed * 100.0,
        rss as f64 / 1e6
    );
    let metrics = agent.metrics();
    let counted: f64 = metrics.select("http_server_request_duration_seconds_count", &[]).map(|s| s.value).sum();
    let kernel = metrics.get("modelmeter_http_paired_requests_total", &[("path", "kernel")]).unwrap_or(0.0);
    let userspace = metrics.get("modelmeter_http_paired_requests_total", &[("path", "userspace")]).unwrap_or(0.0);
    println!(
        "requests the agent counted: {counted:.0} (paired in the kernel {kernel:.0}, in userspace {userspace:.0})"
    );
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("modelmeter-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A pod cgroup path of this bench run.
fn pod_path(seed: u64) -> String {
    format!("/kubepods/burstable/pod{}/{}", pod_uid(seed), hex_id(seed + 1_000_000, 64))
}

/// Answer times of `/healthz`, asked every 10 ms until `until`, sorted.
fn healthz_latencies(url: String, until: Instant) -> Vec<Duration> {
    let mut times = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let _ = e2e::http_get(&url);
        times.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    times.sort();
    times
}

/// Agent CPU seconds per request the agent counted, over a phase of paced traced load.
fn cpu_per_request(
    agent: &Agent,
    port: u16,
    load: Duration,
    during: impl FnOnce(Instant),
) -> anyhow::Result<(f64, f64)> {
    let counted = |agent: &Agent| -> f64 {
        agent.metrics().select("http_server_request_duration_seconds_count", &[]).map(|s| s.value).sum()
    };
    let (cpu0, _) = cpu_and_rss(agent.pid())?;
    let counted0 = counted(agent);
    let until = Instant::now() + load;
    let clients = std::thread::spawn(move || throughput(port, 10, load, Some(Duration::from_micros(2000))));
    during(until);
    let rate = clients.join().unwrap_or(0.0);
    // The last requests are folded at the next collection (every scrape here).
    std::thread::sleep(Duration::from_millis(300));
    let (cpu1, _) = cpu_and_rss(agent.pid())?;
    let requests = (counted(agent) - counted0).max(1.0);
    Ok(((cpu1 - cpu0) / requests, rate))
}

fn pipeline_under_load(load: Duration) -> anyhow::Result<()> {
    println!("\n== The pipeline under load");
    // The server's pod first: it creates the shared parents, and goes last.
    let server_pod = CgroupGuard::create(&pod_path(9_000));
    let cgroups = CgroupStack((0..2000u64).map(|i| CgroupGuard::create(&pod_path(10_000 + i))).collect());
    let server = HttpServer::start_in(&server_pod);
    let agent = Agent::start("interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n");
    std::thread::sleep(Duration::from_secs(3));

    // /healthz while collections run (every second, and at every scrape) under traced traffic.
    let until = Instant::now() + load;
    let health = {
        let url = agent.url("/healthz");
        std::thread::spawn(move || healthz_latencies(url, until))
    };
    let scrapes = {
        let url = agent.url("/metrics");
        std::thread::spawn(move || {
            let mut n = 0;
            while Instant::now() < until {
                let _ = e2e::http_get(&url);
                n += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            n
        })
    };
    let rate = throughput(server.port, 10, load, Some(Duration::from_micros(2000)));
    let times = health.join().unwrap_or_default();
    let scrapes = scrapes.join().unwrap_or(0);
    let at = |q: f64| times.get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1))).copied();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    println!(
        "/healthz with 2,000 pod cgroups, {rate:.0} traced req/s, {scrapes} scrapes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} probes)",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(times.last().copied()),
        times.len()
    );
    let (collection, bytes) = large_metric(&agent.url("/metrics"), "modelmeter_collection_duration_seconds")?;
    println!(
        "one collection of 2,000 pod cgroups: {:.1} ms; /metrics is {:.1} MB",
        collection * 1e3,
        bytes as f64 / 1e6
    );
    drop(agent);
    drop(cgroups);

    // CPU per traced request, quiet, then while 1,000 pod cgroups come and go.
    let agent = Agent::start("min_collect_interval: 0s\nkubernetes:\n  watch: never\n");
    std::thread::sleep(Duration::from_secs(2));
    let (quiet, quiet_rate) = cpu_per_request(&agent, server.port, load, |_| {})?;
    let (churn, churn_rate) = cpu_per_request(&agent, server.port, load, |until| {
        let mut created = 0u64;
        let step = load / 1000;
        for i in 0..1000u64 {
            if Instant::now() >= until {
                break;
            }
            let started = Instant::now();
            drop(CgroupGuard::create(&pod_path(20_000 + i)));
            created += 1;
            if let Some(rest) = step.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        println!("pod cgroups created and removed during the churn phase: {created}");
    })?;
    println!(
        "agent CPU per traced request: {:.1} µs quiet ({quiet_rate:.0} req/s), {:.1} µs while pod cgroups churn \
         ({churn_rate:.0} req/s): ratio {:.2}",
        quiet * 1e6,
        churn * 1e6,
        churn / quiet
    );

    // A fork storm of 20,000 short processes in one pod.
    let storm_pod = CgroupGuard::create(&pod_path(30_000));
    let (cpu0, _) = cpu_and_rss(agent.pid())?;
    let started = Instant::now();
    let mut storm = storm_pod.spawn_workload(&["forks", "20000"]);
    let status = storm.wait();
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let metrics = agent.metrics();
    let (cpu1, rss) = cpu_and_rss(agent.pid())?;
    let uid_of = storm_pod.rel.split('/').nth(3).and_then(|p| p.strip_prefix("pod")).unwrap_or_default().to_owned();
    let attributed = metrics.get("container_cpu_time_seconds_total", &[("pod_uid", &uid_of)]).unwrap_or(f64::NAN);
    let own = cgroup_cpu_seconds(&storm_pod);
    println!(
        "fork storm ({status}): 20,000 processes in {:.1} s; agent CPU {:.3} s ({:.1}% of one core), RSS {:.1} MB; \
         the pod's CPU: {attributed:.3} s attributed, {own:.3} s by its own cgroup",
        elapsed.as_secs_f64(),
        cpu1 - cpu0,
        (cpu1 - cpu0) / elapsed.as_secs_f64() * 100.0,
        rss as f64 / 1e6
    );
    drop(storm);
    drop(storm_pod);
    drop(agent);
    drop(server);
    drop(server_pod);
    Ok(())
}

/// A cgroup's own CPU figure: v1 cpuacct.usage, else v2 cpu.stat usage_usec.
fn cgroup_cpu_seconds(cgroup: &CgroupGuard) -> f64 {
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).ok();
    let v1 = cgroup.try_dir("cpuacct").and_then(|dir| read(dir.join("cpuacct.usage")));
    if let Some(ns) = v1.and_then(|t| t.trim().parse::<f64>().ok()) {
        return ns / 1e9;
    }
    read(cgroup.dir("v2").join("cpu.stat"))
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok()))
        .map_or(f64::NAN, |us| us / 1e6)
}

/// One unlabelled sample of an exposition too large for the harness's reader, and the size.
fn large_metric(url: &str, name: &str) -> anyhow::Result<(f64, usize)> {
    use std::io::BufRead;
    let response = ureq::get(url).call().context("scraping /metrics")?;
    let mut value = f64::NAN;
    let mut bytes = 0;
    for line in std::io::BufReader::new(response.into_reader()).lines() {
        let line = line?;
        bytes += line.len() + 1;
        if let Some(v) = line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')) {
            value = v.trim().parse().unwrap_or(f64::NAN);
        }
    }
    Ok((value, bytes))
}
