//! End to end, as root: request latency measured in the kernel from syscalls, for a real threaded
//! HTTP/1.1 server in a kubelet-shaped pod cgroup, against the server's own records.

use std::{collections::BTreeMap, io::Write, time::Duration};

use e2e::{
    Agent, CgroupGuard, HttpServer, drive_load, hex_id, http_request, pod_uid, quantile, read_response, require_root,
    wait_for, wait_for_showing,
};
use serde_json::Value;

fn pod_cgroup(seed: u64) -> (CgroupGuard, String) {
    let uid = pod_uid(seed);
    let cgroup = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}/{}", hex_id(seed * 3 + 1, 64)));
    (cgroup, uid)
}

/// Request series of one pod from the snapshot: (route, status) → series JSON.
fn series_of(snapshot: &Value, uid: &str) -> BTreeMap<(String, u16), Value> {
    snapshot["requests"]
        .as_array()
        .expect("requests array")
        .iter()
        .filter(|r| r["labels"]["pod_uid"] == uid)
        .map(|r| {
            let labels = &r["labels"];
            let route = labels["http_route"].as_str().unwrap_or_default().to_owned();
            let status = labels["http_response_status_code"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
            ((route, status), r.clone())
        })
        .collect()
}

fn total_count(series: &BTreeMap<(String, u16), Value>) -> u64 {
    series.values().map(|s| s["count"].as_u64().unwrap_or(0)).sum()
}

/// The tests' agent config, followed by `$extra`.
macro_rules! agent_config {
    ($extra:literal) => {
        concat!("interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n", $extra)
    };
}
const AGENT_CONFIG: &str = agent_config!("");
/// The same, with the enter/exit probe pairs that kernels before 5.15 get.
const ENTER_EXIT_CONFIG: &str = agent_config!("probes:\n  syscall_hooks: enter_exit\n");

/// Asserts which request probes the agent runs: the exit tracepoints alone, or enter/exit pairs.
fn assert_syscall_hooks(agent: &Agent, exit_only: bool) {
    let metrics = agent.metrics();
    let runs = |probe: &str| metrics.get("modelmeter_probe_runs_total", &[("probe", probe)]);
    let (used, unused) =
        if exit_only { ("exit_recvfrom", "pair_exit_recvfrom") } else { ("pair_exit_recvfrom", "exit_recvfrom") };
    assert!(runs(used).is_some_and(|n| n > 0.0), "{used} should run");
    assert_eq!(runs(unused), None, "{unused} should not be attached");
    assert_eq!(runs("pair_enter_recvfrom").is_some(), !exit_only);
}

#[test]
fn watching_nothing_attaches_no_syscall_probe() {
    require_root();
    // Each attached syscall probe sends every process's syscalls through the kernel's tracing
    // path: with `requests.watch: none` there must be none, while the scheduler probes run.
    let agent = Agent::start(agent_config!("requests:\n  watch: none\n"));
    let probes: Vec<String> = wait_for(Duration::from_secs(20), "the probes' figures", || {
        let metrics = agent.metrics();
        let probes: Vec<String> =
            metrics.select("modelmeter_probe_runs_total", &[]).map(|s| s.labels["probe"].clone()).collect();
        probes.iter().any(|p| p.starts_with("sched_switch")).then_some(probes)
    });
    let syscall_probes: Vec<&String> =
        probes.iter().filter(|p| p.starts_with("exit_") || p.starts_with("pair_") || p.starts_with("enter_")).collect();
    assert!(syscall_probes.is_empty(), "attached with nothing to watch: {syscall_probes:?}");
    assert_eq!(agent.metrics().get("modelmeter_http_watched_cgroups", &[]), None, "{probes:?}");
}

#[test]
fn latency_per_route_matches_the_servers_own_figures() {
    latency_per_route(301, AGENT_CONFIG);
}

#[test]
fn latency_per_route_with_enter_exit_probe_pairs() {
    latency_per_route(308, ENTER_EXIT_CONFIG);
}

fn latency_per_route(seed: u64, config: &str) {
    require_root();
    let (pod, uid) = pod_cgroup(seed);
    // Started before the agent: it is measured from its next request on.
    let server = HttpServer::start_in(&pod);
    let mut early = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connecting");
    early.write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
    read_response(&mut early).expect("response");

    let agent = Agent::start(config);
    // The connection opened before the agent: its next requests count. The server's thread was
    // already blocked in read(2) when the probes attached, and that one read's buffer is unknown
    // to them, so the first request may be missed — never invented.
    for _ in 0..3 {
        early.write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
        read_response(&mut early).expect("response");
    }
    drop(early);
    let early_counted = wait_for(Duration::from_secs(10), "the early connection's requests", || {
        let snapshot = agent.snapshot();
        let series = series_of(&snapshot, &uid);
        series.get(&("/fast".to_owned(), 200)).and_then(|s| s["count"].as_u64()).filter(|n| *n >= 2)
    });
    assert!(early_counted <= 3, "more requests than were sent: {early_counted}");

    // 20,000 requests from 16 threads, mixing kept-alive and new connections.
    let mut paths = Vec::new();
    for i in 0..20_000 {
        paths.push(
            match i % 100 {
                0 | 50 => "/slow",
                n if n % 7 == 0 => "/medium",
                _ => "/fast",
            }
            .to_owned(),
        );
    }
    // The server's records from here on are the ones to compare.
    let records_before = server.stats();
    let sent = drive_load(server.port, &paths, 16);
    let mut own = server.stats();
    for (key, times) in &mut own {
        let already = records_before.get(key).map_or(0, Vec::len);
        times.drain(..already);
    }
    let early = |key: &(String, u16)| if key.0 == "/fast" { early_counted } else { 0 };
    let agent_series = wait_for(Duration::from_secs(30), "the agent to count every request", || {
        let series = series_of(&agent.snapshot(), &uid);
        let counted = own.iter().all(|(key, times)| {
            series.get(key).and_then(|s| s["count"].as_u64()) == Some(times.len() as u64 + early(key))
        });
        counted.then_some(series)
    });
    assert_eq!(sent.values().sum::<u64>(), 20_000);
    for ((route, status), times) in &own {
        let series = &agent_series[&(route.clone(), *status)];
        let key = (route.clone(), *status);
        assert_eq!(series["count"].as_u64(), Some(times.len() as u64 + early(&key)), "{route} {status}");
        for (q, field) in [(0.5, "p50_seconds"), (0.99, "p99_seconds")] {
            let theirs = quantile(times, q) / 1e9;
            let ours = series[field].as_f64().expect("quantile");
            let tolerance = (theirs * 0.05).max(0.0005);
            println!("{route} {status} {field}: agent {:.3} ms, server {:.3} ms", ours * 1e3, theirs * 1e3);
            assert!(
                (ours - theirs).abs() <= tolerance,
                "{route} {status} {field}: agent {ours} s vs server {theirs} s"
            );
        }
        let labels = &series["labels"];
        assert_eq!(labels["http_request_method"], "GET");
        assert_eq!(labels["url_scheme"], "http");
        assert_eq!(labels["error_type"], if *status >= 500 { "500" } else { "" });
    }
    assert_eq!(agent_series.len(), own.len(), "no series beyond the server's routes: {agent_series:?}");

    // Failed requests (the 500s of /slow) come out as rate-limited JSON lines with their identity.
    let events: Vec<Value> = agent
        .stdout()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["event"] == "failed_request")
        .collect();
    assert!(!events.is_empty(), "no failed_request events:\n{}", agent.stdout());
    let slow_total = own[&("/slow".to_owned(), 500)].len();
    assert!(events.len() < slow_total, "events are sampled: {} of {slow_total}", events.len());
    for event in &events {
        assert_eq!(event["http.route"], "/slow");
        assert_eq!(event["http.response.status_code"], 500);
        assert_eq!(event["k8s.pod.uid"], uid.as_str());
    }
    let limited = agent.metrics().get("modelmeter_events_dropped_total", &[("reason", "request_event_rate_limited")]);
    assert!(limited.unwrap_or(0.0) > 0.0, "rate-limited events are counted");

    // The Prometheus exposition carries the semantic-convention histogram.
    let metrics = agent.metrics();
    let fast = [("pod_uid", uid.as_str()), ("http_route", "/fast"), ("http_response_status_code", "200")];
    let count = metrics.get("http_server_request_duration_seconds_count", &fast).expect("histogram count");
    assert_eq!(count as u64, own[&("/fast".to_owned(), 200)].len() as u64 + early_counted);
    let le_5ms = metrics
        .get("http_server_request_duration_seconds_bucket", &[fast[0], fast[1], fast[2], ("le", "0.005")])
        .expect("5 ms bucket");
    assert!(le_5ms > count * 0.9, "most 2 ms requests fall in the 5 ms bucket: {le_5ms} of {count}");
    assert_syscall_hooks(&agent, config == AGENT_CONFIG);
}

#[test]
fn models_come_from_the_url_and_the_json_body() {
    require_root();
    let (pod, uid) = pod_cgroup(302);
    let agent = Agent::start(AGENT_CONFIG);
    let server = HttpServer::start_in(&pod);
    let infer = "POST /v2/models/resnet50/versions/3/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let body = r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"hi"}]}"#;
    let chat = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(http_request(server.port, infer).expect("infer").0, 200);
    assert_eq!(http_request(server.port, &chat).expect("chat").0, 200);
    let series = wait_for(Duration::from_secs(10), "both model requests", || {
        let series = series_of(&agent.snapshot(), &uid);
        (total_count(&series) == 2).then_some(series)
    });
    let infer = &series[&("/v2/models/{model}/versions/{version}/infer".to_owned(), 200)]["labels"];
    assert_eq!((infer["model"].as_str(), infer["model_version"].as_str()), (Some("resnet50"), Some("3")));
    assert_eq!(infer["http_request_method"], "POST");
    let chat = &series[&("/v1/chat/completions".to_owned(), 200)]["labels"];
    assert_eq!(chat["model"], "llama-3-8b");
    // Raw paths, queries and bodies never leave the agent.
    let exposition = e2e::http_get(&agent.url("/metrics")).expect("metrics");
    assert!(!exposition.contains("messages") && !exposition.contains("/resnet50/"), "raw request data leaked");
}

#[test]
fn an_unwatched_server_yields_no_series() {
    require_root();
    let unwatched = CgroupGuard::create("/mm-test-unwatched.slice/httpd");
    let agent = Agent::start(AGENT_CONFIG);
    let server = HttpServer::start_in(&unwatched);
    let paths: Vec<String> = (0..200).map(|_| "/fast".to_owned()).collect();
    drive_load(server.port, &paths, 4);
    assert_eq!(server.stats()[&("/fast".to_owned(), 200)].len(), 200);
    // Give the agent time to see anything it would see.
    std::thread::sleep(Duration::from_secs(2));
    let snapshot = agent.snapshot();
    let any = snapshot["requests"].as_array().expect("requests").iter().any(|r| r["labels"]["http_route"] == "/fast");
    assert!(!any, "requests of an unwatched cgroup were traced: {snapshot}");
}

#[test]
fn hostile_traffic_invents_nothing_and_overflows_routes_into_other() {
    require_root();
    let (pod, uid) = pod_cgroup(303);
    let agent = Agent::start(AGENT_CONFIG);
    let server = HttpServer::start_in(&pod);
    let send_raw = |bytes: &[u8], split: bool| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        if split {
            let _ = stream.set_nodelay(true);
            for byte in bytes {
                if stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        } else {
            let _ = stream.write_all(bytes);
            // Nothing more is coming: a server still waiting for a head's end sees EOF and hangs up.
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        read_response(&mut stream).ok()
    };
    // Random bytes: the server hangs up; nothing is counted.
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..20 {
        let noise: Vec<u8> = (0..1500)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(send_raw(&noise, false).is_none());
    }
    // A 64 KiB header: over the server's limit, so it hangs up too.
    let huge = format!("GET /fast HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    assert!(send_raw(huge.as_bytes(), false).is_none());
    // A request split into 1-byte writes: one real request.
    let split = send_raw(b"GET /split-request HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", true);
    assert_eq!(split.map(|(status, _)| status), Some(200));
    // A response whose head goes 3 bytes a write after its status line, its Content-Length split
    // across writes, on a connection that stays open: counted at its last byte, not at the next
    // request or the close.
    let mut dribble = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connecting");
    dribble.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    dribble.write_all(b"GET /dribble HTTP/1.1\r\nHost: t\r\n\r\n").expect("sending");
    assert_eq!(read_response(&mut dribble).expect("the dribbled response"), (200, b"dribble\n".to_vec()));
    wait_for(Duration::from_secs(10), "the dribbled response counted while its connection is open", || {
        series_of(&agent.snapshot(), &uid).get(&("/dribble".to_owned(), 200)).filter(|s| s["count"] == 1).map(drop)
    });
    drop(dribble);
    // Status lines in pieces, twice on one connection: no status can be read, so neither request
    // is counted, nor given a status it never had.
    const STUTTERED: u64 = 2;
    let mut stutter = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connecting");
    stutter.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    for _ in 0..STUTTERED {
        stutter.write_all(b"GET /stutter HTTP/1.1\r\nHost: t\r\n\r\n").expect("sending");
        assert_eq!(read_response(&mut stutter).expect("the stuttered response").0, 200);
    }
    drop(stutter);
    // 1,000 distinct paths: the route budget (50) holds, the rest go to `_other`.
    let paths: Vec<String> = (0..1000).map(|i| format!("/page{i}x")).collect();
    drive_load(server.port, &paths, 8);

    let own: u64 = server.stats().values().map(|t| t.len() as u64).sum();
    assert_eq!(own, 1004);
    let series = wait_for(Duration::from_secs(20), "the agent to count the real requests", || {
        let series = series_of(&agent.snapshot(), &uid);
        (total_count(&series) >= own - STUTTERED).then_some(series)
    });
    std::thread::sleep(Duration::from_secs(2));
    let series_now = series_of(&agent.snapshot(), &uid);
    assert_eq!(total_count(&series_now), own - STUTTERED, "the agent invented or lost requests: {series:?}");
    assert!(
        series_now.keys().all(|(route, status)| route != "/stutter" && *status != 0),
        "a response whose status was never read is not counted: {series_now:?}"
    );
    assert_eq!(series_now[&("/split-request".to_owned(), 200)]["count"], 1);
    assert_eq!(series_now[&("/dribble".to_owned(), 200)]["count"], 1);
    assert!(series_now.len() <= 51, "route budget exceeded: {} series", series_now.len());
    let other = series_now[&("_other".to_owned(), 200)]["count"].as_u64().expect("_other count");
    assert_eq!(other, 1000 - 48, "48 page routes fit beside /split-request and /dribble");
    let metrics = agent.metrics();
    let overflow: f64 = metrics.select("modelmeter_http_route_overflow_total", &[]).map(|s| s.value).sum();
    assert_eq!(overflow as u64, other);
    let skipped: f64 =
        metrics.select("modelmeter_http_skipped_total", &[("reason", "not_http")]).map(|s| s.value).sum();
    assert!(skipped >= 20.0, "random bytes should be counted as not HTTP, got {skipped}");
}

/// The agent's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc status")
        * 1024
}

#[test]
fn a_client_cannot_inflate_the_series_beyond_the_budgets() {
    require_root();
    let (pod, uid) = pod_cgroup(304);
    let agent = Agent::start(AGENT_CONFIG);
    let server = HttpServer::start_in(&pod);
    // 25 models in the body × 60 paths × 8 methods (two of them non-standard), 12,000 requests.
    const METHODS: [&str; 8] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE", "REPORT"];
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let port = server.port;
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
                stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
                for i in 0..1500u64 {
                    let n = t * 1500 + i;
                    let body = format!(r#"{{"model":"m{}","input":[1,2,3]}}"#, n % 25);
                    let request = format!(
                        "{} /page{}x HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        METHODS[(n / 25 % 8) as usize],
                        n / 200 % 60,
                        body.len()
                    );
                    stream.write_all(request.as_bytes()).expect("sending");
                    assert_eq!(read_response(&mut stream).expect("a response").0, 200);
                    // About 4,000 requests/s in all: within what the payload ring holds between
                    // two reads, so that every request is captured and the count can be exact.
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("load thread");
    }
    // Every request is counted, in budgeted series.
    let series = wait_for(Duration::from_secs(20), "the agent to count 12,000 requests", || {
        let series: Vec<Value> = agent.snapshot()["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .filter(|r| r["labels"]["pod_uid"] == uid.as_str())
            .cloned()
            .collect();
        (series.iter().map(|s| s["count"].as_u64().unwrap_or(0)).sum::<u64>() == 12_000).then_some(series)
    });
    // The workload budget (200) holds; beyond it one `_other` series per status and model presence.
    assert!(series.len() <= 201, "{} series for one pod", series.len());
    assert!(
        series.iter().any(|s| s["labels"]["http_route"] == "_other" && s["labels"]["http_request_method"] == "_OTHER")
    );
    let methods: std::collections::BTreeSet<&str> =
        series.iter().filter_map(|s| s["labels"]["http_request_method"].as_str()).collect();
    assert!(!methods.contains("PURGE") && !methods.contains("REPORT"), "non-standard methods are _OTHER: {methods:?}");
    let metrics = agent.metrics();
    let folded = metrics.get("modelmeter_http_series_overflow_total", &[("reason", "workload_budget")]).unwrap_or(0.0);
    assert!(folded > 0.0, "requests folded by the workload budget are counted");
    // The exposition stays small, and eight scrapes at once share one encoding.
    let exposition = e2e::http_get(&agent.url("/metrics")).expect("metrics");
    assert!(exposition.len() < 2_000_000, "/metrics is {} bytes", exposition.len());
    let scrapes: Vec<_> = (0..8)
        .map(|_| {
            let url = agent.url("/metrics");
            std::thread::spawn(move || e2e::http_get(&url).map(|text| text.len()))
        })
        .collect();
    for scrape in scrapes {
        let size = scrape.join().expect("scrape thread").expect("a scrape");
        assert!(size < 2_000_000, "{size} bytes");
    }
    let peak = peak_rss(agent.pid());
    assert!(peak < 64 * 1024 * 1024, "agent peak RSS {:.1} MB", peak as f64 / 1e6);
    eprintln!("{} series, /metrics {} bytes, peak RSS {:.1} MB", series.len(), exposition.len(), peak as f64 / 1e6);
}

/// The agent's own request-tracing counters, for a failure message.
fn http_counters(metrics: &e2e::Metrics) -> String {
    let counters: Vec<String> = metrics
        .samples
        .iter()
        .filter(|s| s.name.starts_with("modelmeter_http_") && !s.name.contains("watched"))
        .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
        .collect();
    counters.join(", ")
}

/// Each request series of one pod: (model, status) → count, summed over routes and methods.
fn counts_by_model_and_status(snapshot: &Value, uid: &str) -> BTreeMap<(String, u16), u64> {
    let mut counts = BTreeMap::new();
    for series in snapshot["requests"].as_array().expect("requests") {
        let labels = &series["labels"];
        if labels["pod_uid"] != uid {
            continue;
        }
        let model = labels["model"].as_str().unwrap_or_default().to_owned();
        let status = labels["http_response_status_code"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        *counts.entry((model, status)).or_default() += series["count"].as_u64().unwrap_or(0);
    }
    counts
}

#[test]
fn requests_with_16_kib_heads_are_counted_exactly() {
    require_root();
    let (pod, uid) = pod_cgroup(305);
    let agent = Agent::start(AGENT_CONFIG);
    let server = HttpServer::start_in(&pod);
    // What a browser behind an auth gateway sends: a long bearer token, many cookies, trace headers.
    let token = "eyJhbGciOiJSUzI1NiJ9.".to_owned() + &"x".repeat(6000);
    let cookies: Vec<String> = (0..66).map(|i| format!("c{i}={}", "v".repeat(140))).collect();
    let head = format!(
        "GET /fast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nCookie: {}\r\n\
         traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
        cookies.join("; ")
    );
    assert!((15_000..16_384).contains(&head.len()), "a 16 KiB head: {} bytes", head.len());
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (port, head) = (server.port, head.clone());
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
                stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
                for _ in 0..100 {
                    stream.write_all(head.as_bytes()).expect("sending");
                    assert_eq!(read_response(&mut stream).expect("a response").0, 200);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("load thread");
    }
    let series = wait_for(Duration::from_secs(10), "300 requests with 16 KiB heads", || {
        let series = series_of(&agent.snapshot(), &uid);
        (total_count(&series) == 300).then_some(series)
    });
    assert_eq!(series[&("/fast".to_owned(), 200)]["count"], 300);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(total_count(&series_of(&agent.snapshot(), &uid)), 300, "no request invented");
    let metrics = agent.metrics();
    assert_eq!(metrics.get("modelmeter_http_paired_requests_total", &[("path", "kernel")]), Some(300.0));
    for reason in ["head_too_large", "uncaptured", "unmatched_response"] {
        assert_eq!(metrics.get("modelmeter_http_skipped_total", &[("reason", reason)]), None, "{reason}");
    }
    // The server's own timing of these requests (head read → response written) against the agent's.
    let p50 = series[&("/fast".to_owned(), 200)]["p50_seconds"].as_f64().expect("p50");
    assert!((0.002..0.010).contains(&p50), "p50 of a 2 ms handler: {p50} s");
}

#[test]
fn a_server_on_dup2_copies_of_its_socket_with_sendfile_bodies_is_counted_exactly() {
    dup2_server(306, AGENT_CONFIG);
}

#[test]
fn a_dup2_server_is_counted_exactly_with_enter_exit_probe_pairs() {
    dup2_server(309, ENTER_EXIT_CONFIG);
}

/// A forked child that moves its socket to fd 0 and opens a file under the socket's old number
/// before the agent looks that number up: the answer about the file must not stop the connection
/// being followed.
#[test]
fn a_socket_whose_old_fd_number_names_a_file_by_the_time_it_is_looked_up_is_still_followed() {
    require_root();
    let (pod, uid) = pod_cgroup(310);
    let agent = Agent::start(AGENT_CONFIG);
    let port_file = tempfile::NamedTempFile::new().expect("temp file");
    let _server = pod.spawn_command(
        std::process::Command::new(e2e::e2e_python())
            .arg(e2e::workspace_root().join("tests/python/fork_server.py"))
            .arg(port_file.path()),
    );
    let port = e2e::port_from_file(port_file.path());
    for _ in 0..5 {
        let (status, body) =
            http_request(port, "GET /file HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("/file");
        assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    }
    let counts = wait_for(Duration::from_secs(10), "5 requests to the forking server", || {
        let counts = counts_by_model_and_status(&agent.snapshot(), &uid);
        (counts.values().sum::<u64>() == 5).then_some(counts)
    });
    assert_eq!(counts.get(&(String::new(), 200)), Some(&5), "{counts:?}");
}

fn dup2_server(seed: u64, config: &str) {
    require_root();
    let (pod, uid) = pod_cgroup(seed);
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::write(root.path().join("model.bin"), vec![7u8; 100_000]).expect("writing a file to serve");
    let agent = Agent::start(config);
    // busybox httpd forks per connection; the child moves the socket to fd 0, copies it to fd 1
    // with dup2, reads the request on 0, writes the head on 1 and sends the file with sendfile.
    let port = e2e::free_port();
    let _httpd = pod.spawn_command(
        std::process::Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(root.path()),
    );
    wait_for(Duration::from_secs(10), "busybox httpd to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
    });
    for i in 0..70 {
        let (path, want) = if i % 7 < 5 { ("/model.bin", 200) } else { ("/missing", 404) };
        let (status, body) =
            http_request(port, &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")).expect(path);
        assert_eq!(status, want, "{path}");
        if want == 200 {
            assert_eq!(body.len(), 100_000, "the whole file");
        }
    }
    let counts = wait_for_showing(Duration::from_secs(10), "70 requests to busybox httpd", || {
        let counts = counts_by_model_and_status(&agent.snapshot(), &uid);
        if counts.values().sum::<u64>() == 70 {
            Ok(counts)
        } else {
            Err(format!("counted {counts:?}; {}", http_counters(&agent.metrics())))
        }
    });
    assert_eq!(counts.get(&(String::new(), 200)), Some(&50), "{counts:?}");
    assert_eq!(counts.get(&(String::new(), 404)), Some(&20), "{counts:?}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(counts_by_model_and_status(&agent.snapshot(), &uid).values().sum::<u64>(), 70, "no request invented");
    let metrics = agent.metrics();
    assert_eq!(metrics.get("modelmeter_http_skipped_total", &[("reason", "unmatched_response")]), None);
    assert_syscall_hooks(&agent, config == AGENT_CONFIG);
}

#[test]
fn the_official_openai_client_is_measured_per_model_streamed_and_not() {
    require_root();
    let (pod, uid) = pod_cgroup(307);
    let agent = Agent::start(AGENT_CONFIG);
    let python = e2e::e2e_python();
    let scripts = e2e::workspace_root().join("tests/python");
    let port_file = tempfile::NamedTempFile::new().expect("temp file");
    let _server = pod
        .spawn_command(std::process::Command::new(&python).arg(scripts.join("openai_server.py")).arg(port_file.path()));
    let port = e2e::port_from_file(port_file.path()).to_string();
    // Each client sends a conversation of about 10 KiB: the body names its model only at the end,
    // far beyond any captured bytes, so the model comes from the answer.
    for (model, count, stream) in [("alpha", 15, false), ("alpha", 10, true), ("beta", 15, false), ("beta", 10, true)] {
        let mut client = std::process::Command::new(&python);
        client.arg(scripts.join("openai_client.py")).args([port.as_str(), model, &count.to_string()]);
        if stream {
            client.arg("--stream");
        }
        let output = client.output().expect("running the openai client");
        assert!(output.status.success(), "openai client: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), count.to_string());
    }
    let counts = wait_for(Duration::from_secs(10), "50 completions", || {
        let counts = counts_by_model_and_status(&agent.snapshot(), &uid);
        (counts.values().sum::<u64>() >= 50).then_some(counts)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let counts_now = counts_by_model_and_status(&agent.snapshot(), &uid);
    assert_eq!(counts_now, counts, "no request invented");
    let want: BTreeMap<(String, u16), u64> = [(("alpha".to_owned(), 200), 25), (("beta".to_owned(), 200), 25)].into();
    assert_eq!(counts, want);
    let snapshot = agent.snapshot();
    for series in snapshot["requests"].as_array().expect("requests") {
        if series["labels"]["pod_uid"] == uid.as_str() {
            assert_eq!(series["labels"]["http_route"], "/v1/chat/completions");
            assert_eq!(series["labels"]["http_request_method"], "POST");
        }
    }
    let metrics = agent.metrics();
    assert_eq!(metrics.get("modelmeter_http_skipped_total", &[("reason", "uncaptured")]), None);
}
