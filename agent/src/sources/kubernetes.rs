//! Pod metadata of this node from the Kubernetes API server: a watch of the pods with
//! `spec.nodeName=<node>` (re-listing on 410 Gone, with bookmarks and backoff, as kube's watcher
//! does), cached by pod UID for the store to label series with namespace, pod, container and model.
//! Without the API server the agent keeps attributing by UID.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};

use crate::identity::model::{Model, ModelConfig, Owner, PodFacts, model_of};

/// Annotation the kubelet puts on a static pod's mirror: its value is the UID the kubelet (and so
/// the cgroup name) uses, which differs from the mirror pod's own UID.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// How many deleted pod UIDs are remembered, so their series stay dropped while cgroups linger.
const DELETED_REMEMBERED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// Watch when running in a cluster (`KUBERNETES_SERVICE_HOST` set) or a kubeconfig is given.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// `auto`, `always` or `never`. Default `auto`.
    pub watch: WatchMode,
    /// This node's name, for the `spec.nodeName` field selector. Empty: the `NODE_NAME`
    /// environment variable (set it from the downward API), else the host name.
    pub node_name: String,
    /// A kubeconfig for running outside the cluster; unset: in-cluster config, else `KUBECONFIG`
    /// or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    pub model: ModelConfig,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            watch: WatchMode::Auto,
            node_name: String::new(),
            kubeconfig: None,
            model: ModelConfig::default(),
        }
    }
}

impl KubernetesConfig {
    pub fn enabled(&self) -> bool {
        match self.watch {
            WatchMode::Always => true,
            WatchMode::Never => false,
            WatchMode::Auto => {
                self.kubeconfig.is_some()
                    || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                    || std::env::var_os("KUBECONFIG").is_some()
            }
        }
    }

    pub fn resolved_node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        if let Ok(name) = std::env::var("NODE_NAME")
            && !name.is_empty()
        {
            return name;
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
    }
}

/// What the agent knows of one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owner: Option<Owner>,
    pub qos_class: Option<String>,
    /// Container id (without the `containerd://` scheme) → container name.
    pub containers: HashMap<String, String>,
    pub model: Option<Model>,
}

impl PodMeta {
    /// From an API pod; `None` without a UID (not a real API object).
    pub fn from_pod(pod: &Pod, models: &ModelConfig) -> Option<PodMeta> {
        let metadata = &pod.metadata;
        let uid = metadata.uid.clone().filter(|u| !u.is_empty())?;
        let labels = metadata.labels.clone().unwrap_or_default();
        let annotations = metadata.annotations.clone().unwrap_or_default();
        let owner = metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| Owner { kind: o.kind.clone(), name: o.name.clone() });
        let model = model_of(PodFacts { labels: &labels, annotations: &annotations, owner: owner.as_ref() }, models);
        let status = pod.status.as_ref();
        let containers = status
            .into_iter()
            .flat_map(|s| {
                let all = [&s.container_statuses, &s.init_container_statuses, &s.ephemeral_container_statuses];
                all.into_iter().flatten().flatten()
            })
            .filter_map(|c| Some((strip_runtime_scheme(c.container_id.as_deref()?)?.to_owned(), c.name.clone())))
            .collect();
        Some(PodMeta {
            uid,
            namespace: metadata.namespace.clone().unwrap_or_default(),
            name: metadata.name.clone().unwrap_or_default(),
            labels,
            annotations,
            owner,
            qos_class: status.and_then(|s| s.qos_class.clone()),
            containers,
            model,
        })
    }

    /// The UID the kubelet names this pod's cgroups after: a static pod's mirror carries it in an annotation.
    fn cgroup_uid(pod: &Pod) -> Option<String> {
        pod.metadata.annotations.as_ref()?.get(MIRROR_ANNOTATION).filter(|v| !v.is_empty()).cloned()
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
fn strip_runtime_scheme(container_id: &str) -> Option<&str> {
    let (_, id) = container_id.split_once("://")?;
    (!id.is_empty()).then_some(id)
}

/// Pods of this node by UID (and by mirror UID for static pods). The watch task is the only
/// writer; readers get the last published view without waiting.
#[derive(Debug, Default)]
pub struct PodCache {
    /// The writer's working copy (only the watch task locks it).
    inner: Mutex<CacheInner>,
    published: ArcSwap<CacheInner>,
    changed: Option<crossbeam_channel::Sender<()>>,
}

#[derive(Debug, Default, Clone)]
struct CacheInner {
    pods: HashMap<String, Arc<PodMeta>>,
    deleted: HashSet<String>,
    deleted_order: VecDeque<String>,
}

impl CacheInner {
    fn insert(&mut self, pod: &Pod, models: &ModelConfig) {
        let Some(meta) = PodMeta::from_pod(pod, models) else { return };
        let meta = Arc::new(meta);
        if let Some(mirror) = PodMeta::cgroup_uid(pod) {
            self.pods.insert(mirror, meta.clone());
        }
        self.pods.insert(meta.uid.clone(), meta);
    }

    fn remember_deleted(&mut self, uid: String) {
        if self.deleted.insert(uid.clone()) {
            self.deleted_order.push_back(uid);
            if self.deleted_order.len() > DELETED_REMEMBERED
                && let Some(oldest) = self.deleted_order.pop_front()
            {
                self.deleted.remove(&oldest);
            }
        }
    }
}

/// What the store learns about a pod UID.
#[derive(Debug, Clone)]
pub enum PodLookup {
    Known(Arc<PodMeta>),
    /// The API server said it was deleted: its series go, even if a cgroup lingers.
    Deleted,
    /// Not (yet) known: attribute by UID.
    Unknown,
}

impl PodCache {
    /// A cache that pings `changed` (without waiting; pings coalesce) after every change.
    pub fn notifying(changed: crossbeam_channel::Sender<()>) -> Self {
        PodCache { changed: Some(changed), ..PodCache::default() }
    }

    pub fn lookup(&self, uid: &str) -> PodLookup {
        let inner = self.published.load();
        match inner.pods.get(uid) {
            Some(meta) => PodLookup::Known(meta.clone()),
            None if inner.deleted.contains(uid) => PodLookup::Deleted,
            None => PodLookup::Unknown,
        }
    }

    /// Applies one watcher event. During a re-list pods are buffered in `relist` and swapped in
    /// whole at the end, so pods deleted while the watch was down disappear too.
    pub fn apply(&self, event: watcher::Event<Pod>, relist: &mut Option<Vec<Pod>>, models: &ModelConfig) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let changed = !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_));
        match event {
            watcher::Event::Init => *relist = Some(Vec::new()),
            watcher::Event::InitApply(pod) => relist.get_or_insert_with(Vec::new).push(pod),
            watcher::Event::InitDone => {
                let pods = relist.take().unwrap_or_default();
                // Keys, not UIDs: a static pod's mirror UID must be remembered as deleted too.
                let old: Vec<String> = inner.pods.keys().cloned().collect();
                inner.pods.clear();
                for pod in &pods {
                    inner.insert(pod, models);
                }
                for uid in old {
                    if !inner.pods.contains_key(&uid) {
                        inner.remember_deleted(uid);
                    }
                }
            }
            watcher::Event::Apply(pod) => inner.insert(&pod, models),
            watcher::Event::Delete(pod) => {
                let uids = [pod.metadata.uid.clone(), PodMeta::cgroup_uid(&pod)];
                for uid in uids.into_iter().flatten() {
                    inner.pods.remove(&uid);
                    inner.remember_deleted(uid);
                }
            }
        }
        if changed {
            self.published.store(Arc::new(inner.clone()));
            if let Some(changed) = &self.changed {
                let _ = changed.try_send(());
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes client configuration (in-cluster or kubeconfig)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("creating the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// Builds a client from `config.kubeconfig`, else in-cluster/`KUBECONFIG`/`~/.kube/config`.
pub async fn client(config: &KubernetesConfig) -> Result<kube::Client, KubernetesError> {
    let client_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| KubernetesError::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubernetesError::Kubeconfig { path: path.clone(), source })?
        }
        None => kube::Config::infer().await.map_err(KubernetesError::Infer)?,
    };
    kube::Client::try_from(client_config).map_err(KubernetesError::Client)
}

/// Watches this node's pods into `cache` until the task is dropped. Warns once when the API
/// server cannot be reached (then retries with backoff), and says when the watch is back.
pub async fn watch_pods(client: kube::Client, node: String, cache: Arc<PodCache>, models: ModelConfig) {
    // Each change publishes a copy of the cache: a node's pods (≤ a few hundred, their metadata
    // behind `Arc`) and the remembered deletions (≤ 4096 UIDs), at a few pod events a second.
    let api: kube::Api<Pod> = kube::Api::all(client);
    let selector = format!("spec.nodeName={node}");
    let mut events = watcher(api, watcher::Config::default().fields(&selector)).default_backoff().boxed();
    let mut relist = None;
    let mut warned = false;
    let mut healthy = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if !healthy {
                    healthy = true;
                    tracing::info!(node = %node, "Watching this node's pods");
                }
                cache.apply(event, &mut relist, &models);
            }
            Err(e) => {
                healthy = false;
                if warned {
                    tracing::debug!(error = %e, "Kubernetes pod watch failed, retrying");
                } else {
                    warned = true;
                    tracing::warn!(
                        error = %e,
                        "Kubernetes API unreachable: attributing by pod UID until the pod watch succeeds"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{ContainerStatus, PodStatus},
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    };

    use super::*;

    fn pod(uid: &str, name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        let map = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                name: Some(name.into()),
                namespace: Some("ml".into()),
                labels: map(labels),
                annotations: map(annotations),
                owner_references: Some(vec![OwnerReference {
                    kind: "ReplicaSet".into(),
                    name: format!("{name}-5d8f"),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            status: Some(PodStatus {
                qos_class: Some("Burstable".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "server".into(),
                    container_id: Some("containerd://abc123".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_meta_carries_names_containers_and_model() {
        let p = pod("u1", "bert-5d8f-x", &[("pod-template-hash", "5d8f"), ("app.kubernetes.io/name", "bert")], &[]);
        let meta = PodMeta::from_pod(&p, &ModelConfig::default()).unwrap();
        assert_eq!((meta.namespace.as_str(), meta.name.as_str()), ("ml", "bert-5d8f-x"));
        assert_eq!(meta.containers.get("abc123").map(String::as_str), Some("server"));
        assert_eq!(meta.qos_class.as_deref(), Some("Burstable"));
        assert_eq!(meta.model.unwrap().name, "bert");
        let mut no_uid = p.clone();
        no_uid.metadata.uid = None;
        assert!(PodMeta::from_pod(&no_uid, &ModelConfig::default()).is_none());
    }

    #[test]
    fn cache_follows_watch_events() {
        let cache = PodCache::default();
        let models = ModelConfig::default();
        let mut relist = None;
        cache.apply(watcher::Event::Init, &mut relist, &models);
        cache.apply(watcher::Event::InitApply(pod("u1", "a", &[], &[])), &mut relist, &models);
        cache.apply(
            watcher::Event::InitApply(pod("u2", "b", &[], &[(MIRROR_ANNOTATION, "hash2")])),
            &mut relist,
            &models,
        );
        assert!(matches!(cache.lookup("u1"), PodLookup::Unknown), "buffered until InitDone");
        cache.apply(watcher::Event::InitDone, &mut relist, &models);
        assert!(matches!(cache.lookup("u1"), PodLookup::Known(_)));
        assert!(matches!(cache.lookup("hash2"), PodLookup::Known(m) if m.name == "b"), "static pod by mirror UID");
        cache.apply(
            watcher::Event::Apply(pod("u1", "a", &[("app.kubernetes.io/name", "m")], &[])),
            &mut relist,
            &models,
        );
        assert!(matches!(cache.lookup("u1"), PodLookup::Known(m) if m.model.as_ref().unwrap().name == "m"));
        cache.apply(watcher::Event::Delete(pod("u1", "a", &[], &[])), &mut relist, &models);
        assert!(matches!(cache.lookup("u1"), PodLookup::Deleted));
        // A re-list without u2 (deleted while the watch was down) forgets it.
        cache.apply(watcher::Event::Init, &mut relist, &models);
        cache.apply(watcher::Event::InitApply(pod("u3", "c", &[], &[])), &mut relist, &models);
        cache.apply(watcher::Event::InitDone, &mut relist, &models);
        assert!(matches!(cache.lookup("u2"), PodLookup::Deleted));
        assert!(matches!(cache.lookup("hash2"), PodLookup::Deleted), "the static pod's mirror UID too");
        assert!(matches!(cache.lookup("u3"), PodLookup::Known(_)));
        assert!(matches!(cache.lookup("never"), PodLookup::Unknown));
    }

    #[test]
    fn runtime_schemes_are_stripped() {
        assert_eq!(strip_runtime_scheme("cri-o://abc"), Some("abc"));
        assert_eq!(strip_runtime_scheme("docker://"), None);
        assert_eq!(strip_runtime_scheme("abc"), None);
    }
}
