//! /proc readers: which cgroups a process is in (`/proc/<pid>/cgroup`), whether it still exists.

use std::path::{Path, PathBuf};

/// The cgroup paths of one process, per hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroups {
    /// The v2 (unified) path, from the `0::<path>` line.
    pub v2: Option<String>,
    /// The v1 memory controller's path.
    pub v1_memory: Option<String>,
    /// The v1 cpu (or cpu,cpuacct) controller's path.
    pub v1_cpu: Option<String>,
}

impl ProcCgroups {
    /// Paths to try for identity, the unified one first.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        [&self.v2, &self.v1_memory, &self.v1_cpu].into_iter().flatten().map(String::as_str)
    }
}

/// Parses the text of `/proc/<pid>/cgroup` (lines `hierarchy-id:controller-list:path`, see
/// cgroups(7)). Malformed lines are skipped.
pub fn parse_proc_cgroup(text: &str) -> ProcCgroups {
    let mut out = ProcCgroups::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            out.v2 = Some(path.to_owned());
            continue;
        }
        for controller in controllers.split(',') {
            match controller {
                "memory" => out.v1_memory = Some(path.to_owned()),
                "cpu" => out.v1_cpu = Some(path.to_owned()),
                _ => {}
            }
        }
    }
    out
}

/// Reads `/proc/<pid>/cgroup` under `proc_root`; `None` when the process is gone or unreadable.
pub fn read_proc_cgroup(proc_root: &Path, pid: u32) -> Option<ProcCgroups> {
    std::fs::read_to_string(proc_dir(proc_root, pid).join("cgroup")).ok().map(|text| parse_proc_cgroup(&text))
}

/// Whether a process with this tgid still exists.
pub fn process_exists(proc_root: &Path, tgid: u32) -> bool {
    proc_dir(proc_root, tgid).exists()
}

/// Whether `fd` of process `tgid` is a socket (its `/proc/<tgid>/fd/<fd>` link reads `socket:[…]`);
/// `None` when the fd (or the process) is already gone.
pub fn is_socket(proc_root: &Path, tgid: u32, fd: u32) -> Option<bool> {
    std::fs::read_link(proc_dir(proc_root, tgid).join("fd").join(fd.to_string()))
        .ok()
        .map(|target| target.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
}

fn proc_dir(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_lines() {
        let text = "12:memory:/kubepods/burstable/podx/abc\n4:cpu,cpuacct:/kubepods/burstable/podx/abc\n\
                    1:name=systemd:/\n0::/kubepods/burstable/podx/abc\n";
        let parsed = parse_proc_cgroup(text);
        assert_eq!(parsed.v2.as_deref(), Some("/kubepods/burstable/podx/abc"));
        assert_eq!(parsed.v1_memory.as_deref(), Some("/kubepods/burstable/podx/abc"));
        assert_eq!(parsed.v1_cpu.as_deref(), Some("/kubepods/burstable/podx/abc"));
        assert_eq!(parsed.paths().count(), 3);
    }

    #[test]
    fn parses_pure_v2_and_skips_garbage() {
        let parsed = parse_proc_cgroup("garbage\n0::/system.slice/ssh.service\n3:memory:relative\n::\n");
        assert_eq!(parsed, ProcCgroups { v2: Some("/system.slice/ssh.service".into()), ..Default::default() });
    }

    #[test]
    fn reads_own_process() {
        assert!(read_proc_cgroup(Path::new("/proc"), std::process::id()).is_some());
        assert!(process_exists(Path::new("/proc"), std::process::id()));
        assert!(!process_exists(Path::new("/proc"), u32::MAX));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener) as u32;
        assert_eq!(is_socket(Path::new("/proc"), std::process::id(), fd), Some(true));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file) as u32;
        assert_eq!(is_socket(Path::new("/proc"), std::process::id(), fd), Some(false));
        assert_eq!(is_socket(Path::new("/proc"), std::process::id(), 1_000_000), None);
    }
}
