//! Pod metadata of this node from the Kubernetes API server: a watch of the pods with
//! `spec.nodeName=<node>` (re-listing on 410 Gone, with bookmarks and backoff, as kube's watcher
//! does), cached by pod UID for the store to label series with namespace, pod, container and model.
//! Without the API server the agent keeps attributing by UID.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use crate::{
    backoff::Jitter,
    identity::{
        Runtime,
        model::{Model, ModelConfig, Owner, PodFacts, model_of},
    },
    telemetry::WatchErrorReason,
};

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
    /// The longest wait between attempts when the API server refuses or fails the watch.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    pub model: ModelConfig,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            watch: WatchMode::Auto,
            node_name: String::new(),
            kubeconfig: None,
            retry_max: WatchRetry::default().max,
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

    pub fn retry(&self) -> WatchRetry {
        WatchRetry { max: self.retry_max, ..WatchRetry::default() }
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
    /// Container id (without the `containerd://` scheme) → what its status says.
    pub containers: HashMap<String, PodContainerStatus>,
    pub model: Option<Model>,
    /// The pod's `Ready` condition; `None` before the kubelet has reported it.
    pub ready: Option<bool>,
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
            .filter_map(|c| {
                let (scheme, id) = split_runtime_scheme(c.container_id.as_deref()?)?;
                Some((
                    id.to_owned(),
                    PodContainerStatus { name: c.name.clone(), runtime: Runtime::from_scheme(scheme) },
                ))
            })
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
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status == "True"),
        })
    }

    /// The UID the kubelet names this pod's cgroups after: a static pod's mirror carries it in an annotation.
    fn cgroup_uid(pod: &Pod) -> Option<String> {
        pod.metadata.annotations.as_ref()?.get(MIRROR_ANNOTATION).filter(|v| !v.is_empty()).cloned()
    }
}

/// What a pod's status says of one of its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainerStatus {
    pub name: String,
    /// The runtime its id's scheme names.
    pub runtime: Runtime,
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → (scheme, `<id>`).
fn split_runtime_scheme(container_id: &str) -> Option<(&str, &str)> {
    let (scheme, id) = container_id.split_once("://")?;
    (!id.is_empty()).then_some((scheme, id))
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

impl PodLookup {
    /// The pod's metadata, when the API server has it.
    pub fn known(self) -> Option<Arc<PodMeta>> {
        match self {
            PodLookup::Known(meta) => Some(meta),
            PodLookup::Deleted | PodLookup::Unknown => None,
        }
    }
}

impl PodCache {
    /// A cache that pings `changed` (without waiting; pings coalesce) after every change.
    pub fn notifying(changed: crossbeam_channel::Sender<()>) -> Self {
        PodCache { changed: Some(changed), ..PodCache::default() }
    }

    /// Pods of this node the cache knows (a static pod once, though it is keyed twice).
    pub fn pod_count(&self) -> usize {
        self.published.load().pods.iter().filter(|(key, meta)| **key == meta.uid).count()
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

/// The User-Agent the agent sends, so an operator can pick it out in the API server's audit log.
pub fn user_agent(node: &str) -> String {
    format!("modelmeter/{} ({node})", env!("CARGO_PKG_VERSION"))
}

/// The client configuration from `config.kubeconfig`, else in-cluster/`KUBECONFIG`/`~/.kube/config`,
/// with the agent's User-Agent.
pub async fn client_config(config: &KubernetesConfig) -> Result<kube::Config, KubernetesError> {
    let mut client_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| KubernetesError::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubernetesError::Kubeconfig { path: path.clone(), source })?
        }
        None => kube::Config::infer().await.map_err(KubernetesError::Infer)?,
    };
    // A host name that is not a valid header value (a node name always is) goes without one.
    if let Ok(agent) = http::HeaderValue::from_str(&user_agent(&config.resolved_node_name())) {
        client_config.headers.push((http::header::USER_AGENT, agent));
    }
    Ok(client_config)
}

pub async fn client(config: &KubernetesConfig) -> Result<kube::Client, KubernetesError> {
    kube::Client::try_from(client_config(config).await?).map_err(KubernetesError::Client)
}

/// How the pod watch is doing, for `/metrics` and `/readyz`. The watch task is the only writer.
#[derive(Debug)]
pub struct WatchHealth {
    state: Mutex<WatchState>,
}

#[derive(Debug)]
struct WatchState {
    up: bool,
    synced_once: bool,
    pods: usize,
    errors: [u64; WatchErrorReason::COUNT],
    /// When the cache was last known to match the API server (the agent's start before that).
    last_in_sync: Instant,
    last_error: Option<(WatchErrorReason, String)>,
}

/// A copy of the watch's health.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchStatus {
    /// Listed and watching: the pod cache follows the API server.
    pub up: bool,
    /// The cache was filled from the API server at least once.
    pub synced_once: bool,
    /// Pods of this node the cache knows.
    pub pods: u64,
    /// Failures by reason, every reason listed.
    pub errors: Vec<(WatchErrorReason, u64)>,
    /// 0 while the watch is up; else how long since the cache was last known to match the API
    /// server (since the agent started, when it never was).
    pub last_sync_age: Duration,
    /// The latest failure, while the watch is down.
    pub last_error: Option<(WatchErrorReason, String)>,
}

impl Default for WatchHealth {
    fn default() -> Self {
        WatchHealth {
            state: Mutex::new(WatchState {
                up: false,
                synced_once: false,
                pods: 0,
                errors: [0; WatchErrorReason::COUNT],
                last_in_sync: Instant::now(),
                last_error: None,
            }),
        }
    }
}

impl WatchHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The watch listed this node's pods; returns whether it was the first time.
    fn synced(&self, pods: usize) -> bool {
        let mut state = self.lock();
        let first = !state.synced_once;
        (state.up, state.synced_once, state.pods, state.last_error) = (true, true, pods, None);
        first
    }

    fn pods_changed(&self, pods: usize) {
        self.lock().pods = pods;
    }

    fn failed(&self, reason: WatchErrorReason, error: String) {
        let mut state = self.lock();
        if state.up {
            state.last_in_sync = Instant::now();
        }
        state.up = false;
        state.errors[reason as usize] += 1;
        state.last_error = Some((reason, error));
    }

    pub fn status(&self) -> WatchStatus {
        let state = self.lock();
        WatchStatus {
            up: state.up,
            synced_once: state.synced_once,
            pods: state.pods as u64,
            errors: WatchErrorReason::ALL.iter().map(|r| (*r, state.errors[*r as usize])).collect(),
            last_sync_age: if state.up { Duration::ZERO } else { state.last_in_sync.elapsed() },
            last_error: state.last_error.clone(),
        }
    }
}

/// How the pod watch retries: capped exponential backoff with equal jitter, so a server that
/// keeps refusing is asked at most about once per half cap, and a thousand agents spread out.
#[derive(Debug, Clone, Copy)]
pub struct WatchRetry {
    pub base: Duration,
    pub max: Duration,
    /// While the API server does not answer at all, it is polled (`GET /version`) this often, so
    /// that the watch comes back as soon as the server does, whatever the backoff has grown to.
    pub poll: Duration,
}

impl Default for WatchRetry {
    fn default() -> Self {
        WatchRetry { base: Duration::from_millis(500), max: Duration::from_secs(30), poll: Duration::from_secs(1) }
    }
}

/// What kind of failure a watcher error is.
fn classify(error: &watcher::Error) -> WatchErrorReason {
    let status_reason = |code: u16| match code {
        401 => WatchErrorReason::Unauthorized,
        403 => WatchErrorReason::Forbidden,
        410 => WatchErrorReason::Expired,
        429 => WatchErrorReason::Throttled,
        500..=599 => WatchErrorReason::ServerError,
        _ => WatchErrorReason::Other,
    };
    let client_reason = |error: &kube::Error| match error {
        kube::Error::Api(status) => status_reason(status.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) => WatchErrorReason::Unreachable,
        _ => WatchErrorReason::Other,
    };
    match error {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            client_reason(e)
        }
        watcher::Error::WatchError(status) => status_reason(status.code),
        watcher::Error::NoResourceVersion => WatchErrorReason::Other,
    }
}

/// Says once per outage, per kind of failure, what is wrong and how to fix it; the retries in
/// between are quiet (debug).
fn report(reason: WatchErrorReason, error: &watcher::Error, retry: &WatchRetry) {
    let retry_max = humantime::format_duration(retry.max).to_string();
    match reason {
        WatchErrorReason::Forbidden | WatchErrorReason::Unauthorized => tracing::warn!(
            error = %error,
            retry_max = %retry_max,
            "The Kubernetes API server refuses to list and watch pods for this agent: series carry pod UIDs \
             only, without names or models. Apply the ClusterRole `modelmeter` from daemonset/base (pods: get, \
             list, watch) and its ClusterRoleBinding to the agent's service account; the agent retries on its \
             own (401: check the service account token)"
        ),
        WatchErrorReason::Unreachable => tracing::warn!(
            error = %error,
            "Kubernetes API unreachable: attributing by pod UID until the pod watch succeeds"
        ),
        // The API server's history moved on (compaction): a re-list is the normal answer.
        WatchErrorReason::Expired => tracing::debug!(error = %error, "Pod watch expired; listing again"),
        _ => tracing::warn!(error = %error, "Kubernetes pod watch failed: attributing by pod UID until it succeeds"),
    }
}

/// Whether the API server answers HTTP at all (any status counts).
async fn answers(client: &kube::Client) -> bool {
    let probe = tokio::time::timeout(Duration::from_secs(2), client.apiserver_version()).await;
    matches!(probe, Ok(Ok(_) | Err(kube::Error::Api(_))))
}

/// Watches this node's pods into `cache` until the task is dropped. Every failure ends the
/// watcher; after a backoff a new one lists again, so pods deleted meanwhile go too. The backoff
/// starts over when the watch proves to work (an event after the list, or a watch that stayed up
/// a whole cap), or when a server that did not answer starts to.
pub async fn watch_pods(
    client: kube::Client,
    node: String,
    cache: Arc<PodCache>,
    models: ModelConfig,
    health: Arc<WatchHealth>,
    retry: WatchRetry,
) {
    // Each change publishes a copy of the cache: a node's pods (≤ a few hundred, their metadata
    // behind `Arc`) and the remembered deletions (≤ 4096 UIDs), at a few pod events a second.
    let api: kube::Api<Pod> = kube::Api::all(client.clone());
    let selector = format!("spec.nodeName={node}");
    let config = watcher::Config::default().fields(&selector);
    let mut jitter = Jitter::seeded();
    let mut attempt = 0u32;
    let mut reported: HashSet<WatchErrorReason> = HashSet::new();
    loop {
        let mut events = watcher(api.clone(), config.clone()).boxed();
        let mut relist = None;
        let mut synced_at: Option<Instant> = None;
        let error = loop {
            let Some(event) = events.next().await else { break None };
            let event = match event {
                Ok(event) => event,
                Err(e) => break Some(e),
            };
            let (listed, changed) = match &event {
                watcher::Event::InitDone => (true, false),
                watcher::Event::Apply(_) | watcher::Event::Delete(_) => (false, true),
                watcher::Event::Init | watcher::Event::InitApply(_) => (false, false),
            };
            cache.apply(event, &mut relist, &models);
            if listed {
                synced_at = Some(Instant::now());
                let pods = cache.pod_count();
                if health.synced(pods) {
                    tracing::info!(node = %node, pods, "Watching this node's pods");
                } else if !reported.is_empty() {
                    tracing::info!(node = %node, pods, "Pod watch is back");
                }
                reported.clear();
            } else if changed {
                health.pods_changed(cache.pod_count());
                attempt = 0;
            }
        };
        if synced_at.is_some_and(|at| at.elapsed() >= retry.max) {
            attempt = 0;
        }
        let reason = error.as_ref().map_or(WatchErrorReason::Other, classify);
        let message = error.as_ref().map_or_else(|| "the watch stream ended".to_owned(), ToString::to_string);
        health.failed(reason, message);
        match &error {
            Some(error) if reported.insert(reason) => report(reason, error, &retry),
            _ => tracing::debug!(reason = reason.label(), error = ?error, attempt, "Pod watch failed, retrying"),
        }
        let wait = jitter.equal_backoff(attempt, retry.base, retry.max);
        attempt = attempt.saturating_add(1);
        if reason != WatchErrorReason::Unreachable {
            tokio::time::sleep(wait).await;
            continue;
        }
        // The server did not answer: poll it, and list as soon as it does.
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            let nap = jitter.around(retry.poll).min(deadline - tokio::time::Instant::now());
            tokio::time::sleep(nap).await;
            if answers(&client).await {
                attempt = 0;
                break;
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
        let status = PodContainerStatus { name: "server".into(), runtime: Runtime::Containerd };
        assert_eq!(meta.containers.get("abc123"), Some(&status), "the runtime from the id's scheme");
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
    fn watch_failures_are_classified_by_status() {
        let api = |code: u16| {
            let status = kube::core::Status { code, ..Default::default() };
            watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
        };
        assert_eq!(classify(&api(403)), WatchErrorReason::Forbidden);
        assert_eq!(classify(&api(401)), WatchErrorReason::Unauthorized);
        assert_eq!(classify(&api(429)), WatchErrorReason::Throttled);
        assert_eq!(classify(&api(503)), WatchErrorReason::ServerError);
        assert_eq!(classify(&api(404)), WatchErrorReason::Other);
        let gone = kube::core::Status { code: 410, ..Default::default() };
        assert_eq!(classify(&watcher::Error::WatchError(Box::new(gone))), WatchErrorReason::Expired);
        assert_eq!(classify(&watcher::Error::NoResourceVersion), WatchErrorReason::Other);
    }

    #[test]
    fn watch_health_reports_up_down_and_staleness() {
        let health = WatchHealth::default();
        let status = health.status();
        assert!(!status.up && !status.synced_once && status.last_error.is_none());
        health.failed(WatchErrorReason::Forbidden, "403".into());
        health.failed(WatchErrorReason::Forbidden, "403".into());
        let status = health.status();
        assert_eq!(
            status.errors.iter().find(|(r, _)| *r == WatchErrorReason::Forbidden),
            Some(&(WatchErrorReason::Forbidden, 2))
        );
        assert_eq!(status.errors.len(), WatchErrorReason::COUNT, "every reason is listed");
        health.synced(3);
        let status = health.status();
        assert!(status.up && status.synced_once && status.last_error.is_none());
        assert_eq!((status.pods, status.last_sync_age), (3, Duration::ZERO));
        health.failed(WatchErrorReason::Unreachable, "refused".into());
        std::thread::sleep(Duration::from_millis(20));
        let status = health.status();
        assert!(!status.up && status.synced_once);
        assert!(status.last_sync_age >= Duration::from_millis(20), "counted from when it went down");
    }

    #[test]
    fn runtime_schemes_are_stripped() {
        assert_eq!(split_runtime_scheme("cri-o://abc"), Some(("cri-o", "abc")));
        assert_eq!(split_runtime_scheme("docker://"), None);
        assert_eq!(split_runtime_scheme("abc"), None);
    }
}
