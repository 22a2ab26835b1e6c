//! The agent's graph, built in one place. Read this first; every box is a module.
//!
//! ```text
//!  sources (own thread or task each)          collector thread                    sinks
//!  ─────────────────────────────────         ──────────────────────────────      ─────────────────────
//!  events   exit/OOM ring ──┐                 identity::Resolver (discover,       Prometheus (pull):
//!  payload  socket payloads ┼─ Observation ─► cgroup id/tgid → Identity, pods,   /metrics encodes the
//!           (HTTP/1 pairing)│  bounded queue  watch set → probes)                 latest Snapshot
//!  kubernetes pod watch ────┘ (full: drop     store::Store (fold, no I/O) ──────► SnapshotCell ─► api
//!     └─ PodCache (ArcSwap) + "changed" ping   at each tick / scrape: cgroup       LogRecord queue ──►
//!                                              files, probe CPU map, bpf_stats     stdout JSON lines
//! ```
//!
//! No lock is shared between a source and the collector: sources send, the pod cache is published
//! copy-on-write, the resolver and the store live on the collector thread, the snapshot is swapped
//! atomically, and `/healthz` runs on the async runtime
//! that nothing blocks. Shutdown is ordered by a cancellation token: the HTTP server stops, the
//! sources stop, the collector folds once more, the sinks flush, and only then are the probes
//! detached (dropping them).

use std::{
    net::TcpListener,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use crossbeam_channel::{Receiver, select};
use tokio_util::sync::CancellationToken;

use crate::{
    api,
    config::Config,
    doctor,
    identity::{
        Identity,
        resolver::{ProcessWorkload, Resolver},
    },
    sinks::{self, Delivery, SinkHandle},
    sources::{
        Observation, Outbox,
        cgroup::{CgroupStats, CpuStats, Layout, MemoryStats},
        events::EventSource,
        kernel::{self, Probes},
        kubernetes::{self, PodCache, WatchHealth},
        payload::PayloadSource,
        procfs,
    },
    store::{
        CgroupRead, CgroupReading, CpuEntry, LogRecord, ProbeHealth, ProbeRow, Readings, Snapshot, SnapshotCell, Store,
    },
    telemetry::{Collected, CollectionFailed, Stage, Telemetry},
};

/// Messages waiting for the collector, which drains them between collections. Sources send one
/// batch per ring pass (about ten a second each), so this holds minutes of traffic.
const OBSERVATION_QUEUE: usize = 1024;
/// Exits waiting for the payload source, which reads them every 100 ms.
const EXIT_QUEUE: usize = 8192;
/// Sink health changes waiting for the collector.
const SINK_NOTICES: usize = 64;
/// Snapshots waiting for a metrics sink: the newest supersedes the rest.
const SNAPSHOT_QUEUE: usize = 8;
/// A collection a little early still counts as a metrics export interval gone.
const COLLECT_SLACK: Duration = Duration::from_millis(500);
/// How long the HTTP server waits for open requests after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the agent could not run: a usage error (bad config, missing privilege: exit code 2) or a
/// failure while running (exit code 1).
#[derive(Debug)]
pub enum RunError {
    Usage(anyhow::Error),
    Failed(anyhow::Error),
}

/// What the API asks of the collector.
#[derive(Debug)]
pub enum Control {
    /// Collect now and answer when the new snapshot is published.
    Collect(tokio::sync::oneshot::Sender<()>),
    /// Fold what is left and stop.
    Stop,
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), RunError> {
    config.check_paths().map_err(|e| RunError::Usage(e.into()))?;
    let layout = Layout::detect(&config.cgroup_root)
        .map_err(|e| RunError::Usage(anyhow::Error::new(e).context("cgroup_root names no cgroup hierarchy")))?;
    tracing::info!(layout = %layout.describe(), "Detected cgroups");
    // Bound before the probes load, so a taken port fails fast and loads nothing.
    let listener = TcpListener::bind(config.listen)
        .with_context(|| format!("listening on {} (setting `listen`)", config.listen))
        .map_err(RunError::Usage)?;
    let mut probes = load_probes(&config)?;
    let telemetry = Arc::new(Telemetry::default());
    let cancel = CancellationToken::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(RunError::Failed)?;

    // The pod watch: a task on the runtime, publishing into the cache, pinging the collector.
    let (pods_changed_tx, pods_changed) = crossbeam_channel::bounded(1);
    let pods = if config.kubernetes.enabled() {
        let client = runtime
            .block_on(kubernetes::client(&config.kubernetes))
            .context("setting `kubernetes`")
            .map_err(RunError::Usage)?;
        let cache = Arc::new(PodCache::notifying(pods_changed_tx));
        let health = Arc::new(WatchHealth::default());
        let node = config.kubernetes.resolved_node_name();
        tracing::info!(node = %node, "Starting the watch of this node's pods through the Kubernetes API");
        let watch = kubernetes::watch_pods(
            client,
            node,
            cache.clone(),
            config.kubernetes.model.clone(),
            health.clone(),
            config.kubernetes.retry(),
        );
        let cancel = cancel.clone();
        runtime.spawn(async move {
            tokio::select! {
                () = watch => {}
                () = cancel.cancelled() => {}
            }
        });
        Some((cache, health))
    } else {
        tracing::info!("Kubernetes API not configured: attributing by pod UID and container id");
        None
    };

    // Sources on their own threads.
    let (observations_tx, observations) = crossbeam_channel::bounded(OBSERVATION_QUEUE);
    let outbox = Outbox::new(observations_tx, telemetry.clone());
    let mut sources: Vec<JoinHandle<()>> = Vec::new();
    let payload = probes.as_mut().and_then(Probes::take_payload);
    let (exits_tx, exits) = crossbeam_channel::bounded(EXIT_QUEUE);
    let exits_tx = payload.is_some().then(|| Outbox::new(exits_tx, telemetry.clone()));
    if let Some(ring) = probes.as_mut().and_then(Probes::take_events) {
        let source = EventSource {
            ring,
            proc_root: config.proc_root.clone(),
            observations: outbox.clone(),
            exits: exits_tx,
            // Only where cgroup ids cannot name a container (v1-only nodes).
            exit_cgroups: layout.v2_root().is_none(),
            telemetry: telemetry.clone(),
        };
        let cancel = cancel.clone();
        sources.push(spawn("mm-events", move || source.run(cancel)).map_err(RunError::Failed)?);
    }
    if let Some(ring) = payload {
        let source = PayloadSource {
            ring,
            proc_root: config.proc_root.clone(),
            observations: outbox.clone(),
            exits,
            telemetry: telemetry.clone(),
        };
        let cancel = cancel.clone();
        sources.push(spawn("mm-payload", move || source.run(cancel)).map_err(RunError::Failed)?);
    }
    if config.gpu.enabled == crate::sources::gpu::GpuMode::Auto {
        // Loaded on its own thread too: a driver that hangs must not hold up the agent's start.
        let gpu = config.gpu.clone();
        let observations = outbox.clone();
        let cancel = cancel.clone();
        // Not joined at shutdown: a hung driver call must not hold up the exit.
        spawn("mm-gpu", move || match crate::sources::gpu::open(&gpu) {
            Ok(nvml) => {
                tracing::info!(driver = nvml.sys_driver_version().ok(), devices = nvml.device_count().ok(), "Reading GPUs through NVML");
                crate::sources::gpu::GpuSource { nvml, interval: gpu.interval, observations }.run(cancel);
            }
            Err(error) => {
                tracing::info!(error = %error, "No GPU metrics: the NVML library did not load (no NVIDIA driver here?)");
            }
        })
        .map_err(RunError::Failed)?;
    }
    drop(outbox);

    // Push sinks, each on its own driver thread behind a bounded queue.
    let env = |key: &str| std::env::var(key).ok();
    let pushed = start_sinks(&config, &env)?;

    // The collector owns the resolver, the store and the probes until it stops.
    let cell = Arc::new(SnapshotCell::default());
    let (control_tx, control) = crossbeam_channel::unbounded();
    let pod_watch = pods.as_ref().map(|(_, health)| health.clone());
    let collector = Collector {
        store: Store::new(&config, telemetry.clone()),
        resolver: Resolver::new(&config, layout, pods.as_ref().map(|(cache, _)| cache.clone())),
        pod_watch: pod_watch.clone(),
        probes,
        cell: cell.clone(),
        telemetry: telemetry.clone(),
        log_sinks: pushed.logs.clone(),
        metric_sinks: pushed.metrics.iter().map(|(handle, every)| (handle.clone(), *every, None)).collect(),
        sink_notices: pushed.notices.clone(),
        proc_root: config.proc_root.clone(),
    };
    let interval = config.interval;
    let collector = spawn("mm-collector", move || collector.run(observations, control, pods_changed, interval))
        .map_err(RunError::Failed)?;

    let state = Arc::new(api::ApiState {
        cell,
        refresh: Some(control_tx.clone()),
        min_collect_interval: config.min_collect_interval,
        max_snapshot_age: config.interval * 3 + Duration::from_secs(30),
        pod_watch,
    });
    let served = runtime.block_on(serve(listener, state, cancel.clone()));

    // Ordered shutdown: sources, a last fold, sinks, then the probes.
    cancel.cancel();
    for source in sources {
        let _ = source.join();
    }
    let _ = control_tx.send(Control::Stop);
    let probes = collector.join().unwrap_or_else(|_| {
        tracing::error!("The collector panicked");
        None
    });
    pushed.stop();
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(probes);
    tracing::info!("Probes detached, exiting");
    served.map_err(RunError::Failed)
}

/// The running push sinks.
struct PushSinks {
    notices: Receiver<sinks::SinkNotice>,
    logs: Vec<SinkHandle<LogRecord>>,
    metrics: Vec<(SinkHandle<Arc<Snapshot>>, Duration)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PushSinks {
    /// Tells every driver the agent is stopping (retries end after a grace period), and waits for
    /// each to flush once the collector, the last feeder, has dropped its queue ends.
    fn stop(self) {
        for stats in self.logs.iter().map(|h| &h.stats).chain(self.metrics.iter().map(|(h, _)| &h.stats)) {
            stats.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for handle in &self.logs {
            handle.close();
        }
        drop(self.logs);
        drop(self.metrics);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Starts the configured push sinks. A sink that cannot be set up (a CA file missing, a secret
/// unreadable) is a usage error naming its setting.
fn start_sinks(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<PushSinks, RunError> {
    let sinks = &config.sinks;
    let node = config.kubernetes.resolved_node_name();
    let usage = |setting: &str, e: anyhow::Error| RunError::Usage(e.context(format!("setting `{setting}`")));
    let failed = |e: std::io::Error| RunError::Failed(anyhow::Error::new(e).context("starting a sink thread"));
    let events = sinks.batch.events();
    let (notify, notices) = crossbeam_channel::bounded(SINK_NOTICES);
    let mut pushed = PushSinks { notices, logs: Vec::new(), metrics: Vec::new(), threads: Vec::new() };
    let mut add_log_sink = |handle: (SinkHandle<LogRecord>, std::thread::JoinHandle<()>)| {
        pushed.logs.push(handle.0);
        pushed.threads.push(handle.1);
    };
    if sinks.stdout {
        add_log_sink(SinkHandle::spawn(sinks::stdout::Stdout, sinks.queue_events, events).map_err(failed)?);
    }
    if let Some(url) = &sinks.loki.url {
        let loki = sinks::backends::LokiSink::new(url, &sinks.loki, &node).map_err(|e| usage("sinks.loki", e))?;
        add_log_sink(spawn_log_sink(loki, sinks, events).map_err(|e| usage("sinks.spool", e))?);
    }
    if let Some(url) = &sinks.elasticsearch.url {
        let es = sinks::backends::ElasticsearchSink::new(url, &sinks.elasticsearch, &node)
            .map_err(|e| usage("sinks.elasticsearch", e))?;
        add_log_sink(spawn_log_sink(es, sinks, events).map_err(|e| usage("sinks.spool", e))?);
    }
    if sinks.otlp.active(env) {
        use sinks::otlp::{OtlpLogs, OtlpMetrics, Signal};
        let resource = sinks::otlp::resource(&node, env);
        let otlp_error = |e: String| RunError::Usage(anyhow::anyhow!(e).context("setting `sinks.otlp`"));
        if sinks.otlp.logs {
            let target = sinks.otlp.target(Signal::Logs, env).map_err(otlp_error)?;
            tracing::info!(endpoint = %target.url, protocol = ?target.protocol, "Exporting events as OTLP logs");
            let sink = OtlpLogs::new(&target, resource.clone()).map_err(|e| usage("sinks.otlp", e))?;
            add_log_sink(spawn_log_sink(sink, sinks, events).map_err(|e| usage("sinks.spool", e))?);
        }
        if sinks.otlp.metrics {
            let target = sinks.otlp.target(Signal::Metrics, env).map_err(otlp_error)?;
            let every = sinks.otlp.resolved_interval(env).map_err(otlp_error)?;
            tracing::info!(endpoint = %target.url, protocol = ?target.protocol, interval = ?every, "Exporting OTLP metrics");
            let sink = OtlpMetrics::new(&target, resource, SystemTime::now()).map_err(|e| usage("sinks.otlp", e))?;
            // A failed export is retried until the next one is due; then the newer snapshot goes.
            let delivery = Delivery {
                max_items: SNAPSHOT_QUEUE,
                max_bytes: usize::MAX,
                max_wait: Duration::ZERO,
                max_attempts: Some(4),
                backoff_base: Duration::from_millis(500),
                backoff_max: every.max(Duration::from_secs(1)),
            };
            let (handle, thread) = SinkHandle::spawn(sink, SNAPSHOT_QUEUE, delivery).map_err(failed)?;
            pushed.metrics.push((handle, every));
            pushed.threads.push(thread);
        }
    }
    for stats in pushed.logs.iter().map(|h| &h.stats).chain(pushed.metrics.iter().map(|(h, _)| &h.stats)) {
        stats.notify(notify.clone());
    }
    Ok(pushed)
}

/// A backend's log sink: its events wait on disk when the spool is on, else in memory.
fn spawn_log_sink<S: sinks::Sink<Item = LogRecord>>(
    sink: S,
    config: &sinks::SinksConfig,
    delivery: Delivery,
) -> anyhow::Result<(SinkHandle<LogRecord>, std::thread::JoinHandle<()>)> {
    if config.spool.enabled {
        let dir = config.spool.path.join(sink.name());
        tracing::info!(sink = sink.name(), dir = %dir.display(), "Events wait in a disk spool");
        SinkHandle::spawn_spooled(sink, &dir, config.spool.max_bytes, delivery)
    } else {
        Ok(SinkHandle::spawn(sink, config.queue_events, delivery)?)
    }
}

fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(f).with_context(|| format!("starting thread {name}"))
}

fn load_probes(config: &Config) -> Result<Option<Probes>, RunError> {
    if !config.probes.enabled {
        tracing::warn!("Probes disabled: CPU from cgroup files, no run-queue delay or OOM events");
        return Ok(None);
    }
    if !doctor::can_load_probes() {
        return Err(RunError::Usage(anyhow::anyhow!(
            "loading eBPF probes needs the CAP_BPF and CAP_PERFMON capabilities (or root); \
             grant them, or set probes.enabled: false"
        )));
    }
    raise_memlock();
    // Attached syscall probes cost every process on the node (each hooked syscall then takes the
    // kernel's tracing path), so with nothing to watch they stay off.
    let mut probes_config = config.probes.clone();
    probes_config.request_tracing &= config.requests.watch != crate::store::requests::WatchSet::None;
    let probes = Probes::load(&probes_config).context("loading the eBPF probes").map_err(RunError::Usage)?;
    tracing::info!(family = probes.family().as_str(), programs = probes.attached().len(), "Probes attached");
    Ok(Some(probes))
}

async fn serve(
    listener: TcpListener,
    state: Arc<api::ApiState>,
    cancel: CancellationToken,
) -> Result<(), anyhow::Error> {
    listener.set_nonblocking(true).context("listening socket")?;
    let listener = tokio::net::TcpListener::from_std(listener).context("listening socket")?;
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(address = %address, "Serving /metrics, /healthz, /readyz");
    let stopping = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.cancel();
    });
    let evicted = api::serve(listener, api::router(state), api::ServerLimits::default(), cancel, SHUTDOWN_GRACE).await;
    if evicted > 0 {
        tracing::info!(connections = evicted, "Closed the oldest HTTP connections to stay within the limit");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("Installing signal handlers failed; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Owns the resolver, the store and the probes' maps; folds observations as they come and
/// collects at every tick or scrape.
struct Collector {
    store: Store,
    resolver: Resolver,
    probes: Option<Probes>,
    cell: Arc<SnapshotCell>,
    telemetry: Arc<Telemetry>,
    log_sinks: Vec<SinkHandle<LogRecord>>,
    /// Metric sinks, how often each exports, and when it last got a snapshot.
    metric_sinks: Vec<(SinkHandle<Arc<Snapshot>>, Duration, Option<Instant>)>,
    proc_root: std::path::PathBuf,
    pod_watch: Option<Arc<WatchHealth>>,
    /// Push sinks' health changes, made events at each collection.
    sink_notices: Receiver<sinks::SinkNotice>,
}

impl Collector {
    /// Runs until told to stop; returns the probes so the caller detaches them last.
    fn run(
        mut self,
        observations: Receiver<Observation>,
        control: Receiver<Control>,
        pods_changed: Receiver<()>,
        interval: Duration,
    ) -> Option<Probes> {
        let ticker = crossbeam_channel::tick(interval);
        let mut observations = observations;
        let mut pods_changed = pods_changed;
        self.collect();
        loop {
            select! {
                recv(observations) -> observation => match observation {
                    Ok(observation) => self.apply(observation),
                    // No source left (none runs without probes).
                    Err(_) => observations = crossbeam_channel::never(),
                },
                recv(control) -> message => match message {
                    Ok(Control::Collect(waiter)) => {
                        // Scrapes that arrived meanwhile share this collection.
                        let mut waiters = vec![waiter];
                        let mut stop = false;
                        for more in control.try_iter() {
                            match more {
                                Control::Collect(waiter) => waiters.push(waiter),
                                Control::Stop => stop = true,
                            }
                        }
                        self.collect();
                        for waiter in waiters {
                            let _ = waiter.send(());
                        }
                        if stop {
                            break;
                        }
                    }
                    Ok(Control::Stop) | Err(_) => break,
                },
                recv(ticker) -> _ => self.collect(),
                recv(pods_changed) -> changed => match changed {
                    Ok(()) => self.update_watch(),
                    Err(_) => pods_changed = crossbeam_channel::never(),
                },
            }
        }
        // The sources have stopped: what they sent last is folded once more.
        for observation in observations.try_iter() {
            self.apply(observation);
        }
        self.collect();
        self.probes.take()
    }

    fn apply(&mut self, observation: Observation) {
        self.note_exits(&observation);
        let mut logs = Vec::new();
        self.store.apply(observation, &mut self.resolver, Instant::now(), &mut logs);
        self.offer_logs(logs);
    }

    /// Each record to every log sink: the last takes the record itself, the others a copy.
    fn offer_logs(&self, records: Vec<LogRecord>) {
        let Some((last, others)) = self.log_sinks.split_last() else { return };
        for record in records {
            for sink in others {
                sink.offer(record.clone());
            }
            last.offer(record);
        }
    }

    /// Exits go to the resolver, which keeps the process's identity for one more fold.
    fn note_exits(&mut self, observation: &Observation) {
        match observation {
            Observation::ProcessExit { tgid, cgroups } => self.resolver.note_exit(*tgid, cgroups.as_deref()),
            Observation::Batch(batch) => batch.iter().for_each(|o| self.note_exits(o)),
            Observation::OomKill(_) | Observation::Exchange { .. } | Observation::Gpu(_) | Observation::GpuXid(_) => {}
        }
    }

    /// Points request tracing at the cgroups the resolver names.
    fn update_watch(&mut self) {
        let Some(probes) = self.probes.as_mut().filter(|p| p.has_request_tracing()) else { return };
        let (wanted, all) = self.resolver.watched();
        probes.set_watch_all(all);
        probes.set_watched_cgroups(&wanted);
    }

    fn collect(&mut self) {
        let started = Instant::now();
        if let Err(e) = self.resolver.discover() {
            CollectionFailed { stage: Stage::Discover, error: &e }.emit(&self.telemetry);
        }
        self.update_watch();
        let cpu = self.probes.as_mut().map(|probes| read_cpu(probes, &self.proc_root, &self.telemetry));
        // Processes folded for the last time: the resolver forgets them after the fold.
        let finished: std::collections::HashSet<u32> = match &cpu {
            Some(Ok(entries)) => entries.iter().filter(|e| !e.alive).map(|e| e.tgid).collect(),
            _ => Default::default(),
        };
        let layout = self.resolver.layout();
        let mut cgroups: Vec<CgroupReading> = self
            .resolver
            .table()
            .cgroups
            .iter()
            .map(|(identity, path)| CgroupReading {
                identity: identity.clone(),
                path: path.clone(),
                read: read_cgroup(layout, identity, path, &self.proc_root, &self.telemetry),
            })
            .collect();
        let processes = self.resolver.processes();
        cgroups.extend(processes.workloads.iter().filter_map(|(identity, workload)| match identity {
            Identity::Process { pid, .. } => Some(process_reading(identity, *pid, workload)),
            _ => None,
        }));
        let readings = Readings {
            cgroups,
            cpu,
            probes: self.probes.as_ref().map(probe_health),
            own: procfs::own_usage(),
            pod_watch: self.pod_watch.as_ref().map(|health| health.status()),
            sinks: self
                .log_sinks
                .iter()
                .map(SinkHandle::row)
                .chain(self.metric_sinks.iter().map(|(sink, _, _)| sink.row()))
                .collect(),
            unnamed_processes: processes.unnamed.clone(),
        };
        Collected { duration: started.elapsed() }.emit(&self.telemetry);
        let snapshot = self.store.fold(readings, &mut self.resolver, SystemTime::now());
        for tgid in finished {
            self.resolver.forget_tgid(tgid);
        }
        self.resolver.end_collection();
        for notice in self.sink_notices.try_iter() {
            self.store.sink_event(&notice);
        }
        let events = self.store.take_events();
        self.offer_logs(events);
        let snapshot = Arc::new(snapshot);
        for (sink, every, last) in &mut self.metric_sinks {
            if last.is_none_or(|at| at.elapsed() + COLLECT_SLACK >= *every) {
                *last = Some(Instant::now());
                sink.offer(snapshot.clone());
            }
        }
        self.cell.set_shared(snapshot);
    }
}

/// The probes' CPU entries with each process's liveness; entries of finished processes are
/// deleted from the map (the fold that follows folds them for the last time).
fn read_cpu(probes: &mut Probes, proc_root: &std::path::Path, telemetry: &Telemetry) -> Result<Vec<CpuEntry>, ()> {
    // Tasks running uninterrupted get their time so far accounted before the read.
    kernel::flush_cpu_slices();
    let entries = match probes.read_task_cpu() {
        Ok(entries) => entries,
        Err(e) => {
            CollectionFailed { stage: Stage::ProbeRead, error: &e }.emit(telemetry);
            return Err(());
        }
    };
    let mut alive = std::collections::HashMap::new();
    let mut finished_keys = Vec::new();
    let entries: Vec<CpuEntry> = entries
        .into_iter()
        .map(|(key, cpu)| {
            let is_alive = *alive.entry(key.tgid).or_insert_with(|| procfs::process_exists(proc_root, key.tgid));
            if !is_alive {
                finished_keys.push(key);
            }
            CpuEntry { cgroup_id: key.cgroup_id, tgid: key.tgid, cpu, alive: is_alive }
        })
        .collect();
    probes.remove_tasks(&finished_keys);
    Ok(entries)
}

/// Kernels before 5.11 charge eBPF maps to RLIMIT_MEMLOCK, often 64 KiB or 8 MiB: the limit is
/// raised when CAP_SYS_RESOURCE allows (the old-kernel overlay). Later kernels charge the cgroup.
fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return;
    }
    let error = std::io::Error::last_os_error();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if kernel_before(release.trim(), (5, 11)) {
        tracing::warn!(
            %error,
            kernel = release.trim(),
            "Cannot raise RLIMIT_MEMLOCK, which this kernel charges eBPF maps to: loading may fail; grant \
             CAP_SYS_RESOURCE (daemonset/overlays/old-kernel)"
        );
    }
}

/// Whether a kernel release (`5.10.0-28-amd64`) is older than `(major, minor)`; an unreadable one is not.
fn kernel_before(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

/// A standalone workload read like a cgroup: its processes' CPU time and resident memory from
/// /proc (no limit, no throttling: it has no cgroup of its own).
fn process_reading(identity: &Identity, pid: u32, workload: &ProcessWorkload) -> CgroupReading {
    let memory = MemoryStats {
        usage_bytes: workload.rss_bytes,
        working_set_bytes: workload.rss_bytes,
        rss_bytes: workload.rss_bytes,
        limit_bytes: None,
        oom_kills: None,
    };
    let cpu = CpuStats { usage_ns: Some((workload.cpu_seconds * 1e9) as u64), ..CpuStats::default() };
    CgroupReading {
        identity: identity.clone(),
        path: format!("/proc/{pid}"),
        read: CgroupRead::Stats(CgroupStats { memory, cpu }),
    }
}

/// Reads one cgroup's files; a cgroup whose directory is gone is `Gone`.
fn read_cgroup(
    layout: &Layout,
    identity: &Identity,
    path: &str,
    proc_root: &std::path::Path,
    telemetry: &Telemetry,
) -> CgroupRead {
    match layout.read_stats(path) {
        Ok(stats) => return CgroupRead::Stats(stats),
        // Removed while being read: said by `Gone` below, not an error.
        Err(e) if e.is_not_found() => {}
        Err(e) => CollectionFailed { stage: Stage::CgroupRead, error: &e }.emit(telemetry),
    }
    if !layout.cgroup_exists(path) {
        return CgroupRead::Gone;
    }
    // On a hybrid host the v1 controllers may hold the container at other paths: its processes
    // say where, and those paths must name the same container (a v2-only unit's processes sit
    // in some shared v1 cgroup, which is not theirs to report).
    if layout.v1_roots().is_some()
        && let Some(pid) = layout.first_process(path)
    {
        let cgroups = procfs::read_proc_cgroup(proc_root, pid).unwrap_or_default();
        let same = |rel: &&str| crate::identity::identify(rel) == *identity;
        if let (Some(memory), Some(cpu)) =
            (cgroups.v1_memory.as_deref().filter(same), cgroups.v1_cpu.as_deref().filter(same))
        {
            match layout.read_v1_stats_at(memory, cpu) {
                Ok(stats) => return CgroupRead::Stats(stats),
                Err(e) => CollectionFailed { stage: Stage::CgroupRead, error: &e }.emit(telemetry),
            }
        }
    }
    CgroupRead::NoFiles
}

fn probe_health(probes: &Probes) -> ProbeHealth {
    ProbeHealth {
        family: probes.family().as_str(),
        programs: probes
            .program_stats()
            .into_iter()
            .map(|(program, stats)| ProbeRow {
                name: program.name,
                event: program.event,
                run_time_seconds: stats.run_time_ns as f64 / 1e9,
                runs: stats.run_count,
            })
            .collect(),
        counters: probes.counters(),
        has_oom_probe: probes.has_oom_probe(),
        requests_traced: probes.has_request_tracing(),
        watched_cgroups: probes.watched_cgroups(),
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_before;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(kernel_before("5.10.0-28-amd64", (5, 11)));
        assert!(kernel_before("4.19.0", (5, 11)));
        assert!(!kernel_before("5.11.0", (5, 11)));
        assert!(!kernel_before("6.18.44-fc-v669", (5, 11)));
        assert!(!kernel_before("", (5, 11)), "unknown is not old");
    }
}
