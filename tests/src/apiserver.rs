//! A test Kubernetes API server: plain HTTP on loopback speaking the real list/watch protocol for
//! pods — JSON lists with a resourceVersion, chunked watch streams of ADDED / MODIFIED / DELETED /
//! BOOKMARK events, and a 410 Gone ERROR event for a resourceVersion older than its history. It
//! records every request so tests can assert what the agent asked for.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

#[derive(Debug, Default)]
struct State {
    /// Pods by UID.
    pods: BTreeMap<String, Value>,
    resource_version: u64,
    /// (resourceVersion, event type, object) — the watch history.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from before this version get 410 Gone.
    oldest_version: u64,
    /// Every request, in order.
    requests: Vec<Request>,
    /// Answer requests for pods with 403 Forbidden, as before RBAC is applied.
    forbidden: bool,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub user_agent: Option<String>,
    pub at: Instant,
}

impl Request {
    /// A list or watch of pods.
    pub fn is_pods(&self) -> bool {
        self.target.split('?').next() == Some("/api/v1/pods")
    }

    pub fn is_watch(&self) -> bool {
        query_params(&self.target).get("watch").is_some_and(|w| w == "true" || w == "1")
    }
}

/// The server; `stop` closes the listener and every open watch, `start` serves the same state again.
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    running: Option<Arc<AtomicBool>>,
    pub port: u16,
}

impl FakeApiServer {
    pub fn start() -> FakeApiServer {
        Self::start_on(0)
    }

    /// Serves on `port` (0: any free port).
    pub fn start_on(port: u16) -> FakeApiServer {
        let mut server = FakeApiServer { state: Arc::default(), running: None, port: 0 };
        server.port = server.serve(port);
        server
    }

    /// Serves again on the same port after `stop`.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "restart after stop");
        let port = self.port;
        self.serve(port);
    }

    fn serve(&mut self, port: u16) -> u16 {
        // The port was ours a moment ago; the kernel may hold it briefly.
        let listener = (0..100)
            .find_map(|_| {
                TcpListener::bind(("127.0.0.1", port)).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(50));
                    None
                })
            })
            .expect("binding the test API server");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let port = listener.local_addr().expect("local address").port();
        let running = Arc::new(AtomicBool::new(true));
        self.running = Some(running.clone());
        let state = self.state.clone();
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (state, running) = (state.clone(), running.clone());
                        std::thread::spawn(move || {
                            let _ = handle_connection(stream, &state, &running);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        port
    }

    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.store(false, Ordering::Relaxed);
        }
        // Give accept loop and watches time to notice.
        std::thread::sleep(Duration::from_millis(200));
    }

    fn record(&self, kind: &'static str, mut pod: Value) {
        let mut state = self.state.lock().expect("state lock");
        state.resource_version += 1;
        let version = state.resource_version;
        pod["metadata"]["resourceVersion"] = json!(version.to_string());
        let uid = pod["metadata"]["uid"].as_str().expect("pod has a uid").to_owned();
        match kind {
            "DELETED" => {
                state.pods.remove(&uid);
            }
            _ => {
                state.pods.insert(uid, pod.clone());
            }
        }
        state.history.push((version, kind, pod));
    }

    pub fn add_pod(&self, pod: Value) {
        self.record("ADDED", pod);
    }

    /// Replaces a pod (matched by UID) with `change` applied to it.
    pub fn modify_pod(&self, uid: &str, change: impl FnOnce(&mut Value)) {
        let mut pod = self.state.lock().expect("state lock").pods.get(uid).cloned().expect("modifying a known pod");
        change(&mut pod);
        self.record("MODIFIED", pod);
    }

    pub fn delete_pod(&self, uid: &str) {
        let pod = self.state.lock().expect("state lock").pods.get(uid).cloned().expect("deleting a known pod");
        self.record("DELETED", pod);
    }

    /// Forgets the watch history, as etcd compaction does: older resourceVersions get 410 Gone.
    pub fn compact(&self) {
        let mut state = self.state.lock().expect("state lock");
        state.history.clear();
        state.oldest_version = state.resource_version + 1;
    }

    /// Request targets (path and query), in order.
    pub fn requests(&self) -> Vec<String> {
        self.request_log().into_iter().map(|r| r.target).collect()
    }

    pub fn request_log(&self) -> Vec<Request> {
        self.state.lock().expect("state lock").requests.clone()
    }

    /// While set, every list and watch of pods gets 403 Forbidden (RBAC not applied yet), and
    /// access reviews say not allowed.
    pub fn set_forbidden(&self, forbidden: bool) {
        self.state.lock().expect("state lock").forbidden = forbidden;
    }

    /// A kubeconfig that points at this server without authentication.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(self.port)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A kubeconfig for an API server on `127.0.0.1:port` (plain HTTP, no credentials).
pub fn kubeconfig_for(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n\
         users:\n- name: test\n  user: {{}}\n"
    )
}

/// Decodes `%XX` and `+` in a query component.
pub fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded query parameters of a request target.
pub fn query_params(target: &str) -> BTreeMap<String, String> {
    target
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn matches_selector(pod: &Value, params: &BTreeMap<String, String>) -> bool {
    let Some(selector) = params.get("fieldSelector") else { return true };
    selector.split(',').all(|term| match term.split_once('=') {
        Some(("spec.nodeName", node)) => pod["spec"]["nodeName"] == node,
        _ => true,
    })
}

fn handle_connection(stream: TcpStream, state: &Mutex<State>, running: &AtomicBool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        // Request line, then headers up to the blank line; keep-alive between requests.
        let mut line = String::new();
        loop {
            if !running.load(Ordering::Relaxed) {
                return Ok(());
            }
            match reader.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => break,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e),
            }
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or("GET").to_owned();
        let target = words.next().unwrap_or("/").to_owned();
        let (mut user_agent, mut content_length) = (None, 0usize);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim().to_owned();
                match name.to_ascii_lowercase().as_str() {
                    "user-agent" => user_agent = Some(value),
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; content_length];
        std::io::Read::read_exact(&mut reader, &mut body)?;
        let forbidden = {
            let mut state = state.lock().expect("state lock");
            let request = Request { method: method.clone(), target: target.clone(), user_agent, at: Instant::now() };
            state.requests.push(request);
            state.forbidden
        };
        let params = query_params(&target);
        let path = target.split('?').next().unwrap_or("");
        match (method.as_str(), path) {
            ("GET", "/version") => {
                let version = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"});
                respond(&mut writer, "200 OK", &version)?;
                continue;
            }
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => {
                let mut review: Value = serde_json::from_slice(&body).unwrap_or_default();
                let resource = review["spec"]["resourceAttributes"]["resource"].clone();
                let allowed = !forbidden && resource == "pods";
                review["status"] = json!({"allowed": allowed});
                respond(&mut writer, "201 Created", &review)?;
                continue;
            }
            ("GET", "/api/v1/pods") if forbidden => {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                    "reason": "Forbidden", "message": "pods is forbidden: User \"system:serviceaccount:modelmeter:modelmeter\" \
                    cannot list resource \"pods\" in API group \"\" at the cluster scope"});
                respond(&mut writer, "403 Forbidden", &status)?;
                continue;
            }
            ("GET", "/api/v1/pods") => {}
            _ => {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"});
                respond(&mut writer, "404 Not Found", &body)?;
                continue;
            }
        }
        if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
            return watch(&mut writer, state, running, &params);
        }
        let (items, version) = {
            let state = state.lock().expect("state lock");
            let items: Vec<Value> = state.pods.values().filter(|p| matches_selector(p, &params)).cloned().collect();
            (items, state.resource_version)
        };
        let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": version.to_string()}, "items": items});
        respond(&mut writer, "200 OK", &list)?;
    }
}

fn respond(writer: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        writer,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    writer.flush()
}

fn chunk(writer: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    write!(writer, "{:x}\r\n{line}\r\n", line.len())?;
    writer.flush()
}

fn watch(
    writer: &mut TcpStream,
    state: &Mutex<State>,
    running: &AtomicBool,
    params: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    write!(writer, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    let mut seen: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(300));
    {
        let state = state.lock().expect("state lock");
        if seen != 0 && seen + 1 < state.oldest_version {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("too old resource version: {seen} ({})", state.oldest_version),
                "reason": "Expired", "code": 410}});
            chunk(writer, &gone)?;
            return write!(writer, "0\r\n\r\n");
        }
    }
    let started = Instant::now();
    let mut last_bookmark = Instant::now();
    while running.load(Ordering::Relaxed) && started.elapsed() < timeout {
        let (events, version) = {
            let state = state.lock().expect("state lock");
            let events: Vec<(u64, &'static str, Value)> = state
                .history
                .iter()
                .filter(|(v, _, pod)| *v > seen && matches_selector(pod, params))
                .cloned()
                .collect();
            (events, state.resource_version)
        };
        for (version, kind, object) in events {
            chunk(writer, &json!({"type": kind, "object": object}))?;
            seen = seen.max(version);
        }
        if bookmarks && last_bookmark.elapsed() > Duration::from_secs(1) {
            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": version.to_string()}}});
            chunk(writer, &bookmark)?;
            seen = seen.max(version);
            last_bookmark = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    write!(writer, "0\r\n\r\n")
}

/// A pod as the test API server serves it: one container `server` whose runtime id is
/// `containerd://<container_id>`.
#[derive(Debug, Clone, Default)]
pub struct TestPod<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub node: &'a str,
    pub container_id: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub annotations: &'a [(&'a str, &'a str)],
    /// (kind, name) of the controller.
    pub owner: Option<(&'a str, &'a str)>,
}

impl TestPod<'_> {
    pub fn to_json(&self) -> Value {
        let map = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()
        };
        let owners: Vec<Value> = self
            .owner
            .map(|(kind, name)| {
                json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("{}-owner", self.uid), "controller": true})
            })
            .into_iter()
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name, "namespace": self.namespace, "uid": self.uid, "resourceVersion": "0",
                "labels": map(self.labels), "annotations": map(self.annotations), "ownerReferences": owners,
            },
            "spec": {"nodeName": self.node, "containers": [{"name": "server", "image": "registry.example/server:1"}]},
            "status": {
                "phase": "Running",
                "qosClass": "Burstable",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "server", "containerID": format!("containerd://{}", self.container_id),
                    "image": "registry.example/server:1", "imageID": "", "ready": true, "restartCount": 0,
                }],
            },
        })
    }
}
