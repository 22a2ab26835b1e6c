//! `cargo xtask run -- --demo`: the agent measuring a real model server within seconds. A small
//! OpenAI-compatible server (`xtask/demo/model_server.py`) runs in a kubelet-shaped pod cgroup
//! while a load generator sends it chat requests; a `standalone.rules` entry in the demo's config
//! names its model. The summary shows the model's CPU, memory, requests/s and p50/p99 latency.
//! Ctrl-C (or SIGTERM) stops the load, the server and the agent and removes the cgroups.
//!
//! Also the signal handling `run` shares: xtask catches SIGINT and SIGTERM so that it outlives its
//! children and cleans up after them, whichever of them dies first.

use std::{
    io::Write,
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::root;

/// The model the demo server serves and its rule names. No version: the requests name the model
/// without one, and the model's row joins the pod's CPU and memory with the requests' latency
/// only when both name the same model and version.
pub const MODEL: &str = "demo-llm";
/// The memory the server holds from its start (the "weights").
const SERVER_MEMORY_MIB: u64 = 64;
/// Requests per second the load generator aims at.
const LOAD_PER_SECOND: u64 = 20;
/// How long the first summary may take once the load runs.
const FIRST_FIGURES_WITHIN: Duration = Duration::from_secs(30);
/// Between the refreshed summary lines.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The signal that asked xtask to stop (SIGINT or SIGTERM), 0 until one came.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP.store(signal, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM set a flag instead of killing xtask, so that it can stop and
/// reap what it started. A terminal's Ctrl-C reaches the whole foreground process group: the
/// agent then stops by itself and xtask waits for it.
pub fn catch_stop_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the struct is
        // zeroed (a valid sigaction) and filled in before the call.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The stop signal received so far, if any.
pub fn stop_signal() -> Option<i32> {
    Some(STOP.load(Ordering::SeqCst)).filter(|s| *s != 0)
}

/// Sleeps up to `duration`; false as soon as a stop signal has come.
pub fn sleep_unless_stopped(duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if stop_signal().is_some() {
            return false;
        }
        std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(50)));
    }
    stop_signal().is_none()
}

/// Sends `signal` to a child, then waits up to `grace` for it to exit, then kills it.
pub fn stop_child(child: &mut Child, signal: libc::c_int, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // SAFETY: kill(2) on our own child, which has not been reaped (try_wait said so).
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("process {} did not stop within {grace:?} of signal {signal}: killing it", child.id());
    child.kill()?;
    child.wait()
}

/// The child gets SIGTERM if xtask dies without cleaning up (SIGKILL), rather than running on.
fn stop_with_xtask(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The demo's config: the agent on `listen`, collecting each second, no Kubernetes API, and one
/// rule naming the model from the server's command line.
pub fn config(listen: &str) -> String {
    format!(
        r#"# Written by `cargo xtask run -- --demo`.
listen: {listen}
interval: 1s
kubernetes: {{watch: never}}
standalone:
  rules:
    - name: demo
      cmdline: 'model_server\.py .*--model (\S+)'
      model: '$1'
"#
    )
}

/// Runs the demo with the built agent `binary`; `args` go to `modelmeter run`.
pub fn demo(binary: &Path, args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "--config" || a.starts_with("--config=")) {
        bail!(
            "`--demo` writes its own config (the agent on a free port, a rule naming the demo's model): leave out --config, or run without --demo"
        );
    }
    let python = python()?;
    let server_script = root().join("xtask/demo/model_server.py");
    catch_stop_signals();
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("modelmeter-demo-").tempdir().context("creating a temp dir")?;
    let agent_url = format!("http://127.0.0.1:{}", e2e::free_port());
    let config_path = dir.path().join("modelmeter-demo.yaml");
    std::fs::write(&config_path, config(agent_url.trim_start_matches("http://")))
        .with_context(|| format!("writing {}", config_path.display()))?;
    let log_path = dir.path().join("agent.log");
    let mut demo =
        Demo { load: None, server: None, agent: None, cgroup: None, cgroup_dirs: Vec::new(), log: log_path.clone() };

    // The server's pod: kubelet's cgroupfs layout, on every hierarchy, as for a real pod.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let pod_uid = e2e::pod_uid(seed);
    let pod = format!("/kubepods/besteffort/pod{pod_uid}");
    let cgroup_path = format!("{pod}/{}", e2e::hex_id(seed, 64));
    let roots = e2e::hierarchy_roots(Path::new("/sys/fs/cgroup"));
    demo.cgroup_dirs = roots.iter().map(|(_, root)| root.join(pod.trim_start_matches('/'))).collect();
    let cgroup = demo.cgroup.insert(e2e::CgroupGuard::create(&cgroup_path));
    let server_port = e2e::free_port();
    let mut command = Command::new(&python);
    command
        .arg(&server_script)
        .args(["--port", &server_port.to_string(), "--model", MODEL, "--memory-mib", &SERVER_MEMORY_MIB.to_string()])
        .stdout(Stdio::null())
        // Its own process group: a terminal's Ctrl-C goes to xtask and the agent, and xtask
        // stops the server when the load has stopped.
        .process_group(0);
    stop_with_xtask(&mut command);
    let server = demo.server.insert(cgroup.spawn_command(&mut command));
    let server_pid = server.pid();

    let hierarchies: Vec<String> = roots
        .iter()
        .map(|(name, root)| if *name == "v2" { format!("v2 at {}", root.display()) } else { (*name).to_owned() })
        .collect();
    println!("\nmodelmeter demo");
    println!("  agent    {agent_url}   (config {}, log {})", config_path.display(), log_path.display());
    println!("  model    {MODEL}: {} {} (pid {server_pid})", python.display(), server_script.display());
    println!("  server   http://127.0.0.1:{server_port}/v1/chat/completions");
    println!("  cgroup   {cgroup_path}   ({})", hierarchies.join(", "));

    let wait_server = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        e2e::http_get(&format!("http://127.0.0.1:{server_port}/health")).is_ok()
    });
    if demo.check(wait_server, "the model server to answer")? {
        return demo.finish();
    }

    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut agent = Command::new(binary);
    agent
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .args(args)
        .env_remove("MODELMETER_LISTEN")
        .env_remove("MODELMETER_CONFIG")
        .stdout(log.try_clone()?)
        .stderr(log);
    stop_with_xtask(&mut agent);
    demo.agent = Some(agent.spawn().context("starting modelmeter")?);
    let readyz = format!("{agent_url}/readyz");
    let ready = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        e2e::http_get_any(&readyz).is_ok_and(|(status, body)| status == 200 && body.contains("collection: ok"))
    });
    if demo.check(ready, "the agent to collect once")? {
        return demo.finish();
    }

    let load = demo.load.insert(Load::start(server_port));
    let sent = load.sent.clone();
    let load_started = Instant::now();
    println!(
        "  load     ~{LOAD_PER_SECOND} requests/s from xtask, prompts of 20 to 1000 words, over keep-alive connections"
    );
    println!("\nWaiting for the first figures (agent ready after {:.1} s)…", started.elapsed().as_secs_f64());
    let mut last = None;
    let first = wait_until(FIRST_FIGURES_WITHIN, Duration::from_millis(500), || {
        last = snapshot(&agent_url).ok();
        last.as_ref().and_then(|s| model(s, MODEL)).is_some_and(complete)
    });
    if demo.check(first || last.is_some(), "the agent's snapshot")? {
        return demo.finish();
    }
    match last.as_ref().and_then(|s| model(s, MODEL)) {
        Some(m) if complete(m) => {
            println!("First figures {:.1} s after the load started:", load_started.elapsed().as_secs_f64());
            println!("{}", model_line(m));
        }
        _ => {
            println!(
                "No complete figures for {MODEL} within {FIRST_FIGURES_WITHIN:?}; what the agent shows:\n{}",
                diagnosis(last.as_ref(), &pod_uid)
            );
        }
    }
    println!(
        "\nLive view in another terminal: {} top --agent {agent_url}\nStop: Ctrl-C (stops the load, the server and the agent, removes the cgroups)\n",
        binary.display()
    );

    loop {
        if !sleep_unless_stopped(REFRESH_EVERY) || demo.check(true, "")? {
            break;
        }
        let line = match snapshot(&agent_url) {
            Ok(s) => match model(&s, MODEL) {
                Some(m) => model_line(m),
                None => format!("{MODEL} not in the snapshot yet"),
            },
            Err(e) => format!("snapshot: {e}"),
        };
        println!("[{:>4}s, {} requests sent] {line}", started.elapsed().as_secs(), sent.load(Ordering::Relaxed));
    }
    demo.finish()
}

/// What the demo started, stopped in order: load, server, agent, then the cgroups.
struct Demo {
    load: Option<Load>,
    server: Option<e2e::ChildGuard>,
    agent: Option<Child>,
    cgroup: Option<e2e::CgroupGuard>,
    /// The pod's directory in every hierarchy, to check that none is left.
    cgroup_dirs: Vec<PathBuf>,
    /// The agent's stdout and stderr.
    log: PathBuf,
}

impl Demo {
    /// After a wait that ended with `done` (`what` names it; empty: nothing was awaited): true
    /// when a stop signal came; an error, after stopping everything, when a child exited or the
    /// wait timed out.
    fn check(&mut self, done: bool, what: &str) -> anyhow::Result<bool> {
        if stop_signal().is_some() {
            return Ok(true);
        }
        let problem = if let Some(status) = self.agent.as_mut().and_then(|a| a.try_wait().ok().flatten()) {
            self.agent = None;
            Some(format!("modelmeter exited with {status}; its log ends:\n{}", log_tail(&self.log)))
        } else if let Some(status) = self.server.as_mut().and_then(|s| s.0.try_wait().ok().flatten()) {
            Some(format!("the model server exited with {status}"))
        } else if !done && !what.is_empty() {
            Some(format!("timed out waiting for {what}; the agent's log ends:\n{}", log_tail(&self.log)))
        } else {
            None
        };
        match problem {
            Some(problem) => match self.stop() {
                Ok(()) => bail!("{problem}"),
                Err(e) => bail!("{problem}\n{e}"),
            },
            None => Ok(false),
        }
    }

    /// After a stop signal (or at the end): stops everything.
    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(signal) = stop_signal() {
            println!("\nSignal {signal} received.");
        }
        self.stop()
    }

    /// Stops everything and checks that no process or cgroup is left.
    fn stop(&mut self) -> anyhow::Result<()> {
        println!("Stopping the demo: load generator, model server, agent, cgroups.");
        if let Some(load) = self.load.take() {
            load.stop();
        }
        if let Some(mut server) = self.server.take() {
            let _ = stop_child(&mut server.0, libc::SIGTERM, Duration::from_secs(5));
        }
        if let Some(mut agent) = self.agent.take() {
            // It may have had the terminal's SIGINT already; a second signal is harmless.
            match stop_child(&mut agent, libc::SIGTERM, Duration::from_secs(20)) {
                Ok(status) if status.success() => println!("The agent stopped."),
                Ok(status) => println!("The agent stopped ({status})."),
                Err(e) => println!("Stopping the agent: {e}"),
            }
        }
        // Kills whatever is left in the pod and removes the directories it created.
        drop(self.cgroup.take());
        let left: Vec<String> =
            self.cgroup_dirs.iter().filter(|d| d.exists()).map(|d| d.display().to_string()).collect();
        if !left.is_empty() {
            bail!("cgroups left behind: {}", left.join(", "));
        }
        if !self.cgroup_dirs.is_empty() {
            println!("Removed the pod's cgroups; nothing of the demo is left running.");
            self.cgroup_dirs.clear();
        }
        Ok(())
    }
}

impl Drop for Demo {
    /// On an early return or a panic, too.
    fn drop(&mut self) {
        let running = self.load.is_some() || self.server.is_some() || self.agent.is_some() || self.cgroup.is_some();
        if running && let Err(e) = self.stop() {
            eprintln!("{e}");
        }
    }
}

/// Polls `condition` every `poll` for up to `timeout`, or until a stop signal; whether it held.
fn wait_until(timeout: Duration, poll: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline || !sleep_unless_stopped(poll) {
            return false;
        }
    }
}

/// The last lines of the agent's log.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The interpreter itself, not a shim (pyenv's forks, and the server must be the process in the
/// cgroup that xtask stops).
fn python() -> anyhow::Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("the demo's model server needs python3 (standard library only)")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        bail!("python3 does not run: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(path)
}

pub fn snapshot(agent_url: &str) -> anyhow::Result<Value> {
    let body = e2e::http_get(&format!("{agent_url}/api/v1/snapshot")).map_err(anyhow::Error::msg)?;
    serde_json::from_str(&body).context("the snapshot is not JSON")
}

/// The snapshot's row of model `name`: the first complete one of any version, else the first.
fn model<'a>(snapshot: &'a Value, name: &str) -> Option<&'a Value> {
    let rows: Vec<&Value> = snapshot["models"].as_array()?.iter().filter(|m| m["name"] == name).collect();
    rows.iter().find(|m| complete(m)).or(rows.first()).copied()
}

/// CPU, memory and latency are all there.
fn complete(model: &Value) -> bool {
    model["cpu_cores"].is_number()
        && model["memory_working_set_bytes"].as_u64().is_some_and(|m| m > 0)
        && model["p50_seconds"].is_number()
        && model["p99_seconds"].is_number()
}

/// One line with a model's figures, each after its name (`cpu 0.153 cores memory 70.1 MiB …`).
pub fn model_line(model: &Value) -> String {
    let name = match model["version"].as_str().unwrap_or_default() {
        "" => model["name"].as_str().unwrap_or_default().to_owned(),
        version => format!("{}:{version}", model["name"].as_str().unwrap_or_default()),
    };
    let number = |key: &str, format: &dyn Fn(f64) -> String| model[key].as_f64().map_or("-".to_owned(), format);
    format!(
        "{name:<12} cpu {} cores  memory {}  {} req/s  p50 {}  p99 {}  pods {}",
        number("cpu_cores", &|c| format!("{c:.3}")),
        number("memory_working_set_bytes", &|m| format!("{:.1} MiB", m / 1048576.0)),
        number("requests_per_second", &|r| format!("{r:.1}")),
        number("p50_seconds", &|s| format!("{:.1} ms", s * 1000.0)),
        number("p99_seconds", &|s| format!("{:.1} ms", s * 1000.0)),
        model["replicas"].as_u64().unwrap_or(0),
    )
}

/// What the snapshot shows of the demo when its model has no complete row: every model's line,
/// and the demo pod's container with the model it was given.
fn diagnosis(snapshot: Option<&Value>, pod_uid: &str) -> String {
    let Some(snapshot) = snapshot else {
        return "  (no snapshot)".to_owned();
    };
    let mut out = String::new();
    for m in snapshot["models"].as_array().into_iter().flatten() {
        out.push_str(&format!("  model {}\n", model_line(m)));
    }
    for c in snapshot["containers"].as_array().into_iter().flatten().filter(|c| c["labels"]["pod_uid"] == pod_uid) {
        out.push_str(&format!(
            "  the demo pod's container: model {:?}, cpu {} cores, memory {} bytes (labels {})\n",
            c["labels"]["model"].as_str().unwrap_or_default(),
            c["cpu_cores"],
            c["memory_working_set_bytes"],
            c["labels"]
        ));
    }
    out.push_str(&format!(
        "  (CPU and memory come from the pod, whose model the config's `standalone.rules` names; latency from the requests, which name {MODEL} themselves: one row needs both to name the same model and version)"
    ));
    out
}

/// The load generator: one thread sending chat requests at about [`LOAD_PER_SECOND`], over
/// keep-alive connections it renews every few dozen requests, with prompts of varied length so
/// that p50 and p99 differ.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            move || generate(port, &stop, &sent)
        });
        Load { stop, sent, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

fn generate(port: u16, stop: &AtomicBool, sent: &AtomicU64) {
    const WORDS: [&str; 12] =
        ["model", "token", "latency", "tensor", "prompt", "cache", "batch", "kernel", "layer", "weight", "node", "pod"];
    let period = Duration::from_millis(1000 / LOAD_PER_SECOND);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut connection: Option<(TcpStream, u64)> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        next += period;
        // One prompt in ten is long: the tail p99 shows.
        let words = if random() % 10 == 0 { 600 + random() % 400 } else { 20 + random() % 130 };
        let prompt: Vec<&str> = (0..words).map(|_| WORDS[(random() % WORDS.len() as u64) as usize]).collect();
        let body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt.join(" ")}],
        })
        .to_string();
        if connection.as_ref().is_none_or(|(_, left)| *left == 0) {
            connection = TcpStream::connect(("127.0.0.1", port))
                .and_then(|s| s.set_read_timeout(Some(Duration::from_secs(10))).map(|()| s))
                .ok()
                .map(|s| (s, 10 + random() % 40));
        }
        if let Some((stream, left)) = connection.as_mut() {
            *left -= 1;
            let request = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: modelmeter-demo\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let answered = stream.write_all(request.as_bytes()).is_ok() && e2e::read_response(stream).is_ok();
            if answered {
                sent.fetch_add(1, Ordering::Relaxed);
            } else {
                connection = None;
            }
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_model_from_the_command_line() {
        let text = config("127.0.0.1:9999");
        assert!(text.contains("listen: 127.0.0.1:9999\n"));
        assert!(text.contains(r"cmdline: 'model_server\.py .*--model (\S+)'"));
        assert!(text.contains("kubernetes: {watch: never}"));
    }

    #[test]
    fn model_line_names_every_figure() {
        let model = serde_json::json!({
            "name": "demo-llm", "version": "1", "replicas": 1, "cpu_cores": 0.1534,
            "memory_working_set_bytes": 73_400_320u64, "requests_per_second": 19.6,
            "p50_seconds": 0.0032, "p99_seconds": 0.038,
        });
        assert_eq!(
            model_line(&model),
            "demo-llm:1   cpu 0.153 cores  memory 70.0 MiB  19.6 req/s  p50 3.2 ms  p99 38.0 ms  pods 1"
        );
        assert!(!complete(&serde_json::json!({"cpu_cores": null})));
        assert!(complete(&model));
    }
}
