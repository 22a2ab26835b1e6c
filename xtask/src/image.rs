//! `cargo xtask image-root`: the agent's container root filesystem without a registry: the
//! binary and exactly the shared libraries it links (from `ldd`), with its dynamic loader, in a
//! directory that `daemonset/Containerfile.local` (`FROM scratch`) copies whole, or that
//! `podman import` / `docker import` takes as a tarball.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

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
    copy_into(&binary, out, Path::new("/usr/local/bin/modelmeter"))?;
    for library in linked_libraries(&binary)? {
        copy_into(&library, out, &library)?;
    }
    // The config directory the DaemonSet mounts over, and a /tmp for anything that wants one.
    for dir in ["etc/modelmeter", "tmp"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    println!("image root: {} ({} and its libraries)", out.display(), binary.display());
    Ok(())
}

/// The absolute paths of the shared objects `binary` loads, its dynamic loader included.
fn linked_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("running ldd (libc-bin)")?;
    if !output.status.success() {
        bail!("ldd {}: {}", binary.display(), String::from_utf8_lossy(&output.stderr));
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`
/// lines; the vDSO has no file.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, target)) => target.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `source` to `root/<at>` (an absolute path inside the image), following symlinks.
fn copy_into(source: &Path, root: &Path, at: &Path) -> anyhow::Result<()> {
    let target = root.join(at.strip_prefix("/").unwrap_or(at));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(source, &target).with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_the_files_and_skip_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x7f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
