//! `modelmeter top` in a real terminal (tmux, 80×24) against a running agent: the pods' rows and
//! figures, sorting after a key press, the filter, a clean exit on `q` with the terminal as it
//! was, one line while the agent is unreachable, and no process left when the terminal goes.

use std::{
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use e2e::{
    Agent, CgroupGuard, ChildGuard, HttpServer,
    apiserver::{FakeApiServer, TestPod, kubeconfig_for},
    hex_id, http_request, modelmeter_bin, pod_uid, require_root, systemd_container_path, wait_for,
};

/// A pod-shaped cgroup the fake API server names.
struct Pod {
    uid: String,
    container_id: String,
    cgroup: CgroupGuard,
}

impl Pod {
    fn new(seed: u64) -> Pod {
        let uid = pod_uid(seed);
        let container_id = hex_id(seed * 7 + 1, 64);
        let scope = format!("cri-containerd-{container_id}.scope");
        let cgroup = CgroupGuard::create(&systemd_container_path("burstable", &uid, &scope));
        Pod { uid, container_id, cgroup }
    }

    fn api<'a>(&'a self, namespace: &'a str, name: &'a str, annotations: &'a [(&'a str, &'a str)]) -> TestPod<'a> {
        TestPod {
            uid: &self.uid,
            namespace,
            name,
            node: "node-a",
            container_id: &self.container_id,
            annotations,
            ..Default::default()
        }
    }
}

/// A tmux server of its own (private socket, no user config), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16, dir: &Path) -> Tmux {
        let tmux = Tmux { socket: format!("modelmeter-top-{}", std::process::id()) };
        let status = Command::new("tmux")
            .args(["-L", &tmux.socket, "-f", "/dev/null", "-u", "new-session", "-d", "-s", "top"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .args(["sh"])
            .current_dir(dir)
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm-256color")
            .env("PS1", "$ ")
            .status()
            .unwrap_or_else(|e| panic!("tmux is missing ({e}): `cargo xtask setup` installs Debian's tmux"));
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("running tmux");
        assert!(output.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "top", "-l", text]);
    }

    /// Presses named keys (`Enter`, `C-c`, `q`).
    fn press(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "top", key]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"])
    }

    /// Waits until the screen satisfies `condition`, and returns it.
    fn wait_screen(&self, what: &str, mut condition: impl FnMut(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..300 {
            last = self.screen();
            if condition(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; the screen:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

/// The screen's model/pod rows (those below the column titles, above the footer).
fn table_rows(screen: &str) -> Vec<&str> {
    screen
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("MODEL"))
        .skip(1)
        .take_while(|l| !l.starts_with("q quit"))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// The figure in `column` (by its title's position in the title row) of the row naming `name`.
fn figure(screen: &str, name: &str, column: &str) -> String {
    let titles = screen.lines().find(|l| l.trim_start().starts_with("MODEL")).expect("title row");
    let start = titles.find(column).unwrap_or_else(|| panic!("no {column} column:\n{screen}"));
    let start = titles[..start].chars().count();
    let row = table_rows(screen)
        .into_iter()
        .find(|l| l.split_whitespace().any(|word| word == name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{screen}"));
    row.chars().skip(start).take_while(|c| !c.is_whitespace()).collect()
}

fn snapshot_model(snapshot: &serde_json::Value, name: &str, version: &str) -> serde_json::Value {
    snapshot["models"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["name"] == name && m["version"] == version))
        .cloned()
        .unwrap_or_default()
}

/// The line the shell's `echo top-exit=$?` printed (after a prompt when the shell printed its
/// prompt after the keys were typed), not the typed command itself.
fn exit_line(line: &str) -> bool {
    line.contains("top-exit=") && !line.contains("echo")
}

/// Rows of named models: not the groups of what no model names, `(no model)` (systemd units and
/// pods of the machine itself) and `(other processes)`.
fn named_model_rows(screen: &str) -> Vec<&str> {
    table_rows(screen)
        .into_iter()
        .filter(|l| {
            (l.starts_with('▾') || l.starts_with('▸')) && !l.split_whitespace().nth(1).unwrap_or("(").starts_with('(')
        })
        .collect()
}

fn first_model_row(screen: &str) -> String {
    named_model_rows(screen).first().copied().unwrap_or_default().to_owned()
}

#[test]
fn top_shows_the_pods_sorts_filters_and_quits_cleanly_in_a_real_terminal() {
    require_root();
    let embed = Pod::new(9101);
    let chat_v1 = Pod::new(9102);
    let chat_v2 = Pod::new(9103);
    let _burner = embed.cgroup.spawn_workload(&["burn"]);
    let server = HttpServer::start_in(&chat_v1.cgroup);
    let _idle: ChildGuard = chat_v2.cgroup.spawn_workload(&["sleep"]);

    let api = FakeApiServer::start();
    let embed_model = [("modelmeter.io/model", "embed")];
    let chat1_model = [("modelmeter.io/model", "chat"), ("modelmeter.io/model-version", "1")];
    let chat2_model = [("modelmeter.io/model", "chat"), ("modelmeter.io/model-version", "2")];
    api.add_pod(embed.api("search", "embed-0", &embed_model).to_json());
    api.add_pod(chat_v1.api("ml", "chat-v1-0", &chat1_model).to_json());
    api.add_pod(chat_v2.api("ml", "chat-v2-0", &chat2_model).to_json());
    let kubeconfig = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(kubeconfig.path(), kubeconfig_for(api.port)).expect("writing kubeconfig");
    let agent = Agent::start(&format!(
        "interval: 3s\nmin_collect_interval: 3s\nkubernetes:\n  watch: always\n  node_name: node-a\n  kubeconfig: {}\n",
        kubeconfig.path().display()
    ));

    // Steady traffic to chat:1 while top runs.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let port = server.port;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = http_request(port, "GET /predict HTTP/1.1\r\nHost: t\r\n\r\n");
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait_for(Duration::from_secs(30), "chat:1's requests and embed's CPU in the snapshot", || {
        let view = agent.snapshot();
        let models = view["models"].as_array()?.clone();
        let find = |name: &str, version: &str| models.iter().find(|m| m["name"] == name && m["version"] == version);
        let busy = find("embed", "")?["cpu_cores"].as_f64()? > 0.2;
        let serving = find("chat", "1")?["requests_per_second"].as_f64()? > 1.0;
        (busy && serving && find("chat", "2").is_some()).then_some(())
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let tmux = Tmux::start(80, 24, dir.path());
    let bin = modelmeter_bin();
    tmux.type_text(&format!(
        "stty -g > before; {} top --agent {}; echo top-exit=$?; stty -g > after",
        bin.display(),
        agent.url("")
    ));
    tmux.press("Enter");

    // Sorted by CPU: the burner's model first, its pod below it, figures filled in, and the same
    // figures as the agent's snapshot of the time in the header (a snapshot lasts 3 s here, so
    // the test's reads and top's see the same one).
    let mut snapshot = serde_json::Value::Null;
    let screen = tmux.wait_screen("the three models with the snapshot's figures", |s| {
        let ready = first_model_row(s).contains("embed")
            && s.contains("chat:1")
            && s.contains("chat:2")
            && s.contains("search/embed-0")
            && figure(s, "chat:1", "P99") != "-";
        if !ready {
            return false;
        }
        snapshot = agent.snapshot();
        let taken_at = snapshot["taken_at"].as_str().unwrap_or_default();
        let same_time =
            s.lines().next().is_some_and(|header| taken_at.get(11..19).is_some_and(|time| header.ends_with(time)));
        // Two snapshots can fall in one second: the figures decide which one is on screen.
        same_time
            && snapshot_model(&snapshot, "embed", "")["cpu_cores"]
                .as_f64()
                .is_some_and(|cpu| figure(s, "embed", "CPU") == format!("{cpu:.2}"))
    });
    eprintln!("modelmeter top, 80×24:\n{screen}");
    let model = |name: &str, version: &str| snapshot_model(&snapshot, name, version);
    let embed_cpu = model("embed", "")["cpu_cores"].as_f64().expect("embed's CPU");
    assert_eq!(figure(&screen, "embed", "CPU"), format!("{embed_cpu:.2}"), "{screen}");
    assert!(embed_cpu > 0.2, "a burner's model uses CPU: {embed_cpu}");
    assert_eq!(figure(&screen, "search/embed-0", "CPU"), format!("{embed_cpu:.2}"), "the pod is the model's only one");
    let chat_rate = model("chat", "1")["requests_per_second"].as_f64().expect("chat:1's rate");
    assert_eq!(figure(&screen, "chat:1", "REQ/S"), format!("{chat_rate:.1}"), "{screen}");
    assert!(chat_rate > 1.0, "chat:1 is being served: {chat_rate}");
    // Replicas on this node, ready of them (the pods' Ready condition from the API server).
    assert_eq!(model("chat", "1")["ready_replicas"], 1);
    assert_eq!(figure(&screen, "chat:1", "PODS"), "1/1", "{screen}");
    assert!(figure(&screen, "chat:1", "P99").ends_with("ms") || figure(&screen, "chat:1", "P99").ends_with("µs"));
    assert_eq!(figure(&screen, "chat:2", "REQ/S"), "-", "no traffic to chat:2\n{screen}");
    assert!(screen.contains("pods up"), "the header shows the pod watch:\n{screen}");
    assert!(screen.lines().last().is_some_and(|l| l.starts_with("q quit")), "the footer's keys:\n{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80));

    // `n` sorts by name: chat:1, chat:2, embed.
    tmux.press("n");
    let screen = tmux.wait_screen("rows sorted by name", |s| first_model_row(s).contains("chat:1"));
    let models: Vec<String> = named_model_rows(&screen)
        .into_iter()
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(models, ["chat:1", "chat:2", "embed"], "{screen}");
    assert!(screen.contains("MODEL▲"), "the sort column is marked:\n{screen}");

    // The filter: a namespace leaves only its model and pod.
    tmux.press("/");
    tmux.type_text("search");
    tmux.press("Enter");
    let screen =
        tmux.wait_screen("only the search namespace", |s| s.contains("filter: search") && !s.contains("chat:"));
    assert!(screen.contains("search/embed-0"), "{screen}");
    assert_eq!(table_rows(&screen).len(), 2, "the model and its pod:\n{screen}");

    // `q` quits, the shell's screen is back and the terminal's modes are as before.
    tmux.press("q");
    let screen = tmux.wait_screen("top to exit", |s| s.lines().any(exit_line));
    assert!(screen.lines().any(|l| exit_line(l) && l.ends_with("top-exit=0")), "{screen}");
    assert!(!screen.contains("P99 TREND"), "the alternate screen is gone:\n{screen}");
    let settings = |file: &str| {
        wait_for(Duration::from_secs(5), file, || {
            std::fs::read_to_string(dir.path().join(file)).ok().filter(|s| s.ends_with('\n'))
        })
    };
    assert_eq!(settings("before"), settings("after"), "stty settings restored");

    // Unreachable: one line saying so, retried; Ctrl-C quits just as cleanly.
    tmux.press("clear");
    tmux.press("Enter");
    tmux.type_text(&format!("{} top --agent http://127.0.0.1:9; echo top-exit=$?", bin.display()));
    tmux.press("Enter");
    let screen = tmux.wait_screen("the unreachable line", |s| s.contains("agent unreachable"));
    let lines: Vec<&str> = screen.lines().filter(|l| l.contains("unreachable")).collect();
    assert_eq!(lines.len(), 1, "{screen}");
    assert!(lines[0].contains("Connection refused") && lines[0].contains("retrying every second"), "{screen}");
    assert!(screen.lines().next().is_some_and(|l| l.contains("http://127.0.0.1:9")), "{screen}");
    assert!(!screen.contains("panicked"), "{screen}");
    tmux.press("C-c");
    let screen = tmux.wait_screen("top to exit after Ctrl-C", |s| s.lines().any(exit_line));
    assert!(screen.lines().any(|l| exit_line(l) && l.ends_with("top-exit=0")), "{screen}");

    // A terminal that goes away (kubectl exec cut off) takes top with it: nothing left spinning.
    tmux.type_text(&format!("{} top --agent http://127.0.0.1:9/hangup", bin.display()));
    tmux.press("Enter");
    tmux.wait_screen("top to start again", |s| s.contains("agent unreachable"));
    drop(tmux);
    wait_for(Duration::from_secs(10), "top to exit once its terminal hung up", || {
        let running = std::fs::read_dir("/proc").ok()?.flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("127.0.0.1:9/hangup"))
        });
        (!running).then_some(())
    });

    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
}
