//! End to end, as root: the agent watches a test Kubernetes API server (the real list/watch
//! protocol) for its node's pods, and labels the series of real workloads in those pods' cgroups
//! with namespace, pod, container and model — one pod per model identity rule.

use std::time::Duration;

use e2e::{
    Agent, CgroupGuard, ChildGuard, Metrics,
    apiserver::{FakeApiServer, Request, TestPod, kubeconfig_for, query_params},
    hex_id, pod_uid, require_root, systemd_container_path, wait_for,
};

const CPU_TIME: &str = "container_cpu_time_seconds_total";

/// A pod of the test: its cgroup with a sleeping process, and its API object.
struct PodUnderTest {
    uid: String,
    container_id: String,
    _workload: ChildGuard,
    _cgroup: CgroupGuard,
}

impl PodUnderTest {
    fn new(seed: u64) -> PodUnderTest {
        let uid = pod_uid(seed);
        let container_id = hex_id(seed * 7 + 1, 64);
        let scope = format!("cri-containerd-{container_id}.scope");
        let cgroup = CgroupGuard::create(&systemd_container_path("burstable", &uid, &scope));
        let workload = cgroup.spawn_workload(&["sleep"]);
        PodUnderTest { uid, container_id, _workload: workload, _cgroup: cgroup }
    }

    fn labels(&self) -> [(&str, &str); 2] {
        [("pod_uid", self.uid.as_str()), ("container_id", self.container_id.as_str())]
    }

    fn api<'a>(&'a self, name: &'a str, node: &'a str) -> TestPod<'a> {
        TestPod { uid: &self.uid, namespace: "ml", name, node, container_id: &self.container_id, ..Default::default() }
    }
}

/// The identity labels of a pod's CPU series, or `None` while it has none.
fn names(metrics: &Metrics, pod: &PodUnderTest) -> Option<[String; 5]> {
    let sample = metrics.select(CPU_TIME, &pod.labels()).next()?;
    let get = |k: &str| sample.labels.get(k).cloned().unwrap_or_default();
    Some([get("namespace"), get("pod"), get("container"), get("model"), get("model_version")])
}

fn strings(values: [&str; 5]) -> [String; 5] {
    values.map(str::to_owned)
}

#[test]
fn series_carry_pod_and_model_names_from_the_api_server() {
    require_root();
    let by_annotation = PodUnderTest::new(101);
    let by_kserve = PodUnderTest::new(102);
    let by_seldon = PodUnderTest::new(103);
    let by_app_labels = PodUnderTest::new(104);
    let by_owner = PodUnderTest::new(105);
    let other_node = PodUnderTest::new(106);

    let mut api = FakeApiServer::start();
    let annotations = [("modelmeter.io/model", "resnet50"), ("modelmeter.io/model-version", "3")];
    api.add_pod(TestPod { annotations: &annotations, ..by_annotation.api("resnet-0", "node-a") }.to_json());
    let kserve = [("serving.kserve.io/inferenceservice", "sklearn-iris"), ("component", "predictor")];
    api.add_pod(TestPod { labels: &kserve, ..by_kserve.api("sklearn-iris-predictor-abc", "node-a") }.to_json());
    let seldon = [("seldon-deployment-id", "income-classifier")];
    api.add_pod(TestPod { labels: &seldon, ..by_seldon.api("income-default-0", "node-a") }.to_json());
    let app = [("app.kubernetes.io/name", "bert"), ("app.kubernetes.io/version", "1.2")];
    api.add_pod(TestPod { labels: &app, ..by_app_labels.api("bert-0", "node-a") }.to_json());
    let hash = [("pod-template-hash", "7d9f8c6b5")];
    api.add_pod(
        TestPod {
            labels: &hash,
            owner: Some(("ReplicaSet", "llama-7d9f8c6b5")),
            ..by_owner.api("llama-7d9f8c6b5-x2x", "node-a")
        }
        .to_json(),
    );
    let elsewhere = [("modelmeter.io/model", "not-here")];
    api.add_pod(TestPod { annotations: &elsewhere, ..other_node.api("remote-0", "node-b") }.to_json());

    let (agent, _kubeconfig) = agent_for(api.port, "30s");

    // One pod per identity rule, named from the API server.
    let expect = [
        (&by_annotation, strings(["ml", "resnet-0", "server", "resnet50", "3"])),
        (&by_kserve, strings(["ml", "sklearn-iris-predictor-abc", "server", "sklearn-iris", ""])),
        (&by_seldon, strings(["ml", "income-default-0", "server", "income-classifier", ""])),
        (&by_app_labels, strings(["ml", "bert-0", "server", "bert", "1.2"])),
        (&by_owner, strings(["ml", "llama-7d9f8c6b5-x2x", "server", "llama", ""])),
    ];
    let metrics = wait_for(Duration::from_secs(30), "pod and model names on every pod's series", || {
        let m = agent.metrics();
        expect.iter().all(|(pod, want)| names(&m, pod).as_ref() == Some(want)).then_some(m)
    });
    for (pod, want) in &expect {
        assert_eq!(names(&metrics, pod).as_ref(), Some(want));
        // Every family of the pod carries the same names.
        let working_set =
            metrics.select("container_memory_working_set_bytes", &pod.labels()).next().expect("working set");
        assert_eq!(working_set.labels["model"], want[3]);
    }
    // Request tracing follows the pods whose model someone declared: four of the five. The
    // owner-workload fallback names a model for display only.
    wait_for(Duration::from_secs(10), "request tracing to watch the four declared-model pods", || {
        (agent.metrics().get("modelmeter_http_watched_cgroups", &[]) == Some(4.0)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.metrics().get("modelmeter_http_watched_cgroups", &[]), Some(4.0), "the owner-named pod is traced");
    // The owner-named pod gains an annotation: the pod watch pings the collector, which traces it
    // without waiting for the next collection.
    api.modify_pod(&by_owner.uid, |pod| {
        pod["metadata"]["annotations"] = serde_json::json!({"modelmeter.io/model": "llama"});
    });
    wait_for(Duration::from_secs(5), "request tracing to follow the newly annotated pod", || {
        (agent.metrics().get("modelmeter_http_watched_cgroups", &[]) == Some(5.0)).then_some(())
    });
    // The other node's pod was never sent to this agent: attributed by UID only.
    assert_eq!(names(&metrics, &other_node), Some(strings(["", "", "", "", ""])));

    // The agent asked only for its node's pods, on every list and watch.
    let requests = api.requests();
    assert!(requests.iter().any(|r| query_params(r).contains_key("watch")), "no watch request: {requests:?}");
    for request in &requests {
        assert_eq!(
            query_params(request).get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node-a"),
            "request without this node's field selector: {request}"
        );
    }

    // MODIFIED: a label change reaches the series.
    api.modify_pod(&by_app_labels.uid, |pod| pod["metadata"]["labels"]["app.kubernetes.io/version"] = "1.3".into());
    wait_for(Duration::from_secs(10), "the modified model version", || {
        (names(&agent.metrics(), &by_app_labels)?[4] == "1.3").then_some(())
    });

    // DELETED: the pod's series go within one interval (1 s here), though its cgroup lingers.
    api.delete_pod(&by_owner.uid);
    wait_for(Duration::from_secs(3), "the deleted pod's series to go", || {
        names(&agent.metrics(), &by_owner).is_none().then_some(())
    });

    // The API server restarts with its history gone: the agent re-lists and sees a pod added meanwhile.
    api.stop();
    let late = PodUnderTest::new(107);
    let late_annotations = [("modelmeter.io/model", "late-model")];
    api.add_pod(TestPod { annotations: &late_annotations, ..late.api("late-0", "node-a") }.to_json());
    api.compact();
    let lists_before = api.requests().len();
    api.restart();
    wait_for(Duration::from_secs(60), "the pod added while the API server was down", || {
        (names(&agent.metrics(), &late)?[3] == "late-model").then_some(())
    });
    let relisted = api.requests()[lists_before..].iter().any(|r| !query_params(r).contains_key("watch"));
    assert!(relisted, "no list request after the restart: {:?}", &api.requests()[lists_before..]);
    assert!(names(&agent.metrics(), &by_annotation).is_some_and(|n| n[3] == "resnet50"));
}

#[test]
fn without_an_api_server_the_agent_attributes_by_uid_warns_once_and_fills_names_in_later() {
    require_root();
    let pod = PodUnderTest::new(201);
    // A port nothing listens on.
    let port = e2e::free_port();
    let (agent, _kubeconfig) = agent_for(port, "30s");
    let found = wait_for(Duration::from_secs(20), "the pod's series by UID", || names(&agent.metrics(), &pod));
    assert_eq!(found, strings(["", "", "", "", ""]));
    // Several retries pass; the warning is said once.
    std::thread::sleep(Duration::from_secs(4));
    let warnings = |log: &str| log.lines().filter(|l| l.contains("Kubernetes API unreachable")).count();
    assert_eq!(warnings(&agent.log()), 1, "expected exactly one warning:\n{}", agent.log());
    // The API server comes up: names fill in.
    let api = FakeApiServer::start_on(port);
    let annotations = [("modelmeter.io/model", "arrived")];
    api.add_pod(TestPod { annotations: &annotations, ..pod.api("arrived-0", "node-a") }.to_json());
    wait_for(Duration::from_secs(60), "names once the API server answers", || {
        (names(&agent.metrics(), &pod)? == strings(["ml", "arrived-0", "server", "arrived", ""])).then_some(())
    });
    let (_, log) = agent.stop();
    assert_eq!(warnings(&log), 1, "still one warning:\n{log}");
    assert!(log.contains("Watching this node's pods"), "the agent should say the watch is back:\n{log}");
}

/// An agent watching the API server on `api_port` as node-a, retrying at most every `retry_max`
/// (30s is the default).
fn agent_for(api_port: u16, retry_max: &str) -> (Agent, tempfile::NamedTempFile) {
    let kubeconfig = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(kubeconfig.path(), kubeconfig_for(api_port)).expect("writing kubeconfig");
    let agent = Agent::start(&format!(
        "interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: always\n  node_name: node-a\n  \
         retry_max: {retry_max}\n  kubeconfig: {}\n",
        kubeconfig.path().display()
    ));
    (agent, kubeconfig)
}

/// `/readyz`'s status and body.
fn readyz(agent: &Agent) -> (u16, String) {
    e2e::http_get_any(&agent.url("/readyz")).expect("GET /readyz")
}

/// Seconds between consecutive lists of pods (not watches) in `requests`.
fn list_gaps(requests: &[Request]) -> Vec<f64> {
    let lists: Vec<&Request> = requests.iter().filter(|r| r.is_pods() && !r.is_watch()).collect();
    lists.windows(2).map(|pair| (pair[1].at - pair[0].at).as_secs_f64()).collect()
}

#[test]
fn a_forbidden_watch_warns_once_backs_off_to_its_cap_and_names_arrive_once_access_is_granted() {
    require_root();
    let pod = PodUnderTest::new(108);
    let api = FakeApiServer::start();
    api.set_forbidden(true);
    let annotations = [("modelmeter.io/model", "granted")];
    api.add_pod(TestPod { annotations: &annotations, ..pod.api("granted-0", "node-a") }.to_json());
    let (agent, _kubeconfig) = agent_for(api.port, "4s");

    // 403 phase: the pod's series exist by UID, the watch is reported down and readiness waits.
    wait_for(Duration::from_secs(20), "the pod's series by UID", || names(&agent.metrics(), &pod));
    std::thread::sleep(Duration::from_secs(14));
    let metrics = agent.metrics();
    assert_eq!(metrics.get("modelmeter_kubernetes_watch_up", &[]), Some(0.0));
    assert_eq!(metrics.get("modelmeter_kubernetes_pods", &[]), Some(0.0));
    let forbidden = metrics.get("modelmeter_kubernetes_watch_errors_total", &[("reason", "forbidden")]).unwrap_or(0.0);
    assert!(forbidden >= 4.0, "forbidden errors counted: {forbidden}");
    assert!(metrics.get("modelmeter_kubernetes_last_sync_age_seconds", &[]).is_some_and(|age| age >= 14.0));
    assert_eq!(names(&metrics, &pod), Some(strings(["", "", "", "", ""])));
    let (status, body) = readyz(&agent);
    assert_eq!(status, 503, "not ready before the first sync:\n{body}");
    assert!(body.contains("pod watch: not synced yet (forbidden"), "{body}");

    // Backoff: from about half a second up to the 4 s cap (equal jitter: 2–4 s there), not every second.
    let gaps = list_gaps(&api.request_log());
    eprintln!("seconds between lists while forbidden: {gaps:.2?}");
    assert!(gaps.len() >= 4, "lists: {gaps:?}");
    assert!(gaps[0] < 1.2, "the first retry comes soon: {gaps:?}");
    assert!(gaps.iter().all(|gap| *gap < 4.5), "no wait beyond the cap: {gaps:?}");
    let last = &gaps[gaps.len() - 2..];
    assert!(last.iter().all(|gap| *gap >= 1.9), "the backoff reached its cap: {gaps:?}");
    assert!(gaps.len() <= 9, "at most 10 lists in 14 s (every ~1.2 s would be 12): {gaps:?}");

    // One warning, naming the fix; the client library says nothing at warn or above.
    let log = agent.log();
    let refusals = log.lines().filter(|l| l.contains("refuses to list and watch pods")).count();
    assert_eq!(refusals, 1, "one warning for the refusal:\n{log}");
    assert!(log.contains("ClusterRole `modelmeter`"), "the warning names the fix:\n{log}");
    let library =
        log.lines().filter(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("kube_")).collect::<Vec<_>>();
    assert!(library.is_empty(), "the client library's own warnings: {library:?}");
    assert!(!log.contains("Watching this node's pods"), "the watch never worked, so it must not say so:\n{log}");

    // Access granted: names within one capped retry and a collection.
    api.set_forbidden(false);
    let granted = std::time::Instant::now();
    wait_for(Duration::from_secs(8), "names once access is granted", || {
        (names(&agent.metrics(), &pod)? == strings(["ml", "granted-0", "server", "granted", ""])).then_some(())
    });
    eprintln!("names {:.1}s after access was granted", granted.elapsed().as_secs_f64());
    let metrics = agent.metrics();
    assert_eq!(metrics.get("modelmeter_kubernetes_watch_up", &[]), Some(1.0));
    assert_eq!(metrics.get("modelmeter_kubernetes_pods", &[]), Some(1.0));
    assert_eq!(metrics.get("modelmeter_kubernetes_last_sync_age_seconds", &[]), Some(0.0));
    let (status, body) = readyz(&agent);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pod watch: up (1 pods)"), "{body}");

    // Every request carried the agent's User-Agent with its version and node.
    let version = metrics.select("modelmeter_build_info", &[]).next().expect("build info").labels["version"].clone();
    let want = format!("modelmeter/{version} (node-a)");
    for request in api.request_log() {
        assert_eq!(request.user_agent.as_deref(), Some(want.as_str()), "{} {}", request.method, request.target);
    }
    let (_, log) = agent.stop();
    assert!(log.contains("Watching this node's pods"), "{log}");
}

#[test]
fn after_an_api_server_restart_the_agent_lists_again_within_two_seconds() {
    require_root();
    let pod = PodUnderTest::new(109);
    let mut api = FakeApiServer::start();
    let annotations = [("modelmeter.io/model", "before")];
    api.add_pod(TestPod { annotations: &annotations, ..pod.api("restart-0", "node-a") }.to_json());
    let (agent, _kubeconfig) = agent_for(api.port, "30s");
    wait_for(Duration::from_secs(20), "names from the API server", || {
        (names(&agent.metrics(), &pod)?[3] == "before").then_some(())
    });
    assert_eq!(readyz(&agent).0, 200);

    // A 20 s outage: long enough for the backoff to grow well past 2 s.
    api.stop();
    std::thread::sleep(Duration::from_secs(20));
    let metrics = agent.metrics();
    assert_eq!(metrics.get("modelmeter_kubernetes_watch_up", &[]), Some(0.0));
    let unreachable =
        metrics.get("modelmeter_kubernetes_watch_errors_total", &[("reason", "unreachable")]).unwrap_or(0.0);
    assert!(unreachable >= 1.0, "unreachable errors counted: {unreachable}");
    assert!(metrics.get("modelmeter_kubernetes_last_sync_age_seconds", &[]).is_some_and(|age| age >= 15.0));
    // Still ready: it serves every series with the names it last saw.
    let (status, body) = readyz(&agent);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pod watch: down for"), "{body}");
    assert_eq!(names(&metrics, &pod).map(|n| n[3].clone()).as_deref(), Some("before"));

    // Changed while the server was down; seen after its restart by a new list.
    api.modify_pod(&pod.uid, |p| p["metadata"]["annotations"]["modelmeter.io/model"] = "after".into());
    let before = api.request_log().len();
    api.restart();
    let answering = std::time::Instant::now();
    wait_for(Duration::from_secs(10), "the change made during the outage", || {
        (names(&agent.metrics(), &pod)?[3] == "after").then_some(())
    });
    let relist = api.request_log()[before..]
        .iter()
        .find(|r| r.is_pods() && !r.is_watch())
        .map(|r| r.at.saturating_duration_since(answering))
        .expect("a list after the restart");
    eprintln!("re-listed {:.2}s after the API server answered again", relist.as_secs_f64());
    assert!(relist <= Duration::from_secs(2), "re-listed {relist:?} after the server answered");
    assert_eq!(agent.metrics().get("modelmeter_kubernetes_watch_up", &[]), Some(1.0));
    let (_, log) = agent.stop();
    assert_eq!(log.lines().filter(|l| l.contains("Kubernetes API unreachable")).count(), 1, "{log}");
    assert!(log.contains("Pod watch is back"), "{log}");
}

#[test]
fn doctor_says_whether_the_api_server_answers_and_lets_the_agent_watch_pods() {
    let api = FakeApiServer::start();
    let kubeconfig = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(kubeconfig.path(), api.kubeconfig()).expect("writing kubeconfig");
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        config.path(),
        format!("kubernetes:\n  watch: always\n  node_name: node-a\n  kubeconfig: {}\n", kubeconfig.path().display()),
    )
    .expect("writing config");
    let doctor = || {
        let output = std::process::Command::new(e2e::modelmeter_bin())
            .args(["doctor", "--json", "--config"])
            .arg(config.path())
            .output()
            .expect("running doctor");
        let checks: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("doctor --json is JSON");
        let find = |name: &str| {
            let check = checks.iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("no `{name}`: {checks:?}"));
            (check["status"].as_str().unwrap_or_default().to_owned(), check["detail"].to_string())
        };
        (find("kubernetes API"), find("kubernetes RBAC"))
    };
    let ((api_status, api_detail), (rbac_status, _)) = doctor();
    assert_eq!(api_status, "ok", "{api_detail}");
    assert!(api_detail.contains("v1.33.0"), "{api_detail}");
    assert_eq!(rbac_status, "ok");
    api.set_forbidden(true);
    let (_, (rbac_status, rbac_detail)) = doctor();
    // Pods are then named by UID only: the agent works, degraded.
    assert_eq!(rbac_status, "degraded");
    assert!(rbac_detail.contains("may not list, watch pods") && rbac_detail.contains("ClusterRole"), "{rbac_detail}");
    // The access reviews went to the API server as the real kind.
    let reviews = api
        .request_log()
        .into_iter()
        .filter(|r| {
            r.method == "POST" && r.target.split('?').next().unwrap_or("").ends_with("/selfsubjectaccessreviews")
        })
        .count();
    assert_eq!(reviews, 4, "two verbs, twice");
}
