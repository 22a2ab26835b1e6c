//! Real containers for the end-to-end tests: Debian's containerd and runc, started on a private
//! socket and state directory, running the test workloads from a root filesystem staged here
//! (the binaries and the libraries they link: no image, no registry). Everything started is
//! stopped on drop, also while a failing test unwinds.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Copies each binary to `/<file name>` under `root`, and the shared objects it links (as `ldd`
/// names them, with the dynamic loader) to their own paths, so it runs in `root` alone.
pub fn stage_root(binaries: &[(&Path, &str)], root: &Path) -> Result<(), String> {
    for (binary, at) in binaries {
        copy_into(binary, root, Path::new(at))?;
        for library in linked_libraries(binary)? {
            copy_into(&library, root, &library)?;
        }
    }
    Ok(())
}

/// The absolute paths of the shared objects `binary` loads, its dynamic loader included.
pub fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let output = Command::new("ldd").arg(binary).output().map_err(|e| format!("running ldd (libc-bin): {e}"))?;
    // A static binary: ldd says so and exits 1; it needs nothing.
    if !output.status.success() {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`
/// lines; the vDSO has no file.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
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

/// Copies `source` to `root/<at>` (an absolute path inside the root), following symlinks.
pub fn copy_into(source: &Path, root: &Path, at: &Path) -> Result<(), String> {
    let target = root.join(at.strip_prefix("/").unwrap_or(at));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::copy(source, &target)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", source.display(), target.display()))
}

/// A containerd of the test's own: its root, state and socket in a temporary directory.
pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    pub socket: PathBuf,
    /// Cgroup directories runc will create (in every hierarchy, the ones the tests' guards do
    /// not know too) and leave behind: removed, deepest first, when containerd goes.
    cgroup_dirs: std::cell::RefCell<Vec<PathBuf>>,
}

impl Containerd {
    /// Starts containerd (Debian's, installed by `cargo xtask setup`) and waits for its socket.
    pub fn start() -> Containerd {
        require_tools(&["containerd", "ctr", "runc"], "containerd and runc");
        let dir = tempfile::Builder::new().prefix("mm-containerd-").tempdir().expect("temp dir");
        let root = dir.path();
        let socket = root.join("containerd.sock");
        // The CRI plugin would want a CNI setup; ctr needs none of it.
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n[ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{0}/debug.sock\"\n",
            root.display()
        );
        std::fs::write(root.join("config.toml"), config).expect("writing containerd's config");
        let log = std::fs::File::create(root.join("containerd.log")).expect("containerd log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let containerd = Containerd { dir, daemon, socket, cgroup_dirs: Default::default() };
        wait_answering(
            "containerd",
            Duration::from_secs(30),
            || containerd.ctr(&["version"]).status.success(),
            || containerd.log(),
        );
        containerd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("--address").arg(&self.socket).args(args).output().expect("running ctr")
    }

    /// A directory for a container's root filesystem, removed with this containerd.
    pub fn rootfs_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("rootfs").join(name);
        std::fs::create_dir_all(&dir).expect("rootfs dir");
        dir
    }

    /// Starts a container from `rootfs` in the cgroup at `cgroup` (cgroupfs naming, as the
    /// kubelet's), on the host's network, running `args`.
    pub fn run(
        &self,
        id: &str,
        rootfs: &Path,
        cgroup: &str,
        memory_limit: Option<u64>,
        args: &[&str],
    ) -> RealContainer<'_> {
        let limit = memory_limit.map(|l| vec!["--memory-limit".to_owned(), l.to_string()]).unwrap_or_default();
        self.run_with(id, rootfs, cgroup, &limit, args)
    }

    /// [`Containerd::run`] with more `ctr run` options (capabilities, mounts, namespaces, a log).
    pub fn run_with(
        &self,
        id: &str,
        rootfs: &Path,
        cgroup: &str,
        options: &[String],
        args: &[&str],
    ) -> RealContainer<'_> {
        let output = self.ctr_run("--detach", id, rootfs, cgroup, options, args);
        assert!(output.status.success(), "ctr run {id}: {}\n{}", String::from_utf8_lossy(&output.stderr), self.log());
        RealContainer { containerd: self, id: id.to_owned() }
    }

    /// Runs a container to its end (removed after) and returns its exit status and output.
    pub fn run_to_end(&self, id: &str, rootfs: &Path, cgroup: &str, options: &[String], args: &[&str]) -> Output {
        self.ctr_run("--rm", id, rootfs, cgroup, options, args)
    }

    /// `ctr run <mode>` of a container on the host's network, its cgroup noted for removal.
    fn ctr_run(&self, mode: &str, id: &str, rootfs: &Path, cgroup: &str, options: &[String], args: &[&str]) -> Output {
        self.note_new_cgroup_dirs(cgroup);
        let rootfs = rootfs.to_string_lossy();
        let mut ctr_args = vec!["run", mode, "--net-host", "--rootfs", "--cgroup", cgroup];
        ctr_args.extend(options.iter().map(String::as_str));
        ctr_args.extend([rootfs.as_ref(), id]);
        ctr_args.extend(args);
        self.ctr(&ctr_args)
    }

    fn note_new_cgroup_dirs(&self, cgroup: &str) {
        note_new_cgroup_dirs(&mut self.cgroup_dirs.borrow_mut(), cgroup);
    }
}

/// Notes the directories of `cgroup` and its ancestors that do not exist yet in any mounted
/// hierarchy (runc creates them in all of them, v1 `pids`, `blkio`, … included).
fn note_new_cgroup_dirs(dirs: &mut Vec<PathBuf>, cgroup: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for hierarchy in hierarchies.flatten().map(|entry| entry.path()) {
        let mut dir = hierarchy.clone();
        for part in cgroup.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() && !dirs.contains(&dir) {
                dirs.push(dir.clone());
            }
        }
    }
}

/// Removes the noted directories, deepest first (each empty once its container is gone).
fn remove_cgroup_dirs(mut dirs: Vec<PathBuf>) {
    dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
    for dir in dirs {
        // A guard of the test may have removed it already.
        for _ in 0..50 {
            if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A dockerd of the test's own (Debian's docker.io): its data, exec root, socket and containerd
/// namespace private, no bridge or iptables changes; images imported from a staged root.
pub struct Docker {
    dir: tempfile::TempDir,
    daemon: Child,
    cgroup_dirs: std::cell::RefCell<Vec<PathBuf>>,
}

impl Docker {
    pub fn start() -> Docker {
        require_tools(&["dockerd"], "docker.io");
        let dir = tempfile::Builder::new().prefix("mm-docker-").tempdir().expect("temp dir");
        let root = dir.path();
        let log = std::fs::File::create(root.join("dockerd.log")).expect("dockerd log");
        let namespace = format!("mm-test-{}", std::process::id());
        let daemon = Command::new("dockerd")
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--host")
            .arg(format!("unix://{}", root.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(root.join("docker.pid"))
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"])
            .args(["--containerd-namespace", &namespace, "--containerd-plugins-namespace", &format!("{namespace}-p")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        let docker = Docker { dir, daemon, cgroup_dirs: Default::default() };
        wait_answering(
            "dockerd",
            Duration::from_secs(60),
            || docker.docker(&["version"]).status.success(),
            || docker.log(),
        );
        docker
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker CLI of the same package against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("/usr/bin/docker")
            .arg("--host")
            .arg(format!("unix://{}", self.dir.path().join("docker.sock").display()))
            .args(args)
            .output()
            .expect("running docker")
    }

    /// Imports `rootfs` as the image `name`.
    pub fn import(&self, rootfs: &Path, name: &str) {
        let tar = pack_root(rootfs, self.dir.path());
        let output = self.docker(&["import", &tar.to_string_lossy(), name]);
        assert!(output.status.success(), "docker import: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Starts a detached container on the host's network, under `cgroup_parent` when given
    /// (else docker's own `/docker`); returns its full id.
    pub fn run(&self, image: &str, cgroup_parent: Option<&str>, args: &[&str]) -> String {
        self.run_with(image, cgroup_parent, &[], args)
    }

    /// [`Docker::run`] with more `docker run` options (`--memory`, `--volume`).
    pub fn run_with(&self, image: &str, cgroup_parent: Option<&str>, options: &[&str], args: &[&str]) -> String {
        let parent = cgroup_parent.unwrap_or("/docker");
        note_new_cgroup_dirs(&mut self.cgroup_dirs.borrow_mut(), parent);
        let mut docker_args = vec!["run", "--detach", "--network", "host"];
        if let Some(parent) = cgroup_parent {
            docker_args.extend(["--cgroup-parent", parent]);
        }
        docker_args.extend(options);
        docker_args.push(image);
        docker_args.extend(args);
        let output = self.docker(&docker_args);
        assert!(output.status.success(), "docker run: {}\n{}", String::from_utf8_lossy(&output.stderr), self.log());
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let listed = self.docker(&["ps", "--all", "--quiet", "--no-trunc"]);
        for id in String::from_utf8_lossy(&listed.stdout).lines() {
            let _ = self.docker(&["rm", "--force", id.trim()]);
        }
        stop_daemon(&mut self.daemon, Duration::from_secs(20));
        unmount_below(self.dir.path());
        remove_cgroup_dirs(self.cgroup_dirs.take());
    }
}

/// Fails the test, naming the Debian package, when one of `tools` is not installed.
fn require_tools(tools: &[&str], package: &str) {
    for tool in tools {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} is missing: `cargo xtask setup` installs Debian's {package}"
        );
    }
}

/// Waits until a daemon answers (`answers`), or fails the test with its log after `timeout`.
fn wait_answering(daemon: &str, timeout: Duration, mut answers: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !answers() {
        assert!(Instant::now() < deadline, "{daemon} did not answer within {timeout:?}:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Packs the staged root filesystem `rootfs` into `dir/rootfs.tar`, for an image import.
fn pack_root(rootfs: &Path, dir: &Path) -> PathBuf {
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar").arg("-C").arg(rootfs).arg("-cf").arg(&tar).arg(".").status().expect("tar");
    assert!(status.success(), "packing the root filesystem");
    tar
}

/// SIGTERM to a daemon we started, SIGKILL after `grace`, and reaped.
fn stop_daemon(daemon: &mut Child, grace: Duration) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// Unmounts whatever a daemon left mounted below `dir` (overlays, shm), deepest first.
fn unmount_below(dir: &Path) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("grep -o ' {}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l", dir.display()))
        .status();
}

/// Podman (Debian's) with its own storage, the cgroupfs manager (`/libpod_parent/libpod-<id>`)
/// and runc; images are imported from a staged root filesystem.
pub struct Podman {
    dir: tempfile::TempDir,
    containers: std::cell::RefCell<Vec<String>>,
    cgroup_dirs: std::cell::RefCell<Vec<PathBuf>>,
}

impl Podman {
    /// Checks that podman is installed; storage is made on first use.
    pub fn start() -> Podman {
        require_tools(&["podman"], "podman");
        Podman {
            dir: tempfile::Builder::new().prefix("mm-podman-").tempdir().expect("temp dir"),
            containers: Default::default(),
            cgroup_dirs: Default::default(),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"]);
        command
    }

    /// Imports `rootfs` as the image `name`.
    pub fn import(&self, rootfs: &Path, name: &str) {
        let tar = pack_root(rootfs, self.dir.path());
        let output = self.command().arg("import").arg(&tar).arg(name).output().expect("podman import");
        assert!(output.status.success(), "podman import: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Starts a detached container of `image` on the host's network; returns its full id.
    pub fn run(&self, image: &str, args: &[&str]) -> String {
        self.run_with(image, &[], args)
    }

    /// [`Podman::run`] with more `podman run` options (`--memory`, `--volume`).
    pub fn run_with(&self, image: &str, options: &[&str], args: &[&str]) -> String {
        // Its containers go below /libpod_parent, their conmon monitors into /libpod_parent/conmon.
        note_new_cgroup_dirs(&mut self.cgroup_dirs.borrow_mut(), "/libpod_parent/conmon");
        // Podman asks for the host's hard open-file and process limits, which a sandbox may not grant.
        let output = self
            .command()
            .args([
                "run",
                "--detach",
                "--network",
                "host",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .args(options)
            .arg(image)
            .args(args)
            .output()
            .expect("podman run");
        assert!(output.status.success(), "podman run: {}", String::from_utf8_lossy(&output.stderr));
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        self.containers.borrow_mut().push(id.clone());
        id
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for id in self.containers.take() {
            let _ = self.command().args(["rm", "--force", "--time", "0", &id]).output();
        }
        let _ = self.command().args(["system", "reset", "--force"]).output();
        remove_cgroup_dirs(self.cgroup_dirs.take());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers still there (a test that failed before dropping them) go first.
        let listed = self.ctr(&["containers", "list", "--quiet"]);
        for id in String::from_utf8_lossy(&listed.stdout).lines() {
            remove_container(self, id.trim());
        }
        remove_cgroup_dirs(self.cgroup_dirs.take());
        stop_daemon(&mut self.daemon, Duration::from_secs(10));
        // containerd mounts its state (shm, rootfs) under the directory: unmount before removal.
        unmount_below(self.dir.path());
    }
}

fn remove_container(containerd: &Containerd, id: &str) {
    let _ = containerd.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !containerd.ctr(&["task", "delete", id]).status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = containerd.ctr(&["containers", "delete", id]);
}

/// A running container; killed and deleted on drop.
pub struct RealContainer<'a> {
    containerd: &'a Containerd,
    pub id: String,
}

impl RealContainer<'_> {
    /// The host pid of its first process.
    pub fn pid(&self) -> u32 {
        let output = self.containerd.ctr(&["task", "list"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(self.id.as_str())).then(|| fields.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no task for container {}", self.id))
    }

    /// The exit status, once the task stops (`None` while it runs).
    pub fn status(&self) -> Option<String> {
        let output = self.containerd.ctr(&["task", "list"]);
        String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&self.id.as_str()) && fields.get(2) == Some(&"STOPPED")).then(|| line.to_owned())
        })
    }
}

impl Drop for RealContainer<'_> {
    fn drop(&mut self) {
        remove_container(self.containerd, &self.id);
    }
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
