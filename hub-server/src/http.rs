//! Prometheus metrics and a readiness probe: over HTTPS with the hub certificate (plain
//! HTTP only in `insecure-plaintext` mode; see `lib.rs`). `HubError` is mapped to HTTP
//! statuses here, once, for the pages that will sit on the case service.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::HubError;
use crate::metrics::Metrics;
use crate::store::HubStore;

/// What the HTTP side reads.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// For the stored-cases gauge.
    pub store: Arc<dyn HubStore>,
    /// The specialists' web application (`web`), when served.
    pub web: Option<crate::web::WebState>,
}

pub fn router(state: HttpState) -> Router {
    let web = state.web.clone();
    let base = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    match web {
        Some(w) => base.merge(crate::web::router(w)),
        None => base,
    }
}

impl HubError {
    pub fn http_status(&self) -> StatusCode {
        match self {
            HubError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            HubError::Denied(_) => StatusCode::FORBIDDEN,
            HubError::Invalid(_) => StatusCode::BAD_REQUEST,
            HubError::Exhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            HubError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HubError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        (self.http_status(), format!("{self}\n")).into_response()
    }
}

async fn metrics(State(s): State<HttpState>) -> (StatusCode, String) {
    let store = s.store.clone();
    let count = tokio::task::spawn_blocking(move || store.count().unwrap_or(0))
        .await
        .unwrap_or(0);
    (StatusCode::OK, s.metrics.render(count))
}

/// 200 once the hub is subscribed on its broker and can ingest.
async fn healthz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.metrics.mqtt_connected.load(Ordering::Relaxed) == 1 {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "mqtt not connected\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_kind_has_its_http_status() {
        let cases = [
            (HubError::Unauthenticated("no bearer token".into()), 401),
            (HubError::Denied("sync status is for operators".into()), 403),
            (HubError::Invalid("bad id".into()), 400),
            (HubError::Exhausted("too many attempts".into()), 429),
            (HubError::Unavailable("audit log unavailable".into()), 503),
            (HubError::Internal("join".into()), 500),
        ];
        for (e, code) in cases {
            let r = e.clone().into_response();
            assert_eq!(r.status().as_u16(), code, "{e}");
        }
    }
}
