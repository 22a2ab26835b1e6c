//! The request source: reads the payload ring on its own thread. Requests the probes paired in the
//! kernel arrive as one completion each and go straight to the store; connections the probes
//! handed back (a request split inside its method, pipelining) arrive as raw payload records and
//! are followed here by an HTTP/1 parser. It also tells the probes which fds are not sockets.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::traffic::{FdKey, KIND_CLOSE, KIND_COMPLETION, KIND_DATA_IN, KIND_DATA_OUT, KIND_FD_UNKNOWN};
use crossbeam_channel::Receiver;
use tokio_util::sync::CancellationToken;

use super::{
    Observation, Outbox,
    kernel::{self, CompletionView},
    procfs::{is_socket, process_exists},
    protocol::{
        http1::{Direction, Exchange, Http1Stream, Segment, Skip},
        route::method_label,
    },
};
use crate::telemetry::{
    ConnectionsFollowed, DropReason, EventsDropped, PairPath, RequestsPaired, SkipReason, Telemetry, TrafficSkipped,
};

/// How often the ring is read: its probes wake the reader only for a large backlog, which saves
/// an irq_work per record.
const POLL: Duration = Duration::from_millis(100);
/// Records handled before looking at exits and shutdown again.
const BATCH: usize = 4096;
/// Fallback connections followed at once; beyond this new ones are counted and not followed.
const MAX_STREAMS: usize = 65_536;
/// How often connections of processes that exited unseen are swept.
const SWEEP: Duration = Duration::from_secs(5);

/// Follows fallback connections and turns completions into exchanges; pure apart from the /proc
/// look-ups it is given.
#[derive(Debug, Default)]
pub struct Connections {
    /// Fallback connections by the probes' connection id.
    streams: HashMap<u64, Stream>,
    exchanges: Vec<Exchange>,
    skips: Vec<Skip>,
}

#[derive(Debug)]
struct Stream {
    parser: Http1Stream,
    cgroup_id: u64,
    tgid: u32,
}

/// What the source must do for one record, besides parsing.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Ask /proc whether this fd is a socket, and tell the probes when it is not.
    Classify(FdKey, u64),
}

impl Connections {
    /// Applies one payload record; exchanges go to `out`, skipped traffic to `telemetry`.
    pub fn apply(&mut self, bytes: &[u8], out: &mut Vec<Observation>, telemetry: &Telemetry) -> Action {
        let malformed = || EventsDropped { reason: DropReason::MalformedPayload, count: 1 }.emit(telemetry);
        match kernel::record_kind(bytes) {
            Some(KIND_COMPLETION) => {
                let completion = kernel::decode_completion(bytes);
                match completion.and_then(|c| Some((exchange_of(&c)?, c))) {
                    Some((exchange, completion)) => {
                        RequestsPaired { path: PairPath::Kernel, count: 1 }.emit(telemetry);
                        out.push(Observation::Exchange {
                            cgroup_id: completion.header.cgroup_id,
                            tgid: completion.header.tgid,
                            exchange: Box::new(exchange),
                        });
                    }
                    None => malformed(),
                }
                return Action::None;
            }
            Some(KIND_FD_UNKNOWN | KIND_CLOSE | KIND_DATA_IN | KIND_DATA_OUT) => {}
            _ => {
                malformed();
                return Action::None;
            }
        }
        let Some((event, captured)) = kernel::decode_data_event(bytes) else {
            malformed();
            return Action::None;
        };
        match event.kind {
            KIND_FD_UNKNOWN => return Action::Classify(FdKey { tgid: event.tgid, fd: event.fd }, event.conn_id),
            KIND_CLOSE => self.close(event.conn_id, telemetry),
            _ => {
                if !self.streams.contains_key(&event.conn_id) {
                    if self.streams.len() >= MAX_STREAMS {
                        TrafficSkipped { reason: SkipReason::TooManyConnections }.emit(telemetry);
                        return Action::None;
                    }
                    let stream = Stream { parser: Http1Stream::new(), cgroup_id: event.cgroup_id, tgid: event.tgid };
                    self.streams.insert(event.conn_id, stream);
                }
                let Some(stream) = self.streams.get_mut(&event.conn_id) else { return Action::None };
                let direction = if event.kind == KIND_DATA_IN { Direction::In } else { Direction::Out };
                let segment = Segment { direction, timestamp_ns: event.timestamp_ns, len: event.len, captured };
                stream.parser.feed(segment, &mut self.exchanges, &mut self.skips);
                let (cgroup_id, tgid) = (stream.cgroup_id, stream.tgid);
                if !self.exchanges.is_empty() {
                    let count = self.exchanges.len() as u64;
                    RequestsPaired { path: PairPath::Userspace, count }.emit(telemetry);
                }
                for exchange in self.exchanges.drain(..) {
                    out.push(Observation::Exchange { cgroup_id, tgid, exchange: Box::new(exchange) });
                }
                self.count_skips(telemetry);
            }
        }
        Action::None
    }

    /// The connection closed: requests still waiting are dropped, counted.
    fn close(&mut self, conn_id: u64, telemetry: &Telemetry) {
        if let Some(mut stream) = self.streams.remove(&conn_id) {
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
        self.streams.retain(|_, stream| stream.tgid != tgid);
    }

    /// Forgets connections of processes for which `gone` says so (asked once per process).
    pub fn forget_processes_where(&mut self, gone: impl Fn(u32) -> bool) {
        let mut verdicts: HashMap<u32, bool> = HashMap::new();
        self.streams.retain(|_, stream| !*verdicts.entry(stream.tgid).or_insert_with(|| gone(stream.tgid)));
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

/// The exchange a kernel completion stands for: the request line from its first bytes, the
/// request body's start where it was captured, and the response body's start. `None` when the
/// first bytes are not a request line.
pub fn exchange_of(completion: &CompletionView<'_>) -> Option<Exchange> {
    let request = completion.request;
    let line_end = memchr::memchr(b'\n', request).unwrap_or(request.len());
    let line = request[..line_end].strip_suffix(b"\r").unwrap_or(&request[..line_end]);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = std::str::from_utf8(parts.next()?).ok()?;
    // A target longer than the capture is cut there; the route template needs only its start.
    let target = parts.next().filter(|t| !t.is_empty())?;
    let target = match std::str::from_utf8(target) {
        Ok(target) => target.to_owned(),
        Err(_) => String::from_utf8_lossy(target).into_owned(),
    };
    let body =
        memchr::memmem::find(&request[line_end..], b"\r\n\r\n").map_or(&[][..], |end| &request[line_end + end + 4..]);
    Some(Exchange {
        start_ns: completion.header.start_ns,
        end_ns: completion.header.end_ns,
        method: method_label(method),
        target,
        status: completion.header.status,
        request_body_prefix: body.to_vec(),
        response_body_prefix: event_stream_data(completion.response).to_vec(),
        request_bytes: Some(completion.header.request_bytes),
        response_bytes: Some(completion.header.response_bytes),
    })
}

/// The data of a server-sent event stream's first event (`data: {...}`), else the bytes as they are.
fn event_stream_data(body: &[u8]) -> &[u8] {
    match body.strip_prefix(b"data:") {
        Some(data) => data.strip_prefix(b" ").unwrap_or(data),
        None => body,
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
                    if let Action::Classify(key, conn_id) = connections.apply(bytes, &mut out, &self.telemetry)
                        && let Some(is_socket) = is_socket(&self.proc_root, key.tgid, key.fd)
                    {
                        fd_classes.classify_fd(conn_id, is_socket);
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

#[cfg(test)]
mod tests {
    use agent_common::traffic::{COMPLETION_UNTIL_CLOSE, CompletionHeader, KIND_COMPLETION, REQUEST_CAPTURE};

    use super::*;

    /// A completion record's bytes, as the probes write it.
    fn completion(request: &[u8], response: &[u8]) -> Vec<u8> {
        let header = CompletionHeader {
            kind: KIND_COMPLETION,
            tgid: 7,
            conn_id: 9,
            cgroup_id: 11,
            start_ns: 1_000,
            end_ns: 3_000,
            request_bytes: 4_000,
            response_bytes: 500,
            status: 200,
            flags: COMPLETION_UNTIL_CLOSE,
            ..CompletionHeader::default()
        };
        kernel::encode_completion(header, request, response)
    }

    fn exchange(bytes: &[u8]) -> Option<Exchange> {
        exchange_of(&kernel::decode_completion(bytes).expect("a whole record"))
    }

    #[test]
    fn a_completion_becomes_an_exchange_without_reparsing_the_stream() {
        let c = completion(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n\r\n{\"model\":\"m\"}",
            b"{\"id\":\"x\",\"model\":\"served\"}",
        );
        let exchange = exchange(&c).expect("an exchange");
        assert_eq!((exchange.method, exchange.target.as_str()), ("POST", "/v1/chat/completions"));
        assert_eq!((exchange.start_ns, exchange.end_ns, exchange.status), (1_000, 3_000, 200));
        assert_eq!(exchange.request_body_prefix, b"{\"model\":\"m\"}");
        assert_eq!(exchange.response_body_prefix, b"{\"id\":\"x\",\"model\":\"served\"}");
        assert_eq!((exchange.request_bytes, exchange.response_bytes), (Some(4_000), Some(500)));
    }

    #[test]
    fn a_head_longer_than_the_capture_keeps_its_request_line() {
        let mut request = b"GET /v2/models/resnet/infer HTTP/1.1\r\nCookie: ".to_vec();
        request.resize(REQUEST_CAPTURE, b'c');
        let exchange = super::tests::exchange(&completion(&request, b"")).expect("an exchange");
        assert_eq!(exchange.target, "/v2/models/resnet/infer");
        assert!(exchange.request_body_prefix.is_empty());
        // A target cut by the capture is kept as far as it goes.
        let long = format!("GET /{} HTTP/1.1", "a".repeat(400));
        let exchange =
            super::tests::exchange(&completion(&long.as_bytes()[..REQUEST_CAPTURE], b"")).expect("an exchange");
        assert_eq!(exchange.target.len(), REQUEST_CAPTURE - 4);
    }

    #[test]
    fn event_streams_give_their_first_event_data() {
        let c = completion(b"POST /v1/completions HTTP/1.1\r\n", b"data: {\"model\":\"s\"}\n\n");
        assert_eq!(exchange(&c).expect("an exchange").response_body_prefix, b"{\"model\":\"s\"}\n\n");
    }

    #[test]
    fn garbage_is_no_exchange() {
        assert!(exchange(&completion(b"", b"")).is_none());
        assert!(exchange(&completion(b"\xff\xfe /x HTTP/1.1", b"")).is_none());
        assert!(exchange(&completion(b"GET", b"")).is_none());
    }

    #[test]
    fn records_are_told_apart_by_kind_and_short_ones_dropped() {
        let telemetry = Telemetry::default();
        let mut connections = Connections::default();
        let mut out = Vec::new();
        let bytes = completion(b"GET / HTTP/1.1\r\n\r\n", b"");
        assert_eq!(connections.apply(&bytes, &mut out, &telemetry), Action::None);
        assert!(matches!(&out[..], [Observation::Exchange { cgroup_id: 11, tgid: 7, .. }]));
        assert_eq!(telemetry.paired(), vec![(PairPath::Kernel, 1), (PairPath::Userspace, 0)]);
        // Shorter than its header says, or claiming more than the probes capture.
        connections.apply(&bytes[..bytes.len() - 1], &mut out, &telemetry);
        let mut claiming = bytes.clone();
        let at = std::mem::offset_of!(CompletionHeader, request_captured);
        claiming[at..at + 2].copy_from_slice(&(REQUEST_CAPTURE as u16 + 1).to_ne_bytes());
        claiming.resize(claiming.len() + REQUEST_CAPTURE, b'x');
        connections.apply(&claiming, &mut out, &telemetry);
        connections.apply(&[42, 0, 0, 0], &mut out, &telemetry);
        assert_eq!(out.len(), 1);
        assert_eq!(telemetry.dropped_for(DropReason::MalformedPayload), 3);
    }
}
