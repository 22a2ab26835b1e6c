//! The HTTP API: `/metrics` (OpenMetrics text), `/healthz`, `/readyz`.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;

use crate::store::SnapshotCell;

/// What the handlers share.
pub struct ApiState {
    pub cell: Arc<SnapshotCell>,
    pub registry: Registry,
    /// Asks the collector for a fresh snapshot and waits for it; `None` when collecting on demand is off.
    pub refresh: Option<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>>,
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
        .with_state(state)
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let stale = state.cell.age().is_none_or(|age| age >= state.min_collect_interval);
    if let (true, Some(refresh)) = (stale, &state.refresh) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if refresh.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }
    match crate::export::prometheus::encode(&state.registry) {
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
