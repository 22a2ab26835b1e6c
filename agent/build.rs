//! Builds the eBPF programs (agent-ebpf) with the nightly toolchain and bpf-linker, so that the
//! `modelmeter` binary embeds them. `cargo xtask setup` installs what this needs.
//!
//! With `MODELMETER_EBPF_PLACEHOLDER=1` an empty object is written instead, so `cargo check`,
//! clippy and docs work without nightly; a binary built that way reports that it has no probes.

#[path = "ebpf_build.rs"]
mod ebpf_build;

use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR unset")?);
    let object = out_dir.join("modelmeter.bpf.o");
    println!("cargo:rerun-if-env-changed=MODELMETER_EBPF_PLACEHOLDER");
    println!("cargo:rerun-if-changed=ebpf_build.rs");
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
    let status = ebpf_build::nightly_build(&ebpf_dir, &target_dir)
        .status()
        .context("running `rustup run nightly cargo build` for agent-ebpf")?;
    if !status.success() {
        bail!(
            "building agent-ebpf failed ({status}); run `cargo xtask setup` to install the nightly \
             toolchain, rust-src and bpf-linker, or set MODELMETER_EBPF_PLACEHOLDER=1 to build without probes"
        );
    }
    let built = target_dir.join(ebpf_build::OBJECT_IN_TARGET);
    copy(&built, &object)
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
