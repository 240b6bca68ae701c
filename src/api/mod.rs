//! The HTTP API (docs/api.md, "Endpoints"): routes by resource, problem+json errors, hypermedia links.
//!
//! Handlers parse input once at the edge (into `domain` types), call the store and wake the
//! engine; they never drive a job themselves and never call a participant.

mod actions;
pub mod auth;
mod coordinator;
mod error;
mod events;
mod html;
mod jobs;
pub mod openapi;
mod problems;
pub mod repr;
mod state;

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

use crate::domain::request::MAX_NUMBER;
use crate::engine::Engine;
use crate::metrics as m;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub engine: Engine,
    pub settings: Arc<ApiSettings>,
    pub metrics: Option<PrometheusHandle>,
    /// Event streams open at once (`GET /jobs/{id}/events` as `text/event-stream`): at most
    /// `max_inflight_requests`, which they do not count against while they stream.
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// Who acts, as the event log and resolutions record it, while the API is open (no API keys).
pub(crate) const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub public_url: Option<String>,
    pub max_tasks: usize,
    pub max_body: usize,
    pub listen: std::net::SocketAddr,
    /// Every request's time limit (`TCC_REQUEST_TIMEOUT`).
    pub request_timeout: Duration,
    /// How long a request's body may take to arrive (`TCC_HEADER_READ_TIMEOUT`).
    pub body_read_timeout: Duration,
    /// Most requests in progress at once (`TCC_MAX_INFLIGHT_REQUESTS`).
    pub max_inflight_requests: usize,
    /// How long a request waits for the database (`TCC_DB_TIMEOUT`).
    pub db_timeout: Duration,
    /// `TCC_API_KEYS`; empty: the API is open.
    pub api_keys: Arc<auth::ApiKeys>,
    /// `TCC_ALLOWED_TARGETS`: the URLs a request may name.
    pub targets: Arc<crate::domain::policy::TargetPolicy>,
}

impl ApiSettings {
    /// The longest `Prefer: wait=N` honoured: a long poll answers well within the request's
    /// time limit.
    pub fn max_wait(&self) -> Duration {
        self.request_timeout.mul_f64(0.75)
    }
}

/// A route that also answers OPTIONS with its `Allow`.
fn with_options(router: MethodRouter<AppState>, allow: &'static str) -> MethodRouter<AppState> {
    router.options(move || async move {
        (
            StatusCode::NO_CONTENT,
            [(header::ALLOW, HeaderValue::from_static(allow))],
        )
    })
}

/// The API, as the service the HTTP server runs.
pub fn router(state: AppState) -> impl HttpService {
    let settings = state.settings.clone();
    guarded(routes(&state).with_state(state), &settings)
}

/// What the HTTP server runs: a request in, a response out, never an error.
pub trait HttpService:
    tower::Service<
        Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> HttpService for S where
    S: tower::Service<
            Request,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The layers every request passes, outermost first: the body's arrival (`arrived`: a slow
/// sender waits outside the budgets), admission (`admit`: 503 at once when its budget is spent,
/// never queued) and the time limit (503), around the whole router so that the
/// limits are one for all routes; then, on each route, a panic caught into a 500 problem (the
/// process goes on serving), unreadable input refused (400), problem details completed.
fn guarded(routes: Router, settings: &ApiSettings) -> impl HttpService + use<> {
    use tower::ServiceBuilder;
    let budgets = Budgets {
        requests: Arc::new(tokio::sync::Semaphore::new(settings.max_inflight_requests)),
        waits: Arc::new(tokio::sync::Semaphore::new(settings.max_inflight_requests)),
    };
    let public = settings.public_url.clone();
    let open = settings.api_keys.is_empty();
    let body_limits = (settings.max_body, settings.body_read_timeout);
    let base = public.clone().unwrap_or_default();
    let routes = routes
        .layer(middleware::from_fn(move |req, next| {
            html::forms::same_origin(public.clone(), open, req, next)
        }))
        .layer(middleware::from_fn(reject_unreadable))
        .layer(middleware::from_fn(refuse_unread))
        .layer(middleware::from_fn(move |req, next| {
            problem_details(base.clone(), req, next)
        }))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked));
    ServiceBuilder::new()
        .layer(middleware::from_fn(move |req, next| {
            arrived(body_limits, req, next)
        }))
        .layer(middleware::from_fn(move |req, next| {
            admit(budgets.clone(), req, next)
        }))
        .layer(axum::error_handling::HandleErrorLayer::new(refused))
        .timeout(settings.request_timeout)
        .service(routes)
}

/// What requests in progress may hold: `TCC_MAX_INFLIGHT_REQUESTS` of each budget.
#[derive(Clone)]
struct Budgets {
    /// Ordinary requests.
    requests: Arc<tokio::sync::Semaphore>,
    /// Requests that wait for a job to change (`Prefer: wait`, the Atomikos confirm): they hold
    /// their slot for seconds, so a crowd of them must not crowd out submissions. (Event
    /// streams have a budget of their own too: `AppState.streams`.)
    waits: Arc<tokio::sync::Semaphore>,
}

/// Whether a request may wait for a job to change before it answers.
fn waits(req: &Request) -> bool {
    prefer_wait(req.headers(), Duration::from_secs(3600)).is_some()
        || (req.method() == axum::http::Method::PUT && req.uri().path() == "/coordinator/confirm")
}

/// A request's body, read whole before the request counts as in progress, so that a client that
/// sends it slowly holds a connection but no place of the budget: 413 beyond `max` bytes
/// (`TCC_MAX_BODY`), 400 when it cannot be read, 408 (the connection
/// closed) when it has not arrived within `limit`. Requests without a body pass as they are.
/// A body announced larger than `max` passes unread too: the handler refuses it at once.
async fn arrived((max, limit): (usize, Duration), req: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if req.body().is_end_stream() || announced.is_some_and(|n| n > max as u64) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let refused = match tokio::time::timeout(limit, read_body(body, max, "body")).await {
        Ok(Ok(bytes)) => {
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
        }
        Ok(Err(refused)) => refused,
        Err(_) => {
            metrics::counter!(m::API_REJECTED, "reason" => "timeout").increment(1);
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request timeout",
                "the request's body did not arrive within the time limit (TCC_HEADER_READ_TIMEOUT); nothing was done",
            )
        }
    };
    // Answered inside the routes' layers (`refuse_unread`), as a problem like any other.
    parts.extensions.insert(Unread(refused));
    next.run(Request::from_parts(parts, Body::empty())).await
}

/// A body `arrived` could not take, and why.
#[derive(Clone)]
struct Unread(ApiError);

/// A request whose body `arrived` refused is answered with that refusal (a 408 closes the
/// connection: the rest of the body may still come).
async fn refuse_unread(req: Request, next: Next) -> Response {
    let Some(Unread(refused)) = req.extensions().get::<Unread>() else {
        return next.run(req).await;
    };
    let mut resp = refused.clone().into_response();
    if resp.status() == StatusCode::REQUEST_TIMEOUT {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// 413: the body (or form) is larger than `max` bytes.
fn too_large(what: &str, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Body too large",
        format!("the {what} is larger than the limit of {max} bytes (TCC_MAX_BODY)"),
    )
}

/// Admission: health checks always (a liveness probe must never be refused by load, or a
/// healthy process is restarted); others within their budget, else 503 at once.
async fn admit(budgets: Budgets, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/health/") {
        return next.run(req).await;
    }
    let budget = if waits(&req) {
        &budgets.waits
    } else {
        &budgets.requests
    };
    match budget.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            metrics::counter!(m::API_REJECTED, "reason" => "overloaded").increment(1);
            overloaded(
                "the coordinator is serving as many requests as it takes at once (TCC_MAX_INFLIGHT_REQUESTS); try again shortly",
            )
        }
    }
}

/// A request the guard layers refused: out of time. 503 with `Retry-After`.
async fn refused(err: tower::BoxError) -> Response {
    let (reason, detail) = if err.is::<tower::timeout::error::Elapsed>() {
        (
            "timeout",
            "the request was not answered within the time limit (TCC_REQUEST_TIMEOUT); it may still take effect: look before repeating it",
        )
    } else {
        (
            "overloaded",
            "the coordinator could not take the request now",
        )
    };
    metrics::counter!(m::API_REJECTED, "reason" => reason).increment(1);
    overloaded(detail)
}

/// 503 (with `Retry-After`, as every 503), as a problem.
pub fn overloaded(detail: impl Into<String>) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Service unavailable",
        detail,
    )
    .into_response()
}

/// A handler panicked: a 500 problem that says nothing of the internals.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = crate::engine::panic_message(&*panic);
    tracing::error!(panic = %message, "a request handler panicked; answered 500");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the coordinator failed while answering this request; it was not applied, or only in part: look before repeating it",
    )
    .into_response()
}

/// The headers the API reads: each must be visible ASCII when present.
const READ_HEADERS: [&str; 7] = [
    "idempotency-key",
    "if-match",
    "if-none-match",
    "prefer",
    "traceparent",
    "content-type",
    "accept",
];

/// Refuse a path or query that is not UTF-8 or holds a NUL once percent-decoded, and a header
/// the API reads that is not visible ASCII: 400, naming which.
async fn reject_unreadable(req: Request, next: Next) -> Response {
    match unreadable(&req) {
        Some(detail) => ApiError::bad_request(detail).into_response(),
        None => next.run(req).await,
    }
}

fn unreadable(req: &Request) -> Option<String> {
    let uri = req.uri();
    let parts = [("path", Some(uri.path())), ("query", uri.query())];
    for (what, raw) in parts {
        let Some(raw) = raw else { continue };
        match percent_encoding::percent_decode_str(raw).decode_utf8() {
            Err(_) => return Some(format!("the {what} is not UTF-8 once percent-decoded")),
            Ok(text) if text.contains('\0') => {
                return Some(format!("the {what} holds a NUL character (%00)"));
            }
            Ok(_) => {}
        }
    }
    READ_HEADERS.iter().find_map(|name| {
        req.headers()
            .get_all(*name)
            .iter()
            .any(|v| v.to_str().is_err())
            .then(|| format!("the {name} header must be visible ASCII"))
    })
}

/// Test-only routes (the `fault-injection` feature): a handler that panics, one that never
/// answers.
#[cfg(feature = "fault-injection")]
async fn fault_panic() -> StatusCode {
    panic!("fault injected")
}

#[cfg(feature = "fault-injection")]
async fn fault_stall() -> StatusCode {
    std::future::pending().await
}

/// Every route, behind the API keys' check (`auth::authorize`), itself inside the HTTP metrics
/// (so that refusals are counted too).
fn routes(state: &AppState) -> Router<AppState> {
    let keys = state.settings.api_keys.clone();
    use axum::routing::{delete, post, put};
    const GET: &str = "GET, HEAD, OPTIONS";
    const POST: &str = "POST, OPTIONS";
    let router = Router::new()
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
                get(jobs::get_job)
                    .merge(put(jobs::put_job))
                    .merge(delete(jobs::cancel_job)),
                "GET, HEAD, PUT, DELETE, OPTIONS",
            ),
        )
        .route(
            "/jobs/{job_id}/cancel",
            with_options(post(jobs::cancel_form), POST),
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
            with_options(
                get(state::get_shared_state)
                    .put(state::put_shared_state)
                    .patch(state::patch_shared_state),
                "GET, HEAD, PUT, PATCH, OPTIONS",
            ),
        )
        .route(
            "/jobs/{job_id}/resolve",
            with_options(post(jobs::resolve_job), POST),
        )
        .route(
            "/jobs/{job_id}/continue",
            with_options(post(actions::continue_job), POST),
        )
        .route(
            "/jobs/{job_id}/restart",
            with_options(post(actions::restart_job), POST),
        )
        .route(
            "/jobs/{job_id}/events",
            with_options(get(events::events), GET),
        )
        .route("/heuristics", with_options(get(jobs::heuristics), GET))
        .route(
            "/coordinator/confirm",
            with_options(put(coordinator::confirm), "PUT, OPTIONS"),
        )
        .route(
            "/coordinator/cancel",
            with_options(put(coordinator::cancel), "PUT, OPTIONS"),
        )
        .route(
            "/problems/{slug}",
            with_options(get(problems::problem_page), GET),
        )
        .route("/console/{asset}", with_options(get(html::asset), GET))
        .route("/health/live", with_options(get(live), GET))
        .route("/health/ready", with_options(get(ready), GET))
        .route("/metrics", with_options(get(metrics_text), GET))
        .route(
            "/openapi.json",
            with_options(get(openapi::openapi_json), GET),
        );
    #[cfg(feature = "fault-injection")]
    let router = router
        .route("/fault/panic", get(fault_panic))
        .route("/fault/stall", get(fault_stall));
    router
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            html::forms::submitted,
        ))
        .route_layer(middleware::from_fn(move |req, next| {
            auth::authorize(keys.clone(), req, next)
        }))
        .route_layer(middleware::from_fn(track_http))
        .fallback(not_found)
}

/// Only `/metrics`, for `TCC_METRICS_LISTEN`.
pub fn metrics_router(state: AppState) -> impl HttpService {
    let settings = state.settings.clone();
    let routes = Router::new()
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(state);
    guarded(routes, &settings)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no resource at this path")
}

#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, description = "The process is up", body = Object)))]
async fn live() -> impl IntoResponse {
    axum::Json(json!({"status": "live"}))
}

/// 200 only while this instance can accept and drive jobs: it holds its identity (drivers run
/// only then), and the database answers, is writable and commits durably within
/// `TCC_DB_TIMEOUT` (`store::ready`).
#[utoipa::path(get, path = "/health/ready", tag = "health", responses((status = 200, description = "Ready to accept and drive jobs", body = Object), (status = 503, description = "Not ready: the detail says why")))]
async fn ready(State(state): State<AppState>) -> Response {
    match readiness(&state).await {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(detail) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
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
    match jobs::within(state, crate::store::ready(&state.pool, instance)).await {
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
async fn metrics_text(State(state): State<AppState>) -> Response {
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
    // A bounded label: any other method (a client may send any token) is `other`.
    let method: &'static str = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(m::HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Make every error a problem document: turn axum's bare 405 into one (keeping `Allow`), and
/// name the request path as the problem's `instance`; for a browser, show it as a page (same
/// status and headers; `base` is `TCC_PUBLIC_URL`, else the page's own origin).
async fn problem_details(base: String, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let page = html::prefers_html(req.headers());
    let resp = next.run(req).await;
    let resp = problem_document(resp, &path, &method).await;
    if !page || !is_problem(&resp) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let doc = serde_json::from_slice::<Value>(&bytes).unwrap_or_default();
    html::problem_page(Response::from_parts(parts, Body::empty()), &doc, &base)
}

fn is_problem(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(error::PROBLEM_JSON.as_bytes()))
}

/// A problem completed with its `instance`; a bare 405 made a problem.
async fn problem_document(resp: Response, path: &str, method: &axum::http::Method) -> Response {
    let is_problem = is_problem(&resp);
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
        return with_instance(problem, path).await;
    }
    if is_problem {
        return with_instance(resp, path).await;
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

/// `Prefer: wait=N` (RFC 7240), capped at `max`.
pub fn prefer_wait(headers: &HeaderMap, max: Duration) -> Option<Duration> {
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
        .map(|s| Duration::from_secs_f64(s.min(max.as_secs_f64())))
}

/// `If-Match`: the ETags given, or `None` without the header.
pub fn if_match(headers: &HeaderMap) -> Option<Vec<String>> {
    let v = headers.get(header::IF_MATCH)?;
    Some(
        v.to_str()
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_string())
            .collect(),
    )
}

/// Whether the `If-Match` tags name `etag` (or `*`).
pub fn matches_any(tags: &[String], etag: &str) -> bool {
    tags.iter().any(|t| t == etag || t == "*")
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
    // A body announced larger than the limit is refused before it is read.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large("body", max));
    }
    let bytes = read_body(body, max, "body").await?;
    let depth = nesting(&bytes);
    if depth > MAX_JSON_DEPTH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "json-too-deep",
            "JSON nested too deep",
            format!(
                "the body nests arrays and objects {depth} levels deep; the limit of JSON depth is {MAX_JSON_DEPTH}"
            ),
        ));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
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
    })?;
    match huge_number(&value) {
        None => Ok(value),
        Some(pointer) => Err(ApiError::validation(vec![
            crate::domain::request::FieldError::new(
                pointer,
                format!(
                    "is a number beyond ±{MAX_NUMBER:e}; such numbers cannot be stored and read back faithfully"
                ),
            ),
        ])),
    }
}

/// A request body of at most `max` bytes: 413 when it is larger, 400 when it cannot be read (a
/// malformed chunked encoding, a connection cut short). `what` names it ("body", "form").
pub async fn read_body(body: Body, max: usize, what: &str) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if c.is::<http_body_util::LengthLimitError>() {
                return too_large(what, max);
            }
            cause = c.source();
        }
        ApiError::bad_request(format!("the {what} could not be read: {e}"))
    })
}

/// The JSON Pointer of the first number in `v` beyond ±`MAX_NUMBER`, if any (nothing is
/// allocated unless one is found: this walks every request body).
fn huge_number(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .is_some_and(|f| f.abs() > MAX_NUMBER)
            .then(String::new),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| huge_number(item).map(|rest| format!("/{i}{rest}"))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            huge_number(item)
                .map(|rest| format!("/{}{rest}", k.replace('~', "~0").replace('/', "~1")))
        }),
        _ => None,
    }
}

/// The deepest a request body may nest arrays and objects.
pub const MAX_JSON_DEPTH: usize = 32;

/// How deep a JSON text nests arrays and objects (brackets inside strings aside); a text that
/// is not JSON gets some number, and its parse says what is wrong.
fn nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod depth {
    use super::nesting;

    #[test]
    fn nesting_counts_the_brackets_outside_strings() {
        assert_eq!(nesting(b"3"), 0);
        assert_eq!(nesting(br#"{}"#), 1);
        assert_eq!(nesting(br#"{"a":[1,{"b":[]}],"c":{}}"#), 4);
        assert_eq!(nesting(br#"{"a":"[[[[\"]]]{{","b":"\\"}"#), 1);
        assert_eq!(nesting("[".repeat(40).as_bytes()), 40);
    }
}

fn strip_position(msg: &str) -> &str {
    msg.find(" at line ").map_or(msg, |i| &msg[..i])
}

/// Property tests over the parsers of what a request carries: whatever the input, they answer
/// (a value or an error) and never panic. Bounded: proptest's default number of cases.
#[cfg(test)]
mod parser_properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|f| json!(f)),
            any::<i64>().prop_map(|i| json!(i)),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("tasks".to_string()),
                        Just("taskURL".to_string()),
                        Just("participantLink".to_string()),
                        Just("uri".to_string()),
                        Just("expires".to_string()),
                        Just("jobMaxTTL".to_string()),
                        Just("retryPolicy".to_string()),
                        Just("inputMapping".to_string()),
                        Just("sharedState".to_string()),
                        ".{0,12}"
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn prefer_wait_never_panics_and_stays_under_the_cap(v in any::<Vec<u8>>(), n in any::<f64>()) {
            let max = Duration::from_secs(45);
            for value in [v.clone(), format!("wait={n}").into_bytes(), format!("respond-async, wait={n:e}").into_bytes()] {
                let mut headers = HeaderMap::new();
                if let Ok(h) = HeaderValue::from_bytes(&value) {
                    headers.insert("prefer", h);
                }
                prop_assert!(prefer_wait(&headers, max).is_none_or(|w| w <= max));
            }
        }

        #[test]
        fn unreadable_input_never_panics(path in "/[a-zA-Z0-9/._~%-]{0,40}", raw in any::<Vec<u8>>()) {
            let uri = format!("{path}?q={}", percent_encoding::percent_encode(&raw, percent_encoding::NON_ALPHANUMERIC));
            if let Ok(req) = Request::builder().uri(uri.as_str()).body(Body::empty()) {
                let verdict = unreadable(&req);
                let decoded = std::str::from_utf8(&raw);
                if decoded.is_err() || decoded.is_ok_and(|s| s.contains('\0')) {
                    prop_assert!(verdict.is_some(), "{uri} refused");
                }
            }
        }

        #[test]
        fn job_and_registration_parsers_never_panic(v in json_value()) {
            let now = chrono::Utc::now();
            let _ = crate::domain::request::parse_job(&v, crate::domain::request::Limits { max_tasks: 100 }, now);
            let _ = crate::domain::request::parse_registration(&v, now);
            let doc = json!({"autoConfirm": false, "tasks": [v.clone()], "sharedState": v});
            let _ = crate::domain::request::parse_job(&doc, crate::domain::request::Limits { max_tasks: 100 }, now);
        }
    }
}
