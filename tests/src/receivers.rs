//! Test receivers for the push sinks, decoding the real wire formats: OTLP over gRPC and over HTTP
//! (protobuf), Loki's push API (snappy-compressed protobuf or JSON) and Elasticsearch's bulk API as
//! a data stream takes it. They run on a runtime thread of their own, listen on loopback ports,
//! record what they decode, validate as the real servers do, and answer with faults a test injects
//! per receiver (refused connections, 429 with `Retry-After`, any status, failed bulk items).
//!
//! Everything a test reads is a snapshot taken under a lock, so it may read at any time while the
//! agent pushes.

use std::{
    collections::{BTreeMap, HashSet},
    io::Read,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc},
    task::{Context, Poll},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
};
use prost::Message;
use serde_json::{Map, Value, json};
use tonic::codec::CompressionEncoding;

/// Larger than any batch a sink should send, so that size limits never hide what it sent.
const MAX_BODY_BYTES: usize = 64 << 20;
/// Bounds what a gzip body may inflate to.
const MAX_INFLATED_BYTES: u64 = 256 << 20;
/// How long stopping a listener or rebinding its port may take before the test fails.
const LISTENER_TIMEOUT: Duration = Duration::from_secs(5);

/// One of the receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Which {
    OtlpGrpc,
    OtlpHttp,
    Loki,
    Elasticsearch,
}

impl Which {
    pub const ALL: [Which; 4] = [Which::OtlpGrpc, Which::OtlpHttp, Which::Loki, Which::Elasticsearch];

    fn index(self) -> usize {
        self as usize
    }
}

/// How a receiver misbehaves; each receiver has its own, `Fault::None` at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Not listening: the port refuses connections (the listener is closed, and open connections
    /// are closed once their request is answered); the same port listens again when the fault
    /// changes to anything else.
    Down,
    /// Every request answered 429 with `Retry-After: N`. gRPC: UNAVAILABLE, with a
    /// `google.rpc.RetryInfo` detail of N seconds.
    TooManyRequests { retry_after_secs: u64 },
    /// Every request answered with this HTTP status (any 200..=599; 2xx answers without storing).
    /// gRPC: 400 and other 4xx INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
    /// 404 UNIMPLEMENTED, 408 DEADLINE_EXCEEDED, 413 RESOURCE_EXHAUSTED, 429/502/503/504
    /// UNAVAILABLE (retryable under OTLP), 500 and other 5xx INTERNAL (permanent under OTLP);
    /// 2xx and 3xx answer OK without storing.
    Status(u16),
    /// Elasticsearch only: bulk requests answered 200 with `errors: true`, items n, 2n, 3n... of
    /// each request failing with `status` and `error_type` (429 `es_rejected_execution_exception`,
    /// 400 `mapper_parsing_exception`...); the other items are processed as usual.
    FailEveryNthItem { n: usize, status: u16, error_type: String },
}

/// The transport an OTLP export came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtlpTransport {
    Grpc,
    Http,
}

/// One OTLP export request as received.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpExport<T> {
    pub transport: OtlpTransport,
    /// The body came gzip-compressed (`Content-Encoding: gzip`; gRPC: `grpc-encoding: gzip`).
    pub gzip: bool,
    /// Request headers (gRPC: metadata), names in lowercase, values lossily as text.
    pub headers: Vec<(String, String)>,
    pub request: T,
}

/// One Loki push as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LokiPush {
    /// `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// The media type without parameters: `application/x-protobuf` or `application/json`.
    pub content_type: String,
    /// `Content-Encoding: gzip`.
    pub gzip: bool,
    /// Request headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    pub streams: Vec<LokiStream>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LokiStream {
    /// Parsed from the stream selector (`{name="value", ...}`).
    pub labels: BTreeMap<String, String>,
    pub entries: Vec<LokiEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LokiEntry {
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    pub line: String,
    /// Structured metadata (name, value), in the order sent.
    pub structured_metadata: Vec<(String, String)>,
}

/// A document stored by the Elasticsearch receiver; one per (index, `_id`).
#[derive(Debug, Clone, PartialEq)]
pub struct EsDoc {
    pub index: String,
    pub id: String,
    pub source: Value,
}

/// One bulk request the Elasticsearch receiver parsed (requests rejected whole are not here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsBulk {
    /// The index in the path (`/{index}/_bulk`).
    pub path_index: Option<String>,
    /// The media type without parameters.
    pub content_type: String,
    pub gzip: bool,
    /// Request headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// Item statuses, in request order.
    pub statuses: Vec<u16>,
}

/// What one receiver has answered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverCount {
    /// Requests that reached the receiver (gRPC: export calls tonic could decode).
    pub requests: u64,
    /// Requests answered by an injected fault (`TooManyRequests`, `Status`).
    pub faulted: u64,
    /// Requests rejected whole because they were invalid (400, 406, 415...): a sink bug.
    pub rejected: u64,
    /// Bulk items answered 409 because their `_id` was already stored.
    pub duplicates: u64,
    /// Bulk items failed on purpose by `Fault::FailEveryNthItem`.
    pub failed_items: u64,
    /// Bulk items rejected because they were invalid (wrong action, no `_id`, bad document).
    pub invalid_items: u64,
}

/// Counts for every receiver, taken at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverCounters {
    pub otlp_grpc: ReceiverCount,
    pub otlp_http: ReceiverCount,
    pub loki: ReceiverCount,
    pub elasticsearch: ReceiverCount,
}

impl ReceiverCounters {
    pub fn get(&self, which: Which) -> ReceiverCount {
        match which {
            Which::OtlpGrpc => self.otlp_grpc,
            Which::OtlpHttp => self.otlp_http,
            Which::Loki => self.loki,
            Which::Elasticsearch => self.elasticsearch,
        }
    }
}

/// Loki's push protocol (`pkg/push/push.proto`), for decoding pushes and for building them in tests.
pub mod loki_proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        /// The stream selector, `{name="value", ...}`.
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPairAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPairAdapter {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

/// `google.rpc.Status`: OTLP/HTTP error bodies and gRPC status details.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`: how OTLP over gRPC says when to retry.
#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The receivers. Dropping them stops the runtime and closes every port.
pub struct Receivers {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    listeners: Mutex<[ListenerSlot; 4]>,
    stop_runtime: Option<tokio::sync::oneshot::Sender<()>>,
    runtime_thread: Option<JoinHandle<()>>,
}

struct ListenerSlot {
    addr: SocketAddr,
    /// None while `Fault::Down`.
    serving: Option<Serving>,
}

struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    /// Disconnects when the listening socket is closed.
    closed: mpsc::Receiver<()>,
}

impl Receivers {
    /// Starts all four receivers on free loopback ports.
    pub fn start() -> Receivers {
        let (handle_tx, handle_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime_thread = std::thread::Builder::new()
            .name("test-receivers".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("test-receivers-worker")
                    .enable_all()
                    .build()
                    .expect("cannot build the test receivers' tokio runtime");
                let _ = handle_tx.send(runtime.handle().clone());
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("cannot spawn the test receivers' thread");
        let runtime = handle_rx.recv().expect("the test receivers' runtime did not start");
        let shared = Arc::new(Shared::default());
        let listeners = Which::ALL.map(|which| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("test receiver {which:?} cannot bind 127.0.0.1:0: {e}"));
            let addr = listener.local_addr().expect("a bound listener has an address");
            ListenerSlot { addr, serving: Some(serve(&runtime, &shared, which, listener)) }
        });
        Receivers {
            shared,
            runtime,
            listeners: Mutex::new(listeners),
            stop_runtime: Some(stop_tx),
            runtime_thread: Some(runtime_thread),
        }
    }

    /// The receiver's address; it keeps it across `Fault::Down`.
    pub fn addr(&self, which: Which) -> SocketAddr {
        lock(&self.listeners)[which.index()].addr
    }

    /// `http://127.0.0.1:PORT`, serving `opentelemetry.proto.collector.{metrics,logs}.v1`.
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://{}", self.addr(Which::OtlpGrpc))
    }

    /// `http://127.0.0.1:PORT`, serving POST `/v1/metrics` and `/v1/logs`.
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://{}", self.addr(Which::OtlpHttp))
    }

    /// `http://127.0.0.1:PORT`, serving POST `/loki/api/v1/push`.
    pub fn loki_url(&self) -> String {
        format!("http://{}", self.addr(Which::Loki))
    }

    /// `http://127.0.0.1:PORT`, serving POST `/_bulk` and `/{index}/_bulk`, and GET `/`.
    pub fn elasticsearch_url(&self) -> String {
        format!("http://{}", self.addr(Which::Elasticsearch))
    }

    /// Every metrics export stored, by either transport, in the order they arrived.
    pub fn metrics(&self) -> Vec<OtlpExport<ExportMetricsServiceRequest>> {
        lock(&self.shared.metrics).clone()
    }

    /// Every logs export stored, by either transport, in the order they arrived.
    pub fn logs(&self) -> Vec<OtlpExport<ExportLogsServiceRequest>> {
        lock(&self.shared.logs).clone()
    }

    /// Every Loki push stored, in the order they arrived.
    pub fn loki(&self) -> Vec<LokiPush> {
        lock(&self.shared.loki).clone()
    }

    /// The documents stored, in the order they were created.
    pub fn elasticsearch_docs(&self) -> Vec<EsDoc> {
        lock(&self.shared.elasticsearch).docs.clone()
    }

    /// Every bulk request parsed, with its item statuses.
    pub fn elasticsearch_bulks(&self) -> Vec<EsBulk> {
        lock(&self.shared.elasticsearch).bulks.clone()
    }

    pub fn counters(&self) -> ReceiverCounters {
        let counts = lock(&self.shared.counts);
        ReceiverCounters {
            otlp_grpc: counts[Which::OtlpGrpc.index()],
            otlp_http: counts[Which::OtlpHttp.index()],
            loki: counts[Which::Loki.index()],
            elasticsearch: counts[Which::Elasticsearch.index()],
        }
    }

    pub fn fault(&self, which: Which) -> Fault {
        lock(&self.shared.faults)[which.index()].clone()
    }

    /// Sets the receiver's fault. `Down` returns once the port refuses connections; leaving
    /// `Down` returns once the same port listens again.
    ///
    /// Panics on a fault that cannot apply: `FailEveryNthItem` outside Elasticsearch or with
    /// n = 0, or a status outside 200..=599.
    pub fn set_fault(&self, which: Which, fault: Fault) {
        match &fault {
            Fault::FailEveryNthItem { n, status, .. } => {
                assert_eq!(which, Which::Elasticsearch, "FailEveryNthItem applies to Elasticsearch only");
                assert!(*n > 0, "FailEveryNthItem needs n > 0");
                assert!((200..=599).contains(status), "FailEveryNthItem: {status} is not an HTTP status");
            }
            Fault::Status(status) => {
                assert!((200..=599).contains(status), "Fault::Status({status}) is not an HTTP status")
            }
            Fault::None | Fault::Down | Fault::TooManyRequests { .. } => {}
        }
        let mut listeners = lock(&self.listeners);
        let slot = &mut listeners[which.index()];
        let down = fault == Fault::Down;
        // Set first, so that the first request on a restarted port, or one still in flight on
        // a closing one, already sees it.
        lock(&self.shared.faults)[which.index()] = fault;
        if down {
            if let Some(serving) = slot.serving.take() {
                let _ = serving.stop.send(());
                match serving.closed.recv_timeout(LISTENER_TIMEOUT) {
                    Err(mpsc::RecvTimeoutError::Disconnected) => {}
                    _ => panic!("test receiver {which:?} did not close its listener on {}", slot.addr),
                }
            }
        } else if slot.serving.is_none() {
            let listener = rebind(slot.addr);
            slot.serving = Some(serve(&self.runtime, &self.shared, which, listener));
        }
    }

    /// Calls `check` every 20 ms until it returns `Some`, or `timeout` passes.
    pub fn wait_for<T>(&self, timeout: Duration, mut check: impl FnMut(&Receivers) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = check(self) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_runtime.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.runtime_thread.take() {
            let _ = thread.join();
        }
    }
}

/// The port was ours a moment ago, but closing sockets may hold it briefly.
fn rebind(addr: SocketAddr) -> std::net::TcpListener {
    let deadline = Instant::now() + LISTENER_TIMEOUT;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(e) if Instant::now() >= deadline => panic!("test receiver cannot bind {addr} again: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn serve(
    runtime: &tokio::runtime::Handle,
    shared: &Arc<Shared>,
    which: Which,
    listener: std::net::TcpListener,
) -> Serving {
    listener.set_nonblocking(true).expect("cannot make a listener non-blocking");
    let listener = {
        let _in_runtime = runtime.enter();
        tokio::net::TcpListener::from_std(listener).expect("cannot register a listener with tokio")
    };
    let (closed_tx, closed) = mpsc::channel();
    let listener = ClosingListener { listener, _closed: closed_tx };
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        let _ = stop_rx.await;
    };
    let shared = Arc::clone(shared);
    match which {
        Which::OtlpGrpc => {
            let service = OtlpGrpcService { shared };
            runtime.spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(
                        MetricsServiceServer::new(service.clone())
                            .accept_compressed(CompressionEncoding::Gzip)
                            .max_decoding_message_size(MAX_BODY_BYTES),
                    )
                    .add_service(
                        LogsServiceServer::new(service)
                            .accept_compressed(CompressionEncoding::Gzip)
                            .max_decoding_message_size(MAX_BODY_BYTES),
                    )
                    .serve_with_incoming_shutdown(listener, signal)
                    .await;
            });
        }
        Which::OtlpHttp | Which::Loki | Which::Elasticsearch => {
            let routes = match which {
                Which::OtlpHttp => {
                    Router::new().route("/v1/metrics", post(otlp_http_metrics)).route("/v1/logs", post(otlp_http_logs))
                }
                Which::Loki => Router::new().route("/loki/api/v1/push", post(loki_push)),
                // Elasticsearch.
                _ => Router::new()
                    .route("/", get(es_info))
                    .route("/_bulk", post(es_bulk))
                    .route("/{index}/_bulk", post(es_bulk_into_index)),
            };
            let app = routes.layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).with_state(shared);
            runtime.spawn(async move {
                let _ = axum::serve(listener, app).with_graceful_shutdown(signal).await;
            });
        }
    }
    Serving { stop, closed }
}

/// A listener that reports, by disconnecting a channel, the moment its socket is closed: both
/// servers drop their listener as soon as they stop accepting.
struct ClosingListener {
    listener: tokio::net::TcpListener,
    _closed: mpsc::Sender<()>,
}

impl axum::serve::Listener for ClosingListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => return accepted,
                // Out of file descriptors and the like: wait rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

impl tonic::codegen::tokio_stream::Stream for ClosingListener {
    type Item = std::io::Result<tokio::net::TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener.poll_accept(cx).map(|accepted| Some(accepted.map(|(stream, _)| stream)))
    }
}

#[derive(Default)]
struct Shared {
    faults: Mutex<[Fault; 4]>,
    counts: Mutex<[ReceiverCount; 4]>,
    metrics: Mutex<Vec<OtlpExport<ExportMetricsServiceRequest>>>,
    logs: Mutex<Vec<OtlpExport<ExportLogsServiceRequest>>>,
    loki: Mutex<Vec<LokiPush>>,
    elasticsearch: Mutex<EsStore>,
}

#[derive(Default)]
struct EsStore {
    docs: Vec<EsDoc>,
    /// (index, _id) of `docs`.
    ids: HashSet<(String, String)>,
    bulks: Vec<EsBulk>,
    seq_no: u64,
}

/// A fault that answers a request instead of the receiver.
enum Injected {
    TooManyRequests { retry_after_secs: u64 },
    Status(StatusCode),
}

impl Shared {
    fn count(&self, which: Which, update: impl FnOnce(&mut ReceiverCount)) {
        update(&mut lock(&self.counts)[which.index()]);
    }

    /// Counts a request, and says whether a fault answers it.
    fn admit(&self, which: Which) -> Option<Injected> {
        self.count(which, |count| count.requests += 1);
        let injected = match &lock(&self.faults)[which.index()] {
            Fault::None | Fault::FailEveryNthItem { .. } => None,
            // A request still in flight on a connection of a closing listener.
            Fault::Down => Some(Injected::Status(StatusCode::SERVICE_UNAVAILABLE)),
            Fault::TooManyRequests { retry_after_secs } => {
                Some(Injected::TooManyRequests { retry_after_secs: *retry_after_secs })
            }
            Fault::Status(status) => {
                Some(Injected::Status(StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)))
            }
        };
        if injected.is_some() {
            self.count(which, |count| count.faulted += 1);
        }
        injected
    }

    fn fail_every_nth_item(&self) -> Option<(usize, StatusCode, String)> {
        match &lock(&self.faults)[Which::Elasticsearch.index()] {
            Fault::FailEveryNthItem { n, status, error_type } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
                Some((*n, status, error_type.clone()))
            }
            _ => None,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding a lock must not hide what was received.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- OTLP over gRPC ----

#[derive(Clone)]
struct OtlpGrpcService {
    shared: Arc<Shared>,
}

impl OtlpGrpcService {
    fn export<T>(
        &self,
        request: tonic::Request<T>,
        store: impl FnOnce(&Shared) -> &Mutex<Vec<OtlpExport<T>>>,
    ) -> Result<(), tonic::Status> {
        match self.shared.admit(Which::OtlpGrpc) {
            None => {}
            Some(Injected::TooManyRequests { retry_after_secs }) => {
                let details = retry_info_status(tonic::Code::Unavailable as i32, retry_after_secs).encode_to_vec();
                return Err(tonic::Status::with_details(
                    tonic::Code::Unavailable,
                    format!("too many requests, retry after {retry_after_secs} s"),
                    details.into(),
                ));
            }
            Some(Injected::Status(status)) => {
                let code = grpc_code(status);
                return match code {
                    tonic::Code::Ok => Ok(()),
                    code => Err(tonic::Status::new(code, format!("injected fault: HTTP {}", status.as_u16()))),
                };
            }
        }
        let headers = header_pairs(&request.metadata().clone().into_headers());
        let gzip = request.metadata().get("grpc-encoding").is_some_and(|encoding| encoding == "gzip");
        let export = OtlpExport { transport: OtlpTransport::Grpc, gzip, headers, request: request.into_inner() };
        lock(store(&self.shared)).push(export);
        Ok(())
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        OtlpGrpcService::export(self, request, |shared| &shared.metrics)?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for OtlpGrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        OtlpGrpcService::export(self, request, |shared| &shared.logs)?;
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The gRPC code with the meaning of an HTTP status, as OTLP clients act on it.
fn grpc_code(status: StatusCode) -> tonic::Code {
    match status.as_u16() {
        ..=399 => tonic::Code::Ok,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        408 => tonic::Code::DeadlineExceeded,
        413 => tonic::Code::ResourceExhausted,
        429 | 502 | 503 | 504 => tonic::Code::Unavailable,
        400..=499 => tonic::Code::InvalidArgument,
        _ => tonic::Code::Internal,
    }
}

fn retry_info_status(code: i32, retry_after_secs: u64) -> RpcStatus {
    let retry_info = RetryInfo {
        retry_delay: Some(ProtoDuration { seconds: i64::try_from(retry_after_secs).unwrap_or(i64::MAX), nanos: 0 }),
    };
    RpcStatus {
        code,
        message: format!("too many requests, retry after {retry_after_secs} s"),
        details: vec![ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: retry_info.encode_to_vec(),
        }],
    }
}

// ---- OTLP over HTTP ----

async fn otlp_http_metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    otlp_http_export(&shared, &headers, &body, |shared| &shared.metrics, ExportMetricsServiceResponse::default())
}

async fn otlp_http_logs(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    otlp_http_export(&shared, &headers, &body, |shared| &shared.logs, ExportLogsServiceResponse::default())
}

fn otlp_http_export<T: Message + Default>(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    store: impl FnOnce(&Shared) -> &Mutex<Vec<OtlpExport<T>>>,
    response: impl Message,
) -> Response {
    if let Some(injected) = shared.admit(Which::OtlpHttp) {
        return injected_response(Which::OtlpHttp, injected);
    }
    let decoded = (|| {
        let media_type = media_type(headers);
        if media_type != "application/x-protobuf" {
            let reason = format!("unsupported Content-Type {media_type:?}: this receiver takes application/x-protobuf");
            return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, reason));
        }
        let (body, gzip) = decode_content_encoding(headers, body)?;
        let request = T::decode(body.as_slice())
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("cannot decode the protobuf body: {e}")))?;
        Ok((request, gzip))
    })();
    match decoded {
        Ok((request, gzip)) => {
            let export = OtlpExport { transport: OtlpTransport::Http, gzip, headers: header_pairs(headers), request };
            lock(store(shared)).push(export);
            ([(header::CONTENT_TYPE, "application/x-protobuf")], response.encode_to_vec()).into_response()
        }
        Err((status, reason)) => {
            shared.count(Which::OtlpHttp, |count| count.rejected += 1);
            error_response(Which::OtlpHttp, status, "invalid_request", &reason)
        }
    }
}

// ---- Loki ----

async fn loki_push(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(injected) = shared.admit(Which::Loki) {
        return injected_response(Which::Loki, injected);
    }
    match decode_loki_push(&headers, &body) {
        Ok(push) => {
            lock(&shared.loki).push(push);
            StatusCode::NO_CONTENT.into_response()
        }
        Err((status, reason)) => {
            shared.count(Which::Loki, |count| count.rejected += 1);
            error_response(Which::Loki, status, "", &reason)
        }
    }
}

type Rejection = (StatusCode, String);

fn bad_request(reason: impl Into<String>) -> Rejection {
    (StatusCode::BAD_REQUEST, reason.into())
}

fn decode_loki_push(headers: &HeaderMap, body: &[u8]) -> Result<LokiPush, Rejection> {
    let content_type = media_type(headers);
    let (body, gzip) = decode_content_encoding(headers, body)?;
    let streams = match content_type.as_str() {
        "application/x-protobuf" => decode_loki_protobuf(&body)?,
        "application/json" => decode_loki_json(&body)?,
        other => {
            let reason =
                format!("unsupported Content-Type {other:?}: Loki takes application/x-protobuf or application/json");
            return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, reason));
        }
    };
    let tenant = headers.get("x-scope-orgid").map(|tenant| String::from_utf8_lossy(tenant.as_bytes()).into_owned());
    Ok(LokiPush { tenant, content_type, gzip, headers: header_pairs(headers), streams })
}

fn decode_loki_protobuf(body: &[u8]) -> Result<Vec<LokiStream>, Rejection> {
    let body = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| bad_request(format!("the body is not snappy (block format) compressed: {e}")))?;
    // prost refuses a string field that is not UTF-8, as Loki refuses such a line.
    let push = loki_proto::PushRequest::decode(body.as_slice())
        .map_err(|e| bad_request(format!("cannot decode the push request: {e}")))?;
    push.streams
        .into_iter()
        .map(|stream| {
            let labels = stream_labels(&stream.labels)?;
            let entries = stream
                .entries
                .into_iter()
                .map(|entry| {
                    let timestamp = entry.timestamp.ok_or_else(|| bad_request("an entry has no timestamp"))?;
                    let timestamp_ns = timestamp_ns(timestamp.seconds, i64::from(timestamp.nanos))
                        .ok_or_else(|| bad_request(format!("entry timestamp {timestamp:?} is out of range")))?;
                    let structured_metadata =
                        entry.structured_metadata.into_iter().map(|pair| (pair.name, pair.value)).collect();
                    Ok(LokiEntry { timestamp_ns, line: entry.line, structured_metadata })
                })
                .collect::<Result<Vec<_>, Rejection>>()?;
            non_empty_stream(&stream.labels, labels, entries)
        })
        .collect()
}

fn decode_loki_json(body: &[u8]) -> Result<Vec<LokiStream>, Rejection> {
    // serde_json refuses invalid UTF-8 anywhere in the body.
    let push: Value = serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON: {e}")))?;
    let streams = push
        .get("streams")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_request("the push has no \"streams\" array"))?;
    streams
        .iter()
        .map(|stream| {
            let label_object = stream
                .get("stream")
                .and_then(Value::as_object)
                .ok_or_else(|| bad_request("a stream has no \"stream\" object of labels"))?;
            let mut labels = BTreeMap::new();
            for (name, value) in label_object {
                let value = value.as_str().ok_or_else(|| bad_request(format!("label {name} is not a string")))?;
                labels.insert(name.clone(), value.to_owned());
            }
            let selector = Value::Object(label_object.clone()).to_string();
            validate_labels(&labels).map_err(bad_request)?;
            let values = stream
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| bad_request("a stream has no \"values\" array"))?;
            let entries = values.iter().map(loki_json_entry).collect::<Result<Vec<_>, Rejection>>()?;
            non_empty_stream(&selector, labels, entries)
        })
        .collect()
}

/// `["<ns>", "<line>"]` or `["<ns>", "<line>", {"name": "value"}]`.
fn loki_json_entry(value: &Value) -> Result<LokiEntry, Rejection> {
    let bad_entry = || bad_request(format!("an entry is not [\"<ns>\", \"<line>\", {{metadata}}?]: {value}"));
    let parts = value.as_array().filter(|parts| (2..=3).contains(&parts.len())).ok_or_else(bad_entry)?;
    let timestamp = parts[0].as_str().ok_or_else(bad_entry)?;
    let timestamp_ns = timestamp
        .parse::<i64>()
        .map_err(|_| bad_request(format!("entry timestamp {timestamp:?} is not an integer of nanoseconds")))?;
    let line = parts[1].as_str().ok_or_else(bad_entry)?.to_owned();
    let mut structured_metadata = Vec::new();
    if let Some(metadata) = parts.get(2) {
        for (name, value) in metadata.as_object().ok_or_else(bad_entry)? {
            let value =
                value.as_str().ok_or_else(|| bad_request(format!("structured metadata {name} is not a string")))?;
            structured_metadata.push((name.clone(), value.to_owned()));
        }
    }
    Ok(LokiEntry { timestamp_ns, line, structured_metadata })
}

fn timestamp_ns(seconds: i64, nanos: i64) -> Option<i64> {
    if !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

fn stream_labels(selector: &str) -> Result<BTreeMap<String, String>, Rejection> {
    let labels = parse_loki_selector(selector)
        .map_err(|e| bad_request(format!("error parsing labels '{selector}' with error: {e}")))?;
    validate_labels(&labels).map_err(|e| bad_request(format!("{e} for stream '{selector}'")))?;
    Ok(labels)
}

fn non_empty_stream(
    selector: &str,
    labels: BTreeMap<String, String>,
    entries: Vec<LokiEntry>,
) -> Result<LokiStream, Rejection> {
    if entries.is_empty() {
        return Err(bad_request(format!("stream '{selector}' has no entries")));
    }
    Ok(LokiStream { labels, entries })
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.is_empty() {
        return Err("error at least one label pair is required per stream".into());
    }
    match labels.keys().find(|name| !is_label_name(name)) {
        Some(name) => Err(format!("invalid label name {name:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")),
        None => Ok(()),
    }
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses a Loki stream selector, `{name="value", ...}`: values in double quotes with Go's
/// escapes, or in backquotes taken as they are; only `=`; a trailing comma allowed.
pub fn parse_loki_selector(selector: &str) -> Result<BTreeMap<String, String>, String> {
    let mut chars = selector.trim().chars().peekable();
    if chars.next() != Some('{') {
        return Err("a selector starts with '{'".into());
    }
    let mut labels = BTreeMap::new();
    loop {
        skip_spaces(&mut chars);
        if chars.next_if_eq(&'}').is_some() {
            break;
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && !"=!~,{}\"'`".contains(*c)) {
            name.push(c);
        }
        if !is_label_name(&name) {
            return Err(format!("invalid label name {name:?}: must match [a-zA-Z_][a-zA-Z0-9_]*"));
        }
        skip_spaces(&mut chars);
        if chars.next() != Some('=') || chars.peek().is_some_and(|c| *c == '~') {
            return Err(format!("label {name} must be followed by '='"));
        }
        skip_spaces(&mut chars);
        let value = match chars.next() {
            Some('"') => parse_quoted(&mut chars)?,
            Some('`') => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('`') => break value,
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated value of label {name}")),
                    }
                }
            }
            _ => return Err(format!("the value of label {name} must be quoted")),
        };
        if labels.insert(name.clone(), value).is_some() {
            return Err(format!("duplicate label name {name}"));
        }
        skip_spaces(&mut chars);
        match chars.next() {
            Some(',') => {}
            Some('}') => break,
            _ => return Err(format!("expected ',' or '}}' after label {name}")),
        }
    }
    skip_spaces(&mut chars);
    match chars.next() {
        None => Ok(labels),
        Some(_) => Err("unexpected characters after '}'".into()),
    }
}

fn skip_spaces(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

/// The rest of a double-quoted Go string literal, after the opening quote.
fn parse_quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    let mut value = String::new();
    loop {
        let c = chars.next().ok_or("unterminated quoted string")?;
        match c {
            '"' => return Ok(value),
            '\n' => return Err("newline in a quoted string".into()),
            '\\' => {
                let escape = chars.next().ok_or("unterminated escape")?;
                let unescaped = match escape {
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\u{b}',
                    '\\' | '"' | '\'' => escape,
                    'x' | 'u' | 'U' => {
                        let digits = match escape {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = (0..digits).filter_map(|_| chars.next()).collect();
                        let code = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == digits)
                            .ok_or_else(|| format!("invalid escape \\{escape}{hex}"))?;
                        char::from_u32(code).ok_or_else(|| format!("invalid code point \\{escape}{hex}"))?
                    }
                    '0'..='7' => {
                        let mut octal = String::from(escape);
                        octal.extend((0..2).filter_map(|_| chars.next()));
                        u8::from_str_radix(&octal, 8)
                            .ok()
                            .filter(|_| octal.len() == 3)
                            .map(char::from)
                            .ok_or_else(|| format!("invalid escape \\{octal}"))?
                    }
                    other => return Err(format!("unknown escape \\{other}")),
                };
                value.push(unescaped);
            }
            c => value.push(c),
        }
    }
}

// ---- Elasticsearch ----

async fn es_info() -> Response {
    let info = json!({
        "name": "test-receiver",
        "cluster_name": "modelmeter-e2e",
        "version": {"number": "8.15.0", "build_flavor": "default"},
        "tagline": "You Know, for Search",
    });
    es_json(StatusCode::OK, &info)
}

async fn es_bulk(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    es_bulk_request(&shared, None, &headers, &body)
}

async fn es_bulk_into_index(
    State(shared): State<Arc<Shared>>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    es_bulk_request(&shared, Some(index), &headers, &body)
}

/// One action of a bulk request, with its document line if the action has one.
struct BulkItem {
    action: String,
    index: String,
    id: Option<String>,
    document: Option<Vec<u8>>,
}

/// Metadata an action line may carry; Elasticsearch refuses any other (such as `_type`).
const BULK_METADATA: [&str; 13] = [
    "_index",
    "_id",
    "routing",
    "pipeline",
    "require_alias",
    "require_data_stream",
    "dynamic_templates",
    "if_seq_no",
    "if_primary_term",
    "version",
    "version_type",
    "retry_on_conflict",
    "_source",
];

fn es_bulk_request(shared: &Shared, path_index: Option<String>, headers: &HeaderMap, body: &[u8]) -> Response {
    let started = Instant::now();
    if let Some(injected) = shared.admit(Which::Elasticsearch) {
        return injected_response(Which::Elasticsearch, injected);
    }
    let content_type = media_type(headers);
    let parsed = (|| {
        if content_type != "application/x-ndjson" && content_type != "application/json" {
            let reason = format!("Content-Type header [{content_type}] is not supported");
            return Err((StatusCode::NOT_ACCEPTABLE, "media_type_header_exception", reason));
        }
        let (body, gzip) = decode_content_encoding(headers, body)
            .map_err(|(status, reason)| (status, "illegal_argument_exception", reason))?;
        let items = parse_bulk(&body, path_index.as_deref())?;
        Ok((items, gzip))
    })();
    let (items, gzip) = match parsed {
        Ok(parsed) => parsed,
        Err((status, error_type, reason)) => {
            shared.count(Which::Elasticsearch, |count| count.rejected += 1);
            return error_response(Which::Elasticsearch, status, error_type, &reason);
        }
    };
    let fail_every = shared.fail_every_nth_item();
    let mut count = ReceiverCount::default();
    let mut store = lock(&shared.elasticsearch);
    let mut results = Vec::with_capacity(items.len());
    let mut statuses = Vec::with_capacity(items.len());
    for (position, item) in items.into_iter().enumerate() {
        let id = item.id.clone().unwrap_or_default();
        let outcome = match &fail_every {
            Some((n, status, error_type)) if (position + 1) % n == 0 => {
                count.failed_items += 1;
                Err((*status, error_type.clone(), format!("item {} failed by the test receiver's fault", position + 1)))
            }
            _ => check_bulk_item(&item, &store).inspect_err(|(status, _, _)| {
                if *status == StatusCode::CONFLICT {
                    count.duplicates += 1;
                } else {
                    count.invalid_items += 1;
                }
            }),
        };
        let mut result = Map::new();
        result.insert("_index".into(), json!(item.index));
        result.insert("_id".into(), json!(id));
        match outcome {
            Ok(source) => {
                result.insert("_version".into(), json!(1));
                result.insert("result".into(), json!("created"));
                result.insert("_shards".into(), json!({"total": 1, "successful": 1, "failed": 0}));
                result.insert("_seq_no".into(), json!(store.seq_no));
                store.seq_no += 1;
                result.insert("_primary_term".into(), json!(1));
                result.insert("status".into(), json!(201));
                store.ids.insert((item.index.clone(), id.clone()));
                store.docs.push(EsDoc { index: item.index, id, source });
                statuses.push(201);
            }
            Err((status, error_type, reason)) => {
                result.insert("status".into(), json!(status.as_u16()));
                result.insert("error".into(), json!({"type": error_type, "reason": reason, "index": item.index}));
                statuses.push(status.as_u16());
            }
        }
        let mut action = Map::new();
        action.insert(item.action, Value::Object(result));
        results.push(Value::Object(action));
    }
    let errors = statuses.iter().any(|status| *status != 201);
    store.bulks.push(EsBulk { path_index, content_type, gzip, headers: header_pairs(headers), statuses });
    drop(store);
    shared.count(Which::Elasticsearch, |total| {
        total.failed_items += count.failed_items;
        total.duplicates += count.duplicates;
        total.invalid_items += count.invalid_items;
    });
    let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    es_json(StatusCode::OK, &json!({"took": took, "errors": errors, "items": results}))
}

type ItemError = (StatusCode, String, String);

/// What a data stream answers for one item: the document to store, or why not.
fn check_bulk_item(item: &BulkItem, store: &EsStore) -> Result<Value, ItemError> {
    let fail = |status: StatusCode, error_type: &str, reason: String| Err((status, error_type.to_owned(), reason));
    if item.action != "create" {
        let reason =
            format!("only write ops with an op_type of create are allowed in data streams, not [{}]", item.action);
        return fail(StatusCode::BAD_REQUEST, "illegal_argument_exception", reason);
    }
    let Some(id) = &item.id else {
        // Elasticsearch would make one up; a sink must not, or its retries duplicate documents.
        let reason = "the action has no _id (this receiver requires one, for idempotent retries)".to_owned();
        return fail(StatusCode::BAD_REQUEST, "illegal_argument_exception", reason);
    };
    let document = item.document.as_deref().unwrap_or_default();
    let source = match serde_json::from_slice::<Value>(document) {
        Ok(source @ Value::Object(_)) => source,
        Ok(_) => {
            return fail(StatusCode::BAD_REQUEST, "mapper_parsing_exception", "failed to parse: not an object".into());
        }
        Err(e) => return fail(StatusCode::BAD_REQUEST, "mapper_parsing_exception", format!("failed to parse: {e}")),
    };
    match source.get("@timestamp") {
        None => {
            let reason = "data stream timestamp field [@timestamp] is missing".to_owned();
            return fail(StatusCode::BAD_REQUEST, "mapper_parsing_exception", reason);
        }
        Some(timestamp) if !is_es_date(timestamp) => {
            let reason = format!("failed to parse field [@timestamp] of type [date]: {timestamp}");
            return fail(StatusCode::BAD_REQUEST, "mapper_parsing_exception", reason);
        }
        Some(_) => {}
    }
    if store.ids.contains(&(item.index.clone(), id.clone())) {
        let reason = format!("[{id}]: version conflict, document already exists (current version [1])");
        return fail(StatusCode::CONFLICT, "version_conflict_engine_exception", reason);
    }
    Ok(source)
}

/// A value the default date format takes: `strict_date_optional_time` (checked loosely: a
/// `YYYY-MM-DD` start) or `epoch_millis`.
fn is_es_date(value: &Value) -> bool {
    match value {
        Value::Number(number) => number.is_i64() || number.is_u64(),
        Value::String(text) => {
            let bytes = text.as_bytes();
            let is_digits =
                |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                || (is_digits(0..4)
                    && bytes.get(4) == Some(&b'-')
                    && is_digits(5..7)
                    && bytes.get(7) == Some(&b'-')
                    && is_digits(8..10))
        }
        _ => false,
    }
}

type BulkError = (StatusCode, &'static str, String);

fn parse_bulk(body: &[u8], path_index: Option<&str>) -> Result<Vec<BulkItem>, BulkError> {
    let invalid = |error_type: &'static str, reason: String| (StatusCode::BAD_REQUEST, error_type, reason);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("action_request_validation_exception", "Validation Failed: 1: no requests added;".into()));
    }
    let Some(body) = body.strip_suffix(b"\n") else {
        return Err(invalid(
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]".into(),
        ));
    };
    let mut lines =
        body.split(|b| *b == b'\n').enumerate().map(|(at, line)| (at + 1, line.strip_suffix(b"\r").unwrap_or(line)));
    let mut items = Vec::new();
    while let Some((line_number, line)) = lines.next() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let malformed = |why: String| {
            invalid("illegal_argument_exception", format!("Malformed action/metadata line [{line_number}], {why}"))
        };
        let action_line: Value = serde_json::from_slice(line).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let (action, metadata) = match action_line.as_object() {
            Some(object) if object.len() == 1 => object.iter().next().expect("one entry"),
            _ => return Err(malformed("expected an object with one action".into())),
        };
        if !["create", "index", "update", "delete"].contains(&action.as_str()) {
            return Err(malformed(format!(
                "expected field [create], [delete], [index] or [update] but found [{action}]"
            )));
        }
        let metadata = metadata.as_object().ok_or_else(|| malformed(format!("[{action}] is not an object")))?;
        if let Some(unknown) = metadata.keys().find(|key| !BULK_METADATA.contains(&key.as_str())) {
            let reason = format!("Action/metadata line [{line_number}] contains an unknown parameter [{unknown}]");
            return Err(invalid("illegal_argument_exception", reason));
        }
        let string_field = |field: &str| match metadata.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(malformed(format!("[{field}] is not a string"))),
        };
        let index = match string_field("_index")?.or_else(|| path_index.map(str::to_owned)) {
            Some(index) => index,
            None => {
                return Err(invalid(
                    "action_request_validation_exception",
                    "Validation Failed: 1: index is missing;".into(),
                ));
            }
        };
        let id = string_field("_id")?;
        let document = if action == "delete" {
            None
        } else {
            let (_, document) = lines.next().ok_or_else(|| {
                invalid(
                    "illegal_argument_exception",
                    format!("the [{action}] action on line [{line_number}] has no document line"),
                )
            })?;
            Some(document.to_vec())
        };
        items.push(BulkItem { action: action.clone(), index, id, document });
    }
    Ok(items)
}

fn es_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    // Elasticsearch clients check that they speak to Elasticsearch.
    response.headers_mut().insert("x-elastic-product", HeaderValue::from_static("Elasticsearch"));
    response
}

// ---- Shared HTTP ----

/// An error answer in the receiver's own format: google.rpc.Status for OTLP, text for Loki, an
/// error object for Elasticsearch.
fn error_response(which: Which, status: StatusCode, error_type: &str, reason: &str) -> Response {
    match which {
        Which::OtlpHttp | Which::OtlpGrpc => {
            let body = RpcStatus { code: grpc_code(status) as i32, message: reason.to_owned(), details: Vec::new() };
            (status, [(header::CONTENT_TYPE, "application/x-protobuf")], body.encode_to_vec()).into_response()
        }
        Which::Loki => {
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{reason}\n")).into_response()
        }
        Which::Elasticsearch => {
            let cause = json!({"type": error_type, "reason": reason});
            let error = json!({"root_cause": [cause], "type": error_type, "reason": reason});
            es_json(status, &json!({"error": error, "status": status.as_u16()}))
        }
    }
}

fn injected_response(which: Which, injected: Injected) -> Response {
    match injected {
        Injected::Status(status) => error_response(which, status, "status_exception", "injected fault"),
        Injected::TooManyRequests { retry_after_secs } => {
            let reason = format!("too many requests, retry after {retry_after_secs} s");
            let mut response = match which {
                Which::OtlpHttp | Which::OtlpGrpc => {
                    let body = retry_info_status(tonic::Code::Unavailable as i32, retry_after_secs);
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::CONTENT_TYPE, "application/x-protobuf")],
                        body.encode_to_vec(),
                    )
                        .into_response()
                }
                Which::Elasticsearch => {
                    error_response(which, StatusCode::TOO_MANY_REQUESTS, "es_rejected_execution_exception", &reason)
                }
                Which::Loki => error_response(which, StatusCode::TOO_MANY_REQUESTS, "", &reason),
            };
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
    }
}

/// The Content-Type's media type, lowercase, without parameters.
fn media_type(headers: &HeaderMap) -> String {
    let value = headers.get(header::CONTENT_TYPE).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    value.unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// The body without its Content-Encoding, and whether that was gzip.
fn decode_content_encoding(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<u8>, bool), Rejection> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok((body.to_vec(), false)),
        Some("gzip") => {
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(MAX_INFLATED_BYTES)
                .read_to_end(&mut inflated)
                .map_err(|e| bad_request(format!("the body is not valid gzip: {e}")))?;
            Ok((inflated, true))
        }
        Some(other) => Err(bad_request(format!("unsupported Content-Encoding {other:?}"))),
    }
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect()
}
