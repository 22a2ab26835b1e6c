//! The one command line that builds the eBPF programs (agent-ebpf) with the nightly toolchain.
//! Shared by `agent/build.rs` and `cargo xtask build-ebpf` (each includes this file with
//! `#[path]`), so the two can never build the object differently.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Where the object lands below the target directory.
pub const OBJECT_IN_TARGET: &str = "bpfel-unknown-none/release/modelmeter";

/// `rustup run nightly cargo build --release -Z build-std=core --target bpfel-unknown-none` in
/// `ebpf_dir`, with none of the outer (host) build's settings and with bpf-linker on PATH.
pub fn nightly_build(ebpf_dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(target_dir)
        .current_dir(ebpf_dir);
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
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PATH", path_with_cargo_bin());
    cmd
}

/// bpf-linker lands in ~/.cargo/bin, which a non-login shell may not have on PATH.
fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .or_else(|| Some(PathBuf::from("/root/.cargo")))
    {
        paths.push(home.join("bin"));
    }
    env::join_paths(paths).unwrap_or_default()
}
