//! The agent's own HTTP server against hostile and careless clients: half-sent requests and
//! floods of connections neither keep `/healthz` from answering nor delay exit, and after exit no
//! probe of the agent is left in the kernel.

use std::{
    collections::BTreeSet,
    io::Write,
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use e2e::{Agent, http_get, require_root};

/// Ids of the BPF programs loaded in the kernel, from bpftool (installed by `cargo xtask setup`).
fn loaded_programs() -> BTreeSet<u64> {
    let output = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("running bpftool (Debian package bpftool; `cargo xtask setup` installs it)");
    assert!(output.status.success(), "bpftool failed: {}", String::from_utf8_lossy(&output.stderr));
    let programs: serde_json::Value = serde_json::from_slice(&output.stdout).expect("bpftool --json is JSON");
    programs.as_array().expect("a list of programs").iter().filter_map(|p| p["id"].as_u64()).collect()
}

fn raise_open_files_limit(at_least: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < at_least {
            limit.rlim_cur = at_least.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A connection that sent the start of a request head and then nothing.
fn half_sent(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connecting to the agent");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").expect("sending half a request");
    stream
}

#[test]
fn half_open_connections_neither_block_healthz_nor_delay_exit() {
    require_root();
    let before = loaded_programs();
    let agent = Agent::start("interval: 1s\nkubernetes:\n  watch: never\n");
    let addr = agent.url("").trim_start_matches("http://").to_owned();
    assert!(loaded_programs().len() > before.len(), "the agent loaded no programs");

    // 2,000 half-sent requests: more than the connection limit and than an open-files limit of
    // 1,024 (this test raises its own).
    raise_open_files_limit(4096);
    let held: Vec<TcpStream> = (0..2000).map(|_| half_sent(&addr)).collect();
    let started = Instant::now();
    let health = http_get(&agent.url("/healthz"));
    assert_eq!(health.as_deref(), Ok("ok\n"), "/healthz while 2,000 connections hang");
    let metrics = http_get(&agent.url("/metrics")).expect("a scrape while 2,000 connections hang");
    assert!(metrics.contains("modelmeter_build_info"), "{metrics:.300}");
    eprintln!("answered in {:?} with 2,000 half-open connections", started.elapsed());

    // A few of them still hang when the agent is told to stop.
    let stopping = Instant::now();
    let (status, log) = agent.stop();
    let took = stopping.elapsed();
    drop(held);
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("Probes detached"), "{log}");
    // The grace for open requests is 5 s; detaching the probes takes about 2 s more.
    assert!(took < Duration::from_secs(10), "exit took {took:?} with half-sent requests open:\n{log}");
    let left: Vec<u64> = loaded_programs().difference(&before).copied().collect();
    assert!(left.is_empty(), "programs still loaded after the agent exited: {left:?}");
}

#[test]
fn a_slow_client_is_cut_off_and_an_oversized_head_refused() {
    require_root();
    let agent = Agent::start("kubernetes:\n  watch: never\n");
    let addr = agent.url("").trim_start_matches("http://").to_owned();
    // A head that never finishes is closed after the header-read timeout (10 s).
    let mut slow = half_sent(&addr);
    slow.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
    let waited = Instant::now();
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut slow, &mut rest);
    let closed = match &read {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the half-sent request was still open after {:?}: {read:?}", waited.elapsed());
    assert!(waited.elapsed() >= Duration::from_secs(5), "closed too soon: {:?}", waited.elapsed());
    // A 64 KiB header is refused with 431, not buffered.
    let mut big = TcpStream::connect(&addr).expect("connecting");
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let _ = big.write_all(head.as_bytes());
    big.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let mut response = Vec::new();
    let _ = std::io::Read::read_to_end(&mut big, &mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response:.200}");
    assert_eq!(http_get(&agent.url("/healthz")).as_deref(), Ok("ok\n"));
}
