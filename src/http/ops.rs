//! Operations endpoints: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the state has been rebuilt (it is before the server binds), the usage log can take
/// events (disk space) and the store sink is not failing; otherwise 503 with the reasons.
async fn readyz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let lag = app.ledger.store_lag().await;
    let reasons = app.ledger.unready_reasons();
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if reasons.is_empty() {
        "ready"
    } else {
        "not_ready"
    };
    (
        status,
        Json(json!({"status": word, "reasons": reasons, "store_lag_bytes": lag})),
    )
}

async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let lag = app.ledger.store_lag().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(crate::telemetry::Gauges {
            store_lag_bytes: lag,
            rate_limiters: app.ledger.rate_limiters(),
            spooled_bytes: app.ledger.log().spooled_bytes(),
        }),
    )
}
