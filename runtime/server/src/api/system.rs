//! The server's own endpoints: health, ping and metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{API_VERSION, ApiResult, AppState, AppStateRef};

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ping", get(ping))
        .route("/v2/ping", get(ping))
        .route("/metrics", get(metrics))
}

async fn healthz(State(state): AppStateRef) -> Response {
    match state.store.phase_counts().await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: the store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "the store does not answer").into_response()
        }
    }
}

async fn ping() -> Response {
    axum::Json(json!({
        "apiVersion": API_VERSION,
        "kind": "PingResponse",
        "version": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("MIZZEN_COMMIT").unwrap_or("unknown"),
    }))
    .into_response()
}

async fn metrics(State(state): AppStateRef) -> ApiResult {
    let phases = state.store.phase_counts().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&phases),
    )
        .into_response())
}
