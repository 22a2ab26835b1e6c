//! Maps a cgroup path to the workload that owns it (pod container, pod, Docker container, systemd unit);
//! `model` names the model a pod serves, and `resolver` is the one owner of the map from the
//! kernel's keys (cgroup id, tgid) to identities and pods.
//!
//! Everything here is a pure string function over kubelet, container-runtime and systemd naming
//! conventions, so it is testable without a cgroup filesystem. Cgroup names are chosen by whoever
//! creates the cgroup, so nothing here may panic on any input.

pub mod model;
pub mod resolver;
pub mod rules;

use std::sync::Arc;

/// Kubernetes pod QoS class, as encoded in the kubelet's cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// Kubernetes' own spelling (`status.qosClass`).
    pub fn as_str(&self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// Container runtime that created a container's cgroup, as far as its name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    /// Docker, or cri-dockerd under the kubelet (both name scopes `docker-<id>.scope`).
    Docker,
    Podman,
    /// A bare 64-hex directory (the cgroupfs driver of containerd, docker and cri-dockerd alike):
    /// the pod watch's container status says which, where it runs.
    Unknown,
}

impl Runtime {
    pub fn as_str(&self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }

    /// The runtime a pod's container status names in its id's scheme (`containerd://…`).
    pub fn from_scheme(scheme: &str) -> Runtime {
        match scheme {
            "containerd" => Runtime::Containerd,
            "cri-o" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => Runtime::Unknown,
        }
    }
}

/// What a cgroup path belongs to. Its names are shared (`Arc<str>`): identities are cloned for
/// every request and every series, so a clone must not allocate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A container of a Kubernetes pod.
    PodContainer { pod_uid: Arc<str>, container_id: Arc<str>, runtime: Runtime, qos: QosClass },
    /// The pod's own cgroup (processes placed directly in it, e.g. a sandbox without its own cgroup).
    Pod { pod_uid: Arc<str>, qos: QosClass },
    /// A Docker or Podman container outside Kubernetes.
    Container { runtime: Runtime, container_id: Arc<str> },
    /// A systemd unit (service or scope) outside Kubernetes.
    SystemdUnit { unit: Arc<str> },
    /// A process outside any attributed cgroup that a model rule names, with its children:
    /// `pid` is the first matched process, `name` its executable.
    Process { pid: u32, name: Arc<str>, model: Arc<str>, version: Arc<str> },
    /// Nothing attributable by path (root cgroup, slices, conmon scopes, malformed names).
    Other,
}

impl Identity {
    /// The pod UID for pod and pod-container identities.
    pub fn pod_uid(&self) -> Option<&str> {
        match self {
            Identity::PodContainer { pod_uid, .. } | Identity::Pod { pod_uid, .. } => Some(pod_uid),
            _ => None,
        }
    }

    /// The container id for pod containers and standalone containers.
    pub fn container_id(&self) -> Option<&str> {
        match self {
            Identity::PodContainer { container_id, .. } | Identity::Container { container_id, .. } => {
                Some(container_id)
            }
            _ => None,
        }
    }
}

/// Identifies the owner of `cgroup_path` (relative to a cgroup mount root; leading, trailing and
/// repeated '/' are tolerated).
///
/// Pod UIDs are normalised to lowercase with dashes; 32-hex static-pod UIDs stay undashed because
/// that is their real `metadata.uid`. Container ids are lowercased. Bare 64-hex container directories
/// (cgroupfs driver) don't name their runtime: it is `Unknown` here, and the pod watch tells.
pub fn identify(cgroup_path: &str) -> Identity {
    let parts: Vec<&str> = cgroup_path.split('/').filter(|c| !c.is_empty()).collect();
    // Kubernetes first: a kind/minikube node is itself a Docker container, and the pod inside wins.
    if let Some(identity) = kubernetes(&parts) {
        return identity;
    }
    // Inside a kubepods subtree only pod identities mean anything: QoS parents, conmon scopes and
    // malformed pod children must not fall through to the Docker or systemd-unit rules.
    if parts.iter().any(|c| is_kubepods(c)) {
        return Identity::Other;
    }
    if let Some((runtime, container_id)) = standalone_container(&parts) {
        return Identity::Container { runtime, container_id: container_id.into() };
    }
    // Podman's monitor, not the container (as CRI-O's conmon under the kubelet).
    if parts.iter().any(|c| c.starts_with("libpod-conmon-")) {
        return Identity::Other;
    }
    // The deepest unit, so that `user@1000.service/app.slice/foo.scope` reports the app, while
    // sub-cgroups a service creates (`foo.service/sub`) still count as the service.
    match parts.iter().rev().find(|c| is_unit(c)) {
        Some(unit) => Identity::SystemdUnit { unit: (*unit).into() },
        None => Identity::Other,
    }
}

/// Finds the outermost pod component and resolves the container right below it, if any.
fn kubernetes(parts: &[&str]) -> Option<Identity> {
    let (i, pod_uid, qos) =
        parts.iter().enumerate().find_map(|(i, c)| pod_component(&parts[..i], c).map(|(uid, qos)| (i, uid, qos)))?;
    let Some(next) = parts.get(i + 1) else {
        return Some(Identity::Pod { pod_uid: pod_uid.into(), qos });
    };
    // Anything deeper than the container component belongs to that container.
    Some(match container(next) {
        Some((runtime, container_id)) => {
            Identity::PodContainer { pod_uid: pod_uid.into(), container_id: container_id.into(), runtime, qos }
        }
        None => Identity::Other,
    })
}

/// Recognises a pod cgroup given its ancestors: cgroupfs `kubepods[/burstable|/besteffort]/pod<uid>`
/// or systemd `<prefix>.slice/<prefix>-pod<uid>.slice` with prefix `[...-]kubepods[-burstable|-besteffort]`.
fn pod_component(ancestors: &[&str], name: &str) -> Option<(String, QosClass)> {
    if let Some(uid) = name.strip_prefix("pod") {
        let qos = match ancestors {
            [.., "kubepods"] => QosClass::Guaranteed,
            [.., "kubepods", "burstable"] => QosClass::Burstable,
            [.., "kubepods", "besteffort"] => QosClass::BestEffort,
            _ => return None,
        };
        return Some((pod_uid(uid)?, qos));
    }
    // The systemd uid uses '_' instead of '-', so the last "-pod" is the split point.
    let (prefix, uid) = name.strip_suffix(".slice")?.rsplit_once("-pod")?;
    // systemd derives a slice's parent from its name, so a real pod slice always sits under `<prefix>.slice`.
    if ancestors.last()?.strip_suffix(".slice") != Some(prefix) {
        return None;
    }
    let (base, qos) = if let Some(base) = prefix.strip_suffix("-burstable") {
        (base, QosClass::Burstable)
    } else if let Some(base) = prefix.strip_suffix("-besteffort") {
        (base, QosClass::BestEffort)
    } else {
        (prefix, QosClass::Guaranteed)
    };
    if base != "kubepods" && !base.ends_with("-kubepods") {
        return None;
    }
    Some((pod_uid(uid)?, qos))
}

/// Accepts 8-4-4-4-12 UUIDs (with '-' or systemd's '_') and 32-hex static-pod config hashes.
fn pod_uid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let ok = match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => matches!(c, b'-' | b'_'),
            _ => c.is_ascii_hexdigit(),
        }),
        _ => false,
    };
    ok.then(|| s.to_ascii_lowercase().replace('_', "-"))
}

/// A pod container cgroup: a bare 64-hex id (cgroupfs) or `<runtime>-<id>[.scope]`.
fn container(name: &str) -> Option<(Runtime, String)> {
    if is_container_id(name) {
        return Some((Runtime::Unknown, name.to_ascii_lowercase()));
    }
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    // conmon is CRI-O's monitor process, not the container, even though it shares the prefix and id.
    if stem.starts_with("crio-conmon-") {
        return None;
    }
    let (runtime, id) =
        [("cri-containerd-", Runtime::Containerd), ("crio-", Runtime::CriO), ("docker-", Runtime::Docker)]
            .into_iter()
            .find_map(|(prefix, runtime)| stem.strip_prefix(prefix).map(|id| (runtime, id)))?;
    is_container_id(id).then(|| (runtime, id.to_ascii_lowercase()))
}

/// Standalone containers, outermost first: Docker's cgroupfs `docker/<id>` or systemd
/// `docker-<id>.scope`; Podman's `libpod-<id>.scope` (systemd, rootful under machine.slice or
/// rootless under the user's slice) or `libpod_parent/libpod-<id>` (cgroupfs).
fn standalone_container(parts: &[&str]) -> Option<(Runtime, String)> {
    parts.iter().enumerate().find_map(|(i, c)| {
        let (runtime, id) = if *c == "docker" {
            (Runtime::Docker, *parts.get(i + 1)?)
        } else if let Some(id) = c.strip_prefix("docker-") {
            (Runtime::Docker, id.strip_suffix(".scope")?)
        } else if let Some(id) = c.strip_prefix("libpod-") {
            (Runtime::Podman, id.strip_suffix(".scope").unwrap_or(id))
        } else {
            return None;
        };
        is_container_id(id).then(|| (runtime, id.to_ascii_lowercase()))
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `kubepods` (cgroupfs) or any slice with a `kubepods` dash-segment (`kubelet-kubepods-burstable.slice`).
fn is_kubepods(c: &str) -> bool {
    c == "kubepods" || c.strip_suffix(".slice").is_some_and(|s| s.split('-').any(|seg| seg == "kubepods"))
}

/// A service or scope with a name systemd could have produced (it escapes everything else).
fn is_unit(c: &str) -> bool {
    let Some(stem) = c.strip_suffix(".service").or_else(|| c.strip_suffix(".scope")) else {
        return false;
    };
    !stem.is_empty()
        && !stem.starts_with("crio-conmon-")
        && !stem.starts_with("libpod-conmon-")
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1b2c3d4e-0000-4000-8000-123456789abc";
    const STATIC_UID: &str = "0123456789abcdef0123456789abcdef";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn sd_uid() -> String {
        UID.replace('-', "_")
    }

    fn container(runtime: Runtime, qos: QosClass) -> Identity {
        Identity::PodContainer { pod_uid: UID.into(), container_id: ID.into(), runtime, qos }
    }

    fn pod(qos: QosClass) -> Identity {
        Identity::Pod { pod_uid: UID.into(), qos }
    }

    /// (cgroupfs QoS dir, systemd QoS slice prefix) per class.
    const QOS: [(QosClass, &str, &str); 3] = [
        (QosClass::Guaranteed, "", "kubepods"),
        (QosClass::Burstable, "burstable/", "kubepods-burstable"),
        (QosClass::BestEffort, "besteffort/", "kubepods-besteffort"),
    ];

    fn systemd_pod_dir(prefix: &str, qos_prefix: &str) -> String {
        let parent = if qos_prefix == prefix { String::new() } else { format!("{qos_prefix}.slice/") };
        format!("/{prefix}.slice/{parent}{qos_prefix}-pod{}.slice", sd_uid())
    }

    #[test]
    fn cgroupfs_all_qos_classes() {
        for (qos, dir, _) in QOS {
            let pod_dir = format!("/kubepods/{dir}pod{UID}");
            for (suffix, want) in [
                (format!("/{ID}"), container(Runtime::Unknown, qos)),
                (format!("/crio-{ID}"), container(Runtime::CriO, qos)),
                (format!("/{ID}/sub/deeper"), container(Runtime::Unknown, qos)),
                (String::new(), pod(qos)),
                ("/".into(), pod(qos)),
                (format!("/crio-conmon-{ID}"), Identity::Other),
            ] {
                assert_eq!(identify(&format!("{pod_dir}{suffix}")), want, "{pod_dir}{suffix}");
            }
        }
    }

    #[test]
    fn systemd_all_qos_classes_and_runtimes() {
        let runtimes = [("cri-containerd", Runtime::Containerd), ("crio", Runtime::CriO), ("docker", Runtime::Docker)];
        for (qos, _, qos_prefix) in QOS {
            let pod_dir = systemd_pod_dir("kubepods", qos_prefix);
            assert_eq!(identify(&pod_dir), pod(qos));
            for (prefix, runtime) in runtimes {
                for sub in ["", "/init", "/a/b"] {
                    let path = format!("{pod_dir}/{prefix}-{ID}.scope{sub}");
                    assert_eq!(identify(&path), container(runtime, qos), "{path}");
                }
            }
            assert_eq!(identify(&format!("{pod_dir}/crio-conmon-{ID}.scope")), Identity::Other);
        }
    }

    #[test]
    fn qos_parents_and_slices_are_other() {
        for path in [
            "/",
            "",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods/besteffort/",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/system.slice",
            "/user.slice",
            "/user.slice/user-1000.slice",
            "/docker/not-a-container",
        ] {
            assert_eq!(identify(path), Identity::Other, "{path}");
        }
    }

    #[test]
    fn nested_kind_style_paths() {
        let path = format!("/docker/{ID}/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(identify(&path), container(Runtime::Unknown, QosClass::Burstable));
        let path = format!(
            "{}/cri-containerd-{ID}.scope",
            systemd_pod_dir("kubelet.slice/kubelet-kubepods", "kubelet-kubepods-burstable")
        );
        assert_eq!(identify(&path), container(Runtime::Containerd, QosClass::Burstable));
        let path = format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{}.slice", sd_uid());
        assert_eq!(identify(&path), pod(QosClass::Guaranteed));
        // The kind node's own QoS parent is Kubernetes-owned, not the node container's workload.
        assert_eq!(identify(&format!("/docker/{ID}/kubepods/besteffort")), Identity::Other);
    }

    #[test]
    fn static_pod_uid_and_normalisation() {
        let path = format!("/kubepods/pod{STATIC_UID}/{ID}");
        assert_eq!(identify(&path).pod_uid(), Some(STATIC_UID));
        let path = format!("kubepods.slice/kubepods-pod{}.slice//{}/", STATIC_UID.to_uppercase(), ID.to_uppercase());
        let id = identify(&path);
        assert_eq!((id.pod_uid(), id.container_id()), (Some(STATIC_UID), Some(ID)));
        let path = format!("kubepods//burstable/pod{}", UID.to_uppercase());
        assert_eq!(identify(&path), pod(QosClass::Burstable));
    }

    #[test]
    fn standalone_podman_rootful_rootless_and_cgroupfs() {
        let podman = Identity::Container { runtime: Runtime::Podman, container_id: ID.into() };
        assert_eq!(identify(&format!("/machine.slice/libpod-{ID}.scope")), podman);
        assert_eq!(identify(&format!("/machine.slice/libpod-{ID}.scope/container")), podman, "--cgroups=split");
        let rootless = format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        assert_eq!(identify(&rootless), podman);
        assert_eq!(identify(&format!("/libpod_parent/libpod-{ID}")), podman);
        // conmon, podman's monitor, is not the container.
        assert_eq!(identify(&format!("/machine.slice/libpod-conmon-{ID}.scope")), Identity::Other);
        assert_eq!(identify(&format!("/libpod_parent/libpod-conmon-{ID}")), Identity::Other);
    }

    #[test]
    fn standalone_docker_both_drivers() {
        let docker = Identity::Container { runtime: Runtime::Docker, container_id: ID.into() };
        assert_eq!(identify(&format!("/docker/{ID}")), docker);
        assert_eq!(identify(&format!("/system.slice/docker-{ID}.scope")), docker);
        assert_eq!(identify(&format!("/docker/{ID}/system.slice/containerd.service")), docker);
        // A malformed id is just some scope unit, never a container.
        assert_eq!(identify(&format!("/system.slice/docker-{}.scope", &ID[1..])).container_id(), None);
        assert_eq!(docker.container_id(), Some(ID));
        assert_eq!(docker.pod_uid(), None);
    }

    #[test]
    fn systemd_units() {
        for (path, unit) in [
            ("/system.slice/ssh.service", "ssh.service"),
            ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
            ("/system.slice/foo.service/sub", "foo.service"),
            ("system.slice/systemd-journald.service/", "systemd-journald.service"),
            ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope", "app-foo.scope"),
        ] {
            assert_eq!(identify(path), Identity::SystemdUnit { unit: unit.into() }, "{path}");
        }
        assert_eq!(identify(&format!("/system.slice/crio-conmon-{ID}.scope")), Identity::Other);
        assert_eq!(identify("/system.slice/.service"), Identity::Other);
        assert_eq!(identify("/system.slice/🦀.service"), Identity::Other);
    }

    #[test]
    fn malformed_names_are_not_pods_or_containers() {
        let short_id = &ID[..63];
        let bad_hex = ID.replacen('0', "g", 1);
        let long = "a/".repeat(50_000) + &"kubepods".repeat(10_000);
        for path in [
            format!("/kubepods/burstable/pod{}", &UID[..35]),
            "/kubepods/burstable/pod".into(),
            "/kubepods/pod/".into(),
            format!("/kubepods/burstable/pod{UID}x"),
            format!("/kubepods/burstable/pod{}", UID.replace('-', ":")),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod.slice".into(),
            format!("/kubepods.slice/kubepods-burstable-pod{}.slice", sd_uid()), // missing QoS parent
            format!("/kubepods/burstable/pod{UID}/{short_id}"),
            format!("/kubepods/burstable/pod{UID}/{bad_hex}"),
            format!("/kubepods/burstable/pod{UID}/{ID}0"),
            format!("/kubepods/burstable/pod{UID}/{ID}.scope"),
            format!("/kubepods/burstable/pod{UID}/containerd-{ID}.scope"),
            format!("/kubepods/burstable/pod{UID}/pod{UID}"),
            format!("/kubepods/pod{UID}é/{ID}"),
            format!("/kubepods/burstable/pod{UID}/🦀{ID}"),
            format!("/docker/{short_id}"),
            long,
        ] {
            let id = identify(&path);
            assert!(matches!(id, Identity::Other | Identity::Pod { .. }), "{path:.200}: {id:?}");
            assert_eq!(id.container_id(), None, "{path:.200}");
        }
        // A truncated uid is never reported as a pod.
        assert_eq!(identify(&format!("/kubepods/pod{}/{ID}", &UID[1..])), Identity::Other);
    }

    #[test]
    fn as_str_spellings() {
        let qos: Vec<_> = QOS.iter().map(|(q, _, _)| q.as_str()).collect();
        assert_eq!(qos, ["Guaranteed", "Burstable", "BestEffort"]);
        let rt = [Runtime::Containerd, Runtime::CriO, Runtime::Docker].map(|r| r.as_str());
        assert_eq!(rt, ["containerd", "cri-o", "docker"]);
    }

    /// Deterministic xorshift64 so failures reproduce without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Invariants that must hold for any input, beyond not panicking.
    fn check(path: &str) {
        let id = identify(path);
        if let Some(cid) = id.container_id() {
            assert!(cid.len() == 64 && cid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "{path:?}");
        }
        if let Some(uid) = id.pod_uid() {
            assert!(matches!(uid.len(), 32 | 36) && !uid.bytes().any(|b| b.is_ascii_uppercase() || b == b'_'));
        }
        if let Identity::PodContainer { container_id, .. } = &id {
            let conmon = format!("crio-conmon-{container_id}");
            assert!(!path.to_ascii_lowercase().split('/').any(|c| c.starts_with(&conmon)), "{path:?}");
        }
    }

    #[test]
    fn never_panics_on_garbage_or_mutations() {
        let mut tokens: Vec<&str> = "/ // - _ . pod kubepods .slice .scope .service burstable besteffort crio- \
            crio-conmon- cri-containerd- docker docker- kubelet- a F 0 é 🦀 \0 \u{feff}"
            .split(' ')
            .collect();
        tokens.extend([UID, STATIC_UID, ID, " "]);
        let sd = systemd_pod_dir("kubepods", "kubepods-burstable");
        let seeds = [
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("{sd}/crio-{ID}.scope"),
            format!("{sd}/crio-conmon-{ID}.scope"),
            format!("/system.slice/docker-{ID}.scope"),
            "/user.slice/user-1000.slice/session-3.scope".to_string(),
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..rng.below(12) {
                s.push_str(tokens[rng.below(tokens.len())]);
            }
            check(&s);

            // Mutate a valid path: splice a token in at a random char boundary and maybe truncate.
            let mut m: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
            let at = rng.below(m.len() + 1);
            match rng.below(3) {
                0 => m.splice(at..at, tokens[rng.below(tokens.len())].chars()).for_each(drop),
                1 if at < m.len() => drop(m.remove(at)),
                _ => m.truncate(at),
            }
            let bytes: String = m.into_iter().collect();
            check(&bytes);
        }
    }
}
