//! End to end, as root: the agent watches a test Kubernetes API server (the real list/watch
//! protocol) for its node's pods, and labels the series of real workloads in those pods' cgroups
//! with namespace, pod, container and model — one pod per model identity rule.

use std::time::Duration;

use e2e::{
    Agent, CgroupGuard, ChildGuard, Metrics,
    apiserver::{FakeApiServer, TestPod, kubeconfig_for, query_params},
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

    let kubeconfig = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(kubeconfig.path(), api.kubeconfig()).expect("writing kubeconfig");
    let agent = Agent::start(&format!(
        "interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: always\n  node_name: node-a\n  kubeconfig: {}\n",
        kubeconfig.path().display()
    ));

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
    let kubeconfig = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(kubeconfig.path(), kubeconfig_for(port)).expect("writing kubeconfig");
    let agent = Agent::start(&format!(
        "interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: always\n  node_name: node-a\n  kubeconfig: {}\n",
        kubeconfig.path().display()
    ));
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
