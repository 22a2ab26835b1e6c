//! The Prometheus `/metrics` exposition (OpenMetrics text) of a snapshot, with the names of the
//! design's wire table. Every family is encoded from the latest snapshot, so a cgroup that is gone
//! has no series.

use std::sync::Arc;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    identity::{Identity, kubernetes::PodMeta},
    kernel,
    store::{ContainerSample, RequestSample, SnapshotCell, requests::DURATION_BUCKETS},
};

type Labels = Vec<(&'static str, String)>;

/// Labels that say whose series it is. Pod containers always carry the Kubernetes names (empty
/// until the API server tells them), so a series keeps one label set per family. `model` overrides
/// the pod's model (a request that names its own).
fn identity_labels(identity: &Identity, pod: Option<&PodMeta>, model: Option<(&str, &str)>) -> Labels {
    let model = model.or_else(|| pod?.model.as_ref().map(|m| (m.name.as_str(), m.version.as_str())));
    let (model_name, model_version) = model.map(|(n, v)| (n.to_owned(), v.to_owned())).unwrap_or_default();
    match identity {
        Identity::PodContainer { pod_uid, container_id, runtime, qos } => vec![
            ("namespace", pod.map(|p| p.namespace.clone()).unwrap_or_default()),
            ("pod", pod.map(|p| p.name.clone()).unwrap_or_default()),
            ("container", pod.and_then(|p| p.containers.get(container_id)).cloned().unwrap_or_default()),
            ("model", model_name),
            ("model_version", model_version),
            ("pod_uid", pod_uid.clone()),
            ("container_id", container_id.clone()),
            ("container_runtime", runtime.as_str().to_owned()),
            ("qos_class", qos.as_str().to_owned()),
        ],
        Identity::Pod { pod_uid, qos } => vec![("pod_uid", pod_uid.clone()), ("qos_class", qos.as_str().to_owned())],
        Identity::Docker { container_id } => {
            vec![("container_id", container_id.clone()), ("container_runtime", "docker".to_owned())]
        }
        Identity::SystemdUnit { unit } => vec![("systemd_unit", unit.clone())],
        Identity::Other => Vec::new(),
    }
}

/// Labels of a container's series.
pub fn sample_labels(sample: &ContainerSample) -> Labels {
    identity_labels(&sample.identity, sample.pod.as_deref(), None)
}

/// Labels of a request series: whose, then the semantic-convention attributes.
pub fn request_labels(sample: &RequestSample) -> Labels {
    let mut labels = identity_labels(
        &sample.identity,
        sample.pod.as_deref(),
        sample.key.model.as_ref().map(|(n, v)| (n.as_str(), v.as_str())),
    );
    // Pod containers carry the model already; other identities have only the request's own.
    if !labels.iter().any(|(k, _)| *k == "model") {
        let (name, version) = sample.key.model.clone().unwrap_or_default();
        labels.push(("model", name));
        labels.push(("model_version", version));
    }
    let status = sample.key.status;
    labels.extend([
        ("http_request_method", sample.key.method.to_owned()),
        ("http_route", sample.key.route.clone()),
        ("http_response_status_code", status.to_string()),
        ("url_scheme", "http".to_owned()),
        // Semantic conventions: a server's 5xx is an error, named by its status code.
        ("error_type", if status >= 500 { status.to_string() } else { String::new() }),
    ]);
    labels
}

/// Encodes the current snapshot of a [`SnapshotCell`] on every scrape.
#[derive(Debug)]
pub struct SnapshotCollector {
    cell: Arc<SnapshotCell>,
}

/// A registry holding the snapshot collector; encode it with `prometheus_client::encoding::text::encode`.
pub fn registry(cell: Arc<SnapshotCell>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector { cell }));
    registry
}

/// One family: a descriptor, then one sample per label set.
fn family<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels, T)>,
    encode: impl Fn(prometheus_client::encoding::MetricEncoder, T) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut samples: Vec<(Labels, T)> = samples.into_iter().collect();
    // OpenMetrics allows empty families, but an empty family is only noise for readers.
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    if samples.len() == 1 && samples[0].0.is_empty() {
        // A single unlabelled sample: `name 1`, not `name{} 1`.
        let (_, value) = samples.remove(0);
        return encode(metric, value);
    }
    for (labels, value) in samples {
        encode(metric.encode_family(&labels)?, value)?;
    }
    Ok(())
}

fn counter(encoder: prometheus_client::encoding::MetricEncoder, value: f64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder)
}

fn counter_u64(encoder: prometheus_client::encoding::MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder)
}

fn gauge(encoder: prometheus_client::encoding::MetricEncoder, value: f64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder)
}

fn with_stats<'a, T>(
    containers: &'a [ContainerSample],
    value: impl Fn(&crate::collect::cgroup::CgroupStats) -> Option<T> + 'a,
) -> impl Iterator<Item = (Labels, T)> + 'a {
    containers.iter().filter_map(move |c| c.stats.as_ref().and_then(&value).map(|v| (sample_labels(c), v)))
}

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.cell.get();
        let containers = &snapshot.containers;
        let e = &mut encoder;
        family(
            e,
            "container_cpu_time",
            "CPU time consumed by the container's processes (scheduler probes; cgroup usage without them).",
            Some(Unit::Seconds),
            MetricType::Counter,
            containers.iter().map(|c| (sample_labels(c), c.cpu_ns as f64 / 1e9)),
            counter,
        )?;
        family(
            e,
            "container_cpu_throttled",
            "Time the container was throttled by its CPU quota (CFS bandwidth control).",
            Some(Unit::Seconds),
            MetricType::Counter,
            with_stats(containers, |s| Some(s.cpu.throttled_ns as f64 / 1e9)),
            counter,
        )?;
        family(
            e,
            "container_cpu_cfs_periods",
            "CFS bandwidth enforcement periods that elapsed while the container was runnable.",
            None,
            MetricType::Counter,
            with_stats(containers, |s| Some(s.cpu.periods)),
            counter_u64,
        )?;
        family(
            e,
            "container_cpu_cfs_throttled_periods",
            "CFS bandwidth periods in which the container was throttled.",
            None,
            MetricType::Counter,
            with_stats(containers, |s| Some(s.cpu.throttled_periods)),
            counter_u64,
        )?;
        family(
            e,
            "container_cpu_runqueue_delay",
            "Time the container's threads waited runnable on a run queue before getting a CPU.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            containers.iter().filter_map(|c| c.runq.map(|runq| (sample_labels(c), runq))),
            |mut encoder, runq| {
                let count = runq.runq_slots.iter().sum();
                let buckets = kernel::runq_buckets(&runq.runq_slots);
                encoder.encode_histogram::<NoLabelSet>(runq.runq_delay_ns as f64 / 1e9, count, &buckets, None)
            },
        )?;
        for (name, help, value) in [
            (
                "container_memory_usage",
                "Memory charged to the container's cgroup, page cache included.",
                (|s| Some(s.memory.usage_bytes)) as fn(&crate::collect::cgroup::CgroupStats) -> Option<u64>,
            ),
            (
                "container_memory_working_set",
                "Memory usage minus inactive file cache: what the kubelet evicts on and the OOM killer sees.",
                |s| Some(s.memory.working_set_bytes),
            ),
            ("container_memory_rss", "Anonymous memory of the container (RSS).", |s| Some(s.memory.rss_bytes)),
            ("container_memory_limit", "The container's memory limit; absent when unlimited.", |s| {
                s.memory.limit_bytes
            }),
        ] {
            family(
                e,
                name,
                help,
                Some(Unit::Bytes),
                MetricType::Gauge,
                with_stats(containers, move |s| value(s).map(|v| v as f64)),
                gauge,
            )?;
        }
        family(
            e,
            "container_oom_kills",
            "Processes of the container killed by the OOM killer since the agent started watching it.",
            None,
            MetricType::Counter,
            containers.iter().map(|c| (sample_labels(c), c.oom_kills)),
            counter_u64,
        )?;
        family(
            e,
            "http_server_request_duration",
            "Duration of HTTP server requests, from the request's first byte read to the response's last byte written.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            snapshot.requests.iter().map(|r| (request_labels(r), &r.latency)),
            |mut encoder, latency| {
                let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(latency.buckets.iter().copied())
                    .collect();
                encoder.encode_histogram::<NoLabelSet>(latency.sum_ns as f64 / 1e9, latency.count, &buckets, None)
            },
        )?;
        self.encode_agent(e, &snapshot.agent)
    }
}

impl SnapshotCollector {
    fn encode_agent(
        &self,
        e: &mut DescriptorEncoder,
        agent: &crate::store::AgentSample,
    ) -> Result<(), std::fmt::Error> {
        let build: Labels = vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("probe_family", agent.probe_family.unwrap_or("none").to_owned()),
        ];
        e.encode_descriptor(
            "modelmeter_build",
            "The agent's version and the scheduler probe family in use.",
            None,
            MetricType::Info,
        )?
        .encode_info(&build)?;
        let probe_labels = |p: &kernel::AttachedProgram| vec![("probe", p.name.clone()), ("event", p.event.clone())];
        family(
            e,
            "modelmeter_probe_run_time",
            "Time spent in each eBPF probe, from the kernel's bpf_stats.",
            Some(Unit::Seconds),
            MetricType::Counter,
            agent.probes.iter().map(|(p, s)| (probe_labels(p), s.run_time_ns as f64 / 1e9)),
            counter,
        )?;
        family(
            e,
            "modelmeter_probe_runs",
            "Runs of each eBPF probe, from the kernel's bpf_stats.",
            None,
            MetricType::Counter,
            agent.probes.iter().map(|(p, s)| (probe_labels(p), s.run_count)),
            counter_u64,
        )?;
        family(
            e,
            "modelmeter_ringbuf_drops",
            "Events the probes could not send because the ring buffer was full.",
            None,
            MetricType::Counter,
            agent.probe_counters.iter().filter_map(|(name, v)| {
                let ring = match *name {
                    "ringbuf_drops" => "events",
                    "data_ringbuf_drops" => "payloads",
                    _ => return None,
                };
                Some((vec![("ring", ring.to_owned())], *v))
            }),
            counter_u64,
        )?;
        family(
            e,
            "modelmeter_probe_errors",
            "Failures inside the probes, by kind (a full map, a failed update).",
            None,
            MetricType::Counter,
            agent
                .probe_counters
                .iter()
                .filter(|(n, _)| !n.ends_with("ringbuf_drops"))
                .map(|(n, v)| (vec![("error", n.to_string())], *v)),
            counter_u64,
        )?;
        family(
            e,
            "modelmeter_collection_duration",
            "How long the last collection took.",
            Some(Unit::Seconds),
            MetricType::Gauge,
            [(Vec::new(), agent.last_collection_duration.as_secs_f64())],
            gauge,
        )?;
        family(
            e,
            "modelmeter_collections",
            "Collections since the agent started.",
            None,
            MetricType::Counter,
            [(Vec::new(), agent.collections)],
            counter_u64,
        )?;
        family(
            e,
            "modelmeter_collection_errors",
            "Collection failures by stage.",
            None,
            MetricType::Counter,
            agent.errors.iter().map(|(stage, n)| (vec![("stage", stage.to_string())], *n)),
            counter_u64,
        )?;
        family(
            e,
            "modelmeter_unattributed_cpu_time",
            "CPU time of processes outside any attributed cgroup.",
            Some(Unit::Seconds),
            MetricType::Counter,
            agent.probe_family.map(|_| (Vec::new(), agent.unattributed_cpu_ns as f64 / 1e9)),
            counter,
        )?;
        let requests = &agent.requests;
        family(
            e,
            "modelmeter_http_route_overflow",
            "Requests whose route went to `_other` because the route budget of their model was spent.",
            None,
            MetricType::Counter,
            requests.route_overflow.iter().map(|(model, n)| (vec![("model", model.clone())], *n)),
            counter_u64,
        )?;
        family(
            e,
            "modelmeter_http_model_overflow",
            "Requests labelled model `_other` because their workload's requests named too many models.",
            None,
            MetricType::Counter,
            requests.enabled.then_some((Vec::new(), requests.model_overflow)),
            counter_u64,
        )?;
        family(
            e,
            "modelmeter_http_skipped",
            "Captured socket traffic that did not become a request, by reason.",
            None,
            MetricType::Counter,
            requests.skipped.iter().map(|(reason, n)| (vec![("reason", reason.to_string())], *n)),
            counter_u64,
        )?;
        family(
            e,
            "modelmeter_http_watched_cgroups",
            "cgroups whose requests are traced.",
            None,
            MetricType::Gauge,
            requests.enabled.then(|| (Vec::new(), requests.watched_cgroups as f64)),
            gauge,
        )?;
        family(
            e,
            "modelmeter_http_connections",
            "Connections being followed.",
            None,
            MetricType::Gauge,
            requests.enabled.then(|| (Vec::new(), requests.connections as f64)),
            gauge,
        )?;
        family(
            e,
            "modelmeter_events_dropped",
            "Kernel events that could not be used, by reason.",
            None,
            MetricType::Counter,
            [
                (vec![("reason", "malformed".to_owned())], agent.malformed_events),
                (vec![("reason", "oom_victim_unattributed".to_owned())], agent.oom_kills_unattributed),
                (vec![("reason", "malformed_payload".to_owned())], requests.malformed_events),
                (vec![("reason", "request_event_rate_limited".to_owned())], requests.events_dropped),
            ],
            counter_u64,
        )
    }
}

/// The exposition text of a registry.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}
