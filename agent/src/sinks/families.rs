//! Every metric family of a snapshot, once, with both of its names: the OpenTelemetry name and
//! unit (what OTLP sends) and the Prometheus name (what `/metrics` shows: the standard translation
//! of the first, unit suffix and `_total` added by the encoder). Both exporters walk this list, so
//! they can never disagree on which series exist.

use crate::{
    attributes::Attr,
    store::{AgentRow, ContainerRow, GpuUseRow, Histogram, Memory, ProbeRow, Snapshot, gpu::GpuDeviceRow},
};

/// How a family's values behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic and cumulative (OTLP Sum, Prometheus counter).
    Counter,
    /// A current value that may go either way (OTLP Gauge, or a non-monotonic Sum for the
    /// UpDownCounters of the wire table).
    Gauge,
    /// A current amount the semantic conventions model as an UpDownCounter.
    UpDownCounter,
    Histogram,
    /// Constant 1 whose labels carry the information (Prometheus info).
    Info,
}

/// A family's unit: the Prometheus suffix and the UCUM unit OTLP carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
    /// A fraction, 0..=1.
    Ratio,
    Watts,
    Joules,
    Celsius,
    Hertz,
    /// Dimensionless counts: the OTLP unit is an annotation such as `{request}`.
    Count(&'static str),
}

impl Unit {
    pub fn otel(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::Bytes => "By",
            Unit::Ratio => "1",
            Unit::Watts => "W",
            Unit::Joules => "J",
            Unit::Celsius => "Cel",
            Unit::Hertz => "Hz",
            Unit::Count(annotation) => annotation,
        }
    }
}

/// A label: an identity or request attribute from the one table, or an agent-internal name that
/// is spelled the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Attr(Attr),
    Plain(&'static str),
}

impl Key {
    pub fn otel(self) -> &'static str {
        match self {
            Key::Attr(attr) => attr.otel(),
            Key::Plain(name) => name,
        }
    }

    pub fn prometheus(self) -> &'static str {
        match self {
            Key::Attr(attr) => attr.prometheus(),
            Key::Plain(name) => name,
        }
    }
}

/// The standard OpenTelemetry → Prometheus name translation (what Prometheus's OTLP receiver and
/// the Collector's Prometheus exporters apply): dots become underscores, the unit's word is added,
/// monotonic sums end in `_total`. Tests hold both exporters' names to it.
pub fn translated_name(otel: &str, unit: &str, monotonic: bool) -> String {
    let mut out = otel.replace('.', "_");
    let word = match unit {
        "s" => "seconds",
        "By" => "bytes",
        "1" if !monotonic => "ratio",
        "W" => "watts",
        "J" => "joules",
        "Cel" => "celsius",
        "Hz" => "hertz",
        _ => "",
    };
    if !word.is_empty() && !out.ends_with(word) {
        out = format!("{out}_{word}");
    }
    if monotonic {
        out.push_str("_total");
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Float(f64),
    Int(u64),
    Histogram(&'a Histogram),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    pub labels: Vec<(Key, String)>,
    pub value: Value<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family<'a> {
    /// The OpenTelemetry metric name.
    pub otel: &'static str,
    /// The Prometheus name without unit suffix or `_total`.
    pub prometheus: &'static str,
    pub help: &'static str,
    pub unit: Unit,
    pub kind: Kind,
    pub points: Vec<Point<'a>>,
}

fn container_labels(row: &ContainerRow) -> Vec<(Key, String)> {
    row.attributes.iter().map(|(attr, value)| (Key::Attr(*attr), value.clone())).collect()
}

fn per_container<'a>(
    containers: &'a [ContainerRow],
    value: impl Fn(&'a ContainerRow) -> Option<Value<'a>>,
) -> Vec<Point<'a>> {
    containers.iter().filter_map(|c| value(c).map(|value| Point { labels: container_labels(c), value })).collect()
}

fn one<'a>(value: Option<Value<'a>>) -> Vec<Point<'a>> {
    value.map(|value| Point { labels: Vec::new(), value }).into_iter().collect()
}

fn by<'a, T>(
    items: impl IntoIterator<Item = T>,
    key: &'static str,
    value: impl Fn(&T) -> (String, Value<'a>),
) -> Vec<Point<'a>> {
    items
        .into_iter()
        .map(|item| {
            let (label, value) = value(&item);
            Point { labels: vec![(Key::Plain(key), label)], value }
        })
        .collect()
}

/// Every family of `snapshot`, in a fixed order; families without points included (encoders
/// skip them).
pub fn families(snapshot: &Snapshot) -> Vec<Family<'_>> {
    let c = &snapshot.containers;
    let memory = |pick: fn(&Memory) -> Option<u64>| {
        per_container(c, move |row| row.memory.as_ref().and_then(pick).map(Value::Int))
    };
    let mut all = vec![
        Family {
            otel: "container.cpu.time",
            prometheus: "container_cpu_time",
            help: "CPU time consumed by the container's processes (scheduler probes; cgroup usage without them).",
            unit: Unit::Seconds,
            kind: Kind::Counter,
            points: per_container(c, |row| Some(Value::Float(row.cpu_seconds))),
        },
        Family {
            otel: "container.cpu.throttled",
            prometheus: "container_cpu_throttled",
            help: "Time the container was throttled by its CPU quota (CFS bandwidth control).",
            unit: Unit::Seconds,
            kind: Kind::Counter,
            points: per_container(c, |row| row.throttling.map(|t| Value::Float(t.throttled_seconds))),
        },
        Family {
            otel: "container.cpu.cfs_periods",
            prometheus: "container_cpu_cfs_periods",
            help: "CFS bandwidth enforcement periods that elapsed while the container was runnable.",
            unit: Unit::Count("{period}"),
            kind: Kind::Counter,
            points: per_container(c, |row| row.throttling.map(|t| Value::Int(t.periods))),
        },
        Family {
            otel: "container.cpu.cfs_throttled_periods",
            prometheus: "container_cpu_cfs_throttled_periods",
            help: "CFS bandwidth periods in which the container was throttled.",
            unit: Unit::Count("{period}"),
            kind: Kind::Counter,
            points: per_container(c, |row| row.throttling.map(|t| Value::Int(t.throttled_periods))),
        },
        Family {
            otel: "container.cpu.runqueue_delay",
            prometheus: "container_cpu_runqueue_delay",
            help: "Time the container's threads waited runnable on a run queue before getting a CPU.",
            unit: Unit::Seconds,
            kind: Kind::Histogram,
            points: per_container(c, |row| row.runqueue_delay.as_ref().map(Value::Histogram)),
        },
        Family {
            otel: "container.memory.usage",
            prometheus: "container_memory_usage",
            help: "Memory charged to the container's cgroup, page cache included.",
            unit: Unit::Bytes,
            kind: Kind::UpDownCounter,
            points: memory(|m| Some(m.usage_bytes)),
        },
        Family {
            otel: "container.memory.working_set",
            prometheus: "container_memory_working_set",
            help: "Memory usage minus inactive file cache: what the kubelet evicts on and the OOM killer sees.",
            unit: Unit::Bytes,
            kind: Kind::UpDownCounter,
            points: memory(|m| Some(m.working_set_bytes)),
        },
        Family {
            otel: "container.memory.rss",
            prometheus: "container_memory_rss",
            help: "Anonymous memory of the container (RSS).",
            unit: Unit::Bytes,
            kind: Kind::UpDownCounter,
            points: memory(|m| Some(m.rss_bytes)),
        },
        Family {
            otel: "container.memory.limit",
            prometheus: "container_memory_limit",
            help: "The container's memory limit; absent when unlimited.",
            unit: Unit::Bytes,
            kind: Kind::UpDownCounter,
            points: memory(|m| m.limit_bytes),
        },
        Family {
            otel: "container.oom_kills",
            prometheus: "container_oom_kills",
            help: "Processes of the container killed by the OOM killer since the agent started watching it.",
            unit: Unit::Count("{kill}"),
            kind: Kind::Counter,
            points: per_container(c, |row| Some(Value::Int(row.oom_kills))),
        },
        Family {
            otel: "http.server.request.duration",
            prometheus: "http_server_request_duration",
            help: "Duration of HTTP server requests, from the request's first byte read to the response's last byte written.",
            unit: Unit::Seconds,
            kind: Kind::Histogram,
            points: snapshot
                .requests
                .iter()
                .map(|r| Point {
                    labels: r.attributes.iter().map(|(a, v)| (Key::Attr(*a), v.clone())).collect(),
                    value: Value::Histogram(&r.duration),
                })
                .collect(),
        },
    ];
    all.extend(gpu_families(snapshot));
    all.extend(agent_families(&snapshot.agent));
    all
}

fn gpu_families(snapshot: &Snapshot) -> Vec<Family<'_>> {
    let devices = |pick: fn(&GpuDeviceRow) -> Option<Value<'static>>| -> Vec<Point<'_>> {
        snapshot
            .gpus
            .iter()
            .filter_map(|d| {
                let value = pick(d)?;
                Some(Point { labels: d.attributes.iter().map(|(a, v)| (Key::Attr(*a), v.clone())).collect(), value })
            })
            .collect()
    };
    let uses = |pick: fn(&GpuUseRow) -> Option<Value<'static>>| -> Vec<Point<'_>> {
        snapshot
            .gpu_use
            .iter()
            .filter_map(|u| {
                let value = pick(u)?;
                Some(Point { labels: u.attributes.iter().map(|(a, v)| (Key::Attr(*a), v.clone())).collect(), value })
            })
            .collect()
    };
    vec![
        Family {
            otel: "hw.gpu.up",
            prometheus: "hw_gpu_up",
            help: "1 while the GPU answers, 0 while it is lost (its other series are then absent).",
            unit: Unit::Count(""),
            kind: Kind::Gauge,
            points: devices(|d| {
                d.attributes.iter().all(|(a, _)| *a != Attr::HwParent).then_some(Value::Int(u64::from(d.up)))
            }),
        },
        Family {
            otel: "hw.gpu.utilization",
            prometheus: "hw_gpu_utilization",
            help: "Fraction of the last sample period the GPU was busy.",
            unit: Unit::Ratio,
            kind: Kind::Gauge,
            points: devices(|d| d.utilization.map(Value::Float)),
        },
        Family {
            otel: "hw.gpu.memory.usage",
            prometheus: "hw_gpu_memory_usage",
            help: "Device memory in use (per MIG instance for MIG-enabled GPUs).",
            unit: Unit::Bytes,
            kind: Kind::UpDownCounter,
            points: devices(|d| d.memory_used.map(Value::Int)),
        },
        Family {
            otel: "hw.gpu.memory.limit",
            prometheus: "hw_gpu_memory_limit",
            help: "Device memory in total (per MIG instance for MIG-enabled GPUs).",
            unit: Unit::Bytes,
            kind: Kind::UpDownCounter,
            points: devices(|d| d.memory_total.map(Value::Int)),
        },
        Family {
            otel: "hw.gpu.power",
            prometheus: "hw_gpu_power",
            help: "Power draw of the GPU.",
            unit: Unit::Watts,
            kind: Kind::Gauge,
            points: devices(|d| d.power_watts.map(Value::Float)),
        },
        Family {
            otel: "hw.gpu.energy",
            prometheus: "hw_gpu_energy",
            help: "Energy the GPU used since its driver loaded.",
            unit: Unit::Joules,
            kind: Kind::Counter,
            points: devices(|d| d.energy_joules.map(Value::Float)),
        },
        Family {
            otel: "hw.gpu.energy.unattributed",
            prometheus: "hw_gpu_energy_unattributed",
            help: "Energy no process is known to have used since the agent started: idle time, and all of it where the split cannot be known (MIG, no utilisation samples).",
            unit: Unit::Joules,
            kind: Kind::Counter,
            points: devices(|d| d.unattributed_energy_joules.map(Value::Float)),
        },
        Family {
            otel: "hw.gpu.temperature",
            prometheus: "hw_gpu_temperature",
            help: "GPU core temperature.",
            unit: Unit::Celsius,
            kind: Kind::Gauge,
            points: devices(|d| d.temperature_celsius.map(Value::Float)),
        },
        Family {
            otel: "hw.gpu.clock.sm",
            prometheus: "hw_gpu_clock_sm",
            help: "Current SM clock.",
            unit: Unit::Hertz,
            kind: Kind::Gauge,
            points: devices(|d| d.sm_clock_hertz.map(Value::Float)),
        },
        Family {
            otel: "hw.gpu.mig.enabled",
            prometheus: "hw_gpu_mig_enabled",
            help: "1 when MIG mode is on (memory is then reported per instance, utilisation per process is unknown).",
            unit: Unit::Count(""),
            kind: Kind::Gauge,
            points: devices(|d| d.mig_enabled.map(|m| Value::Int(u64::from(m)))),
        },
        Family {
            otel: "container.gpu.utilization",
            prometheus: "container_gpu_utilization",
            help: "The container's share of the GPU's time over the last read (SM utilisation of its processes); absent where unknown (MIG).",
            unit: Unit::Ratio,
            kind: Kind::Gauge,
            points: uses(|u| u.utilization.map(Value::Float)),
        },
        Family {
            otel: "container.gpu.memory.usage",
            prometheus: "container_gpu_memory_usage",
            help: "GPU memory held by the container's processes.",
            unit: Unit::Bytes,
            kind: Kind::UpDownCounter,
            points: uses(|u| Some(Value::Int(u.memory_bytes))),
        },
        Family {
            otel: "container.gpu.energy",
            prometheus: "container_gpu_energy",
            help: "GPU energy attributed to the container (the device's energy by SM share) since the agent started.",
            unit: Unit::Joules,
            kind: Kind::Counter,
            points: uses(|u| u.energy_joules.map(Value::Float)),
        },
    ]
}

fn agent_families(agent: &AgentRow) -> Vec<Family<'_>> {
    let probe = |p: &&ProbeRow| vec![(Key::Plain("probe"), p.name.clone()), (Key::Plain("event"), p.event.clone())];
    let traced = agent.requests_traced;
    let watch = agent.pod_watch.as_ref();
    let counted = |n: u64| Value::Int(n);
    vec![
        Family {
            otel: "modelmeter.build.info",
            prometheus: "modelmeter_build",
            help: "The agent's version and the scheduler probe family in use.",
            unit: Unit::Count(""),
            kind: Kind::Info,
            points: vec![Point {
                labels: vec![
                    (Key::Plain("version"), env!("CARGO_PKG_VERSION").to_owned()),
                    (Key::Plain("probe_family"), agent.probe_family.clone().unwrap_or_else(|| "none".to_owned())),
                ],
                value: Value::Int(1),
            }],
        },
        Family {
            otel: "modelmeter.probe.run_time",
            prometheus: "modelmeter_probe_run_time",
            help: "Time spent in each eBPF probe, from the kernel's bpf_stats.",
            unit: Unit::Seconds,
            kind: Kind::Counter,
            points: agent
                .probes
                .iter()
                .map(|p| Point { labels: probe(&p), value: Value::Float(p.run_time_seconds) })
                .collect(),
        },
        Family {
            otel: "modelmeter.probe.runs",
            prometheus: "modelmeter_probe_runs",
            help: "Runs of each eBPF probe, from the kernel's bpf_stats.",
            unit: Unit::Count("{run}"),
            kind: Kind::Counter,
            points: agent.probes.iter().map(|p| Point { labels: probe(&p), value: Value::Int(p.runs) }).collect(),
        },
        Family {
            otel: "modelmeter.ringbuf.drops",
            prometheus: "modelmeter_ringbuf_drops",
            help: "Events the probes could not send because the ring buffer was full.",
            unit: Unit::Count("{event}"),
            kind: Kind::Counter,
            points: by(&agent.ringbuf_drops, "ring", |(ring, n)| (ring.clone(), counted(*n))),
        },
        Family {
            otel: "modelmeter.probe.errors",
            prometheus: "modelmeter_probe_errors",
            help: "Failures inside the probes, by kind (a full map, a failed update).",
            unit: Unit::Count("{error}"),
            kind: Kind::Counter,
            points: by(&agent.probe_errors, "error", |(name, n)| (name.clone(), counted(*n))),
        },
        Family {
            otel: "modelmeter.collection.duration",
            prometheus: "modelmeter_collection_duration",
            help: "How long the last collection took.",
            unit: Unit::Seconds,
            kind: Kind::Gauge,
            points: one(Some(Value::Float(agent.last_collection_seconds))),
        },
        Family {
            otel: "modelmeter.collections",
            prometheus: "modelmeter_collections",
            help: "Collections since the agent started.",
            unit: Unit::Count("{collection}"),
            kind: Kind::Counter,
            points: one(Some(counted(agent.collections))),
        },
        Family {
            otel: "modelmeter.collection.errors",
            prometheus: "modelmeter_collection_errors",
            help: "Collection failures by stage.",
            unit: Unit::Count("{error}"),
            kind: Kind::Counter,
            points: by(&agent.collection_errors, "stage", |(stage, n)| (stage.label().to_owned(), counted(*n))),
        },
        Family {
            otel: "modelmeter.unattributed_cpu.time",
            prometheus: "modelmeter_unattributed_cpu_time",
            help: "CPU time of processes outside any attributed cgroup.",
            unit: Unit::Seconds,
            kind: Kind::Counter,
            points: one(agent.unattributed_cpu_seconds.map(Value::Float)),
        },
        Family {
            otel: "modelmeter.http.route_overflow",
            prometheus: "modelmeter_http_route_overflow",
            help: "Requests whose route went to `_other` because the route budget of their model was spent.",
            unit: Unit::Count("{request}"),
            kind: Kind::Counter,
            points: by(&agent.route_overflow, "model", |(model, n)| (model.clone(), counted(*n))),
        },
        Family {
            otel: "modelmeter.http.series_overflow",
            prometheus: "modelmeter_http_series_overflow",
            help: "Requests folded into `_other` series because a series budget (workload, node) was spent.",
            unit: Unit::Count("{request}"),
            kind: Kind::Counter,
            points: by(traced.then_some(&agent.series_overflow).into_iter().flatten(), "reason", |(reason, n)| {
                (reason.to_string(), counted(*n))
            }),
        },
        Family {
            otel: "modelmeter.http.model_overflow",
            prometheus: "modelmeter_http_model_overflow",
            help: "Requests labelled model `_other` because their workload's requests named too many models.",
            unit: Unit::Count("{request}"),
            kind: Kind::Counter,
            points: one(traced.then_some(counted(agent.model_overflow))),
        },
        Family {
            otel: "modelmeter.http.skipped",
            prometheus: "modelmeter_http_skipped",
            help: "Captured socket traffic that did not become a request, by reason.",
            unit: Unit::Count("{request}"),
            kind: Kind::Counter,
            points: by(&agent.http_skipped, "reason", |(reason, n)| (reason.label().to_owned(), counted(*n))),
        },
        Family {
            otel: "modelmeter.http.paired_requests",
            prometheus: "modelmeter_http_paired_requests",
            help: "Requests paired with their responses, by where: in the kernel, or in userspace for connections the probes handed back.",
            unit: Unit::Count("{request}"),
            kind: Kind::Counter,
            points: by(traced.then_some(&agent.paired_requests).into_iter().flatten(), "path", |(path, n)| {
                (path.label().to_owned(), counted(*n))
            }),
        },
        Family {
            otel: "modelmeter.http.fallback_connections",
            prometheus: "modelmeter_http_fallback_connections",
            help: "Connections the probes could not follow and handed to userspace (a request split inside its method, pipelining).",
            unit: Unit::Count("{connection}"),
            kind: Kind::Counter,
            points: one(traced.then_some(counted(agent.fallback_connections))),
        },
        Family {
            otel: "modelmeter.http.watched_cgroups",
            prometheus: "modelmeter_http_watched_cgroups",
            help: "cgroups whose requests are traced.",
            unit: Unit::Count(""),
            kind: Kind::Gauge,
            points: one(traced.then_some(Value::Int(agent.watched_cgroups))),
        },
        Family {
            otel: "modelmeter.http.connections",
            prometheus: "modelmeter_http_connections",
            help: "Connections followed in userspace (handed back by the probes).",
            unit: Unit::Count(""),
            kind: Kind::Gauge,
            points: one(traced.then_some(Value::Int(agent.connections))),
        },
        Family {
            otel: "modelmeter.events.dropped",
            prometheus: "modelmeter_events_dropped",
            help: "Kernel events that could not be used, by reason.",
            unit: Unit::Count("{event}"),
            kind: Kind::Counter,
            points: by(&agent.events_dropped, "reason", |(reason, n)| (reason.label().to_owned(), counted(*n))),
        },
        Family {
            otel: "modelmeter.sink.sent",
            prometheus: "modelmeter_sink_sent",
            help: "Items each push sink delivered (log records, or metric snapshots).",
            unit: Unit::Count("{item}"),
            kind: Kind::Counter,
            points: by(&agent.sinks, "sink", |s| (s.name.to_owned(), counted(s.sent))),
        },
        Family {
            otel: "modelmeter.sink.retries",
            prometheus: "modelmeter_sink_retries",
            help: "Requests each push sink sent again after a retriable failure.",
            unit: Unit::Count("{request}"),
            kind: Kind::Counter,
            points: by(&agent.sinks, "sink", |s| (s.name.to_owned(), counted(s.retried))),
        },
        Family {
            otel: "modelmeter.sink.duplicates",
            prometheus: "modelmeter_sink_duplicates",
            help: "Items a backend already had when a partly accepted batch was sent again.",
            unit: Unit::Count("{item}"),
            kind: Kind::Counter,
            points: by(&agent.sinks, "sink", |s| (s.name.to_owned(), counted(s.duplicates))),
        },
        Family {
            otel: "modelmeter.sink.dropped",
            prometheus: "modelmeter_sink_dropped",
            help: "Items each push sink gave up on, by reason.",
            unit: Unit::Count("{item}"),
            kind: Kind::Counter,
            points: agent
                .sinks
                .iter()
                .flat_map(|s| {
                    s.dropped.iter().map(|(reason, n)| Point {
                        labels: vec![
                            (Key::Plain("sink"), s.name.to_owned()),
                            (Key::Plain("reason"), reason.to_string()),
                        ],
                        value: counted(*n),
                    })
                })
                .collect(),
        },
        Family {
            otel: "modelmeter.sink.queue_items",
            prometheus: "modelmeter_sink_queue_items",
            help: "Items waiting in each push sink's queue.",
            unit: Unit::Count("{item}"),
            kind: Kind::Gauge,
            points: by(&agent.sinks, "sink", |s| (s.name.to_owned(), Value::Int(s.queued))),
        },
        Family {
            otel: "modelmeter.kubernetes.watch.up",
            prometheus: "modelmeter_kubernetes_watch_up",
            help: "1 while the watch of this node's pods is listed and watching, else 0 (names may be stale or missing).",
            unit: Unit::Count(""),
            kind: Kind::Gauge,
            points: one(watch.map(|w| Value::Int(u64::from(w.up)))),
        },
        Family {
            otel: "modelmeter.kubernetes.watch.errors",
            prometheus: "modelmeter_kubernetes_watch_errors",
            help: "Failures of the pod watch, by reason.",
            unit: Unit::Count("{error}"),
            kind: Kind::Counter,
            points: by(watch.into_iter().flat_map(|w| &w.errors), "reason", |(reason, n)| {
                (reason.label().to_owned(), counted(*n))
            }),
        },
        Family {
            otel: "modelmeter.kubernetes.pods",
            prometheus: "modelmeter_kubernetes_pods",
            help: "Pods of this node the agent knows from the API server.",
            unit: Unit::Count(""),
            kind: Kind::Gauge,
            points: one(watch.map(|w| Value::Int(w.pods))),
        },
        Family {
            otel: "modelmeter.kubernetes.last_sync_age",
            prometheus: "modelmeter_kubernetes_last_sync_age",
            help: "0 while the pod watch is up; else how long since the pod cache last matched the API server.",
            unit: Unit::Seconds,
            kind: Kind::Gauge,
            points: one(watch.map(|w| Value::Float(w.last_sync_age.as_secs_f64()))),
        },
        Family {
            otel: "process.cpu",
            prometheus: "process_cpu",
            help: "CPU time of the agent itself (user and system).",
            unit: Unit::Seconds,
            kind: Kind::Counter,
            points: one(agent.cpu_seconds.map(Value::Float)),
        },
        Family {
            otel: "process.resident_memory",
            prometheus: "process_resident_memory",
            help: "Resident memory of the agent itself.",
            unit: Unit::Bytes,
            kind: Kind::Gauge,
            points: one(agent.resident_bytes.map(Value::Int)),
        },
    ]
}
