//! The `modelmeter` binary: `run` the agent, or `doctor` this machine.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use modelmeter::{
    api,
    collect::cgroup::Layout,
    config::{Config, LogFormat},
    doctor, export,
    identity::kubernetes::{self, PodCache},
    kernel::Probes,
    store::{Aggregator, SnapshotCell},
};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Parser)]
#[command(name = "modelmeter", version, about = "Attributes CPU, memory and latency to pods and the models they serve")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: load the probes, collect, serve /metrics.
    Run {
        /// YAML config file; MODELMETER_* environment variables override its fields.
        #[arg(long, env = "MODELMETER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Report what this machine allows: kernel, BTF, eBPF program types, cgroups, privileges, NVML.
    Doctor {
        #[arg(long, env = "MODELMETER_CONFIG")]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code for a bad config or a missing privilege.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Run { config: path } | Command::Doctor { config: path, .. }) = &cli.command;
    let config = match Config::load(path.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, &anyhow::Error::new(e)),
    };
    match cli.command {
        Command::Doctor { json, .. } => {
            let checks = doctor::run(&config);
            if json {
                println!("{}", serde_json::to_string_pretty(&checks).unwrap_or_default());
            } else {
                print!("{}", doctor::table(&checks));
            }
            ExitCode::SUCCESS
        }
        Command::Run { .. } => run(config),
    }
}

fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("modelmeter: {error:#}");
    ExitCode::from(code)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config: Config) -> ExitCode {
    init_logging(&config);
    let layout = match Layout::detect(&config.cgroup_root) {
        Ok(layout) => layout,
        Err(e) => {
            return fail(EXIT_USAGE, &anyhow::Error::new(e).context("cgroup_root names no cgroup hierarchy"));
        }
    };
    tracing::info!(layout = %layout.describe(), "Detected cgroups");
    let probes = if config.probes.enabled {
        if !doctor::can_load_probes() {
            return fail(
                EXIT_USAGE,
                &anyhow::anyhow!(
                    "loading eBPF probes needs the CAP_BPF and CAP_PERFMON capabilities (or root); \
                     grant them, or set probes.enabled: false"
                ),
            );
        }
        match Probes::load(&config.probes) {
            Ok(mut probes) => {
                tracing::info!(
                    family = probes.family().as_str(),
                    programs = probes.attached().len(),
                    "Probes attached"
                );
                let events = probes.take_events();
                let data_events = probes.take_data_events();
                Some((probes, events, data_events))
            }
            Err(e) => return fail(EXIT_USAGE, &anyhow::Error::new(e).context("loading the eBPF probes")),
        }
    } else {
        tracing::warn!("Probes disabled: CPU from cgroup files, no run-queue delay or OOM events");
        None
    };
    let (probes, events, data_events) = match probes {
        Some((probes, events, data_events)) => (Some(probes), events, data_events),
        None => (None, None, None),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, &anyhow::Error::new(e).context("starting the async runtime")),
    };
    let pods = if config.kubernetes.enabled() {
        let client = match runtime.block_on(kubernetes::client(&config.kubernetes)) {
            Ok(client) => client,
            Err(e) => return fail(EXIT_USAGE, &anyhow::Error::new(e).context("setting `kubernetes`")),
        };
        let cache = Arc::new(PodCache::default());
        let node = config.kubernetes.resolved_node_name();
        tracing::info!(node = %node, "Watching pods of this node through the Kubernetes API");
        runtime.spawn(kubernetes::watch_pods(client, node, cache.clone(), config.kubernetes.model.clone()));
        Some(cache)
    } else {
        tracing::info!("Kubernetes API not configured: attributing by pod UID and container id");
        None
    };
    let aggregator = Arc::new(Mutex::new(Aggregator::new(&config, layout, probes, pods)));
    let result = runtime.block_on(serve(config, aggregator.clone(), events, data_events));
    // Dropping the aggregator drops the probes, which detaches them.
    drop(aggregator);
    tracing::info!("Probes detached, exiting");
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e),
    }
}

async fn serve(
    config: Config,
    aggregator: Arc<Mutex<Aggregator>>,
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    data_events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
) -> anyhow::Result<()> {
    let cell = Arc::new(SnapshotCell::default());
    let (refresh_tx, refresh_rx) = mpsc::channel(64);
    let state = Arc::new(api::ApiState {
        cell: cell.clone(),
        registry: export::prometheus::registry(cell.clone()),
        refresh: Some(refresh_tx),
        min_collect_interval: config.min_collect_interval,
        max_snapshot_age: config.interval * 3 + Duration::from_secs(30),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} (setting `listen`)", config.listen))?;
    tracing::info!(address = %config.listen, "Serving /metrics, /healthz, /readyz");
    let mut tasks = Vec::new();
    if let Some(events) = events {
        // Exit and OOM records wake the reader each time: they are rare.
        let reader = read_ring(events, aggregator.clone(), "exit and OOM", None, Aggregator::on_event_bytes);
        tasks.push(tokio::spawn(reader));
    }
    if let Some(data_events) = data_events {
        let reader = read_ring(
            data_events,
            aggregator.clone(),
            "request payload",
            Some(RING_POLL),
            Aggregator::on_data_event_bytes,
        );
        tasks.push(tokio::spawn(reader));
    }
    tasks.push(tokio::spawn(collect_loop(config.interval, aggregator, cell, refresh_rx)));
    let served = axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown_signal()).await;
    // The tasks hold the aggregator (and so the probes): end them so that dropping it detaches.
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
    served.context("serving HTTP")
}

/// Collects every `interval`, and on demand for scrapes of a stale snapshot.
async fn collect_loop(
    interval: Duration,
    aggregator: Arc<Mutex<Aggregator>>,
    cell: Arc<SnapshotCell>,
    mut refresh: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut waiters = Vec::new();
        tokio::select! {
            _ = ticker.tick() => {}
            Some(waiter) = refresh.recv() => waiters.push(waiter),
        }
        // Scrapes that arrived meanwhile share this collection.
        while let Ok(waiter) = refresh.try_recv() {
            waiters.push(waiter);
        }
        let aggregator = aggregator.clone();
        let collected = tokio::task::spawn_blocking(move || {
            // Before taking the lock: the ring readers keep going while CPUs switch.
            modelmeter::kernel::flush_cpu_slices();
            aggregator.lock().unwrap_or_else(|e| e.into_inner()).collect()
        })
        .await;
        match collected {
            Ok(snapshot) => cell.set(snapshot),
            Err(e) => tracing::error!(error = %e, "Collection panicked"),
        }
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

/// Records applied under one hold of the aggregator's lock, so a busy ring cannot starve
/// collections (and the runtime) for long.
const RING_BATCH: usize = 1024;
/// How often the payload ring is read: its probes wake the reader only for a large backlog,
/// which saves an irq_work per record.
const RING_POLL: Duration = Duration::from_millis(100);

/// Applies a ring buffer's records as they arrive: when the kernel wakes the reader, and every
/// `poll` if given.
async fn read_ring(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    aggregator: Arc<Mutex<Aggregator>>,
    what: &'static str,
    poll: Option<Duration>,
    apply: fn(&mut Aggregator, &[u8]),
) {
    // SAFETY: the ring buffer owns its fd, which stays open for as long as the AsyncFd holds it.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e.into_parts().1, ring = what, "Polling a ring buffer failed; its events are off");
            return;
        }
    };
    loop {
        tokio::select! {
            ready = fd.readable_mut() => match ready {
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!(error = %e, ring = what, "Ring buffer poll failed");
                    return;
                }
            },
            _ = tokio::time::sleep(poll.unwrap_or(Duration::MAX)), if poll.is_some() => {}
        }
        loop {
            let mut applied = 0;
            {
                // Records are applied in place, without copies.
                let ring = fd.get_mut();
                let mut aggregator = aggregator.lock().unwrap_or_else(|e| e.into_inner());
                while applied < RING_BATCH {
                    let Some(item) = ring.next() else { break };
                    apply(&mut aggregator, &item);
                    applied += 1;
                }
            }
            if applied < RING_BATCH {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
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
