//! `cargo xtask`: the one entry point for people and CI.
//!
//! - `setup`: installs what building and testing need (nightly rust-src, LLVM 22, bpf-linker,
//!   Prometheus), skipping what is there.
//! - `build-ebpf`: builds the eBPF object alone (the agent's build.rs does this too).
//! - `run`: builds the agent and runs it on this machine with the default config, and prints what
//!   it attributes; `run -- --demo` adds a model server in a pod cgroup with load (see `demo`).
//! - `test`: formatting, clippy, and every test, end-to-end ones included (needs root).
//! - `bench`: probe overhead from bpf_stats, agent RSS/CPU with 50 cgroups, criterion benchmarks.
//! - `image-root`: the agent's container root filesystem for `daemonset/Containerfile.local` (no registry).

mod bench;
mod bootstrap;
mod demo;
#[path = "../../agent/ebpf_build.rs"]
mod ebpf_build;
mod image;
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
    /// Build and run the agent on this machine (needs root); arguments after `--` go to `modelmeter run`,
    /// except `--demo`: a model server in a pod cgroup, with load, measured within seconds.
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
    /// Stage the agent's container root filesystem (binary and linked libraries) for
    /// daemonset/Containerfile.local, which builds without a registry.
    ImageRoot {
        /// `release`, or `debug` (the build the tests use).
        #[arg(long, default_value = "release")]
        profile: String,
        /// Where to stage it.
        #[arg(long, default_value = "target/image-root")]
        out: PathBuf,
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
        Task::ImageRoot { profile, out } => {
            setup::setup()?;
            image::image_root(&profile, &root().join(out))
        }
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
    let demo = args.iter().any(|a| a == "--demo");
    let args: Vec<String> = args.iter().filter(|a| *a != "--demo").cloned().collect();
    require_root("run")?;
    setup::setup()?;
    cmd("cargo", &["build", "--release", "-p", "modelmeter"])?;
    let binary = root().join("target/release/modelmeter");
    if demo {
        return demo::demo(&binary, &args);
    }
    demo::catch_stop_signals();
    println!("\nStarting {} run {}", binary.display(), args.join(" "));
    let mut child = Command::new(&binary).arg("run").args(&args).spawn().context("starting modelmeter")?;
    let url = format!("http://127.0.0.1:{}", listen_port(&args));
    let mut ready = false;
    for _ in 0..100 {
        if !demo::sleep_unless_stopped(Duration::from_millis(200)) || child.try_wait()?.is_some() {
            break;
        }
        if e2e::http_get(&format!("{url}/readyz")).is_ok() {
            ready = true;
            break;
        }
    }
    if ready {
        // Two snapshots past the agent's min_collect_interval: the second has rates (CPU cores).
        let _ = demo::snapshot(&url);
        if demo::sleep_unless_stopped(Duration::from_millis(1500)) {
            match demo::snapshot(&url) {
                Ok(snapshot) => print!("{}", summary(&binary, &url, &snapshot)),
                Err(e) => println!("Reading the agent's snapshot failed: {e}"),
            }
            println!("\nMetrics: {url}/metrics   Snapshot: {url}/api/v1/snapshot   Stop: Ctrl-C\n");
        }
    }
    // A terminal's Ctrl-C reaches the agent too; a signal sent to xtask alone is passed on.
    while child.try_wait()?.is_none() && demo::sleep_unless_stopped(Duration::from_millis(200)) {}
    let status = demo::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(20))?;
    if !status.success() {
        bail!("modelmeter exited with {status}");
    }
    Ok(())
}

/// The port the agent listens on: `MODELMETER_LISTEN`, else `listen:` in `--config FILE`, else 9464.
fn listen_port(args: &[String]) -> String {
    let config = args.iter().position(|a| a == "--config").and_then(|i| args.get(i + 1).cloned()).or_else(|| {
        args.iter()
            .find_map(|a| a.strip_prefix("--config=").map(str::to_owned))
            .or(std::env::var("MODELMETER_CONFIG").ok())
    });
    let from_config = config.and_then(|path| std::fs::read_to_string(path).ok()).and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("listen:").map(|v| v.split('#').next().unwrap_or("").trim().to_owned()))
    });
    let listen = std::env::var("MODELMETER_LISTEN").ok().or(from_config).unwrap_or_else(|| "0.0.0.0:9464".to_owned());
    listen.trim_matches(['"', '\'']).rsplit(':').next().unwrap_or("9464").to_owned()
}

/// What the agent attributes: its own table (`modelmeter snapshot --table`) when it sees
/// containers; else, or when no model is named, the busiest processes and how to name a model.
fn summary(binary: &Path, url: &str, snapshot: &serde_json::Value) -> String {
    let containers = snapshot["containers"].as_array().map_or(0, Vec::len);
    let named =
        snapshot["models"].as_array().into_iter().flatten().any(|m| m["name"].as_str().is_some_and(|n| !n.is_empty()));
    let mut out = String::from("\n");
    if containers > 0 {
        let table = Command::new(binary).args(["snapshot", "--table", "--agent", url]).output();
        match table {
            Ok(output) if output.status.success() => out.push_str(&String::from_utf8_lossy(&output.stdout)),
            _ => out.push_str(&format!(
                "modelmeter attributes {containers} containers (`{} snapshot --agent {url}` lists them)\n",
                binary.display()
            )),
        }
        if named {
            return out;
        }
    } else {
        out.push_str("No containers, pods or systemd units here yet, so no model to attribute to.\n");
    }
    let processes = snapshot["processes"].as_array();
    let mut busiest = "my-server";
    match processes {
        Some(processes) if !processes.is_empty() => {
            out.push_str(&format!(
                "\nBusiest processes no rule names:\n{:>8} {:<16} {:>6} {:>10}  {}\n",
                "PID", "NAME", "CPU", "MEMORY", "COMMAND"
            ));
            // Not xtask itself, which is busy fetching this.
            let own = u64::from(std::process::id());
            let processes: Vec<&serde_json::Value> = processes.iter().filter(|p| p["pid"] != own).take(10).collect();
            for p in &processes {
                let cmdline: String = p["cmdline"].as_str().unwrap_or_default().chars().take(70).collect();
                let name: String = p["name"].as_str().unwrap_or_default().chars().take(16).collect();
                out.push_str(&format!(
                    "{:>8} {:<16} {:>6} {:>10}  {cmdline}\n",
                    p["pid"].as_u64().unwrap_or(0),
                    name,
                    p["cpu_cores"].as_f64().map_or("-".to_owned(), |c| format!("{c:.2}")),
                    p["memory_rss_bytes"].as_f64().map_or("-".to_owned(), |m| format!("{:.1} MiB", m / 1048576.0)),
                ));
            }
            busiest = processes.first().and_then(|p| p["name"].as_str()).filter(|n| !n.is_empty()).unwrap_or(busiest);
        }
        Some(_) => out.push_str("No process outside containers is busy.\n"),
        None => out.push_str("(This agent does not list processes outside containers.)\n"),
    }
    out.push_str(&format!(
        "\nTo name the model a process serves, add a rule to a config file and run `cargo xtask run -- --config FILE`
(README, \"Standalone: processes and model rules\"):

  standalone:
    rules:
      - name: my-model
        exe: {busiest}
        cmdline: '--model (\\S+)'   # a regex over the arguments; $1 is its first group
        model: '$1'

Or watch one being measured: `cargo xtask run -- --demo`.
"
    ));
    out
}

fn test(args: &[String]) -> anyhow::Result<()> {
    require_root("test")?;
    check_free_disk()?;
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

/// What a run of `cargo xtask test` from a fresh clone leaves in `target/`: the builds (clippy's,
/// the tests', the demo's release agent), the tests' Python environment, the images it packs.
const TEST_TARGET_BYTES: u64 = 5 << 30;

/// Fails at once, naming the figures, when the disk cannot hold what the run will build: a full
/// disk otherwise ends the run midway, in whichever build or test it happens to hit.
fn check_free_disk() -> anyhow::Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let built = bench::walk_bytes(&target);
    let free = free_bytes(&target).with_context(|| format!("reading the free space of {}", target.display()))?;
    let needed = TEST_TARGET_BYTES.saturating_sub(built);
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    println!(
        "disk: {:.1} GiB free for {}, which holds {:.1} GiB of the {:.1} GiB a run builds",
        gib(free),
        target.display(),
        gib(built),
        gib(TEST_TARGET_BYTES)
    );
    if free < needed {
        bail!(
            "{} has {:.1} GiB free and the tests need about {:.1} GiB more there: free some disk, or point CARGO_TARGET_DIR at a larger one",
            target.display(),
            gib(free),
            gib(needed)
        );
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path` (or its nearest
/// existing parent).
fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes())?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it to overwrite.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer for the duration of the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_without_containers_lists_processes_and_a_rule() {
        let snapshot = serde_json::json!({
            "containers": [], "models": [],
            "processes": [{"pid": 42, "name": "llama-server", "cmdline": "llama-server --model /m/q.gguf",
                           "cpu_cores": 1.5, "memory_rss_bytes": 1_073_741_824u64}],
        });
        let text = summary(Path::new("/nonexistent"), "http://127.0.0.1:1", &snapshot);
        assert!(text.contains("No containers, pods or systemd units here yet"), "{text}");
        assert!(text.contains("      42 llama-server       1.50 1024.0 MiB  llama-server --model /m/q.gguf"), "{text}");
        assert!(text.contains("        exe: llama-server\n"), "{text}");
        assert!(text.contains("Standalone: processes and model rules"), "{text}");
    }

    #[test]
    fn listen_port_follows_the_config_file() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), "interval: 1s\nlisten: 127.0.0.1:9555  # local only\n").expect("write");
        let args = ["--config".to_owned(), file.path().display().to_string()];
        if std::env::var_os("MODELMETER_LISTEN").is_none() {
            assert_eq!(listen_port(&args), "9555");
        }
    }
}
