//! `GET /`: the entry point, links to everything.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::app::AppState;
use super::error::ApiError;
use super::html;
use super::negotiate::{prefers_html, vary_accept};
use super::respond::{base_url, json_response};

#[utoipa::path(get, path = "/", tag = "entry", responses((status = 200, description = "Links to everything", body = Object)))]
pub async fn entry_point(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let base = base_url(&state, &headers);
    if prefers_html(&headers) {
        return html::pages::overview(&state, &base).await;
    }
    let body = json!({
        "name": "tcc-coordinator",
        "version": env!("CARGO_PKG_VERSION"),
        "_links": {
            "self": {"href": format!("{base}/"), "method": "GET", "title": "This entry point"},
            "jobs": {"href": format!("{base}/jobs"), "method": "GET", "title": "List jobs"},
            "heuristics": {"href": format!("{base}/heuristics"), "method": "GET", "title": "Unresolved heuristic jobs, oldest first"},
            "create-job": {"href": format!("{base}/jobs"), "method": "POST", "title": "Submit a job"},
            "job-definitions": {"href": format!("{base}/job-definitions"), "method": "GET", "title": "Job definitions: versioned job templates, started with a POST"},
            "atomikos-confirm": {"href": format!("{base}/coordinator/confirm"), "method": "PUT", "type": "application/tcc+json", "title": "Atomikos-compatible: confirm a set of participant links"},
            "atomikos-cancel": {"href": format!("{base}/coordinator/cancel"), "method": "PUT", "type": "application/tcc+json", "title": "Atomikos-compatible: cancel a set of participant links"},
            "metrics": {"href": format!("{base}/metrics"), "method": "GET", "title": "Prometheus metrics"},
            "health-live": {"href": format!("{base}/health/live"), "method": "GET", "title": "Liveness"},
            "health-ready": {"href": format!("{base}/health/ready"), "method": "GET", "title": "Readiness"},
            "service-desc": {"href": format!("{base}/openapi.json"), "method": "GET", "type": "application/openapi+json", "title": "The API's OpenAPI 3.1 description"},
        }
    });
    Ok(vary_accept(json_response(StatusCode::OK, &body)))
}
