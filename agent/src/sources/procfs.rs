//! /proc readers, on the `procfs` crate: which cgroups a process is in (`/proc/<pid>/cgroup`),
//! whether an fd is a socket, whether a process still exists, and the agent's own CPU and memory.

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
    from_lines(text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let controllers = controllers.split(',').filter(|c| !c.is_empty()).collect::<Vec<_>>();
        Some((id == "0", controllers, path))
    }))
}

/// Folds (is hierarchy 0, controllers, path) lines into per-hierarchy paths.
fn from_lines<'a>(lines: impl Iterator<Item = (bool, Vec<&'a str>, &'a str)>) -> ProcCgroups {
    let mut out = ProcCgroups::default();
    for (hierarchy_zero, controllers, path) in lines {
        if !path.starts_with('/') {
            continue;
        }
        if hierarchy_zero && controllers.is_empty() {
            out.v2 = Some(path.to_owned());
            continue;
        }
        for controller in controllers {
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
    let process = procfs::process::Process::new_with_root(proc_dir(proc_root, pid)).ok()?;
    cgroups_of(&process)
}

/// The cgroup paths of an open process, per hierarchy.
fn cgroups_of(process: &procfs::process::Process) -> Option<ProcCgroups> {
    let cgroups = process.cgroups().ok()?;
    Some(from_lines(
        cgroups
            .0
            .iter()
            .map(|c| (c.hierarchy == 0, c.controllers.iter().map(String::as_str).collect(), c.pathname.as_str())),
    ))
}

/// The agent's own CPU time and resident memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OwnUsage {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

/// Reads the agent's own `/proc/self/stat`; `None` when unreadable.
pub fn own_usage() -> Option<OwnUsage> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    Some(OwnUsage {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss.saturating_mul(procfs::page_size()),
    })
}

/// Whether a process with this tgid still exists.
pub fn process_exists(proc_root: &Path, tgid: u32) -> bool {
    proc_dir(proc_root, tgid).exists()
}

/// Whether `fd` of process `tgid` is a socket (its `/proc/<tgid>/fd/<fd>` link reads `socket:[…]`);
/// `None` when the fd (or the process) is already gone.
pub fn is_socket(proc_root: &Path, tgid: u32, fd: u32) -> Option<bool> {
    let process = procfs::process::Process::new_with_root(proc_dir(proc_root, tgid)).ok()?;
    let info = process.fd_from_fd(i32::try_from(fd).ok()?).ok()?;
    Some(matches!(info.target, procfs::process::FDTarget::Socket(_)))
}

/// One process, as the model rules and the list of busiest processes see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessInfo {
    pub tgid: u32,
    pub ppid: u32,
    /// The executable's file name (`python3.11`), or the kernel's 15-byte `comm` when the link
    /// cannot be read.
    pub exe: String,
    pub cmdline: Vec<String>,
    pub cgroups: ProcCgroups,
    /// User and system time, in seconds.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// The kernel marks its own threads with PF_KTHREAD in `stat`'s flags.
const PF_KTHREAD: u32 = 0x0020_0000;

/// Every user-space process under `proc_root`; ones that vanish mid-read are skipped.
pub fn scan_processes(proc_root: &Path) -> Vec<ProcessInfo> {
    let Ok(entries) = std::fs::read_dir(proc_root) else { return Vec::new() };
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tgid| read_process(proc_root, tgid, ticks, page))
        .collect()
}

/// One process's facts; `None` for kernel threads and processes gone or unreadable.
pub fn read_process(proc_root: &Path, tgid: u32, ticks: f64, page: u64) -> Option<ProcessInfo> {
    let process = procfs::process::Process::new_with_root(proc_dir(proc_root, tgid)).ok()?;
    let stat = process.stat().ok()?;
    if stat.flags & PF_KTHREAD != 0 {
        return None;
    }
    let exe = process
        .exe()
        .ok()
        .and_then(|path| path.file_name().map(|name| name.to_string_lossy().trim_end_matches(" (deleted)").to_owned()))
        .unwrap_or_else(|| stat.comm.clone());
    Some(ProcessInfo {
        tgid,
        ppid: u32::try_from(stat.ppid).unwrap_or(0),
        exe,
        cmdline: process.cmdline().unwrap_or_default(),
        cgroups: cgroups_of(&process).unwrap_or_default(),
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        rss_bytes: stat.rss.saturating_mul(page),
    })
}

/// A process's parent, from `stat`; `None` when it is gone.
pub fn parent_of(proc_root: &Path, tgid: u32) -> Option<u32> {
    let stat = procfs::process::Process::new_with_root(proc_dir(proc_root, tgid)).ok()?.stat().ok()?;
    u32::try_from(stat.ppid).ok()
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
    fn scans_user_processes_with_their_command_lines() {
        let processes = scan_processes(Path::new("/proc"));
        let me = processes.iter().find(|p| p.tgid == std::process::id()).expect("this test process");
        assert!(!me.exe.is_empty() && !me.cmdline.is_empty() && me.rss_bytes > 0, "{me:?}");
        assert_eq!(parent_of(Path::new("/proc"), std::process::id()), Some(me.ppid));
        assert!(processes.iter().all(|p| p.tgid != 2), "kthreadd is the kernel's");
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
