//! Harness for modelmeter's end-to-end tests and benchmarks: kubelet-shaped cgroups that clean up
//! after themselves, the agent and a real Prometheus as child processes, and a reader of the
//! Prometheus text format. Everything here fails loudly when root or a tool is missing.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub mod apiserver;
pub mod containers;
pub mod receivers;
pub mod schema;

/// Fails the test unless it runs as root (it loads eBPF programs and creates cgroups).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root: it loads eBPF programs and creates cgroups (run `sudo cargo xtask test`)"
    );
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A binary of the workspace: `$var` if set, else `target/<profile>/<name>`.
pub fn workspace_bin(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    for profile in ["debug", "release"] {
        let path = workspace_root().join("target").join(profile).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is not built: run `cargo build -p modelmeter` (or `cargo xtask test`), or set {var}");
}

pub fn modelmeter_bin() -> PathBuf {
    workspace_bin("MM_AGENT_BIN", "modelmeter")
}

pub fn workload_bin() -> PathBuf {
    workspace_bin("MM_WORKLOAD_BIN", "mm-workload")
}

/// A random-looking but deterministic hex string of `len` chars, unique per `seed`.
pub fn hex_id(seed: u64, len: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from_digit((state % 16) as u32, 16).expect("digit < 16")
        })
        .collect()
}

/// A pod UID in Kubernetes' dashed form, unique per `seed` and per run.
pub fn pod_uid(seed: u64) -> String {
    let run = std::process::id() as u64;
    let hex = hex_id(seed ^ (run << 20), 32);
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The systemd-driver cgroup path kubelet gives a container: `qos` is `burstable` or `besteffort`,
/// `scope` the runtime's scope name (`cri-containerd-<id>.scope`, …).
pub fn systemd_container_path(qos: &str, uid: &str, scope: &str) -> String {
    format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice/{scope}", uid.replace('-', "_"))
}

/// The cgroup hierarchies under `root` that a kubelet places a container in: the v2 tree (at the
/// root, or `unified/` on a hybrid host) and the v1 cpu, cpuacct and memory controllers. The
/// harness keeps its own small copy of this rule so that xtask, which links the harness, never
/// builds the agent (whose build script needs the eBPF toolchain that `xtask setup` installs).
pub fn hierarchy_roots(root: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut roots = Vec::new();
    if root.join("cgroup.controllers").is_file() {
        roots.push(("v2", root.to_path_buf()));
        return roots;
    }
    if root.join("unified/cgroup.controllers").is_file() {
        roots.push(("v2", root.join("unified")));
    }
    for (name, marker) in [("cpu", "cpu.shares"), ("cpuacct", "cpuacct.usage"), ("memory", "memory.usage_in_bytes")] {
        if root.join(name).join(marker).is_file() {
            roots.push((name, root.join(name)));
        }
    }
    roots
}

/// A cgroup created at the same relative path in the v2 tree and the v1 cpu, cpuacct and memory
/// trees (as kubelet does). Dropping it kills its processes and removes every directory it created.
pub struct CgroupGuard {
    pub rel: String,
    /// Hierarchy roots the cgroup lives in, keyed `v2`, `cpu`, `cpuacct`, `memory`.
    roots: Vec<(&'static str, PathBuf)>,
    /// Directories this guard created, outermost first.
    created: Vec<PathBuf>,
}

impl CgroupGuard {
    pub fn create(rel: &str) -> CgroupGuard {
        Self::create_in(rel, &["v2", "cpu", "cpuacct", "memory"])
    }

    /// As [`CgroupGuard::create`], in these hierarchies only (`v2`, `cpu`, `cpuacct`, `memory`):
    /// a container whose path differs between hierarchies is two guards.
    pub fn create_in(rel: &str, hierarchies: &[&str]) -> CgroupGuard {
        let roots: Vec<(&'static str, PathBuf)> = hierarchy_roots(Path::new("/sys/fs/cgroup"))
            .into_iter()
            .filter(|(name, _)| hierarchies.contains(name))
            .collect();
        assert!(!roots.is_empty(), "none of the hierarchies {hierarchies:?} under /sys/fs/cgroup");
        let mut guard = CgroupGuard { rel: rel.to_owned(), roots, created: Vec::new() };
        for (_, root) in guard.roots.clone() {
            let mut dir = root.clone();
            for part in rel.split('/').filter(|p| !p.is_empty()) {
                dir.push(part);
                if !dir.exists() {
                    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
                    guard.created.push(dir.clone());
                }
            }
        }
        guard
    }

    pub fn dir(&self, hierarchy: &str) -> PathBuf {
        self.try_dir(hierarchy).unwrap_or_else(|| panic!("this machine has no {hierarchy} cgroup hierarchy"))
    }

    /// The cgroup's directory in `hierarchy`, if this machine has that hierarchy.
    pub fn try_dir(&self, hierarchy: &str) -> Option<PathBuf> {
        let (_, root) = self.roots.iter().find(|(name, _)| *name == hierarchy)?;
        Some(root.join(self.rel.trim_start_matches('/')))
    }

    /// The `cgroup.procs` files a process writes its pid to, to join this cgroup everywhere.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.roots.iter().map(|(name, _)| self.dir(name).join("cgroup.procs")).collect()
    }

    pub fn read(&self, hierarchy: &str, file: &str) -> String {
        let path = self.dir(hierarchy).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    pub fn write(&self, hierarchy: &str, file: &str, value: &str) {
        let path = self.dir(hierarchy).join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// A field of a `key value` file such as memory.stat.
    pub fn read_keyed(&self, hierarchy: &str, file: &str, key: &str) -> u64 {
        self.read(hierarchy, file)
            .lines()
            .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{file} of {} has no {key}", self.rel))
    }

    pub fn pids(&self) -> Vec<i32> {
        self.procs_files()
            .iter()
            .flat_map(|file| {
                std::fs::read_to_string(file)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Starts any program inside this cgroup: the child joins it between fork and exec, so it
    /// runs there from its first instruction.
    pub fn spawn_command(&self, command: &mut Command) -> ChildGuard {
        use std::os::unix::{ffi::OsStrExt, process::CommandExt};
        let files: Vec<std::ffi::CString> = self
            .procs_files()
            .iter()
            .map(|f| std::ffi::CString::new(f.as_os_str().as_bytes()).expect("a path without NUL"))
            .collect();
        // SAFETY: between fork and exec only async-signal-safe calls (open, write, close) on
        // data prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                let pid = b"0\n";
                for file in &files {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, pid.as_ptr().cast(), pid.len()) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        ChildGuard(command.spawn().unwrap_or_else(|e| panic!("starting {command:?} in a cgroup: {e}")))
    }

    /// Starts `mm-workload <args>` inside this cgroup and waits until it says it is ready.
    pub fn spawn_workload(&self, args: &[&str]) -> ChildGuard {
        spawn_workload_joining(&self.procs_files(), args)
    }
}

/// Starts `mm-workload <args>` after it joins these `cgroup.procs` files, and waits until it says
/// it is ready.
pub fn spawn_workload_joining(procs_files: &[PathBuf], args: &[&str]) -> ChildGuard {
    let mut command = Command::new(workload_bin());
    for file in procs_files {
        command.arg("--join").arg(file);
    }
    let mut child = command.args(args).stdout(Stdio::piped()).spawn().expect("starting mm-workload");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("reading mm-workload's stdout");
    assert_eq!(line.trim(), "ready", "mm-workload {args:?} did not start (status {:?})", child.try_wait());
    ChildGuard(child)
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) on a pid read from our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for dir in self.created.iter().rev() {
            // A just-killed process can hold the cgroup for a moment: retry briefly.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if dir.exists() {
                eprintln!("warning: could not remove cgroup {}", dir.display());
            }
        }
    }
}

/// Many cgroups, removed newest first when dropped (also while unwinding from a panic): the
/// first ones created the shared parents, which empty out last.
#[derive(Default)]
pub struct CgroupStack(pub Vec<CgroupGuard>);

impl Drop for CgroupStack {
    fn drop(&mut self) {
        while let Some(cgroup) = self.0.pop() {
            drop(cgroup);
        }
    }
}

/// A child process killed and reaped when dropped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the child to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().expect("waiting for a child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback.
/// The tests' Python with the pinned OpenAI client (`cargo xtask setup` makes it).
pub fn e2e_python() -> PathBuf {
    let python = workspace_root().join("target/e2e-python/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask setup` creates the tests' Python environment with the openai client",
        python.display()
    );
    python
}

/// Waits until a server in another process has written its port to `file`.
pub fn port_from_file(file: &Path) -> u16 {
    wait_for(Duration::from_secs(30), "the server's port file", || {
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("binding an ephemeral port")
}

pub fn http_get(url: &str) -> Result<String, String> {
    ureq::get(url)
        .timeout(Duration::from_secs(30))
        .call()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|e| e.to_string())
}

/// GET returning the status and body of any HTTP answer; `Err` only when there was none.
pub fn http_get_any(url: &str) -> Result<(u16, String), String> {
    let response = match ureq::get(url).timeout(Duration::from_secs(30)).call() {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(e) => return Err(e.to_string()),
    };
    let status = response.status();
    response.into_string().map(|body| (status, body)).map_err(|e| e.to_string())
}

/// The agent as a child process, with its own config, on a free port. Stopped with SIGTERM on drop.
pub struct Agent {
    child: Option<Child>,
    pub addr: SocketAddr,
    _config: tempfile::NamedTempFile,
    log: tempfile::NamedTempFile,
    stdout: tempfile::NamedTempFile,
}

impl Agent {
    /// Starts `modelmeter run` with `extra_yaml` appended to a config that sets the listen address,
    /// and waits until it has collected once (`/readyz` may still say the pod watch is not synced).
    pub fn start(extra_yaml: &str) -> Agent {
        Self::start_with_env(extra_yaml, &[])
    }

    /// As [`Agent::start`], with these environment variables set for the agent (and every
    /// `OTEL_*` variable of the caller removed, so only these count).
    pub fn start_with_env(extra_yaml: &str, env: &[(&str, &str)]) -> Agent {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(config.path(), format!("listen: {addr}\n{extra_yaml}")).expect("writing agent config");
        let log = tempfile::NamedTempFile::new().expect("temp file");
        let stdout = tempfile::NamedTempFile::new().expect("temp file");
        let mut command = Command::new(modelmeter_bin());
        command.args(["run", "--config"]).arg(config.path()).stdout(stdout.reopen().expect("reopening stdout"));
        command.stderr(log.reopen().expect("reopening log"));
        // The config file alone decides: no override from the caller's environment.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("MODELMETER_") || var.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(var);
            }
        }
        command.envs(env.iter().copied());
        let child = command.spawn().expect("starting modelmeter");
        let mut agent = Agent { child: Some(child), addr, _config: config, log, stdout };
        let deadline = Instant::now() + Duration::from_secs(60);
        let collected = |url: &str| http_get_any(url).is_ok_and(|(_, body)| body.contains("collection: ok"));
        while !collected(&agent.url("/readyz")) {
            if let Some(status) = agent.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("modelmeter exited with {status} before becoming ready:\n{}", agent.log());
            }
            assert!(Instant::now() < deadline, "modelmeter not ready after 60 s:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What the agent wrote to stderr (its own log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// What the agent wrote to stdout (event lines).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stdout.path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn metrics(&self) -> Metrics {
        let text = http_get(&self.url("/metrics")).unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", self.log()));
        Metrics::parse(&text)
    }

    /// Stops the agent with SIGTERM and returns its exit status and log.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = self.terminate();
        (status.expect("agent was running"), self.log())
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the Prometheus/OpenMetrics text format (comments skipped; escapes in label values
    /// kept as written, which is enough for the ids and names tests compare).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("malformed line: {line}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("malformed value in: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample { name: name.to_owned(), labels, value });
        }
        Metrics { samples }
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn select(&self, name: &str, labels: &[(&str, &str)]) -> std::vec::IntoIter<&Sample> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        matching.into_iter()
    }

    /// The one sample of `name` with these labels, if there is exactly one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self.select(name, labels).collect();
        match found.as_slice() {
            [one] => Some(one.value),
            [] => None,
            many => panic!("{} samples of {name} match {labels:?}", many.len()),
        }
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut end = 0;
        let bytes = after.as_bytes();
        while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
            end += 1;
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), after[..end].to_owned());
        rest = after.get(end + 1..).unwrap_or("");
    }
    labels
}

/// A real Prometheus server (Debian's package) on loopback with its own data dir, scraping `target`.
pub struct Prometheus {
    child: ChildGuard,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Prometheus {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("prometheus is not installed: `cargo xtask setup` installs Debian's `prometheus` package");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: modelmeter\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log file"))
            .spawn()
            .expect("starting prometheus");
        let prometheus = Prometheus { child: ChildGuard(child), port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&format!("http://127.0.0.1:{port}/-/ready")).is_err() {
            assert!(Instant::now() < deadline, "prometheus not ready after 60 s:\n{}", prometheus.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// An instant query through the HTTP API; returns the `data.result` array.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let body = ureq::get(&format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query("query", promql)
            .timeout(Duration::from_secs(30))
            .call()
            .unwrap_or_else(|e| panic!("querying prometheus for {promql}: {e}"))
            .into_string()
            .expect("reading query response");
        let json: serde_json::Value = serde_json::from_str(&body).expect("prometheus answered JSON");
        assert_eq!(json["status"], "success", "query {promql} failed: {body}");
        json["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Polls `condition` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    wait_for_showing(timeout, what, || condition().ok_or_else(String::new))
}

/// [`wait_for`], where the condition says what it saw instead (`Err`); the last of that goes
/// into the timeout's message.
pub fn wait_for_showing<T>(timeout: Duration, what: &str, mut condition: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match condition() {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}{}{seen}",
                if seen.is_empty() { "" } else { ": " }
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `mm-httpd` running inside a cgroup; killed on drop.
pub struct HttpServer {
    child: ChildGuard,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl HttpServer {
    /// Starts the test HTTP server with its processes in `cgroup`, and waits for its port.
    pub fn start_in(cgroup: &CgroupGuard) -> HttpServer {
        Self::start_joining(&cgroup.procs_files())
    }

    /// Starts it after joining these `cgroup.procs` files (none: stays in the caller's cgroup).
    pub fn start_joining(procs_files: &[PathBuf]) -> HttpServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port_file = dir.path().join("port");
        let mut command = Command::new(workspace_bin("MM_HTTPD_BIN", "mm-httpd"));
        for file in procs_files {
            command.arg("--join").arg(file);
        }
        let stats_file = dir.path().join("stats.json");
        let child = ChildGuard(command.arg(&port_file).arg(&stats_file).spawn().expect("starting mm-httpd"));
        let port = wait_for(Duration::from_secs(10), "mm-httpd's port", || {
            std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse().ok())
        });
        HttpServer { child, port, _dir: dir }
    }

    /// The server's own records: (path, status) → handling times in ns (asked for with SIGUSR1).
    pub fn stats(&self) -> BTreeMap<(String, u16), Vec<u64>> {
        let file = self._dir.path().join("stats.json");
        let _ = std::fs::remove_file(&file);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.pid() as i32, libc::SIGUSR1) };
        let body = wait_for(Duration::from_secs(10), "mm-httpd's stats", || std::fs::read(&file).ok());
        let json: serde_json::Value = serde_json::from_slice(&body).expect("stats JSON");
        json.as_object()
            .expect("stats object")
            .iter()
            .map(|(key, times)| {
                let (path, status) = key.rsplit_once(' ').expect("key is 'path status'");
                let times = times.as_array().expect("array").iter().filter_map(serde_json::Value::as_u64).collect();
                ((path.to_owned(), status.parse().expect("status")), times)
            })
            .collect()
    }
}

/// Reads one response (head and Content-Length body) from `stream`; returns (status, body).
pub fn read_response(stream: &mut std::net::TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::Read;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            if (100..200).contains(&status) {
                buffer.drain(..end);
                continue;
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while buffer.len() < end + length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            return Ok((status, buffer[end..end + length].to_vec()));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// One request on a new connection to `127.0.0.1:port`.
pub fn http_request(port: u16, request: &str) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request.as_bytes())?;
    read_response(&mut stream)
}

/// Sends `paths` (GETs) to the server from `concurrency` threads, each reusing a connection for a
/// varying number of requests (1 to 20) before opening a new one. Returns (path, status) counts.
pub fn drive_load(port: u16, paths: &[String], concurrency: usize) -> BTreeMap<(String, u16), u64> {
    use std::io::Write;
    let chunks: Vec<Vec<String>> =
        (0..concurrency).map(|t| paths.iter().skip(t).step_by(concurrency).cloned().collect()).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .enumerate()
        .map(|(t, paths)| {
            std::thread::spawn(move || {
                let mut counts: BTreeMap<(String, u16), u64> = BTreeMap::new();
                let mut state = (t as u64 + 1) * 0x9E37_79B9;
                let mut stream: Option<(std::net::TcpStream, u64)> = None;
                for path in paths {
                    if stream.as_ref().is_none_or(|(_, left)| *left == 0) {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let connection = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
                        connection.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
                        stream = Some((connection, 1 + state % 20));
                    }
                    let (connection, left) = stream.as_mut().expect("connected");
                    *left -= 1;
                    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: mm-load\r\n\r\n");
                    connection.write_all(request.as_bytes()).expect("sending a request");
                    let (status, _) = read_response(connection).expect("reading a response");
                    *counts.entry((path, status)).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for handle in handles {
        for (key, n) in handle.join().expect("load thread") {
            *total.entry(key).or_default() += n;
        }
    }
    total
}

impl Agent {
    /// `/api/v1/snapshot` as JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        let body = http_get(&self.url("/api/v1/snapshot")).unwrap_or_else(|e| panic!("GET /api/v1/snapshot: {e}"));
        serde_json::from_str(&body).expect("snapshot is JSON")
    }
}

/// The `q` quantile of `values` with the same rank rule as the agent (the ⌈q·n⌉-th smallest).
pub fn quantile(values: &[u64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition_text() {
        let metrics = Metrics::parse(
            "# TYPE a counter\na_total{x=\"1\",y=\"q\\\"uote\"} 2.5\nb 3\nc_bucket{le=\"+Inf\"} 4\n# EOF\n",
        );
        assert_eq!(metrics.get("a_total", &[("x", "1")]), Some(2.5));
        assert_eq!(metrics.samples[0].labels["y"], "q\\\"uote");
        assert_eq!(metrics.get("b", &[]), Some(3.0));
        assert_eq!(metrics.get("c_bucket", &[("le", "+Inf")]), Some(4.0));
        assert_eq!(metrics.get("missing", &[]), None);
    }

    #[test]
    fn ids_have_kubernetes_shapes() {
        assert_eq!(hex_id(1, 64).len(), 64);
        assert_ne!(hex_id(1, 64), hex_id(2, 64));
        let uid = pod_uid(7);
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.matches('-').count(), 4);
    }
}
