//! A threaded HTTP/1.1 server for the request-tracing tests: joins the cgroups it is told to, serves
//! keep-alive connections, and records its own handling time of every request (request head read →
//! response written). On SIGUSR1 it writes those records as JSON to STATS_FILE — out of band, so
//! the traced traffic is the test's alone.
//!
//! Routes: `/fast` 2 ms → 200, `/medium` 20 ms → 404, `/slow` 200 ms → 500, anything else → 200 at
//! once. Garbage, or a head over 16 KiB, closes the connection without a response.
//!
//! Usage: mm-httpd [--join CGROUP_PROCS_FILE]... PORT_FILE STATS_FILE

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// (path, status) → handling times in nanoseconds.
type Records = Arc<Mutex<BTreeMap<(String, u16), Vec<u64>>>>;

/// Heads over 16 KiB are refused by closing the connection (Node.js' default limit).
const MAX_HEAD: usize = 16 * 1024;

static DUMP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigusr1(_: libc::c_int) {
    DUMP_REQUESTED.store(true, Ordering::SeqCst);
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    while args.peek().map(String::as_str) == Some("--join") {
        args.next();
        let file = args.next().expect("--join needs a file");
        std::fs::write(&file, std::process::id().to_string()).unwrap_or_else(|e| panic!("joining {file}: {e}"));
    }
    let port_file = args.next().expect("usage: mm-httpd [--join FILE]... PORT_FILE STATS_FILE");
    let stats_file = args.next().expect("usage: mm-httpd [--join FILE]... PORT_FILE STATS_FILE");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("address").port();
    std::fs::write(&port_file, port.to_string()).expect("writing the port file");
    let records: Records = Arc::default();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGUSR1, on_sigusr1 as *const () as libc::sighandler_t) };
    let dump_records = records.clone();
    std::thread::spawn(move || {
        loop {
            if DUMP_REQUESTED.swap(false, Ordering::SeqCst) {
                let temporary = format!("{stats_file}.tmp");
                std::fs::write(&temporary, stats_json(&dump_records)).expect("writing stats");
                std::fs::rename(&temporary, &stats_file).expect("publishing stats");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    for stream in listener.incoming().flatten() {
        let records = records.clone();
        std::thread::spawn(move || serve(stream, &records));
    }
}

/// End of the head (index after the blank line), if complete.
fn head_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn serve(mut stream: TcpStream, records: &Records) {
    let _ = stream.set_nodelay(true);
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Read until a whole head is buffered.
        let end = loop {
            if let Some(end) = head_end(&buffer) {
                break end;
            }
            if buffer.len() > MAX_HEAD {
                return;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let started = Instant::now();
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else { return };
        if !version.starts_with("HTTP/1.") || method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return;
        }
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
            })
        };
        let content_length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        buffer.drain(..end);
        while buffer.len() < content_length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..content_length);
        let path = target.split('?').next().unwrap_or(target).to_owned();
        let (status, reason, delay, body) = match path.as_str() {
            "/fast" => (200, "OK", 2, String::from("fast\n")),
            "/medium" => (404, "Not Found", 20, String::from("medium\n")),
            "/slow" => (500, "Internal Server Error", 200, String::from("slow\n")),
            "/dribble" | "/stutter" => (200, "OK", 0, String::from("dribble\n")),
            _ => (200, "OK", 0, String::from("ok\n")),
        };
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // `/dribble`'s response goes out as its status line, then 3 bytes a write: its framing
        // field's name and value split across writes. `/stutter`'s status line is split too.
        let (first, rest) = match path.as_str() {
            "/dribble" => response.as_bytes().split_at(response.find('\n').map_or(0, |end| end + 1)),
            "/stutter" => response.as_bytes().split_at(3),
            _ => (response.as_bytes(), &[][..]),
        };
        if stream.write_all(first).is_err() {
            return;
        }
        for bytes in rest.chunks(3) {
            std::thread::sleep(Duration::from_millis(1));
            if stream.write_all(bytes).is_err() {
                return;
            }
        }
        let took = started.elapsed().as_nanos() as u64;
        records.lock().expect("records").entry((path, status)).or_default().push(took);
        if close {
            return;
        }
    }
}

/// `{"<path> <status>": [ns, …], …}`
fn stats_json(records: &Records) -> String {
    let records = records.lock().expect("records");
    let entries: Vec<String> = records
        .iter()
        .map(|((path, status), times)| {
            let times: Vec<String> = times.iter().map(u64::to_string).collect();
            format!("\"{} {status}\":[{}]", path.replace(['"', '\\'], "_"), times.join(","))
        })
        .collect();
    format!("{{{}}}", entries.join(","))
}
