//! `cargo xtask setup`: installs what building the eBPF programs and running the tests need, each
//! step skipped when its result is already there (so every other task can call it first).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

use crate::{cmd, is_root};

/// Debian packages: LLVM 22 to build bpf-linker against the nightly's LLVM, the real Prometheus
/// server the end-to-end tests scrape with, bpftool, with which they read the kernel's list of
/// loaded programs, and busybox's httpd, a real server that reads and writes on `dup2` copies of
/// its socket and sends files with sendfile, tmux, the real terminal `modelmeter top` is tested in,
/// and containerd, runc, podman and docker.io, which run the tests' real containers.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "prometheus",
    "bpftool",
    "busybox-static",
    "tmux",
    "containerd",
    "runc",
    "podman",
    "docker.io",
];
/// The official OpenAI Python client, pinned, in a virtual environment of the end-to-end tests
/// (`target/e2e-python`): its requests are what a model server really receives.
const PYTHON_PACKAGES: &[&str] = &["openai==3.57.0"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// bpf-linker 0.13 matches LLVM 22 and this project's aya pins.
const BPF_LINKER_VERSION: &str = "0.13";

pub fn setup() -> anyhow::Result<()> {
    nightly_with_rust_src()?;
    apt_packages()?;
    bpf_linker()?;
    python_packages()?;
    if is_root() {
        mount_if_missing("tracefs", "/sys/kernel/tracing");
        mount_if_missing("bpf", "/sys/fs/bpf");
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_with_rust_src() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"]).context("rustup is required")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain");
        cmd("rustup", &["toolchain", "install", "nightly", "--profile", "minimal"])?;
    }
    let components =
        output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"]).unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        step("adding rust-src to nightly (for -Z build-std=core)");
        cmd("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"])?;
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package]).is_some_and(|s| s.contains("install ok installed"))
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo cargo xtask setup` or `apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    step(&format!("installing {}", missing.join(", ")));
    cmd("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    let status = crate::command("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("starting apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The tests' Python: `target/e2e-python/bin/python3`, with [`PYTHON_PACKAGES`].
pub fn e2e_python() -> PathBuf {
    crate::root().join("target/e2e-python/bin/python3")
}

fn python_packages() -> anyhow::Result<()> {
    let python = e2e_python();
    let wanted = PYTHON_PACKAGES.join(" ");
    let marker = python.with_file_name("modelmeter-packages");
    if python.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(());
    }
    step(&format!("creating the tests' Python environment with {wanted}"));
    let venv = python.parent().and_then(|bin| bin.parent()).context("the venv path")?;
    let venv = venv.to_str().context("a UTF-8 venv path")?;
    cmd("python3", &["-m", "venv", "--clear", venv]).context("python3 with venv is required")?;
    let pip = format!("{venv}/bin/pip");
    let mut args = vec!["install", "-q", "--disable-pip-version-check"];
    args.extend(PYTHON_PACKAGES);
    cmd(&pip, &args)?;
    std::fs::write(&marker, wanted).context("writing the venv's package marker")?;
    Ok(())
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker() -> anyhow::Result<()> {
    let linker = cargo_bin().join("bpf-linker");
    let version = output(linker.to_str().unwrap_or("bpf-linker"), &["--version"]).unwrap_or_default();
    if version.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return Ok(());
    }
    step(&format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"));
    let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let status = crate::command("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            &format!("^{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
            "--force",
        ])
        .env("PATH", path)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .env("RUSTFLAGS", format!("-L {LLVM_PREFIX}/lib -C link-args=-Wl,-rpath,{LLVM_PREFIX}/lib"))
        .status()
        .context("starting cargo install")?;
    if !status.success() {
        bail!("installing bpf-linker failed ({status})");
    }
    Ok(())
}

fn mount_if_missing(fs_type: &str, at: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(at)) {
        return;
    }
    step(&format!("mounting {fs_type} at {at}"));
    if let Err(e) = cmd("mount", &["-t", fs_type, fs_type, at]) {
        eprintln!("warning: {e:#}");
    }
}

fn step(what: &str) {
    eprintln!("xtask setup: {what}");
}
