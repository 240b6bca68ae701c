//! `/health/live`, `/health/ready` and `/metrics`.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::app::AppState;
use super::db::within;
use super::error::{ApiError, ProblemType};
use crate::metrics as m;

#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, description = "The process is up", body = Object)))]
pub(super) async fn live() -> impl IntoResponse {
    axum::Json(json!({"status": "live"}))
}

/// 200 only while this instance can accept and drive jobs: it holds its identity (drivers run
/// only then), and the database answers, is writable and commits durably within
/// `TCC_DB_TIMEOUT` (`store::ready`).
#[utoipa::path(get, path = "/health/ready", tag = "health", responses((status = 200, description = "Ready to accept and drive jobs", body = Object), (status = 503, description = "Not ready: the detail says why")))]
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    match readiness(&state).await {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(detail) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemType::NotReady,
            detail,
        )
        .into_response(),
    }
}

/// Whether this instance is ready (`/health/ready`, `tcc_ready`), or why not.
async fn readiness(state: &AppState) -> Result<(), &'static str> {
    use crate::store::Readiness;
    if !state.engine.driving() {
        return Err(
            "this instance does not hold its identity in the database (the session was lost); it is taking it anew",
        );
    }
    let instance = state.engine.instance_id();
    match within(state, crate::store::ready(&state.pool, instance)).await {
        Ok(Readiness::Ready) => Ok(()),
        Ok(Readiness::NotMigrated) => {
            Err("the database schema is not migrated to this version yet")
        }
        Ok(Readiness::NotRegistered) => Err(
            "this instance is not registered in the database (its identity is being taken anew)",
        ),
        Err(e) => {
            // What the database said stays in the log: no internal detail reaches a client.
            tracing::warn!(error = %e, "not ready");
            Err(match e {
                crate::store::StoreError::Unavailable(_) => {
                    "the database cannot be reached, or did not take a durable commit within TCC_DB_TIMEOUT (is a required synchronous standby missing?)"
                }
                crate::store::StoreError::Db(_) => {
                    "the database refused a write: it is read-only (a standby, or in recovery)"
                }
                _ => "the database cannot take a durable commit",
            })
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
pub(super) async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(h) => {
            let ready = readiness(&state).await.is_ok();
            metrics::gauge!(m::READY).set(if ready { 1.0 } else { 0.0 });
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                )],
                m::render(h),
            )
                .into_response()
        }
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemType::MetricsUnavailable,
            "another metrics recorder was installed in this process",
        )
        .into_response(),
    }
}
