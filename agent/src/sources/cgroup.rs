//! Cgroup layout detection and per-cgroup memory/CPU statistics, for cgroup v2 and v1.
//!
//! File contents are treated as untrusted: anything malformed yields a [`CgroupError`] naming the
//! file, never a panic. Field meanings come from the kernel docs:
//! v2: <https://www.kernel.org/doc/Documentation/admin-guide/cgroup-v2.rst>,
//! v1 memory: <https://www.kernel.org/doc/Documentation/admin-guide/cgroup-v1/memory.rst>,
//! v1 cpuacct: <https://www.kernel.org/doc/Documentation/admin-guide/cgroup-v1/cpuacct.rst>,
//! CFS bandwidth: <https://www.kernel.org/doc/Documentation/scheduler/sched-bwc.rst>.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors from reading cgroup files; each names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("no cgroup hierarchy found under {root}")]
    NoHierarchy { root: PathBuf },
}

impl CgroupError {
    /// True when a file was missing, which usually means the cgroup was removed while reading.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CgroupError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2 at the root: /sys/fs/cgroup/cgroup.controllers exists.
    Unified { v2: PathBuf },
    /// v1 controllers plus a v2 tree (usually <root>/unified) that may have no controllers.
    Hybrid { v2: PathBuf, v1: V1Roots },
    /// Only v1 controllers.
    Legacy { v1: V1Roots },
}

/// Mount points of the v1 controllers we read; `cpu` and `cpuacct` are often the same directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct V1Roots {
    pub cpu: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub memory: Option<PathBuf>,
}

impl Layout {
    /// Looks at `root` (normally /sys/fs/cgroup): `root/cgroup.controllers` → Unified;
    /// `root/unified/cgroup.controllers` → Hybrid; otherwise the v1 controller dirs → Legacy.
    pub fn detect(root: &Path) -> Result<Layout, CgroupError> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(Layout::Unified { v2: root.to_path_buf() });
        }
        let v1 = V1Roots {
            cpu: v1_controller(root, "cpu", "cpu.shares"),
            cpuacct: v1_controller(root, "cpuacct", "cpuacct.usage"),
            memory: v1_controller(root, "memory", "memory.usage_in_bytes"),
        };
        let unified = root.join("unified");
        if unified.join("cgroup.controllers").is_file() {
            Ok(Layout::Hybrid { v2: unified, v1 })
        } else if v1 != V1Roots::default() {
            Ok(Layout::Legacy { v1 })
        } else {
            Err(CgroupError::NoHierarchy { root: root.to_path_buf() })
        }
    }

    pub fn v2_root(&self) -> Option<&Path> {
        match self {
            Layout::Unified { v2 } | Layout::Hybrid { v2, .. } => Some(v2),
            Layout::Legacy { .. } => None,
        }
    }

    pub fn v1_roots(&self) -> Option<&V1Roots> {
        match self {
            Layout::Hybrid { v1, .. } | Layout::Legacy { v1 } => Some(v1),
            Layout::Unified { .. } => None,
        }
    }

    /// Human-readable name for logs.
    pub fn describe(&self) -> String {
        match self {
            Layout::Unified { .. } => "unified (v2)".to_string(),
            Layout::Hybrid { v2, .. } => format!("hybrid (v1 controllers + v2 at {})", v2.display()),
            Layout::Legacy { .. } => "legacy (v1)".to_string(),
        }
    }

    /// Whether memory/cpu stats come from v2 files. In hybrid mode the v2 tree usually has no
    /// controllers, so its cgroups lack memory.* files; we use it only once memory was moved there.
    pub fn stats_from_v2(&self) -> bool {
        match self {
            Layout::Unified { .. } => true,
            Layout::Hybrid { v2, .. } => fs::read_to_string(v2.join("cgroup.controllers"))
                .is_ok_and(|text| text.split_whitespace().any(|c| c == "memory")),
            Layout::Legacy { .. } => false,
        }
    }

    /// Whether the cgroup directory at `rel` is still there (its files may be absent in one hierarchy).
    pub fn cgroup_exists(&self, rel: &str) -> bool {
        let rel = rel.trim_start_matches('/');
        match (self.v2_root(), self.v1_roots()) {
            (Some(v2), _) => v2.join(rel).is_dir(),
            (None, Some(v1)) => v1.memory.iter().chain(v1.cpu.iter()).any(|root| root.join(rel).is_dir()),
            (None, None) => false,
        }
    }

    /// The v1 stats of a cgroup whose v1 paths differ from its v2 path (docker with a relative
    /// `--cgroup-parent` on a hybrid host nests it below dockerd's own v1 cgroups): each
    /// controller's path as one of its processes sees it in `/proc/<pid>/cgroup`.
    pub fn read_v1_stats_at(&self, memory_rel: &str, cpu_rel: &str) -> Result<CgroupStats, CgroupError> {
        let Some(v1) = self.v1_roots() else {
            let source = io::Error::new(io::ErrorKind::Unsupported, "no cgroup v1 hierarchy");
            return Err(read_error(Path::new(memory_rel))(source));
        };
        let Some(memory_root) = &v1.memory else {
            let source = io::Error::new(io::ErrorKind::Unsupported, "no cgroup v1 memory controller mounted");
            return Err(read_error(Path::new(memory_rel))(source));
        };
        let cpu_sub = cpu_rel.trim_start_matches('/');
        let cpu = v1.cpu.as_ref().map(|root| root.join(cpu_sub));
        let cpuacct = v1.cpuacct.as_ref().map(|root| root.join(cpu_sub));
        Ok(CgroupStats {
            memory: read_memory_v1(&memory_root.join(memory_rel.trim_start_matches('/')))?,
            cpu: read_cpu_v1(cpu.as_deref(), cpuacct.as_deref())?,
        })
    }

    /// A process of the v2 cgroup at `rel`, for finding its other hierarchies' paths.
    pub fn first_process(&self, rel: &str) -> Option<u32> {
        let procs = fs::read_to_string(self.v2_root()?.join(rel.trim_start_matches('/')).join("cgroup.procs")).ok()?;
        procs.lines().find_map(|line| line.trim().parse().ok())
    }

    /// Reads memory and CPU stats of the cgroup at `rel` (like "/kubepods/burstable/pod.../abc").
    pub fn read_stats(&self, rel: &str) -> Result<CgroupStats, CgroupError> {
        // `rel` looks absolute; Path::join with an absolute path would discard the root.
        let sub = rel.trim_start_matches('/');
        match self {
            Layout::Unified { v2 } => read_stats_v2(&v2.join(sub)),
            Layout::Hybrid { v2, .. } if self.stats_from_v2() => read_stats_v2(&v2.join(sub)),
            Layout::Hybrid { v1, .. } | Layout::Legacy { v1 } => {
                let Some(memory_root) = &v1.memory else {
                    let source = io::Error::new(io::ErrorKind::Unsupported, "no cgroup v1 memory controller mounted");
                    return Err(read_error(Path::new(rel))(source));
                };
                let cpu = v1.cpu.as_ref().map(|root| root.join(sub));
                let cpuacct = v1.cpuacct.as_ref().map(|root| root.join(sub));
                Ok(CgroupStats {
                    memory: read_memory_v1(&memory_root.join(sub))?,
                    cpu: read_cpu_v1(cpu.as_deref(), cpuacct.as_deref())?,
                })
            }
        }
    }
}

/// `root/<name>` when it is a mounted controller: an empty or stray directory doesn't count.
/// Following symlinks matters because systemd links `cpu` and `cpuacct` to `cpu,cpuacct`.
fn v1_controller(root: &Path, name: &str, marker: &str) -> Option<PathBuf> {
    let dir = root.join(name);
    dir.join(marker).is_file().then_some(dir)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    /// usage − inactive_file, floored at 0 (what kubelet and cAdvisor call the working set).
    pub working_set_bytes: u64,
    /// Anonymous memory: v2 `anon` in memory.stat; v1 `total_rss` in memory.stat.
    pub rss_bytes: u64,
    /// None when unlimited (v2 "max"; v1 a value ≥ 2^62, the kernel's PAGE_COUNTER_MAX rounded to pages).
    pub limit_bytes: Option<u64>,
    /// OOM kills the cgroup itself counted: v2 `oom_kill` in memory.events; v1 `oom_kill` in
    /// memory.oom_control (None if the file/field is absent).
    pub oom_kills: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuStats {
    /// Total CPU time: v2 cpu.stat usage_usec×1000; v1 cpuacct.usage (ns). None if unavailable.
    pub usage_ns: Option<u64>,
    /// CFS bandwidth counters; zero when the fields are absent (no cpu controller / no quota).
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupStats {
    pub memory: MemoryStats,
    pub cpu: CpuStats,
}

fn read_stats_v2(dir: &Path) -> Result<CgroupStats, CgroupError> {
    Ok(CgroupStats { memory: read_memory_v2(dir)?, cpu: read_cpu_v2(dir)? })
}

/// Reads memory.current, memory.stat, memory.max and memory.events of a v2 cgroup.
/// See "Memory Interface Files" in <https://www.kernel.org/doc/Documentation/admin-guide/cgroup-v2.rst>.
pub fn read_memory_v2(dir: &Path) -> Result<MemoryStats, CgroupError> {
    let usage_bytes = read_u64(&dir.join("memory.current"))?;
    let [anon, inactive_file] = read_keyed(&dir.join("memory.stat"), ["anon", "inactive_file"])?;
    // memory.max doesn't exist at the root cgroup, which can't be limited.
    let max_path = dir.join("memory.max");
    let limit_bytes = match read_optional(&max_path)? {
        Some(text) if text.trim() == "max" => None,
        Some(text) => Some(parse_u64(&max_path, &text)?),
        None => None,
    };
    // `oom_kill` (not `oom`) counts processes actually killed; older kernels lack it.
    let [oom_kills] = read_keyed_optional(&dir.join("memory.events"), ["oom_kill"])?;
    Ok(MemoryStats {
        usage_bytes,
        working_set_bytes: usage_bytes.saturating_sub(inactive_file.unwrap_or(0)),
        rss_bytes: anon.unwrap_or(0),
        limit_bytes,
        oom_kills,
    })
}

/// Reads memory.usage_in_bytes, memory.stat, memory.limit_in_bytes and memory.oom_control of a v1
/// cgroup. See <https://www.kernel.org/doc/Documentation/admin-guide/cgroup-v1/memory.rst>.
pub fn read_memory_v1(dir: &Path) -> Result<MemoryStats, CgroupError> {
    // usage_in_bytes is approximate (per-cpu charge caching), but it is what kubelet/cAdvisor use.
    let usage_bytes = read_u64(&dir.join("memory.usage_in_bytes"))?;
    // total_* include descendants, matching usage_in_bytes; without use_hierarchy only the
    // cgroup's own counters exist.
    let keys = ["total_inactive_file", "total_rss", "inactive_file", "rss"];
    let [total_inactive_file, total_rss, inactive_file, rss] = read_keyed(&dir.join("memory.stat"), keys)?;
    // "Unlimited" is PAGE_COUNTER_MAX in bytes, which depends on the page size; anything that
    // large can't be a real limit.
    let limit = read_u64(&dir.join("memory.limit_in_bytes"))?;
    // The oom_kill field appeared in Linux 4.13.
    let [oom_kills] = read_keyed_optional(&dir.join("memory.oom_control"), ["oom_kill"])?;
    Ok(MemoryStats {
        usage_bytes,
        working_set_bytes: usage_bytes.saturating_sub(total_inactive_file.or(inactive_file).unwrap_or(0)),
        rss_bytes: total_rss.or(rss).unwrap_or(0),
        limit_bytes: (limit < 1 << 62).then_some(limit),
        oom_kills,
    })
}

/// Reads cpu.stat of a v2 cgroup. usage_usec is always there; the nr_* and throttled_usec fields
/// only when the cpu controller is enabled for the cgroup.
/// See "CPU Interface Files" in <https://www.kernel.org/doc/Documentation/admin-guide/cgroup-v2.rst>.
pub fn read_cpu_v2(dir: &Path) -> Result<CpuStats, CgroupError> {
    let keys = ["usage_usec", "nr_periods", "nr_throttled", "throttled_usec"];
    let [usage_usec, periods, throttled_periods, throttled_usec] = read_keyed(&dir.join("cpu.stat"), keys)?;
    Ok(CpuStats {
        usage_ns: usage_usec.map(|us| us.saturating_mul(1000)),
        periods: periods.unwrap_or(0),
        throttled_periods: throttled_periods.unwrap_or(0),
        throttled_ns: throttled_usec.map_or(0, |us| us.saturating_mul(1000)),
    })
}

/// Reads cpu.stat from the v1 cpu controller dir and cpuacct.usage from the cpuacct dir.
/// See <https://www.kernel.org/doc/Documentation/scheduler/sched-bwc.rst> and
/// <https://www.kernel.org/doc/Documentation/admin-guide/cgroup-v1/cpuacct.rst>.
pub fn read_cpu_v1(cpu_dir: Option<&Path>, cpuacct_dir: Option<&Path>) -> Result<CpuStats, CgroupError> {
    let usage_ns = cpuacct_dir.map(|dir| read_u64(&dir.join("cpuacct.usage"))).transpose()?;
    // v1 cpu.stat exists only on kernels built with CONFIG_CFS_BANDWIDTH.
    let [periods, throttled_periods, throttled_ns] = match cpu_dir {
        Some(dir) => read_keyed_optional(&dir.join("cpu.stat"), ["nr_periods", "nr_throttled", "throttled_time"])?,
        None => [None; 3],
    };
    Ok(CpuStats {
        usage_ns,
        periods: periods.unwrap_or(0),
        throttled_periods: throttled_periods.unwrap_or(0),
        throttled_ns: throttled_ns.unwrap_or(0),
    })
}

/// Lists every cgroup directory below `root` (depth-first, `root` itself as "/"), as paths
/// relative to `root` starting with '/'. Stops descending at `max_depth` levels. Directories that
/// vanish during the walk are skipped silently (cgroups come and go); other errors are returned.
pub fn walk(root: &Path, max_depth: usize) -> Result<Vec<String>, CgroupError> {
    // Only descendants may vanish; a missing root is the caller's mistake.
    fs::metadata(root).map_err(read_error(root))?;
    let mut out = vec!["/".to_string()];
    walk_into(root, "", max_depth, &mut out)?;
    Ok(out)
}

fn walk_into(dir: &Path, rel: &str, depth_left: usize, out: &mut Vec<String>) -> Result<(), CgroupError> {
    if depth_left == 0 {
        return Ok(());
    }
    let Some(entries) = existing(dir, fs::read_dir(dir))? else {
        return Ok(());
    };
    let mut children = Vec::new();
    for entry in entries {
        let Some(entry) = existing(dir, entry)? else { continue };
        // file_type() doesn't follow symlinks, so a link can't lead the walk into a cycle.
        let Some(file_type) = existing(&entry.path(), entry.file_type())? else {
            continue;
        };
        // Non-UTF-8 names aren't cgroups Kubernetes creates, and a lossy name would name another path.
        if let (true, Ok(name)) = (file_type.is_dir(), entry.file_name().into_string()) {
            children.push(name);
        }
    }
    children.sort_unstable();
    for name in children {
        let child = format!("{rel}/{name}");
        out.push(child.clone());
        walk_into(&dir.join(&name), &child, depth_left - 1, out)?;
    }
    Ok(())
}

/// The cgroup v2 id of a v2 directory: its inode number (what bpf_get_current_cgroup_id() returns).
pub fn cgroup_id(dir: &Path) -> Result<u64, CgroupError> {
    fs::metadata(dir).map(|meta| meta.ino()).map_err(read_error(dir))
}

/// `Ok(None)` when `path` doesn't exist; other I/O errors become [`CgroupError::Read`].
fn existing<T>(path: &Path, result: io::Result<T>) -> Result<Option<T>, CgroupError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(read_error(path)(source)),
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(read_error(path))
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Read { path: path.to_path_buf(), source }
}

fn parse_error(path: &Path) -> impl FnOnce(String) -> CgroupError + '_ {
    move |reason| CgroupError::Parse { path: path.to_path_buf(), reason }
}

fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    existing(path, fs::read_to_string(path))
}

/// Reads a file holding a single unsigned number.
fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    parse_u64(path, &read(path)?)
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    number(text.trim()).map_err(parse_error(path))
}

fn number(value: &str) -> Result<u64, String> {
    if value.is_empty() {
        return Err("expected an unsigned integer, found nothing".to_string());
    }
    value.parse().map_err(|_| {
        // Cap the echoed text so a huge garbage file doesn't make a huge error message.
        let shown: String = value.chars().take(40).collect();
        format!("expected an unsigned integer, found {shown:?}")
    })
}

/// Reads a keyed file ("key value" lines) and returns the values of `keys`, in order.
fn read_keyed<const N: usize>(path: &Path, keys: [&str; N]) -> Result<[Option<u64>; N], CgroupError> {
    parse_keyed(path, &read(path)?, keys)
}

/// Like [`read_keyed`], but a missing file gives all `None`.
fn read_keyed_optional<const N: usize>(path: &Path, keys: [&str; N]) -> Result<[Option<u64>; N], CgroupError> {
    match read_optional(path)? {
        Some(text) => parse_keyed(path, &text, keys),
        None => Ok([None; N]),
    }
}

/// Unknown keys and blank lines are ignored (kernels keep adding fields); a known key must have
/// exactly one numeric value.
fn parse_keyed<const N: usize>(path: &Path, text: &str, keys: [&str; N]) -> Result<[Option<u64>; N], CgroupError> {
    let mut values = [None; N];
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let Some(slot) = keys.iter().position(|k| *k == key) else {
            continue;
        };
        let parsed = match (fields.next(), fields.next()) {
            (Some(value), None) => number(value),
            _ => Err(format!("expected exactly one value, found {line:?}")),
        };
        values[slot] = Some(parsed.map_err(|reason| parse_error(path)(format!("{key}: {reason}")))?);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Writes files (paths relative to `dir`, parents created).
    fn tree(dir: &Path, files: &[(&str, &str)]) {
        for (path, body) in files {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
    }

    /// Asserts `result` failed with an error whose message names `file`, and returns the error.
    fn error_naming<T: std::fmt::Debug>(result: Result<T, CgroupError>, file: &str) -> CgroupError {
        let err = result.unwrap_err();
        assert!(err.to_string().contains(file), "{err}");
        err
    }

    const V2_STAT: &str = "anon 300\nfile 500\ninactive_file 200\nnew_field n/a\n\n";
    const V2_CPU: &str = "usage_usec 5000\nuser_usec 4000\nnr_periods 10\nnr_throttled 2\nthrottled_usec 700\n";
    const V2: &[(&str, &str)] = &[
        ("memory.current", "1000\n"),
        ("memory.stat", V2_STAT),
        ("memory.max", "2000\n"),
        ("memory.events", "low 0\nmax 5\noom 2\noom_kill 1\n"),
        ("cpu.stat", V2_CPU),
    ];
    const V1_STAT: &str = "rss 40\ninactive_file 10\ntotal_rss 400\ntotal_inactive_file 250\n";
    const V1_MEMORY: &[(&str, &str)] =
        &[("memory.usage_in_bytes", "1000\n"), ("memory.stat", V1_STAT), ("memory.limit_in_bytes", "4096\n")];

    #[test]
    fn v2_with_limits() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path(), V2);
        let want = MemoryStats {
            usage_bytes: 1000,
            working_set_bytes: 800,
            rss_bytes: 300,
            limit_bytes: Some(2000),
            oom_kills: Some(1),
        };
        assert_eq!(read_memory_v2(tmp.path()).unwrap(), want);
        let want = CpuStats { usage_ns: Some(5_000_000), periods: 10, throttled_periods: 2, throttled_ns: 700_000 };
        assert_eq!(read_cpu_v2(tmp.path()).unwrap(), want);
    }

    #[test]
    fn v2_unlimited_without_events_or_cpu_controller() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        tree(dir, V2);
        let cpu_stat = "usage_usec 42\nuser_usec 40\nsystem_usec 2\n";
        tree(dir, &[("memory.max", "max\n"), ("cpu.stat", cpu_stat)]);
        fs::remove_file(dir.join("memory.events")).unwrap();
        let mem = read_memory_v2(dir).unwrap();
        assert_eq!((mem.limit_bytes, mem.oom_kills), (None, None));
        let cpu = read_cpu_v2(dir).unwrap();
        assert_eq!((cpu.usage_ns, cpu.periods, cpu.throttled_ns), (Some(42_000), 0, 0));
        fs::remove_file(dir.join("memory.max")).unwrap(); // as in the root cgroup
        assert_eq!(read_memory_v2(dir).unwrap().limit_bytes, None);
    }

    #[test]
    fn v1_memory_with_total_fields() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path(), V1_MEMORY);
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        tree(tmp.path(), &[("memory.oom_control", oom_control)]);
        let want = MemoryStats {
            usage_bytes: 1000,
            working_set_bytes: 750,
            rss_bytes: 400,
            limit_bytes: Some(4096),
            oom_kills: Some(3),
        };
        assert_eq!(read_memory_v1(tmp.path()).unwrap(), want);
    }

    #[test]
    fn v1_memory_without_total_fields_unlimited() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        tree(dir, V1_MEMORY);
        tree(dir, &[("memory.stat", "cache 9\nrss 40\ninactive_file 10\n")]);
        tree(dir, &[("memory.limit_in_bytes", "9223372036854771712\n")]);
        let mem = read_memory_v1(dir).unwrap();
        assert_eq!((mem.working_set_bytes, mem.rss_bytes), (990, 40));
        assert_eq!((mem.limit_bytes, mem.oom_kills), (None, None));
        // Kernels before 4.13 have memory.oom_control without oom_kill.
        tree(dir, &[("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n")]);
        assert_eq!(read_memory_v1(dir).unwrap().oom_kills, None);
    }

    #[test]
    fn working_set_floors_at_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        tree(dir, V2);
        tree(dir, V1_MEMORY);
        tree(dir, &[("memory.stat", "inactive_file 5000\n")]);
        assert_eq!(read_memory_v2(dir).unwrap().working_set_bytes, 0);
        assert_eq!(read_memory_v1(dir).unwrap().working_set_bytes, 0);
    }

    #[test]
    fn v1_cpu_and_cpuacct() {
        let tmp = tempfile::tempdir().unwrap();
        let (cpu, acct) = (tmp.path().join("cpu"), tmp.path().join("cpuacct"));
        tree(&cpu, &[("cpu.stat", "nr_periods 7\nnr_throttled 3\nthrottled_time 123456\n")]);
        tree(&acct, &[("cpuacct.usage", "987654321\n")]);
        let want = CpuStats { usage_ns: Some(987_654_321), periods: 7, throttled_periods: 3, throttled_ns: 123_456 };
        assert_eq!(read_cpu_v1(Some(&cpu), Some(&acct)).unwrap(), want);
        assert_eq!(read_cpu_v1(None, None).unwrap(), CpuStats::default());
        assert!(error_naming(read_cpu_v1(None, Some(&cpu)), "cpuacct.usage").is_not_found());
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let is_parse = |err: CgroupError| matches!(err, CgroupError::Parse { .. });
        tree(dir, V2);
        for bad in ["12abc", "", "\n", "-1", "99999999999999999999999", "1\n2\n"] {
            tree(dir, &[("memory.current", bad)]);
            assert!(is_parse(error_naming(read_memory_v2(dir), "memory.current")));
        }
        tree(dir, &[("memory.current", "1"), ("memory.max", "lots")]);
        assert!(is_parse(error_naming(read_memory_v2(dir), "memory.max")));
        tree(dir, &[("memory.max", "max"), ("memory.stat", "anon many\n")]);
        assert!(is_parse(error_naming(read_memory_v2(dir), "memory.stat")));
        for bad in ["usage_usec\n", "usage_usec 1 2\n", "nr_periods 0x10\n"] {
            tree(dir, &[("cpu.stat", bad)]);
            assert!(is_parse(error_naming(read_cpu_v2(dir), "cpu.stat")));
        }
        fs::write(dir.join("memory.stat"), [0xff, 0xfe]).unwrap(); // not UTF-8
        let err = error_naming(read_memory_v2(dir), "memory.stat");
        assert!(matches!(err, CgroupError::Read { .. }) && !err.is_not_found());
        fs::remove_file(dir.join("memory.current")).unwrap();
        assert!(error_naming(read_memory_v2(dir), "memory.current").is_not_found());

        tree(dir, V1_MEMORY);
        tree(dir, &[("memory.stat", "total_rss -5\n")]);
        assert!(is_parse(error_naming(read_memory_v1(dir), "memory.stat")));
        fs::remove_file(dir.join("memory.usage_in_bytes")).unwrap();
        assert!(error_naming(read_memory_v1(dir), "memory.usage_in_bytes").is_not_found());
    }

    #[test]
    fn detects_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        assert!(matches!(Layout::detect(root), Err(CgroupError::NoHierarchy { .. })));
        // An empty directory is not a mounted controller.
        fs::create_dir(root.join("memory")).unwrap();
        assert!(matches!(Layout::detect(root), Err(CgroupError::NoHierarchy { .. })));

        tree(&root.join("memory"), V1_MEMORY);
        let v1 = V1Roots { memory: Some(root.join("memory")), ..V1Roots::default() };
        let legacy = Layout::detect(root).unwrap();
        assert_eq!(legacy, Layout::Legacy { v1: v1.clone() });
        assert_eq!((legacy.v2_root(), legacy.v1_roots()), (None, Some(&v1)));
        assert_eq!((legacy.describe().as_str(), legacy.stats_from_v2()), ("legacy (v1)", false));

        let v2 = root.join("unified");
        tree(&v2, &[("cgroup.controllers", "")]);
        let hybrid = Layout::detect(root).unwrap();
        assert_eq!(hybrid, Layout::Hybrid { v2: v2.clone(), v1 });
        assert!(!hybrid.stats_from_v2());
        assert_eq!(hybrid.describe(), format!("hybrid (v1 controllers + v2 at {})", v2.display()));
        tree(&v2, &[("cgroup.controllers", "cpu io memory pids\n")]);
        assert!(hybrid.stats_from_v2());

        tree(root, &[("cgroup.controllers", "cpu memory\n")]);
        let unified = Layout::detect(root).unwrap();
        assert_eq!(unified, Layout::Unified { v2: root.to_path_buf() });
        assert_eq!((unified.v2_root(), unified.v1_roots()), (Some(root), None));
        assert_eq!((unified.describe().as_str(), unified.stats_from_v2()), ("unified (v2)", true));
    }

    #[test]
    fn detects_combined_cpu_cpuacct_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        tree(&root.join("cpu,cpuacct"), &[("cpu.shares", "1024"), ("cpuacct.usage", "5")]);
        symlink("cpu,cpuacct", root.join("cpu")).unwrap();
        symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
        let v1 = V1Roots { cpu: Some(root.join("cpu")), cpuacct: Some(root.join("cpuacct")), memory: None };
        assert_eq!(Layout::detect(root).unwrap(), Layout::Legacy { v1 });
    }

    #[test]
    fn read_stats_picks_v1_or_v2() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        tree(&root.join("memory"), V1_MEMORY);
        tree(&root.join("memory/kubepods/pod1"), V1_MEMORY);
        tree(&root.join("cpu"), &[("cpu.shares", "1024")]);
        tree(&root.join("cpu/kubepods/pod1"), &[("cpu.stat", "nr_periods 4\n")]);
        tree(root, &[("unified/cgroup.controllers", "")]);
        tree(&root.join("unified/kubepods/pod1"), V2);
        let layout = Layout::detect(root).unwrap();
        let stats = layout.read_stats("/kubepods/pod1").unwrap();
        assert_eq!((stats.memory.rss_bytes, stats.cpu.periods), (400, 4));
        assert_eq!(stats.cpu.usage_ns, None); // no cpuacct mounted

        tree(root, &[("unified/cgroup.controllers", "memory")]);
        let stats = layout.read_stats("/kubepods/pod1").unwrap();
        assert_eq!((stats.memory.rss_bytes, stats.cpu.periods), (300, 10));
        assert!(layout.read_stats("/kubepods/gone").unwrap_err().is_not_found());
        // No v1 memory controller: an error, but not one that reads as "cgroup removed".
        let no_memory = Layout::Legacy { v1: V1Roots::default() };
        assert!(!no_memory.read_stats("/kubepods/pod1").unwrap_err().is_not_found());
    }

    #[test]
    fn walk_lists_relative_paths_up_to_depth() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        tree(root, &[("cgroup.procs", ""), ("b/c/d/cgroup.procs", "")]);
        fs::create_dir(root.join("a")).unwrap();
        symlink(root, root.join("a/loop")).unwrap();
        assert_eq!(walk(root, 0).unwrap(), ["/"]);
        assert_eq!(walk(root, 1).unwrap(), ["/", "/a", "/b"]);
        assert_eq!(walk(root, 10).unwrap(), ["/", "/a", "/b", "/b/c", "/b/c/d"]);
        assert!(walk(&root.join("missing"), 3).unwrap_err().is_not_found());
    }

    #[test]
    fn cgroup_id_is_the_inode() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_id(tmp.path()).unwrap(), fs::metadata(tmp.path()).unwrap().ino());
        assert!(cgroup_id(&tmp.path().join("gone")).unwrap_err().is_not_found());
    }
}
