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
use prometheus_client::registry::Registry;

use crate::{app::Control, store::SnapshotCell};

/// What the handlers share.
pub struct ApiState {
    pub cell: Arc<SnapshotCell>,
    pub registry: Registry,
    /// Asks the collector for a fresh snapshot and waits for it; `None` when collecting on demand is off.
    pub refresh: Option<crossbeam_channel::Sender<Control>>,
    /// A snapshot younger than this is served as it is.
    pub min_collect_interval: Duration,
    /// A snapshot older than this means the collector is stuck: `/healthz` fails.
    pub max_snapshot_age: Duration,
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
    let snapshot = state.cell.get();
    let prometheus = |attributes: &[(crate::attributes::Attr, String)]| -> serde_json::Map<String, serde_json::Value> {
        attributes.iter().map(|(a, v)| (a.prometheus().to_owned(), serde_json::Value::String(v.clone()))).collect()
    };
    let containers: Vec<serde_json::Value> = snapshot
        .containers
        .iter()
        .map(|c| {
            serde_json::json!({
                "labels": prometheus(&c.attributes),
                "cgroup": c.cgroup,
                "cpu_seconds": c.cpu_seconds,
                "memory_working_set_bytes": c.memory.map(|m| m.working_set_bytes),
                "memory_rss_bytes": c.memory.map(|m| m.rss_bytes),
                "oom_kills": c.oom_kills,
            })
        })
        .collect();
    let requests: Vec<serde_json::Value> = snapshot
        .requests
        .iter()
        .map(|r| {
            serde_json::json!({
                "labels": prometheus(&r.attributes),
                "count": r.duration.count,
                "sum_seconds": r.duration.sum,
                "p50_seconds": r.p50_seconds,
                "p90_seconds": r.p90_seconds,
                "p99_seconds": r.p99_seconds,
            })
        })
        .collect();
    let body = serde_json::json!({
        "taken_at": humantime::format_rfc3339_millis(snapshot.taken_at).to_string(),
        "containers": containers,
        "requests": requests,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    refresh_if_stale(&state).await;
    match crate::sinks::prometheus::encode(&state.registry) {
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

async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    match state.cell.age() {
        Some(_) => (StatusCode::OK, "ready\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "first collection not finished\n").into_response(),
    }
}
