//! `cargo xtask image-root`: the agent's container root filesystem without a registry: the
//! binary and exactly the shared libraries it links (from `ldd`), with its dynamic loader, in a
//! directory that `daemonset/Containerfile.local` (`FROM scratch`) copies whole, or that
//! `podman import` / `docker import` takes as a tarball.

use std::path::Path;

use anyhow::{Context, bail};

use crate::{cmd, root};

/// Builds the agent (`release`, or the `debug` build the tests already have) and stages it with
/// its libraries under `out`, replacing what was there.
pub fn image_root(profile: &str, out: &Path) -> anyhow::Result<()> {
    let binary = match profile {
        "release" => {
            cmd("cargo", &["build", "--release", "-p", "modelmeter"])?;
            root().join("target/release/modelmeter")
        }
        "debug" => {
            cmd("cargo", &["build", "-p", "modelmeter"])?;
            root().join("target/debug/modelmeter")
        }
        other => bail!("--profile is release or debug, not {other}"),
    };
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    e2e::containers::stage_root(&[(&binary, "/usr/local/bin/modelmeter")], out).map_err(anyhow::Error::msg)?;
    // The config directory the DaemonSet mounts over, and a /tmp for anything that wants one.
    for dir in ["etc/modelmeter", "tmp"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    println!("image root: {} ({} and its libraries)", out.display(), binary.display());
    Ok(())
}
