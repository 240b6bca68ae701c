//! The HTTP API: the Job Control Language's resources, the Atomikos-compatible coordinator, the
//! console, health and metrics. One module per resource; the plumbing they share is in modules
//! of its own that never import a handler: `app` (the state), `respond` (answers and
//! negotiation), `db` (the database under its time limit), `extract` (what a request carries),
//! `paging`, `layers` (what every request passes), `error` and `repr`.

mod actions;
mod app;
pub mod auth;
mod coordinator;
mod db;
mod decisions;
mod definitions;
mod dtm;
mod entry;
mod error;
mod events;
mod extract;
mod health;
mod heuristics;
mod html;
mod jobs;
mod layers;
mod negotiate;
pub mod openapi;
mod paging;
mod problems;
pub mod repr;
mod respond;
mod shared_state;
mod tasks;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::routing::{MethodRouter, get};

pub use app::{ApiSettings, AppState, HttpService, Shared};
pub use error::ApiError;

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
    layers::guarded(routes(&state).with_state(state), &settings)
}

/// Every route, behind the API keys' check (`auth::authorize`), itself inside the HTTP metrics
/// (so that refusals are counted too).
fn routes(state: &AppState) -> Router<AppState> {
    let keys = state.settings.api_keys.clone();
    use axum::routing::{delete, post, put};
    const GET: &str = "GET, HEAD, OPTIONS";
    const POST: &str = "POST, OPTIONS";
    let router = Router::new()
        .route("/", with_options(get(entry::entry_point), GET))
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
                    .merge(delete(decisions::cancel_job)),
                "GET, HEAD, PUT, DELETE, OPTIONS",
            ),
        )
        .route(
            "/jobs/{job_id}/cancel",
            with_options(post(decisions::cancel_form), POST),
        )
        .route(
            "/jobs/{job_id}/confirm",
            with_options(post(decisions::confirm_job), POST),
        )
        .route(
            "/jobs/{job_id}/progress",
            with_options(get(jobs::progress), GET),
        )
        .route(
            "/jobs/{job_id}/tasks",
            with_options(get(tasks::list_tasks), GET),
        )
        .route(
            "/jobs/{job_id}/tasks/{task_id}",
            with_options(get(tasks::get_task), GET),
        )
        .route(
            "/jobs/{job_id}/participants",
            with_options(post(tasks::register), POST),
        )
        .route(
            "/jobs/{job_id}/shared-state",
            with_options(
                get(shared_state::get_shared_state)
                    .put(shared_state::put_shared_state)
                    .patch(shared_state::patch_shared_state),
                "GET, HEAD, PUT, PATCH, OPTIONS",
            ),
        )
        .route(
            "/jobs/{job_id}/resolve",
            with_options(post(heuristics::resolve_job), POST),
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
        .route(
            "/job-definitions",
            with_options(get(definitions::list_definitions), GET),
        )
        .route(
            "/job-definitions/{name}",
            with_options(
                get(definitions::get_definition)
                    .merge(put(definitions::put_definition))
                    .merge(delete(definitions::retire_definition)),
                "GET, HEAD, PUT, DELETE, OPTIONS",
            ),
        )
        .route(
            "/job-definitions/{name}/versions",
            with_options(get(definitions::list_versions), GET),
        )
        .route(
            "/job-definitions/{name}/versions/{version}",
            with_options(get(definitions::get_version), GET),
        )
        .route(
            "/job-definitions/{name}/jobs",
            with_options(post(definitions::start_job), POST),
        )
        .route(
            "/heuristics",
            with_options(get(heuristics::heuristics), GET),
        )
        .route(
            "/coordinator/confirm",
            with_options(put(coordinator::confirm), "PUT, OPTIONS"),
        )
        .route(
            "/coordinator/cancel",
            with_options(put(coordinator::cancel), "PUT, OPTIONS"),
        )
        .route("/api/dtmsvr/newGid", with_options(get(dtm::new_gid), GET))
        .route(
            "/api/dtmsvr/prepare",
            with_options(post(dtm::prepare), POST),
        )
        .route(
            "/api/dtmsvr/registerBranch",
            with_options(post(dtm::register_branch), POST),
        )
        .route(
            "/api/dtmsvr/registerTccBranch",
            with_options(post(dtm::register_branch), POST),
        )
        .route("/api/dtmsvr/submit", with_options(post(dtm::submit), POST))
        .route("/api/dtmsvr/abort", with_options(post(dtm::abort), POST))
        .route("/api/dtmsvr/query", with_options(get(dtm::query), GET))
        .route(
            "/problems/{slug}",
            with_options(get(problems::problem_page), GET),
        )
        .route("/console/{asset}", with_options(get(html::asset), GET))
        .route("/health/live", with_options(get(health::live), GET))
        .route("/health/ready", with_options(get(health::ready), GET))
        .route("/metrics", with_options(get(health::metrics_text), GET))
        .route(
            "/openapi.json",
            with_options(get(openapi::openapi_json), GET),
        );
    #[cfg(feature = "fault-injection")]
    let router = router
        .route("/fault/panic", get(layers::fault_panic))
        .route("/fault/stall", get(layers::fault_stall));
    let state = state.clone();
    router
        .route_layer(middleware::from_fn(move |req, next: Next| {
            let (keys, state) = (keys.clone(), state.clone());
            layers::track_http(req, move |req| {
                auth::authorize(keys, req, move |req| {
                    html::forms::submitted(state, req, move |req| next.run(req))
                })
            })
        }))
        .fallback(layers::not_found)
}

/// Only `/metrics`, for `TCC_METRICS_LISTEN`.
pub fn metrics_router(state: AppState) -> impl HttpService {
    let settings = state.settings.clone();
    let routes = Router::new()
        .route("/metrics", get(health::metrics_text))
        .fallback(layers::not_found)
        .with_state(state);
    layers::guarded(routes, &settings)
}
