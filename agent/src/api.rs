//! The HTTP API: `/metrics` (OpenMetrics text), `/healthz`, `/readyz`, and `/api/v1/snapshot`
//! (the latest snapshot as JSON, with request latency quantiles, for `modelmeter top` and tests).

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    app::Control,
    sources::kubernetes::{WatchHealth, WatchStatus},
    store::SnapshotCell,
};

/// What the handlers share.
pub struct ApiState {
    pub cell: Arc<SnapshotCell>,
    /// Asks the collector for a fresh snapshot and waits for it; `None` when collecting on demand is off.
    pub refresh: Option<crossbeam_channel::Sender<Control>>,
    /// A snapshot younger than this is served as it is.
    pub min_collect_interval: Duration,
    /// A snapshot older than this means the collector is stuck: `/healthz` fails.
    pub max_snapshot_age: Duration,
    /// The pod watch's health; `None` without the Kubernetes API.
    pub pod_watch: Option<Arc<WatchHealth>>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/snapshot", get(snapshot))
        .with_state(state)
}

/// Collects first when the snapshot is older than `min_collect_interval`.
async fn refresh_if_stale(state: &ApiState) {
    let stale = state.cell.age().is_none_or(|age| age >= state.min_collect_interval);
    if let (true, Some(refresh)) = (stale, &state.refresh) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if refresh.send(Control::Collect(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn snapshot(State(state): State<Arc<ApiState>>) -> Response {
    refresh_if_stale(&state).await;
    let view = crate::view::build(&state.cell.get(), state.cell.previous().as_deref());
    match serde_json::to_string(&view) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the snapshot failed: {e}\n")).into_response(),
    }
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    refresh_if_stale(&state).await;
    let cell = state.cell.clone();
    // Encoding a large node's exposition takes tens of milliseconds: off the async workers.
    let encoded = tokio::task::spawn_blocking(move || crate::sinks::prometheus::latest_text(&cell)).await;
    let encoded = match encoded {
        Ok(encoded) => encoded,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {e}\n")).into_response();
        }
    };
    match encoded {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {e}\n")).into_response(),
    }
}

async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    match state.cell.age() {
        Some(age) if age > state.max_snapshot_age => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("last collection was {}s ago\n", age.as_secs())).into_response()
        }
        _ => (StatusCode::OK, "ok\n").into_response(),
    }
}

/// Ready once the first collection is done and, with the Kubernetes API, once the pod watch has
/// listed this node's pods: an agent that cannot name pods (RBAC not applied yet) holds a rollout
/// back where `kubectl rollout status` shows it. A watch lost later keeps the agent ready: it still
/// serves every series, with the names it last saw, and an API server outage must not take every
/// node's agent out of its Service at once. The body says which part is missing.
async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let collection = match state.cell.age() {
        Some(age) => Ok(format!("collection: ok ({}s ago)", age.as_secs())),
        None => Err("collection: first collection not finished".to_owned()),
    };
    let watch = state.pod_watch.as_ref().map(|health| pod_watch_line(&health.status()));
    let mut ready = collection.is_ok();
    let mut body = match collection {
        Ok(line) | Err(line) => line,
    };
    body.push('\n');
    if let Some((synced, line)) = watch {
        ready &= synced;
        body.push_str(&line);
        body.push('\n');
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, format!("{}\n{body}", if ready { "ready" } else { "not ready" })).into_response()
}

/// Whether the watch has listed this node's pods once, and a line saying how it is.
fn pod_watch_line(status: &WatchStatus) -> (bool, String) {
    let error = status.last_error.as_ref().map(|(reason, e)| format!(" ({}: {e})", reason.label()));
    let line = match (status.up, status.synced_once) {
        (true, _) => format!("pod watch: up ({} pods)", status.pods),
        (false, false) => format!("pod watch: not synced yet{}", error.unwrap_or_default()),
        (false, true) => format!(
            "pod watch: down for {}s{}; names as last seen",
            status.last_sync_age.as_secs(),
            error.unwrap_or_default()
        ),
    };
    (status.synced_once, line)
}

/// Limits of the agent's own HTTP server: a client that sends slowly, or not at all, or opens
/// thousands of connections, costs bounded memory and never blocks `/healthz` or shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A request head must arrive within this; a kept-alive connection idle this long is closed.
    pub header_read_timeout: Duration,
    /// Open connections at most; a new one beyond it closes the oldest.
    pub max_connections: usize,
    /// The largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { header_read_timeout: Duration::from_secs(10), max_connections: 512, max_header_bytes: 16 * 1024 }
    }
}

/// Open connections, oldest first, each with the token that closes it.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: std::collections::VecDeque<(u64, tokio_util::sync::CancellationToken)>,
}

/// Serves `router` on `listener` until `stop` fires; then open connections get `grace` to finish
/// and are dropped after it. Returns how many connections were closed early to make room.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServerLimits,
    stop: tokio_util::sync::CancellationToken,
    grace: Duration,
) -> u64 {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let connections = Arc::new(std::sync::Mutex::new(Connections::default()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes);
    let mut evicted = 0;
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::debug!(error = %e, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let token = tokio_util::sync::CancellationToken::new();
        let id = {
            let mut open = connections.lock().unwrap_or_else(|e| e.into_inner());
            // At the limit the oldest goes: a flood of idle or half-sent connections cannot keep
            // a health check or a scrape out, and memory stays bounded.
            while open.open.len() >= limits.max_connections.max(1) {
                if let Some((_, oldest)) = open.open.pop_front() {
                    oldest.cancel();
                    evicted += 1;
                }
            }
            open.next_id += 1;
            let id = open.next_id;
            open.open.push_back((id, token.clone()));
            id
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let connections = connections.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                () = token.cancelled() => {}
            }
            let mut open = connections.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = open.open.iter().position(|(other, _)| *other == id) {
                open.open.remove(at);
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("Open HTTP connections did not finish in time; closing them");
    }
    // Whatever is left is dropped with the runtime.
    for (_, token) in connections.lock().unwrap_or_else(|e| e.into_inner()).open.drain(..) {
        token.cancel();
    }
    evicted
}
