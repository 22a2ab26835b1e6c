//! Builds the eBPF programs (agent-ebpf) with the nightly toolchain and bpf-linker, so that the
//! `modelmeter` binary embeds them. `cargo xtask setup` installs what this needs.
//!
//! With `MODELMETER_EBPF_PLACEHOLDER=1` an empty object is written instead, so `cargo check`,
//! clippy and docs work without nightly; a binary built that way reports that it has no probes.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR unset")?);
    let object = out_dir.join("modelmeter.bpf.o");
    println!("cargo:rerun-if-env-changed=MODELMETER_EBPF_PLACEHOLDER");
    if env::var("MODELMETER_EBPF_PLACEHOLDER").is_ok_and(|v| v == "1") {
        std::fs::write(&object, b"")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR unset")?);
    let root = manifest_dir.parent().context("agent/ has no parent")?;
    let ebpf_dir = root.join("agent-ebpf");
    for watched in
        [ebpf_dir.join("src"), ebpf_dir.join("Cargo.toml"), ebpf_dir.join("Cargo.lock"), root.join("agent-common/src")]
    {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    // The outer build's settings are for the host; none of them may leak into the eBPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PATH", path_with_cargo_bin());
    let status = cmd.status().context("running `rustup run nightly cargo build` for agent-ebpf")?;
    if !status.success() {
        bail!(
            "building agent-ebpf failed ({status}); run `cargo xtask setup` to install the nightly \
             toolchain, rust-src and bpf-linker, or set MODELMETER_EBPF_PLACEHOLDER=1 to build without probes"
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/modelmeter");
    copy(&built, &object)
}

/// bpf-linker lands in ~/.cargo/bin, which a non-login shell may not have on PATH.
fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        paths.push(home.join("bin"));
    }
    env::join_paths(paths).unwrap_or_default()
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
