//! A workload for the end-to-end tests and benchmarks: joins the cgroups it is told to (by writing
//! its own pid to their `cgroup.procs`), then burns CPU, holds memory, or allocates until OOM-killed.
//!
//! Usage: mm-workload [--join CGROUP_PROCS_FILE]... (burn | hold MIB | oom MIB | sleep | forks N)

use std::io::Write;

fn usage() -> ! {
    eprintln!("usage: mm-workload [--join CGROUP_PROCS_FILE]... (burn | hold MIB | oom MIB | sleep)");
    std::process::exit(2);
}

/// Allocates `mib` MiB and writes every page, so the memory is really charged.
fn touch(mib: usize) -> Vec<u8> {
    let mut memory = vec![0u8; mib << 20];
    for page in memory.chunks_mut(4096) {
        page[0] = 1;
    }
    memory
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    while args.peek().map(String::as_str) == Some("--join") {
        args.next();
        let file = args.next().unwrap_or_else(|| usage());
        if let Err(e) = std::fs::write(&file, std::process::id().to_string()) {
            eprintln!("mm-workload: joining {file}: {e}");
            std::process::exit(1);
        }
    }
    let mode = args.next().unwrap_or_else(|| usage());
    let mut number = || args.next().and_then(|n| n.parse::<usize>().ok()).unwrap_or_else(|| usage());
    match mode.as_str() {
        "burn" => {
            println!("ready");
            let _ = std::io::stdout().flush();
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "hold" => {
            let memory = touch(number());
            println!("ready");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                std::hint::black_box(&memory);
            }
        }
        "oom" => {
            let limit = number();
            println!("ready");
            let _ = std::io::stdout().flush();
            let mut held = Vec::new();
            for _ in 0..limit {
                held.push(touch(1));
            }
            // Still alive after `limit` MiB: the limit did not bite.
            eprintln!("mm-workload: allocated {limit} MiB without being OOM-killed");
            std::process::exit(3);
        }
        // A fork storm: N short processes one after another, then exit.
        "forks" => {
            let count = number();
            println!("ready");
            let _ = std::io::stdout().flush();
            for _ in 0..count {
                if let Err(e) = std::process::Command::new("/bin/true").status() {
                    eprintln!("mm-workload: starting /bin/true: {e}");
                    std::process::exit(3);
                }
            }
            std::process::exit(0);
        }
        "sleep" => {
            println!("ready");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => usage(),
    }
}
