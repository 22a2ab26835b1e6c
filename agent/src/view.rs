//! The snapshot as people and scripts read it: `/api/v1/snapshot` and `modelmeter top` /
//! `snapshot` share these types (schema in `agent/snapshot.schema.json`, version
//! [`SCHEMA_VERSION`]). Rates (CPU cores, requests per second, error ratio, latency quantiles of
//! the last interval) come from the two latest snapshots.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    attributes::{self, Attr, Attributes},
    store::{Histogram, Snapshot},
};

/// Bumped on any change a reader must know of (a field renamed, removed or re-typed).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotView {
    pub schema_version: u32,
    /// RFC 3339.
    pub taken_at: String,
    /// Seconds between the two snapshots the rates come from; `None` before there are two.
    pub interval_seconds: Option<f64>,
    pub node: NodeView,
    /// By model, then version; workloads without a model are under `""`.
    pub models: Vec<ModelView>,
    pub containers: Vec<ContainerView>,
    pub requests: Vec<RequestView>,
    pub gpus: Vec<GpuView>,
    pub agent: AgentView,
    /// The busiest processes outside containers that no model rule names, busiest first: what a
    /// `standalone.rules` entry could name. (Absent from agents before it: empty.)
    #[serde(default)]
    pub processes: Vec<ProcessView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessView {
    pub pid: u32,
    /// The executable's file name.
    pub name: String,
    /// Its arguments joined by spaces, cut at 200 characters.
    pub cmdline: String,
    pub cpu_cores: Option<f64>,
    pub memory_rss_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub cpu_cores: Option<f64>,
    pub memory_working_set_bytes: u64,
    pub requests_per_second: Option<f64>,
    pub gpu_memory_bytes: u64,
}

/// One model (name and version) on this node, with its pods and containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelView {
    pub name: String,
    pub version: String,
    /// Pods serving it here (replicas on this node).
    pub pods: Vec<PodView>,
    /// Workloads serving it on this node: its pods, and containers or processes outside pods.
    #[serde(default)]
    pub replicas: usize,
    /// Pods whose `Ready` condition is true; `None` when no pod's readiness is known (no API).
    #[serde(default)]
    pub ready_replicas: Option<usize>,
    pub cpu_cores: Option<f64>,
    pub memory_working_set_bytes: u64,
    pub oom_kills: u64,
    pub gpu_utilization: Option<f64>,
    pub gpu_memory_bytes: u64,
    pub requests_per_second: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Share of the last interval's requests answered 5xx.
    pub error_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub containers: Vec<String>,
    /// The pod's `Ready` condition; `None` without the Kubernetes API.
    #[serde(default)]
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerView {
    /// Identity labels in their Prometheus spelling.
    pub labels: BTreeMap<String, String>,
    pub cgroup: String,
    pub cpu_seconds: f64,
    pub cpu_cores: Option<f64>,
    pub cpu_throttled_seconds: Option<f64>,
    pub runqueue_delay_p99_seconds: Option<f64>,
    pub memory_working_set_bytes: Option<u64>,
    pub memory_rss_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub oom_kills: u64,
    pub gpu_utilization: Option<f64>,
    pub gpu_memory_bytes: Option<u64>,
    pub gpu_energy_joules: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestView {
    pub labels: BTreeMap<String, String>,
    pub count: u64,
    pub sum_seconds: f64,
    pub p50_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub requests_per_second: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuView {
    pub labels: BTreeMap<String, String>,
    pub up: bool,
    pub utilization: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_watts: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub version: String,
    /// The scheduler probe family; `None` without probes.
    pub probe_family: Option<String>,
    pub probes_attached: usize,
    pub requests_traced: bool,
    pub ring_buffer_drops: u64,
    pub events_dropped: u64,
    pub collection_errors: u64,
    pub sinks: Vec<SinkView>,
    /// `None` without the Kubernetes API.
    pub pod_watch_up: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkView {
    pub name: String,
    pub sent: u64,
    pub retried: u64,
    pub dropped: u64,
    pub queued: u64,
}

fn labels(attributes: &Attributes) -> BTreeMap<String, String> {
    attributes.iter().map(|(a, v)| (a.prometheus().to_owned(), v.clone())).collect()
}

/// The `q` quantile of a bucketed histogram, interpolated linearly inside the bucket (the
/// Prometheus `histogram_quantile` rule); `None` when empty.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, count) in counts.iter().enumerate() {
        if *count > 0 && (seen + count) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            // Above the last bound: the last bound is all that can be said.
            let Some(&upper) = bounds.get(i) else { return bounds.last().copied() };
            let within = (rank - seen as f64) / *count as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        seen += count;
    }
    bounds.last().copied()
}

/// A container's use of every GPU it is on.
#[derive(Debug, Default)]
struct GpuTotals {
    utilization: Option<f64>,
    memory: u64,
    energy: Option<f64>,
}

/// One model's request buckets over the last interval, and how many of them failed.
#[derive(Debug)]
struct Interval {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    failed: u64,
}

fn seconds_between(a: SystemTime, b: SystemTime) -> Option<f64> {
    a.duration_since(b).ok().map(|d| d.as_secs_f64()).filter(|s| *s > 0.0)
}

/// Bucket counts added since `before` (a series that restarted counts from zero).
fn delta(now: &Histogram, before: Option<&Histogram>) -> Vec<u64> {
    match before {
        Some(before) if before.counts.len() == now.counts.len() && before.count <= now.count => {
            now.counts.iter().zip(&before.counts).map(|(n, b)| n.saturating_sub(*b)).collect()
        }
        _ => now.counts.clone(),
    }
}

/// The view of `current`, with rates over the time since `previous`.
pub fn build(current: &Snapshot, previous: Option<&Snapshot>) -> SnapshotView {
    let interval = previous.and_then(|p| seconds_between(current.taken_at, p.taken_at));
    let before_cpu: HashMap<&str, f64> =
        previous.map(|p| p.containers.iter().map(|c| (c.cgroup.as_str(), c.cpu_seconds)).collect()).unwrap_or_default();
    let before_requests: HashMap<&Attributes, &Histogram> =
        previous.map(|p| p.requests.iter().map(|r| (&r.attributes, &r.duration)).collect()).unwrap_or_default();
    let mut gpu_by_container: HashMap<Attributes, GpuTotals> = HashMap::new();
    for usage in &current.gpu_use {
        let identity: Attributes = usage.attributes.iter().filter(|(a, _)| *a != Attr::HwId).cloned().collect();
        let entry = gpu_by_container.entry(identity).or_default();
        if let Some(u) = usage.utilization {
            entry.utilization = Some(entry.utilization.unwrap_or(0.0) + u);
        }
        entry.memory += usage.memory_bytes;
        if let Some(e) = usage.energy_joules {
            entry.energy = Some(entry.energy.unwrap_or(0.0) + e);
        }
    }
    let containers: Vec<ContainerView> = current
        .containers
        .iter()
        .map(|c| {
            let cpu_cores =
                interval.zip(before_cpu.get(c.cgroup.as_str())).map(|(s, b)| ((c.cpu_seconds - b) / s).max(0.0));
            let gpu = gpu_by_container.get(&c.attributes);
            ContainerView {
                labels: labels(&c.attributes),
                cgroup: c.cgroup.clone(),
                cpu_seconds: c.cpu_seconds,
                cpu_cores,
                cpu_throttled_seconds: c.throttling.map(|t| t.throttled_seconds),
                runqueue_delay_p99_seconds: c
                    .runqueue_delay
                    .as_ref()
                    .and_then(|h| quantile(&h.bounds, &h.counts, 0.99)),
                memory_working_set_bytes: c.memory.map(|m| m.working_set_bytes),
                memory_rss_bytes: c.memory.map(|m| m.rss_bytes),
                memory_limit_bytes: c.memory.and_then(|m| m.limit_bytes),
                oom_kills: c.oom_kills,
                gpu_utilization: gpu.and_then(|g| g.utilization),
                gpu_memory_bytes: gpu.map(|g| g.memory),
                gpu_energy_joules: gpu.and_then(|g| g.energy),
            }
        })
        .collect();
    let requests: Vec<RequestView> = current
        .requests
        .iter()
        .map(|r| {
            let added: u64 = delta(&r.duration, before_requests.get(&r.attributes).copied()).iter().sum();
            RequestView {
                labels: labels(&r.attributes),
                count: r.duration.count,
                sum_seconds: r.duration.sum,
                p50_seconds: r.p50_seconds,
                p90_seconds: r.p90_seconds,
                p99_seconds: r.p99_seconds,
                requests_per_second: interval.map(|s| added as f64 / s),
            }
        })
        .collect();
    let models = models(current, &containers, &before_requests, interval);
    let node = NodeView {
        cpu_cores: interval.map(|_| containers.iter().filter_map(|c| c.cpu_cores).sum()),
        memory_working_set_bytes: containers.iter().filter_map(|c| c.memory_working_set_bytes).sum(),
        requests_per_second: interval.map(|_| requests.iter().filter_map(|r| r.requests_per_second).sum()),
        gpu_memory_bytes: current.gpu_use.iter().map(|u| u.memory_bytes).sum(),
    };
    let gpus = current
        .gpus
        .iter()
        .map(|g| GpuView {
            labels: labels(&g.attributes),
            up: g.up,
            utilization: g.utilization,
            memory_used_bytes: g.memory_used,
            memory_total_bytes: g.memory_total,
            power_watts: g.power_watts,
        })
        .collect();
    let a = &current.agent;
    let agent = AgentView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        probe_family: a.probe_family.clone(),
        probes_attached: a.probes.len(),
        requests_traced: a.requests_traced,
        ring_buffer_drops: a.ringbuf_drops.iter().map(|(_, n)| n).sum(),
        events_dropped: a.events_dropped.iter().map(|(_, n)| n).sum(),
        collection_errors: a.collection_errors.iter().map(|(_, n)| n).sum(),
        sinks: a
            .sinks
            .iter()
            .map(|s| SinkView {
                name: s.name.to_owned(),
                sent: s.sent,
                retried: s.retried,
                dropped: s.dropped.iter().map(|(_, n)| n).sum(),
                queued: s.queued,
            })
            .collect(),
        pod_watch_up: a.pod_watch.as_ref().map(|w| w.up),
    };
    SnapshotView {
        schema_version: SCHEMA_VERSION,
        taken_at: humantime::format_rfc3339_millis(crate::sinks::stdout::formattable(current.taken_at)).to_string(),
        interval_seconds: interval,
        node,
        models,
        containers,
        requests,
        gpus,
        agent,
        processes: current
            .unnamed_processes
            .iter()
            .map(|p| ProcessView {
                pid: p.pid,
                name: p.name.clone(),
                cmdline: p.cmdline.clone(),
                cpu_cores: p.cpu_cores,
                memory_rss_bytes: p.rss_bytes,
            })
            .collect(),
    }
}

fn models(
    current: &Snapshot,
    containers: &[ContainerView],
    before_requests: &HashMap<&Attributes, &Histogram>,
    interval: Option<f64>,
) -> Vec<ModelView> {
    let key = |labels: &BTreeMap<String, String>| {
        let get = |attr: Attr| labels.get(attr.prometheus()).cloned().unwrap_or_default();
        (get(Attr::ModelName), get(Attr::ModelVersion))
    };
    let mut models: BTreeMap<(String, String), ModelView> = BTreeMap::new();
    // The views were built from the rows in order.
    for (row, c) in current.containers.iter().zip(containers) {
        let (name, version) = key(&c.labels);
        let model = models.entry((name.clone(), version.clone())).or_insert_with(|| ModelView {
            name,
            version,
            ..Default::default()
        });
        if let Some(cores) = c.cpu_cores {
            model.cpu_cores = Some(model.cpu_cores.unwrap_or(0.0) + cores);
        }
        model.memory_working_set_bytes += c.memory_working_set_bytes.unwrap_or(0);
        model.oom_kills += c.oom_kills;
        if let Some(u) = c.gpu_utilization {
            model.gpu_utilization = Some(model.gpu_utilization.unwrap_or(0.0) + u);
        }
        model.gpu_memory_bytes += c.gpu_memory_bytes.unwrap_or(0);
        if let Some(uid) = c.labels.get(Attr::PodUid.prometheus()) {
            let container = c.labels.get(Attr::ContainerName.prometheus()).cloned().unwrap_or_default();
            match model.pods.iter_mut().find(|p| p.uid == *uid) {
                Some(pod) => pod.containers.push(container),
                None => model.pods.push(PodView {
                    namespace: c.labels.get(Attr::Namespace.prometheus()).cloned().unwrap_or_default(),
                    name: c.labels.get(Attr::PodName.prometheus()).cloned().unwrap_or_default(),
                    uid: uid.clone(),
                    containers: vec![container],
                    ready: row.pod_ready,
                }),
            }
        }
    }
    for c in containers.iter().filter(|c| !c.labels.contains_key(Attr::PodUid.prometheus())) {
        if let Some(model) = models.get_mut(&key(&c.labels)) {
            model.replicas += 1;
        }
    }
    for model in models.values_mut() {
        model.replicas += model.pods.len();
        let known: Vec<bool> = model.pods.iter().filter_map(|p| p.ready).collect();
        model.ready_replicas = (!known.is_empty()).then(|| known.iter().filter(|r| **r).count());
    }
    // Requests: the last interval's buckets merged per model, for its rate, quantiles and errors.
    let mut merged: HashMap<(String, String), Interval> = HashMap::new();
    for r in &current.requests {
        let (name, version) = (
            attributes::get(&r.attributes, Attr::ModelName).unwrap_or_default().to_owned(),
            attributes::get(&r.attributes, Attr::ModelVersion).unwrap_or_default().to_owned(),
        );
        let added = delta(&r.duration, before_requests.get(&r.attributes).copied());
        let failed = attributes::get(&r.attributes, Attr::HttpStatus).is_some_and(|s| s.starts_with('5'));
        let entry = merged.entry((name, version)).or_insert_with(|| Interval {
            bounds: r.duration.bounds.clone(),
            counts: vec![0; r.duration.counts.len()],
            failed: 0,
        });
        for (sum, add) in entry.counts.iter_mut().zip(&added) {
            *sum += add;
        }
        if failed {
            entry.failed += added.iter().sum::<u64>();
        }
    }
    for ((name, version), Interval { bounds, counts, failed }) in merged {
        let model = models.entry((name.clone(), version.clone())).or_insert_with(|| ModelView {
            name,
            version,
            ..Default::default()
        });
        let total: u64 = counts.iter().sum();
        model.requests_per_second = interval.map(|s| total as f64 / s);
        model.p50_seconds = quantile(&bounds, &counts, 0.5);
        model.p99_seconds = quantile(&bounds, &counts, 0.99);
        model.error_ratio = (total > 0).then(|| failed as f64 / total as f64);
    }
    models.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let bounds = [0.1, 0.2, 0.4];
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        assert!((quantile(&bounds, &[10, 10, 0, 0], 0.5).unwrap() - 0.1).abs() < 1e-12);
        assert!((quantile(&bounds, &[0, 10, 0, 0], 0.5).unwrap() - 0.15).abs() < 1e-12);
        assert_eq!(quantile(&bounds, &[0, 0, 0, 5], 0.99), Some(0.4), "above the last bound");
    }
}
