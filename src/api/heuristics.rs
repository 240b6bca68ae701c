//! Heuristic outcomes for operators: `GET /heuristics` and `POST /jobs/{id}/resolve`.

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use serde_json::Value;
use utoipa::ToSchema;

use super::app::AppState;
use super::auth::Actor;
use super::db::{db, load, within};
use super::error::ApiError;
use super::extract::{JobPath, read_json};
use super::html;
use super::negotiate::{prefers_html, vary_accept};
use super::paging::{encode_cursor, parse_cursor, parse_limit};
use super::repr;
use super::respond::{base_url, job_response, json_response};
use crate::domain::request::FieldError;
use crate::store;

/// `POST /jobs/{jobID}/resolve`: the operator's record of the manual fix.
#[derive(ToSchema)]
#[allow(dead_code)] // read as JSON by the handler; described here
pub(super) struct Resolve {
    /// What was done to fix the outcome; not empty.
    #[schema(min_length = 1, max_length = 4096)]
    note: String,
}

/// The longest resolution note taken.
const MAX_NOTE: usize = 4096;

/// `POST /jobs/{id}/resolve` `{"note"}`: an operator records the manual fix of a heuristic
/// outcome; the job leaves `/heuristics` and `tcc_heuristic_unresolved`. The same note again is
/// answered as the first time; another note on a resolved job is a conflict.
#[utoipa::path(post, path = "/jobs/{jobID}/resolve", tag = "operators", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), request_body(content = Resolve, content_type = "application/json"), responses((status = 200, description = "Resolved", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "Not an unresolved heuristic job"), (status = 422, description = "The note is missing, empty or too long")))]
pub async fn resolve_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JobPath(id): JobPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let note = match value.get("note") {
        Some(Value::String(n)) if !n.trim().is_empty() && n.chars().count() <= MAX_NOTE => {
            n.clone()
        }
        Some(Value::String(n)) if !n.trim().is_empty() => {
            return Err(ApiError::validation(vec![FieldError::new(
                "/note",
                format!("is longer than {MAX_NOTE} characters"),
            )]));
        }
        Some(Value::String(_)) => {
            return Err(ApiError::validation(vec![FieldError::new(
                "/note",
                "must say what was done to fix the outcome (it is empty)",
            )]));
        }
        Some(_) => {
            return Err(ApiError::validation(vec![FieldError::new(
                "/note",
                "must be a string",
            )]));
        }
        None => {
            return Err(ApiError::validation(vec![FieldError::new(
                "/note",
                "is required: say what was done to fix the outcome",
            )]));
        }
    };
    if note.contains('\0') {
        return Err(ApiError::validation(vec![FieldError::new(
            "/note",
            "must not contain a NUL character (U+0000)",
        )]));
    }
    let resolution = crate::domain::Resolution {
        note,
        resolved_at: Utc::now(),
        resolved_by: actor.0.clone(),
    };
    let client = db(&state).await?;
    let outcome = within(&state, store::resolve(&client, &id, &resolution)).await?;
    drop(client);
    match outcome {
        store::Resolved::Done(_) => {
            state.engine.changed(&id);
        }
        store::Resolved::Already(first) if first.note == resolution.note => {}
        store::Resolved::Already(first) => {
            return Err(ApiError::conflict(format!(
                "the job was already resolved at {} by {}: {:?}",
                crate::domain::rfc3339(first.resolved_at),
                first.resolved_by,
                first.note
            )));
        }
        store::Resolved::NotHeuristic(status) => {
            return Err(ApiError::conflict(format!(
                "the job is {status}: only a heuristic job can be resolved"
            )));
        }
        store::Resolved::NotFound => return Err(ApiError::not_found(format!("no job {id}"))),
    }
    let record = load(&state, &id).await?;
    let base = base_url(&state, &headers);
    Ok(job_response(StatusCode::OK, &base, &record, false))
}

/// `GET /heuristics`: unresolved heuristic jobs, oldest first, each with its tasks' outcomes;
/// `limit` (1–500, default 50) and `cursor`, with `Link: rel="next"`.
#[utoipa::path(get, path = "/heuristics", tag = "operators", params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query)), responses((status = 200, description = "Unresolved heuristic jobs, oldest first", body = crate::api::repr::HeuristicListRepr), (status = 400, description = "A parameter is malformed")))]
pub async fn heuristics(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (mut limit, mut after) = (50i64, None);
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => limit = parse_limit(&v)?,
            "cursor" => after = Some(parse_cursor(&v)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "query parameter {other}: unknown; use limit or cursor"
                )));
            }
        }
    }
    let jobs = {
        let client = db(&state).await?;
        within(&state, store::unresolved_heuristics(&client, after, limit)).await?
    };
    let base = base_url(&state, &headers);
    let page = prefers_html(&headers);
    let mut links = repr::Links::default();
    links.add(
        "self",
        format!("{base}/heuristics"),
        "GET",
        "Unresolved heuristic jobs, oldest first",
    );
    if jobs.len() as i64 == limit
        && let Some(last) = jobs.last()
    {
        let cursor = encode_cursor(last.job.created_at, last.job.id.as_str());
        links.add(
            "next",
            format!("{base}/heuristics?limit={limit}&cursor={cursor}"),
            "GET",
            "The next page",
        );
    }
    if page {
        let next = links.0.iter().find(|(rel, _)| *rel == "next");
        return html::pages::heuristics(&base, &jobs, next.map(|(_, l)| l.href.clone()));
    }
    let body = repr::HeuristicListRepr {
        jobs: jobs
            .iter()
            .map(|r| repr::HeuristicRepr::new(&base, r))
            .collect(),
        links,
    };
    let header_links = body.links.header();
    let mut resp = json_response(StatusCode::OK, &body);
    if let Ok(v) = HeaderValue::from_str(&header_links) {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(vary_accept(resp))
}
