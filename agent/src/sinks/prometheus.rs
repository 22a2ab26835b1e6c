//! The Prometheus sink (pull): the `/metrics` exposition (OpenMetrics text) of the latest
//! snapshot, encoded at each scrape, with the names of the design's wire table and each
//! attribute's Prometheus spelling. A cgroup that is gone has no series.

use std::sync::Arc;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    attributes::Attr,
    store::{ContainerRow, Histogram, Snapshot, SnapshotCell},
};

type Labels = Vec<(&'static str, String)>;

/// Attributes in their Prometheus spelling.
fn labels(attributes: &[(Attr, String)]) -> Labels {
    attributes.iter().map(|(attr, value)| (attr.prometheus(), value.clone())).collect()
}

/// Encodes one snapshot.
#[derive(Debug)]
struct SnapshotCollector {
    snapshot: Arc<Snapshot>,
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

fn histogram(
    mut encoder: prometheus_client::encoding::MetricEncoder,
    histogram: &Histogram,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> =
        histogram.bounds.iter().copied().chain([f64::INFINITY]).zip(histogram.counts.iter().copied()).collect();
    encoder.encode_histogram::<NoLabelSet>(histogram.sum, histogram.count, &buckets, None)
}

fn rows<'a, T>(
    containers: &'a [ContainerRow],
    value: impl Fn(&ContainerRow) -> Option<T> + 'a,
) -> impl Iterator<Item = (Labels, T)> + 'a {
    containers.iter().filter_map(move |c| value(c).map(|v| (labels(&c.attributes), v)))
}

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_snapshot(&self.snapshot, &mut encoder)
    }
}

/// Every family of a snapshot, in a fixed order.
fn encode_snapshot(snapshot: &Snapshot, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let containers = &snapshot.containers;
    family(
        e,
        "container_cpu_time",
        "CPU time consumed by the container's processes (scheduler probes; cgroup usage without them).",
        Some(Unit::Seconds),
        MetricType::Counter,
        rows(containers, |c| Some(c.cpu_seconds)),
        counter,
    )?;
    family(
        e,
        "container_cpu_throttled",
        "Time the container was throttled by its CPU quota (CFS bandwidth control).",
        Some(Unit::Seconds),
        MetricType::Counter,
        rows(containers, |c| c.throttling.map(|t| t.throttled_seconds)),
        counter,
    )?;
    family(
        e,
        "container_cpu_cfs_periods",
        "CFS bandwidth enforcement periods that elapsed while the container was runnable.",
        None,
        MetricType::Counter,
        rows(containers, |c| c.throttling.map(|t| t.periods)),
        counter_u64,
    )?;
    family(
        e,
        "container_cpu_cfs_throttled_periods",
        "CFS bandwidth periods in which the container was throttled.",
        None,
        MetricType::Counter,
        rows(containers, |c| c.throttling.map(|t| t.throttled_periods)),
        counter_u64,
    )?;
    family(
        e,
        "container_cpu_runqueue_delay",
        "Time the container's threads waited runnable on a run queue before getting a CPU.",
        Some(Unit::Seconds),
        MetricType::Histogram,
        containers.iter().filter_map(|c| c.runqueue_delay.as_ref().map(|h| (labels(&c.attributes), h))),
        histogram,
    )?;
    for (name, help, value) in [
        (
            "container_memory_usage",
            "Memory charged to the container's cgroup, page cache included.",
            (|m| Some(m.usage_bytes)) as fn(&crate::store::Memory) -> Option<u64>,
        ),
        (
            "container_memory_working_set",
            "Memory usage minus inactive file cache: what the kubelet evicts on and the OOM killer sees.",
            |m| Some(m.working_set_bytes),
        ),
        ("container_memory_rss", "Anonymous memory of the container (RSS).", |m| Some(m.rss_bytes)),
        ("container_memory_limit", "The container's memory limit; absent when unlimited.", |m| m.limit_bytes),
    ] {
        family(
            e,
            name,
            help,
            Some(Unit::Bytes),
            MetricType::Gauge,
            rows(containers, move |c| c.memory.as_ref().and_then(value).map(|v| v as f64)),
            gauge,
        )?;
    }
    family(
        e,
        "container_oom_kills",
        "Processes of the container killed by the OOM killer since the agent started watching it.",
        None,
        MetricType::Counter,
        rows(containers, |c| Some(c.oom_kills)),
        counter_u64,
    )?;
    family(
        e,
        "http_server_request_duration",
        "Duration of HTTP server requests, from the request's first byte read to the response's last byte written.",
        Some(Unit::Seconds),
        MetricType::Histogram,
        snapshot.requests.iter().map(|r| (labels(&r.attributes), &r.duration)),
        histogram,
    )?;
    encode_agent(e, &snapshot.agent)
}

fn encode_agent(e: &mut DescriptorEncoder, agent: &crate::store::AgentRow) -> Result<(), std::fmt::Error> {
    let build: Labels = vec![
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("probe_family", agent.probe_family.clone().unwrap_or_else(|| "none".to_owned())),
    ];
    e.encode_descriptor(
        "modelmeter_build",
        "The agent's version and the scheduler probe family in use.",
        None,
        MetricType::Info,
    )?
    .encode_info(&build)?;
    let probe_labels = |p: &crate::store::ProbeRow| vec![("probe", p.name.clone()), ("event", p.event.clone())];
    family(
        e,
        "modelmeter_probe_run_time",
        "Time spent in each eBPF probe, from the kernel's bpf_stats.",
        Some(Unit::Seconds),
        MetricType::Counter,
        agent.probes.iter().map(|p| (probe_labels(p), p.run_time_seconds)),
        counter,
    )?;
    family(
        e,
        "modelmeter_probe_runs",
        "Runs of each eBPF probe, from the kernel's bpf_stats.",
        None,
        MetricType::Counter,
        agent.probes.iter().map(|p| (probe_labels(p), p.runs)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_ringbuf_drops",
        "Events the probes could not send because the ring buffer was full.",
        None,
        MetricType::Counter,
        agent.ringbuf_drops.iter().map(|(ring, n)| (vec![("ring", ring.clone())], *n)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_probe_errors",
        "Failures inside the probes, by kind (a full map, a failed update).",
        None,
        MetricType::Counter,
        agent.probe_errors.iter().map(|(name, n)| (vec![("error", name.clone())], *n)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_collection_duration",
        "How long the last collection took.",
        Some(Unit::Seconds),
        MetricType::Gauge,
        [(Vec::new(), agent.last_collection_seconds)],
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
        agent.collection_errors.iter().map(|(stage, n)| (vec![("stage", stage.label().to_owned())], *n)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_unattributed_cpu_time",
        "CPU time of processes outside any attributed cgroup.",
        Some(Unit::Seconds),
        MetricType::Counter,
        agent.unattributed_cpu_seconds.map(|seconds| (Vec::new(), seconds)),
        counter,
    )?;
    family(
        e,
        "modelmeter_http_route_overflow",
        "Requests whose route went to `_other` because the route budget of their model was spent.",
        None,
        MetricType::Counter,
        agent.route_overflow.iter().map(|(model, n)| (vec![("model", model.clone())], *n)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_http_series_overflow",
        "Requests folded into `_other` series because a series budget (workload, node) was spent.",
        None,
        MetricType::Counter,
        agent
            .requests_traced
            .then_some(&agent.series_overflow)
            .into_iter()
            .flatten()
            .map(|(reason, n)| (vec![("reason", reason.to_string())], *n)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_http_model_overflow",
        "Requests labelled model `_other` because their workload's requests named too many models.",
        None,
        MetricType::Counter,
        agent.requests_traced.then_some((Vec::new(), agent.model_overflow)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_http_skipped",
        "Captured socket traffic that did not become a request, by reason.",
        None,
        MetricType::Counter,
        agent.http_skipped.iter().map(|(reason, n)| (vec![("reason", reason.label().to_owned())], *n)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_http_paired_requests",
        "Requests paired with their responses, by where: in the kernel, or in userspace for connections the probes handed back.",
        None,
        MetricType::Counter,
        agent
            .requests_traced
            .then_some(&agent.paired_requests)
            .into_iter()
            .flatten()
            .map(|(path, n)| (vec![("path", path.label().to_owned())], *n)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_http_fallback_connections",
        "Connections the probes could not follow and handed to userspace (a request split inside its method, pipelining).",
        None,
        MetricType::Counter,
        agent.requests_traced.then_some((Vec::new(), agent.fallback_connections)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_http_watched_cgroups",
        "cgroups whose requests are traced.",
        None,
        MetricType::Gauge,
        agent.requests_traced.then(|| (Vec::new(), agent.watched_cgroups as f64)),
        gauge,
    )?;
    family(
        e,
        "modelmeter_http_connections",
        "Connections followed in userspace (handed back by the probes).",
        None,
        MetricType::Gauge,
        agent.requests_traced.then(|| (Vec::new(), agent.connections as f64)),
        gauge,
    )?;
    family(
        e,
        "modelmeter_events_dropped",
        "Kernel events that could not be used, by reason.",
        None,
        MetricType::Counter,
        agent.events_dropped.iter().map(|(reason, n)| (vec![("reason", reason.label().to_owned())], *n)),
        counter_u64,
    )?;
    let watch = agent.pod_watch.as_ref();
    family(
        e,
        "modelmeter_kubernetes_watch_up",
        "1 while the watch of this node's pods is listed and watching, else 0 (names may be stale or missing).",
        None,
        MetricType::Gauge,
        watch.map(|w| (Vec::new(), if w.up { 1.0 } else { 0.0 })),
        gauge,
    )?;
    family(
        e,
        "modelmeter_kubernetes_watch_errors",
        "Failures of the pod watch, by reason.",
        None,
        MetricType::Counter,
        watch.into_iter().flat_map(|w| &w.errors).map(|(reason, n)| (vec![("reason", reason.label().to_owned())], *n)),
        counter_u64,
    )?;
    family(
        e,
        "modelmeter_kubernetes_pods",
        "Pods of this node the agent knows from the API server.",
        None,
        MetricType::Gauge,
        watch.map(|w| (Vec::new(), w.pods as f64)),
        gauge,
    )?;
    family(
        e,
        "modelmeter_kubernetes_last_sync_age",
        "0 while the pod watch is up; else how long since the pod cache last matched the API server.",
        Some(Unit::Seconds),
        MetricType::Gauge,
        watch.map(|w| (Vec::new(), w.last_sync_age.as_secs_f64())),
        gauge,
    )?;
    // The standard process collector's names, so existing dashboards find the agent's own cost.
    family(
        e,
        "process_cpu",
        "CPU time of the agent itself (user and system).",
        Some(Unit::Seconds),
        MetricType::Counter,
        agent.cpu_seconds.map(|s| (Vec::new(), s)),
        counter,
    )?;
    family(
        e,
        "process_resident_memory",
        "Resident memory of the agent itself.",
        Some(Unit::Bytes),
        MetricType::Gauge,
        agent.resident_bytes.map(|b| (Vec::new(), b as f64)),
        gauge,
    )
}

/// The exposition text of one snapshot.
pub fn encode(snapshot: Arc<Snapshot>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector { snapshot }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The exposition text of one snapshot (golden tests, the debug CLI).
pub fn encode_snapshot_text(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    encode(Arc::new(snapshot))
}

/// The latest snapshot's exposition, encoded once however many scrapes ask for it at once, and
/// shared by them (each scrape holds a reference, not a copy).
pub fn latest_text(cell: &SnapshotCell) -> Result<axum::body::Bytes, std::fmt::Error> {
    cell.encoded(|snapshot| encode(snapshot.clone()).map(axum::body::Bytes::from))
}
