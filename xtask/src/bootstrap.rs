//! Keeps `cargo xtask` buildable on a fresh machine: xtask must build before `xtask setup` has
//! installed the eBPF toolchain, so nothing xtask links may have a build script that builds the
//! eBPF programs. Checked from `cargo metadata` at the start of `cargo xtask test` and by a unit test.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, bail};
use serde_json::Value;

/// A build script that reads this directory builds the eBPF programs.
const EBPF_CRATE_DIR: &str = "agent-ebpf";

/// Fails naming the path from xtask to every package whose build script needs the eBPF toolchain.
pub fn check_xtask_needs_no_ebpf_toolchain() -> anyhow::Result<()> {
    let out = crate::command("cargo")
        .args(["metadata", "--format-version", "1"])
        .current_dir(crate::root())
        .output()
        .context("starting `cargo metadata`")?;
    if !out.status.success() {
        bail!("`cargo metadata` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let metadata: Value = serde_json::from_slice(&out.stdout).context("parsing `cargo metadata` output")?;
    let offenders = ebpf_built_dependencies(&metadata, "xtask")?;
    if !offenders.is_empty() {
        bail!(
            "xtask depends on {}, whose build script needs the eBPF toolchain that `cargo xtask setup` \
             installs: a fresh machine could not run xtask at all. Keep xtask's dependencies free of the agent.",
            offenders.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Names of the packages in `root_package`'s normal and build dependency tree whose build script
/// mentions [`EBPF_CRATE_DIR`] (dev-dependencies are not built for xtask).
fn ebpf_built_dependencies(metadata: &Value, root_package: &str) -> anyhow::Result<BTreeSet<String>> {
    let packages = metadata["packages"].as_array().context("metadata without packages")?;
    let by_id: HashMap<&str, &Value> = packages.iter().filter_map(|p| Some((p["id"].as_str()?, p))).collect();
    let root = packages
        .iter()
        .find(|p| p["name"] == root_package)
        .and_then(|p| p["id"].as_str())
        .with_context(|| format!("no package {root_package} in the workspace"))?;
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("metadata without a resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    let mut offenders = BTreeSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        if id != root && by_id.get(id).is_some_and(|p| build_script_builds_ebpf(p)) {
            offenders.insert(by_id[id]["name"].as_str().unwrap_or(id).to_owned());
        }
        let deps = nodes.get(id).and_then(|n| n["deps"].as_array()).into_iter().flatten();
        for dep in deps {
            let linked =
                dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null() || k["kind"] == "build");
            if let (true, Some(pkg)) = (linked, dep["pkg"].as_str()) {
                stack.push(pkg);
            }
        }
    }
    Ok(offenders)
}

fn build_script_builds_ebpf(package: &Value) -> bool {
    package["targets"].as_array().into_iter().flatten().any(|target| {
        let is_build_script = target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "custom-build"));
        is_build_script
            && target["src_path"]
                .as_str()
                .and_then(|path| std::fs::read_to_string(path).ok())
                .is_some_and(|source| source.contains(EBPF_CRATE_DIR))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Value {
        let out = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1"])
            .current_dir(crate::root())
            .output()
            .expect("cargo metadata");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("metadata JSON")
    }

    #[test]
    fn xtask_builds_without_the_ebpf_toolchain() {
        let offenders = ebpf_built_dependencies(&metadata(), "xtask").unwrap();
        assert!(offenders.is_empty(), "xtask reaches {offenders:?}, whose build needs the eBPF toolchain");
    }

    #[test]
    fn the_check_sees_the_agent() {
        // The check must be able to fail: the agent's own tree holds the eBPF build script.
        let offenders = ebpf_built_dependencies(&metadata(), "modelmeter-benches").unwrap();
        assert!(offenders.contains("modelmeter"), "{offenders:?}");
    }
}
