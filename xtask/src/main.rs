//! `cargo xtask`: the one entry point for people and CI.
//!
//! - `setup`: installs what building and testing need (nightly rust-src, LLVM 22, bpf-linker,
//!   Prometheus), skipping what is there.
//! - `build-ebpf`: builds the eBPF object alone (the agent's build.rs does this too).
//! - `run`: builds the agent and runs it on this machine with the default config.
//! - `test`: formatting, clippy, and every test, end-to-end ones included (needs root).
//! - `bench`: probe overhead from bpf_stats, agent RSS/CPU with 50 cgroups, criterion benchmarks.

mod bench;
mod bootstrap;
#[path = "../../agent/ebpf_build.rs"]
mod ebpf_build;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, LLVM 22, bpf-linker, Prometheus; mount tracefs and bpffs.
    Setup,
    /// Build the eBPF programs (agent-ebpf) for bpfel-unknown-none.
    BuildEbpf,
    /// Build and run the agent on this machine (needs root); arguments after `--` go to `modelmeter run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run formatting and clippy checks and the whole test suite (needs root).
    Test {
        /// Extra arguments for `cargo test` (a test name filter, for example).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure probe overhead, agent footprint and userspace hot paths (needs root).
    Bench {
        /// Seconds of context-switch load for the probe overhead figure.
        #[arg(long, default_value_t = 10)]
        load_seconds: u64,
        /// Seconds the idle agent is watched with 50 cgroups.
        #[arg(long, default_value_t = 60)]
        idle_seconds: u64,
        /// Skip the criterion benchmarks.
        #[arg(long)]
        no_criterion: bool,
        /// Run one section only: probes, footprint, requests, pipeline or sinks.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => setup::setup(),
        Task::BuildEbpf => {
            setup::setup()?;
            build_ebpf()
        }
        Task::Run { args } => run(&args),
        Task::Test { args } => test(&args),
        Task::Bench { load_seconds, idle_seconds, no_criterion, only } => bench::bench(
            Duration::from_secs(load_seconds),
            Duration::from_secs(idle_seconds),
            !no_criterion,
            only.as_deref(),
        ),
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent").to_path_buf()
}

/// A command run from xtask. `cargo run` gives xtask its own package's variables
/// (CARGO_MANIFEST_DIR, CARGO_PKG_*); an inner cargo that inherits them sees build scripts' inputs
/// changed and rebuilds dependencies (ring, for one) every time.
pub fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_CRATE_")
            || name.starts_with("CARGO_BIN_")
        {
            command.env_remove(&var);
        }
    }
    command
}

/// Runs a command in the workspace root, failing with its command line when it fails.
pub fn cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status =
        command(program).args(args).current_dir(root()).status().with_context(|| format!("starting `{program}`"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root(task: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {task}` needs root: it loads eBPF programs and creates cgroups (try `sudo -E cargo xtask {task}`)"
        );
    }
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    let ebpf_dir = root().join("agent-ebpf");
    let target_dir = ebpf_dir.join("target");
    let status = ebpf_build::nightly_build(&ebpf_dir, &target_dir).status().context("starting rustup")?;
    if !status.success() {
        bail!("building agent-ebpf failed ({status})");
    }
    println!("{}", target_dir.join(ebpf_build::OBJECT_IN_TARGET).display());
    Ok(())
}

fn run(args: &[String]) -> anyhow::Result<()> {
    require_root("run")?;
    setup::setup()?;
    cmd("cargo", &["build", "--release", "-p", "modelmeter"])?;
    let binary = root().join("target/release/modelmeter");
    println!("\nStarting {} run {}", binary.display(), args.join(" "));
    let mut child = Command::new(&binary).arg("run").args(args).spawn().context("starting modelmeter")?;
    let listen = std::env::var("MODELMETER_LISTEN").unwrap_or_else(|_| "0.0.0.0:9464".to_owned());
    let port = listen.rsplit(':').next().unwrap_or("9464");
    let url = format!("http://127.0.0.1:{port}");
    let ready = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        e2e::http_get(&format!("{url}/readyz")).is_ok()
    });
    if ready {
        // Past the agent's default min_collect_interval, so the scrape collects afresh.
        std::thread::sleep(Duration::from_millis(1500));
        if let Ok(text) = e2e::http_get(&format!("{url}/metrics")) {
            print!("{}", summary(&e2e::Metrics::parse(&text)));
        }
        println!("\nMetrics: {url}/metrics   Health: {url}/healthz   Stop: Ctrl-C\n");
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("modelmeter exited with {status}");
    }
    Ok(())
}

/// A short table of what the agent attributes, busiest first.
fn summary(metrics: &e2e::Metrics) -> String {
    let mut rows: Vec<(String, f64, f64)> = metrics
        .select("container_cpu_time_seconds_total", &[])
        .map(|s| {
            let who = ["systemd_unit", "pod_uid", "container_id"]
                .iter()
                .filter_map(|k| s.labels.get(*k).map(|v| format!("{k}={}", v.chars().take(16).collect::<String>())))
                .collect::<Vec<_>>()
                .join(" ");
            let pairs: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let memory = metrics.get("container_memory_working_set_bytes", &pairs).unwrap_or(0.0);
            (who, s.value, memory)
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let family = metrics.select("modelmeter_build_info", &[]).next().map(|s| s.labels["probe_family"].clone());
    let mut out = format!(
        "\nmodelmeter attributes {} cgroups (scheduler probes: {}). Busiest:\n{:<60} {:>12} {:>14}\n",
        rows.len(),
        family.unwrap_or_else(|| "none".into()),
        "WHO",
        "CPU SECONDS",
        "WORKING SET MiB"
    );
    for (who, cpu, memory) in rows.iter().take(15) {
        out.push_str(&format!("{who:<60} {cpu:>12.3} {:>14.1}\n", memory / 1048576.0));
    }
    if rows.is_empty() {
        let outside = metrics.get("modelmeter_unattributed_cpu_time_seconds_total", &[]).unwrap_or(0.0);
        out.push_str(&format!(
            "(no pod, docker or systemd unit cgroups on this machine yet; {outside:.3} CPU seconds ran outside them)\n"
        ));
    }
    out
}

fn test(args: &[String]) -> anyhow::Result<()> {
    require_root("test")?;
    bootstrap::check_xtask_needs_no_ebpf_toolchain()?;
    setup::setup()?;
    cmd("cargo", &["fmt", "--all", "--", "--check"]).context("formatting differs: run `cargo fmt --all`")?;
    cmd("cargo", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    cmd("cargo", &["build", "-p", "modelmeter", "-p", "modelmeter-e2e", "-p", "fake-nvml"])?;
    let mut test_args = vec!["test", "--workspace", "--lib", "--bins", "--tests", "--"];
    // End-to-end tests measure CPU time against the cgroups' own figures: one at a time.
    test_args.push("--test-threads=1");
    test_args.extend(args.iter().map(String::as_str));
    let (passed, failed) = cargo_test_counting(&test_args)?;
    println!("\nsummary: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, passing its output through, and adds up its `test result:` lines.
fn cargo_test_counting(args: &[&str]) -> anyhow::Result<(u64, u64)> {
    use std::io::BufRead;
    let mut child = command("cargo")
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                result.split([';', '.']).find_map(|part| part.trim().strip_suffix(word)?.trim().parse::<u64>().ok())
            };
            passed += count(" passed").unwrap_or(0);
            failed += count(" failed").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok((passed, failed))
}
