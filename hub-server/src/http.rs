//! Prometheus metrics and a readiness probe: over HTTPS with the hub certificate (plain
//! HTTP only in `insecure-plaintext` mode; see `lib.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::ingest::Ingest;

pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(ingest)
}

async fn metrics(State(ing): State<Arc<Ingest>>) -> (StatusCode, String) {
    let store = ing.store.clone();
    let count = tokio::task::spawn_blocking(move || store.count().unwrap_or(0))
        .await
        .unwrap_or(0);
    (StatusCode::OK, ing.metrics.render(count))
}

/// 200 once the hub is subscribed on its broker and can ingest.
async fn healthz(State(ing): State<Arc<Ingest>>) -> (StatusCode, &'static str) {
    if ing.metrics.mqtt_connected.load(Ordering::Relaxed) == 1 {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "mqtt not connected\n")
    }
}
