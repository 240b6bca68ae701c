//! The HTTP API (SPEC §5): routes by resource, problem+json errors, hypermedia links.
//!
//! Handlers parse input once at the edge (into `domain` types), call the store and wake the
//! engine; they never drive a job themselves and never call a participant.

mod error;
mod jobs;
pub mod repr;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

pub use error::ApiError;

use crate::engine::Engine;
use crate::metrics as m;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub engine: Engine,
    pub settings: Arc<ApiSettings>,
    pub metrics: Option<PrometheusHandle>,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub public_url: Option<String>,
    pub max_tasks: usize,
    pub max_body: usize,
    pub listen: std::net::SocketAddr,
}

/// The longest `Prefer: wait=N` honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// A route that also answers OPTIONS with its `Allow`.
fn with_options(router: MethodRouter<AppState>, allow: &'static str) -> MethodRouter<AppState> {
    router.options(move || async move {
        (
            StatusCode::NO_CONTENT,
            [(header::ALLOW, HeaderValue::from_static(allow))],
        )
    })
}

pub fn router(state: AppState) -> Router {
    use axum::routing::{delete, post};
    const GET: &str = "GET, HEAD, OPTIONS";
    const POST: &str = "POST, OPTIONS";
    Router::new()
        .route("/", with_options(get(jobs::entry_point), GET))
        .route(
            "/jobs",
            with_options(
                get(jobs::list_jobs).post(jobs::create_job),
                "GET, HEAD, POST, OPTIONS",
            ),
        )
        .route(
            "/jobs/{job_id}",
            with_options(
                get(jobs::get_job).merge(delete(jobs::cancel_job)),
                "GET, HEAD, DELETE, OPTIONS",
            ),
        )
        .route(
            "/jobs/{job_id}/cancel",
            with_options(post(jobs::cancel_job), POST),
        )
        .route(
            "/jobs/{job_id}/confirm",
            with_options(post(jobs::confirm_job), POST),
        )
        .route(
            "/jobs/{job_id}/progress",
            with_options(get(jobs::progress), GET),
        )
        .route(
            "/jobs/{job_id}/tasks",
            with_options(get(jobs::list_tasks), GET),
        )
        .route(
            "/jobs/{job_id}/tasks/{task_id}",
            with_options(get(jobs::get_task), GET),
        )
        .route(
            "/jobs/{job_id}/participants",
            with_options(post(jobs::register), POST),
        )
        .route(
            "/jobs/{job_id}/shared-state",
            with_options(get(jobs::shared_state), GET),
        )
        .route("/health/live", with_options(get(live), GET))
        .route("/health/ready", with_options(get(ready), GET))
        .route("/metrics", with_options(get(metrics_text), GET))
        .route_layer(middleware::from_fn(track_http))
        .fallback(not_found)
        .layer(middleware::from_fn(problem_details))
        .with_state(state)
}

/// Only `/metrics`, for `TCC_METRICS_LISTEN`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(middleware::from_fn(problem_details))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no resource at this path")
}

async fn live() -> impl IntoResponse {
    axum::Json(json!({"status": "live"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    match crate::store::ready(&state.pool).await {
        Ok(true) => axum::Json(json!({"status": "ready"})).into_response(),
        Ok(false) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            "the database schema is not migrated to this version yet",
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            h.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics-unavailable",
            "Metrics unavailable",
            "another metrics recorder was installed in this process",
        )
        .into_response(),
    }
}

/// Count and time every request by its route template.
async fn track_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(m::HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Make every error a problem document: turn axum's bare 405 into one (keeping `Allow`), and
/// name the request path as the problem's `instance`.
async fn problem_details(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let resp = next.run(req).await;
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(error::PROBLEM_JSON.as_bytes()));
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED && !is_problem {
        let allow = resp.headers().get(header::ALLOW).cloned();
        let mut problem = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!(
                "{method} is not allowed here{}",
                allow
                    .as_ref()
                    .and_then(|a| a.to_str().ok())
                    .map(|a| format!("; allowed: {a}"))
                    .unwrap_or_default()
            ),
        )
        .into_response();
        if let Some(a) = allow {
            problem.headers_mut().insert(header::ALLOW, a);
        }
        return with_instance(problem, &path).await;
    }
    if is_problem {
        return with_instance(resp, &path).await;
    }
    resp
}

async fn with_instance(resp: Response, path: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    if let Some(o) = doc.as_object_mut() {
        o.insert("instance".into(), path.into());
    }
    let out = doc.to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// The base of absolute links: `TCC_PUBLIC_URL`, else `http://{Host}`.
pub fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &state.settings.public_url {
        return u.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| state.settings.listen.to_string());
    format!("http://{host}")
}

/// `Prefer: wait=N` (RFC 7240), capped.
pub fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            (k.trim().eq_ignore_ascii_case("wait")).then(|| v.trim().parse::<f64>().ok())?
        })
        .find(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s).min(MAX_WAIT))
}

/// Whether `If-None-Match` names `etag` (or `*`).
pub fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
        })
}

/// Read a JSON request body: `Content-Type` must be JSON (415), at most `max` bytes (413),
/// well-formed (400 with line and column).
pub async fn read_json(headers: &HeaderMap, body: Body, max: usize) -> Result<Value, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json_like = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json_like {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            if ctype.is_empty() {
                "the body must be JSON, sent with Content-Type: application/json".to_string()
            } else {
                format!("the body must be JSON (Content-Type: application/json), not {ctype}")
            },
        ));
    }
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            format!("the body is larger than the limit of {max} bytes (TCC_MAX_BODY)"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!(
                "the body is not valid JSON: {} (line {}, column {})",
                strip_position(&e.to_string()),
                e.line(),
                e.column()
            ),
        )
    })
}

fn strip_position(msg: &str) -> &str {
    msg.find(" at line ").map_or(msg, |i| &msg[..i])
}
