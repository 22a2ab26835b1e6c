//! Sinks: where snapshots and log records leave the agent. Pull sinks (Prometheus) encode the
//! latest snapshot when asked; push sinks implement [`Sink`] and run on one [`drive`]r: batch by
//! count and time from a bounded queue → encode → send → a retry decision per response (capped
//! exponential backoff with full jitter, a server's `Retry-After` honoured, permanent failures
//! reported once and counted). Sinks never resolve identities: attributes arrive typed and each
//! sink picks its spelling from [`crate::attributes`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use std::collections::BTreeMap;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::{Deserialize, Serialize};

use crate::backoff::Jitter;

pub mod backends;
pub mod elasticsearch;
pub mod families;
pub mod http;
pub mod loki;
pub mod otlp;
pub mod prometheus;
pub mod spool;
pub mod stdout;

/// What to do after a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Delivered.
    Done,
    /// Worth another try, after at least this long if the backend said so.
    Retriable { after: Option<Duration>, reason: String },
    /// Will never succeed as it is: counted as dropped.
    Permanent { reason: String },
    /// Larger than the backend takes (413): sent again in halves; one item alone is dropped.
    TooLarge { reason: String },
    /// Some items were taken and some not (an Elasticsearch bulk response): the items at `retry`
    /// (indices into the batch) are sent again, those at `rejected` are dropped and counted, and
    /// `duplicates` were already stored by an earlier, partly accepted attempt.
    Partial { retry: Vec<usize>, rejected: Vec<usize>, duplicates: u64, reason: String },
}

/// A push sink: one backend's encoding, sending and retry rules.
pub trait Sink: Send + 'static {
    type Item: Clone + Send + 'static;
    type Request;
    type Response;

    fn name(&self) -> &'static str;
    fn encode(&mut self, batch: &[Self::Item]) -> Self::Request;
    fn send(&mut self, request: &Self::Request) -> Self::Response;
    /// Retriable or permanent, decided per response to a request encoding `batch`.
    fn decide(&self, response: &Self::Response, batch: &[Self::Item]) -> Retry;
    /// About how many bytes `item` adds to a request, for batching by size; 0 when size does not
    /// matter.
    fn item_bytes(&self, _item: &Self::Item) -> usize {
        0
    }
}

/// Batching and retry settings of one driver.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub max_items: usize,
    /// A batch is closed once its items add up to this many bytes (see [`Sink::item_bytes`]).
    pub max_bytes: usize,
    /// A batch is sent at the latest this long after its first item.
    pub max_wait: Duration,
    /// `None`: retry until delivered (while the queue behind fills, and drops what it cannot hold).
    pub max_attempts: Option<u32>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            max_items: 500,
            max_bytes: 4 << 20,
            max_wait: Duration::from_secs(1),
            max_attempts: Some(5),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Why a sink dropped items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkDrop {
    /// Its queue was full when the item arrived.
    QueueFull,
    /// The backend refused it for good (400, 401, a mapping conflict).
    Rejected,
    /// Too large even alone.
    TooLarge,
    /// Every allowed attempt failed.
    RetriesExhausted,
    /// Still undelivered when the agent stopped (without a spool to keep it).
    Shutdown,
    /// The disk spool was full: the oldest events made room.
    SpoolFull,
    /// The disk spool could not be written, or held a damaged record.
    SpoolError,
}

impl SinkDrop {
    pub const ALL: [SinkDrop; 7] = [
        SinkDrop::QueueFull,
        SinkDrop::Rejected,
        SinkDrop::TooLarge,
        SinkDrop::RetriesExhausted,
        SinkDrop::Shutdown,
        SinkDrop::SpoolFull,
        SinkDrop::SpoolError,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            SinkDrop::QueueFull => "queue_full",
            SinkDrop::Rejected => "rejected",
            SinkDrop::TooLarge => "too_large",
            SinkDrop::RetriesExhausted => "retries_exhausted",
            SinkDrop::Shutdown => "shutdown",
            SinkDrop::SpoolFull => "spool_full",
            SinkDrop::SpoolError => "spool_error",
        }
    }
}

/// A driver's own figures, and the flag that tells it the agent is stopping.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Items delivered.
    pub sent: AtomicU64,
    /// Requests sent again.
    pub retried: AtomicU64,
    /// Items the backend already had (a retry of a partly accepted batch).
    pub duplicates: AtomicU64,
    dropped: [AtomicU64; SinkDrop::ALL.len()],
    /// Set at shutdown: retries stop once the grace period is over.
    pub stopping: AtomicBool,
    /// Permanent failures are logged the first time only, then counted.
    reported_permanent: AtomicBool,
    /// Whether the last send failed.
    failing: AtomicBool,
    /// Where changes of health go (the collector makes `sink_failure` events of them).
    notices: std::sync::OnceLock<crossbeam_channel::Sender<SinkNotice>>,
}

/// A push sink started or stopped failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkNotice {
    pub sink: &'static str,
    pub failing: bool,
    /// Why it fails; empty on recovery.
    pub reason: String,
}

impl SinkStats {
    pub fn drop_items(&self, reason: SinkDrop, count: u64) {
        self.dropped[reason as usize].fetch_add(count, Relaxed);
    }

    pub fn dropped(&self, reason: SinkDrop) -> u64 {
        self.dropped[reason as usize].load(Relaxed)
    }

    /// Sends health changes to `notices` from now on.
    pub fn notify(&self, notices: crossbeam_channel::Sender<SinkNotice>) {
        let _ = self.notices.set(notices);
    }

    fn health(&self, sink: &'static str, failing: bool, reason: &str) {
        if self.failing.swap(failing, Relaxed) != failing
            && let Some(notices) = self.notices.get()
        {
            // Bounded: a flapping sink's notices beyond it are only in its counters.
            let _ = notices.try_send(SinkNotice { sink, failing, reason: reason.to_owned() });
        }
    }
}

/// How long a sink keeps retrying after the agent was asked to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where a driver's items come from.
pub trait Feed<T>: Send + 'static {
    /// The next batch (waiting for its first item, then up to `max_wait` for more); `None` once
    /// the feed is closed and drained.
    fn next_batch(&mut self, delivery: &Delivery, bytes: &dyn Fn(&T) -> usize, stats: &SinkStats) -> Option<Vec<T>>;
    /// The last batch is settled: delivered, or given up and counted.
    fn settled(&mut self) {}
    /// Whether what is undelivered at shutdown is kept for the next start (the disk spool).
    fn durable(&self) -> bool {
        false
    }
}

/// The in-memory feed: a bounded channel.
impl<T: Send + 'static> Feed<T> for Receiver<T> {
    fn next_batch(&mut self, delivery: &Delivery, bytes: &dyn Fn(&T) -> usize, _: &SinkStats) -> Option<Vec<T>> {
        let first = self.recv().ok()?;
        let mut size = bytes(&first);
        let mut batch = vec![first];
        let deadline = Instant::now() + delivery.max_wait;
        while batch.len() < delivery.max_items && size < delivery.max_bytes {
            match self.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(item) => {
                    size += bytes(&item);
                    batch.push(item);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        Some(batch)
    }
}

/// The disk spool as a feed.
pub struct SpoolFeed {
    spool: Arc<spool::Spool>,
    position: Option<spool::Position>,
}

impl Feed<crate::store::LogRecord> for SpoolFeed {
    fn next_batch(
        &mut self,
        delivery: &Delivery,
        _: &dyn Fn(&crate::store::LogRecord) -> usize,
        stats: &SinkStats,
    ) -> Option<Vec<crate::store::LogRecord>> {
        let stopping = || stats.stopping.load(Relaxed);
        let (batch, position) = self.spool.read_batch(delivery.max_items, delivery.max_wait, &stopping)?;
        self.position = Some(position);
        Some(batch)
    }

    fn settled(&mut self) {
        if let Some(position) = self.position.take() {
            self.spool.settle(position);
        }
    }

    fn durable(&self) -> bool {
        true
    }
}

/// Runs `sink` until its feed is closed and drained (the collector's last records included), or,
/// for a durable feed, until the shutdown grace period ends with items still undelivered.
pub fn drive<S: Sink>(mut sink: S, mut feed: impl Feed<S::Item>, delivery: Delivery, stats: Arc<SinkStats>) {
    let mut jitter = Jitter::seeded();
    let durable = feed.durable();
    while let Some(batch) = feed.next_batch(&delivery, &|item| sink.item_bytes(item), &stats) {
        if batch.is_empty() {
            continue;
        }
        match deliver(&mut sink, batch, &delivery, &stats, &mut jitter, durable) {
            Settled::Yes => feed.settled(),
            // Kept in the spool for the next start.
            Settled::Kept => return,
        }
    }
}

/// What became of a batch.
enum Settled {
    /// Delivered, or given up and counted.
    Yes,
    /// Undelivered at shutdown, and kept by a durable feed.
    Kept,
}

fn deliver<S: Sink>(
    sink: &mut S,
    batch: Vec<S::Item>,
    delivery: &Delivery,
    stats: &SinkStats,
    jitter: &mut Jitter,
    durable: bool,
) -> Settled {
    // Batches still to send: the first, then halves of a too-large one, or a partial retry.
    let mut pending = vec![(batch, 1u32)];
    let mut stop_deadline: Option<Instant> = None;
    while let Some((batch, attempt)) = pending.pop() {
        if batch.is_empty() {
            continue;
        }
        let count = batch.len() as u64;
        let request = sink.encode(&batch);
        let response = sink.send(&request);
        let (retry_batch, after, reason) = match sink.decide(&response, &batch) {
            Retry::Done => {
                stats.sent.fetch_add(count, Relaxed);
                stats.health(sink.name(), false, "");
                continue;
            }
            Retry::Permanent { reason } => {
                stats.health(sink.name(), true, &reason);
                report_permanent(sink.name(), stats, &reason, count);
                stats.drop_items(SinkDrop::Rejected, count);
                continue;
            }
            Retry::TooLarge { reason } if batch.len() == 1 => {
                report_permanent(sink.name(), stats, &reason, 1);
                stats.drop_items(SinkDrop::TooLarge, 1);
                continue;
            }
            Retry::TooLarge { .. } => {
                let mut first = batch;
                let second = first.split_off(first.len() / 2);
                // Popped in order: the first half goes first.
                pending.push((second, attempt));
                pending.push((first, attempt));
                continue;
            }
            Retry::Partial { retry, rejected, duplicates, reason } => {
                let again: Vec<S::Item> = retry.iter().filter_map(|&i| batch.get(i).cloned()).collect();
                let rejected = rejected.iter().filter(|&&i| i < batch.len()).count() as u64;
                if rejected > 0 {
                    report_permanent(sink.name(), stats, &reason, rejected);
                    stats.drop_items(SinkDrop::Rejected, rejected);
                }
                stats.duplicates.fetch_add(duplicates, Relaxed);
                stats.sent.fetch_add(count - again.len() as u64 - rejected, Relaxed);
                if again.is_empty() {
                    continue;
                }
                (again, None, reason)
            }
            Retry::Retriable { after, reason } => {
                stats.health(sink.name(), true, &reason);
                (batch, after, reason)
            }
        };
        let left = retry_batch.len() as u64;
        if delivery.max_attempts.is_some_and(|max| attempt >= max) {
            tracing::warn!(sink = sink.name(), reason = %reason, items = left, "Sink retries exhausted; dropped");
            stats.drop_items(SinkDrop::RetriesExhausted, left);
            continue;
        }
        if stats.stopping.load(Relaxed) {
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
            if Instant::now() >= deadline && durable {
                tracing::warn!(sink = sink.name(), reason = %reason, "Agent stopping; undelivered events stay in the spool");
                return Settled::Kept;
            }
            if Instant::now() >= deadline {
                tracing::warn!(sink = sink.name(), reason = %reason, items = left, "Agent stopping; undelivered items dropped");
                stats.drop_items(SinkDrop::Shutdown, left);
                continue;
            }
        }
        stats.retried.fetch_add(1, Relaxed);
        let wait = after
            .unwrap_or_else(|| jitter.backoff(attempt, delivery.backoff_base, delivery.backoff_max))
            .min(delivery.backoff_max);
        tracing::debug!(sink = sink.name(), reason = %reason, attempt, wait = ?wait, "Retrying");
        sleep_unless_stopping(wait, stats);
        pending.push((retry_batch, attempt + 1));
    }
    Settled::Yes
}

/// Sleeps `wait`, waking early (within 100 ms) when the agent starts stopping.
fn sleep_unless_stopping(wait: Duration, stats: &SinkStats) {
    let until = Instant::now() + wait;
    while !stats.stopping.load(Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

fn report_permanent(sink: &str, stats: &SinkStats, reason: &str, items: u64) {
    if !stats.reported_permanent.swap(true, Relaxed) {
        tracing::error!(
            sink,
            reason,
            items,
            "Sink rejected items; they are dropped and counted (further rejections are only counted)"
        );
    } else {
        tracing::debug!(sink, reason, items, "Sink rejected items; dropped");
    }
}

/// `sinks`: where events and metrics are pushed. Prometheus scrapes `/metrics` regardless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Events as JSON lines on stdout, what `kubectl logs` shows. Default `true`.
    pub stdout: bool,
    pub otlp: otlp::OtlpConfig,
    pub loki: LokiConfig,
    pub elasticsearch: ElasticsearchConfig,
    /// Events each sink holds while its backend is slow or down; beyond it new events are dropped
    /// and counted in `modelmeter_sink_dropped_total{reason="queue_full"}`. Default `10000`.
    pub queue_events: usize,
    pub batch: BatchConfig,
    /// Keep undelivered events on disk instead (Loki, Elasticsearch, OTLP logs).
    pub spool: spool::SpoolConfig,
}

impl Default for SinksConfig {
    fn default() -> Self {
        SinksConfig {
            stdout: true,
            otlp: otlp::OtlpConfig::default(),
            loki: LokiConfig::default(),
            elasticsearch: ElasticsearchConfig::default(),
            queue_events: 10_000,
            batch: BatchConfig::default(),
            spool: spool::SpoolConfig::default(),
        }
    }
}

/// How push sinks batch and retry. Events are retried until delivered (the queue bounds what
/// waits); metrics until the next export supersedes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Events per request at most. Default `1000`.
    pub max_events: usize,
    /// Bytes per request at most (about). Default `1MiB` (1048576).
    pub max_bytes: usize,
    /// How long the first event of a batch waits for others. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// The first retry waits up to this long, doubling per attempt (full jitter). Default `500ms`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// The longest wait between retries; a longer `Retry-After` is cut to it. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 1000,
            max_bytes: 1 << 20,
            max_wait: Duration::from_secs(1),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl BatchConfig {
    pub fn events(&self) -> Delivery {
        Delivery {
            max_items: self.max_events,
            max_bytes: self.max_bytes,
            max_wait: self.max_wait,
            max_attempts: None,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LokiFormat {
    /// `application/x-protobuf`, snappy-compressed: what Promtail and Alloy send.
    #[default]
    Protobuf,
    Json,
}

/// `sinks.loki`: on when `url` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LokiConfig {
    /// Loki's base URL, e.g. `http://loki-gateway.monitoring:80`; events go to `/loki/api/v1/push`.
    pub url: Option<String>,
    /// The tenant (`X-Scope-OrgID`) on a multi-tenant Loki.
    pub tenant_id: Option<String>,
    /// `protobuf` or `json`. Default `protobuf`.
    pub format: LokiFormat,
    pub headers: BTreeMap<String, String>,
    pub auth: http::AuthConfig,
    pub tls: http::TlsConfig,
    /// Default `10s`.
    #[serde(with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
}

/// `sinks.elasticsearch`: on when `url` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchConfig {
    /// The cluster's URL, e.g. `https://es.example:9200`; events go to `/_bulk`.
    pub url: Option<String>,
    /// The data stream events are created in. Default `logs-modelmeter-default`.
    pub data_stream: String,
    pub headers: BTreeMap<String, String>,
    pub auth: http::AuthConfig,
    pub tls: http::TlsConfig,
    /// Gzip request bodies. Default `false`.
    pub gzip: bool,
    /// Default `10s`.
    #[serde(with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        ElasticsearchConfig {
            url: None,
            data_stream: "logs-modelmeter-default".to_owned(),
            headers: BTreeMap::new(),
            auth: http::AuthConfig::default(),
            tls: http::TlsConfig::default(),
            gzip: false,
            timeout: None,
        }
    }
}

/// The default time one request to a backend may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The feeder's end of a sink's queue.
pub trait Inlet<T>: Send + Sync {
    fn offer(&self, item: T, stats: &SinkStats);
    fn queued(&self) -> u64;
    /// No more items: the driver delivers what is left and stops.
    fn close(&self) {}
}

impl<T: Send> Inlet<T> for crossbeam_channel::Sender<T> {
    fn offer(&self, item: T, stats: &SinkStats) {
        match self.try_send(item) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(_)) => stats.drop_items(SinkDrop::QueueFull, 1),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => stats.drop_items(SinkDrop::Shutdown, 1),
        }
    }

    fn queued(&self) -> u64 {
        self.len() as u64
    }
}

impl Inlet<crate::store::LogRecord> for spool::Spool {
    fn offer(&self, item: crate::store::LogRecord, _: &SinkStats) {
        self.append(&item);
    }

    fn queued(&self) -> u64 {
        spool::Spool::queued(self)
    }

    fn close(&self) {
        spool::Spool::close(self);
    }
}

/// One running push sink as its feeder sees it: the way into its queue and its figures.
pub struct SinkHandle<T> {
    pub name: &'static str,
    inlet: Arc<dyn Inlet<T>>,
    pub stats: Arc<SinkStats>,
}

impl<T> std::fmt::Debug for SinkHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle").field("name", &self.name).finish()
    }
}

impl<T> Clone for SinkHandle<T> {
    fn clone(&self) -> Self {
        SinkHandle { name: self.name, inlet: self.inlet.clone(), stats: self.stats.clone() }
    }
}

impl<T: Clone + Send + 'static> SinkHandle<T> {
    /// Starts `sink`'s driver on its own thread, behind an in-memory queue of `capacity` items.
    pub fn spawn<S: Sink<Item = T>>(
        sink: S,
        capacity: usize,
        delivery: Delivery,
    ) -> std::io::Result<(SinkHandle<T>, std::thread::JoinHandle<()>)> {
        let (queue, items) = crossbeam_channel::bounded(capacity.max(1));
        let stats = Arc::new(SinkStats::default());
        let name = sink.name();
        let thread = Self::start(sink, items, delivery, stats.clone())?;
        Ok((SinkHandle { name, inlet: Arc::new(queue), stats }, thread))
    }

    fn start<S: Sink<Item = T>>(
        sink: S,
        feed: impl Feed<T>,
        delivery: Delivery,
        stats: Arc<SinkStats>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("mm-sink-{}", sink.name()))
            .spawn(move || drive(sink, feed, delivery, stats))
    }

    /// Queues `item`; a full queue drops it (or, for a spool, the oldest) and counts the drop.
    pub fn offer(&self, item: T) {
        self.inlet.offer(item, &self.stats);
    }

    /// Tells the driver no more items come.
    pub fn close(&self) {
        self.inlet.close();
    }

    pub fn row(&self) -> crate::store::SinkRow {
        crate::store::SinkRow {
            name: self.name,
            sent: self.stats.sent.load(Relaxed),
            retried: self.stats.retried.load(Relaxed),
            duplicates: self.stats.duplicates.load(Relaxed),
            dropped: SinkDrop::ALL
                .iter()
                .map(|&reason| (reason.label(), self.stats.dropped(reason)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            queued: self.inlet.queued(),
        }
    }
}

impl SinkHandle<crate::store::LogRecord> {
    /// Starts `sink`'s driver fed from a disk spool in `dir` (see [`spool`]).
    pub fn spawn_spooled<S: Sink<Item = crate::store::LogRecord>>(
        sink: S,
        dir: &std::path::Path,
        max_bytes: u64,
        delivery: Delivery,
    ) -> anyhow::Result<(SinkHandle<crate::store::LogRecord>, std::thread::JoinHandle<()>)> {
        let stats = Arc::new(SinkStats::default());
        let spool = Arc::new(spool::Spool::open(dir, max_bytes, stats.clone())?);
        let feed = SpoolFeed { spool: spool.clone(), position: None };
        let name = sink.name();
        let thread = Self::start(sink, feed, delivery, stats.clone())?;
        Ok((SinkHandle { name, inlet: spool, stats }, thread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails `failures` times with the given decision, then succeeds; records what it sent.
    struct Flaky {
        failures: u32,
        failure: Retry,
        sent: Arc<std::sync::Mutex<Vec<Vec<u32>>>>,
    }

    impl Sink for Flaky {
        type Item = u32;
        type Request = Vec<u32>;
        type Response = bool;

        fn name(&self) -> &'static str {
            "flaky"
        }

        fn encode(&mut self, batch: &[u32]) -> Vec<u32> {
            batch.to_vec()
        }

        fn send(&mut self, request: &Vec<u32>) -> bool {
            self.sent.lock().unwrap().push(request.clone());
            if self.failures > 0 {
                self.failures -= 1;
                return false;
            }
            true
        }

        fn decide(&self, ok: &bool, _batch: &[u32]) -> Retry {
            if *ok { Retry::Done } else { self.failure.clone() }
        }
    }

    fn fast() -> Delivery {
        Delivery {
            max_items: 3,
            max_bytes: usize::MAX,
            max_wait: Duration::from_millis(20),
            max_attempts: Some(3),
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
        }
    }

    fn run(failures: u32, failure: Retry, items: &[u32]) -> (Vec<Vec<u32>>, Arc<SinkStats>) {
        let (tx, rx) = crossbeam_channel::bounded(16);
        for item in items {
            tx.send(*item).unwrap();
        }
        drop(tx);
        let stats = Arc::new(SinkStats::default());
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        drive(Flaky { failures, failure, sent: sent.clone() }, rx, fast(), stats.clone());
        let sent = sent.lock().unwrap().clone();
        (sent, stats)
    }

    #[test]
    fn batches_by_count_and_flushes_on_close() {
        let (sent, stats) = run(0, Retry::Done, &[1, 2, 3, 4, 5]);
        assert_eq!(sent, vec![vec![1, 2, 3], vec![4, 5]]);
        assert_eq!(stats.sent.load(Relaxed), 5);
    }

    #[test]
    fn retriable_failures_are_retried_then_delivered() {
        let failure = Retry::Retriable { after: None, reason: "503".into() };
        let (sent, stats) = run(2, failure, &[7]);
        assert_eq!(sent.len(), 3);
        assert_eq!(
            (stats.sent.load(Relaxed), stats.retried.load(Relaxed), stats.dropped(SinkDrop::RetriesExhausted)),
            (1, 2, 0)
        );
    }

    #[test]
    fn health_changes_are_notified_once_each() {
        let (tx, rx) = crossbeam_channel::bounded(16);
        tx.send(7).unwrap();
        drop(tx);
        let stats = Arc::new(SinkStats::default());
        let (notify, notices) = crossbeam_channel::bounded(8);
        stats.notify(notify);
        let failure = Retry::Retriable { after: None, reason: "503".into() };
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        drive(Flaky { failures: 2, failure, sent }, rx, fast(), stats);
        let notices: Vec<(bool, String)> = notices.try_iter().map(|n| (n.failing, n.reason)).collect();
        assert_eq!(notices, [(true, "503".to_owned()), (false, String::new())]);
    }

    #[test]
    fn permanent_failures_drop_once_and_count() {
        let (sent, stats) = run(1, Retry::Permanent { reason: "400".into() }, &[7, 8]);
        assert_eq!(sent.len(), 1, "never retried");
        assert_eq!(stats.dropped(SinkDrop::Rejected), 2);
    }

    /// Refuses (413) any request of more than `limit` items; records what it accepted.
    struct Limited {
        limit: usize,
        accepted: Arc<std::sync::Mutex<Vec<Vec<u32>>>>,
    }

    impl Sink for Limited {
        type Item = u32;
        type Request = Vec<u32>;
        type Response = bool;

        fn name(&self) -> &'static str {
            "limited"
        }

        fn encode(&mut self, batch: &[u32]) -> Vec<u32> {
            batch.to_vec()
        }

        fn send(&mut self, request: &Vec<u32>) -> bool {
            let fits = request.len() <= self.limit && !request.contains(&99);
            if fits {
                self.accepted.lock().unwrap().push(request.clone());
            }
            fits
        }

        fn decide(&self, fits: &bool, _batch: &[u32]) -> Retry {
            if *fits { Retry::Done } else { Retry::TooLarge { reason: "413".into() } }
        }
    }

    #[test]
    fn too_large_batches_are_split_until_they_fit_and_a_single_misfit_is_dropped() {
        let (tx, rx) = crossbeam_channel::bounded(16);
        for item in [1, 2, 3, 99, 5, 6, 7] {
            tx.send(item).unwrap();
        }
        drop(tx);
        let stats = Arc::new(SinkStats::default());
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let delivery = Delivery { max_items: 7, ..fast() };
        drive(Limited { limit: 2, accepted: accepted.clone() }, rx, delivery, stats.clone());
        let accepted = accepted.lock().unwrap().clone();
        assert_eq!(accepted.concat(), [1, 2, 3, 5, 6, 7], "order kept, nothing lost but the misfit");
        assert!(accepted.iter().all(|b| b.len() <= 2));
        assert_eq!(stats.dropped(SinkDrop::TooLarge), 1);
        assert_eq!(stats.sent.load(Relaxed), 6);
    }

    #[test]
    fn exhausted_retries_drop_and_count() {
        let failure = Retry::Retriable { after: Some(Duration::from_millis(1)), reason: "429".into() };
        let (sent, stats) = run(10, failure, &[1]);
        assert_eq!(sent.len(), 3);
        assert_eq!(stats.dropped(SinkDrop::RetriesExhausted), 1);
    }
}
