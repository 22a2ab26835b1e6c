//! The request source: reads the socket payload ring on its own thread, tells the probes which
//! fds are sockets, follows each connection with an HTTP/1 parser and sends every paired request
//! and response as an [`Observation::Exchange`] keyed by the kernel's cgroup id and tgid.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::traffic::{FdKey, KIND_CLOSE, KIND_DATA_IN, KIND_DATA_OUT, KIND_FD_UNKNOWN};
use crossbeam_channel::Receiver;
use tokio_util::sync::CancellationToken;

use super::{
    Observation, Outbox, kernel,
    procfs::{is_socket, process_exists},
    protocol::http1::{Direction, Exchange, Http1Stream, Segment, Skip},
};
use crate::telemetry::{ConnectionsFollowed, DropReason, EventsDropped, SkipReason, Telemetry, TrafficSkipped};

/// How often the ring is read: its probes wake the reader only for a large backlog, which saves
/// an irq_work per record.
const POLL: Duration = Duration::from_millis(100);
/// Records handled before looking at exits and shutdown again.
const BATCH: usize = 4096;
/// Connections followed at once; beyond this new ones are counted and not followed.
const MAX_STREAMS: usize = 65_536;
/// fds remembered as not sockets; the set is cleared when it reaches this.
const MAX_NOT_SOCKETS: usize = 65_536;
/// How often connections of processes that exited unseen are swept.
const SWEEP: Duration = Duration::from_secs(5);

/// Follows connections; pure apart from the /proc look-ups it is given.
#[derive(Debug, Default)]
pub struct Connections {
    streams: HashMap<FdKey, Stream>,
    /// fds classified as not sockets, whose already-captured data is dropped.
    not_sockets: HashSet<FdKey>,
    exchanges: Vec<Exchange>,
    skips: Vec<Skip>,
}

#[derive(Debug)]
struct Stream {
    parser: Http1Stream,
    cgroup_id: u64,
}

/// What the source must do for one record, besides parsing.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Ask /proc whether this fd is a socket, then call [`Connections::classified`].
    Classify(FdKey),
}

impl Connections {
    /// Applies one payload record; exchanges go to `out`, skipped traffic to `telemetry`.
    pub fn apply(&mut self, bytes: &[u8], out: &mut Vec<Observation>, telemetry: &Telemetry) -> Action {
        let Some((event, captured)) = kernel::decode_data_event(bytes) else {
            EventsDropped { reason: DropReason::MalformedPayload, count: 1 }.emit(telemetry);
            return Action::None;
        };
        let key = FdKey { tgid: event.tgid, fd: event.fd };
        match event.kind {
            KIND_FD_UNKNOWN => {
                // A new fd, or a reused number: whatever was followed under this key is over.
                self.close(key, telemetry);
                return Action::Classify(key);
            }
            KIND_CLOSE => {
                self.close(key, telemetry);
                self.not_sockets.remove(&key);
            }
            // Data the probes captured before the fd was classified as a file, pipe, …
            KIND_DATA_IN | KIND_DATA_OUT if self.not_sockets.contains(&key) => {}
            KIND_DATA_IN | KIND_DATA_OUT => {
                if !self.streams.contains_key(&key) {
                    if self.streams.len() >= MAX_STREAMS {
                        TrafficSkipped { reason: SkipReason::TooManyConnections }.emit(telemetry);
                        return Action::None;
                    }
                    self.streams.insert(key, Stream { parser: Http1Stream::new(), cgroup_id: event.cgroup_id });
                }
                let Some(stream) = self.streams.get_mut(&key) else { return Action::None };
                let direction = if event.kind == KIND_DATA_IN { Direction::In } else { Direction::Out };
                let segment = Segment { direction, timestamp_ns: event.timestamp_ns, len: event.len, captured };
                stream.parser.feed(segment, &mut self.exchanges, &mut self.skips);
                let cgroup_id = stream.cgroup_id;
                for exchange in self.exchanges.drain(..) {
                    out.push(Observation::Exchange { cgroup_id, tgid: key.tgid, exchange: Box::new(exchange) });
                }
                self.count_skips(telemetry);
            }
            _ => EventsDropped { reason: DropReason::MalformedPayload, count: 1 }.emit(telemetry),
        }
        Action::None
    }

    /// The answer to an [`Action::Classify`]: `None` when the fd was already closed.
    pub fn classified(&mut self, key: FdKey, is_socket: Option<bool>) {
        match is_socket {
            Some(false) => {
                if self.not_sockets.len() >= MAX_NOT_SOCKETS {
                    self.not_sockets.clear();
                }
                self.not_sockets.insert(key);
            }
            // Closed before this record was read (the reader runs in batches): its data goes to
            // the parser, which skips whatever is not HTTP.
            Some(true) | None => {
                self.not_sockets.remove(&key);
            }
        }
    }

    /// The connection closed (or its fd was reused): requests still waiting are dropped, counted.
    fn close(&mut self, key: FdKey, telemetry: &Telemetry) {
        if let Some(mut stream) = self.streams.remove(&key) {
            stream.parser.close(&mut self.skips);
            self.count_skips(telemetry);
        }
    }

    fn count_skips(&mut self, telemetry: &Telemetry) {
        for skip in self.skips.drain(..) {
            let reason = match skip {
                Skip::NotHttp => SkipReason::NotHttp,
                Skip::HeadTooLarge => SkipReason::HeadTooLarge,
                Skip::Uncaptured => SkipReason::Uncaptured,
                Skip::UnmatchedResponse => SkipReason::UnmatchedResponse,
                Skip::Unfinished => SkipReason::Unfinished,
            };
            TrafficSkipped { reason }.emit(telemetry);
        }
    }

    /// Forgets the connections of a process that has exited (its fds closed inside exit, where
    /// no close(2) was seen).
    pub fn forget_process(&mut self, tgid: u32) {
        self.streams.retain(|key, _| key.tgid != tgid);
        self.not_sockets.retain(|key| key.tgid != tgid);
    }

    /// Forgets connections of processes for which `gone` says so (asked once per process).
    pub fn forget_processes_where(&mut self, gone: impl Fn(u32) -> bool) {
        let mut verdicts: HashMap<u32, bool> = HashMap::new();
        self.streams.retain(|key, _| !*verdicts.entry(key.tgid).or_insert_with(|| gone(key.tgid)));
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

pub struct PayloadSource {
    pub ring: kernel::PayloadRing,
    pub proc_root: PathBuf,
    pub observations: Outbox<Observation>,
    pub exits: Receiver<u32>,
    pub telemetry: Arc<Telemetry>,
}

impl PayloadSource {
    /// Runs until `cancel` fires or the collector is gone.
    pub fn run(mut self, cancel: CancellationToken) {
        let mut connections = Connections::default();
        let mut out = Vec::new();
        let mut last_sweep = Instant::now();
        while !cancel.is_cancelled() {
            if let Err(e) = self.ring.ring.wait(POLL) {
                tracing::error!(error = %e, "Polling the payload ring failed; request latency is off");
                return;
            }
            for tgid in self.exits.try_iter() {
                connections.forget_process(tgid);
            }
            loop {
                let (ring, fd_classes) = (&mut self.ring.ring, &mut self.ring.fd_classes);
                let drained = ring.drain(BATCH, |bytes| {
                    // Classified at once, so the data records right after are judged by it.
                    if let Action::Classify(key) = connections.apply(bytes, &mut out, &self.telemetry) {
                        let verdict = is_socket(&self.proc_root, key.tgid, key.fd);
                        if let Some(is_socket) = verdict {
                            fd_classes.classify_fd(key, is_socket);
                        }
                        connections.classified(key, verdict);
                    }
                });
                if !out.is_empty() {
                    let count = out.len() as u64;
                    if !self.observations.send_counted(Observation::Batch(std::mem::take(&mut out)), count) {
                        return;
                    }
                }
                if drained < BATCH {
                    break;
                }
            }
            if last_sweep.elapsed() >= SWEEP {
                last_sweep = Instant::now();
                connections.forget_processes_where(|tgid| !process_exists(&self.proc_root, tgid));
            }
            ConnectionsFollowed(connections.len()).emit(&self.telemetry);
        }
    }
}
