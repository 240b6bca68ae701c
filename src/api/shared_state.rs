//! `GET`, `PUT` and `PATCH /jobs/{id}/shared-state`: the job's shared state, with strong ETags.
//! A client's write goes over the version it read when it sent `If-Match` (412 otherwise), and
//! never over an output mapping's write it did not see: every writer compares and sets the
//! state's version (`store::write_shared_state`, the engine's saves), and the engine writes its
//! mappings again over a client's version (`engine::driver`).

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use serde_json::Value;

use super::app::AppState;
use super::auth::Actor;
use super::db::{db, wake, within};
use super::error::{ApiError, ProblemType};
use super::extract::{JobPath, read_json};
use super::respond::{if_match, json_response, matches_any, none_match, not_modified};
use crate::domain::request::{self, FieldError};
use crate::domain::{ActionKind, Event, JobId, mapping};
use crate::store::{self, StateWritten};

/// How often a `PATCH` without `If-Match` is applied again over a newer version before it gives
/// up (each time, another writer came between its read and its write).
const PATCH_TRIES: usize = 5;

/// The state's `ETag`, over its canonical form: the database keeps an object's members in an
/// order of its own, so the same state must have the same tag however its members were sent.
fn etag_of(state: &Value) -> String {
    super::repr::etag(super::repr::canonical(state).to_string().as_bytes())
}

/// The state as an answer, with its `ETag`.
fn state_response(state: &Value) -> Response {
    let mut resp = json_response(StatusCode::OK, state);
    if let Ok(v) = HeaderValue::from_str(&etag_of(state)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn read(state: &AppState, id: &JobId) -> Result<(Value, i64), ApiError> {
    let client = db(state).await?;
    within(state, store::shared_state(&client, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

#[utoipa::path(get, path = "/jobs/{jobID}/shared-state", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("If-None-Match" = Option<String>, Header)), responses((status = 200, description = "The shared state", body = Object, headers(("ETag" = String))), (status = 304, description = "Not modified"), (status = 404, description = "No such job")))]
pub async fn get_shared_state(
    State(state): State<AppState>,
    JobPath(id): JobPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (value, _) = read(&state, &id).await?;
    let etag = etag_of(&value);
    if none_match(&headers, &etag) {
        return Ok(not_modified(&etag));
    }
    Ok(state_response(&value))
}

fn precondition_failed(current: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        ProblemType::PreconditionFailed,
        format!(
            "If-Match does not hold the shared state's current ETag ({current}): it changed since it was read"
        ),
    )
}

/// A state as a client sent it (`PUT`): past 256 KiB a 413, other faults a 422.
fn check_sent(value: &Value) -> Result<(), ApiError> {
    if serde_json::to_vec(value).map_or(0, |v| v.len()) > request::MAX_SHARED_STATE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ProblemType::SharedStateTooLarge,
            "the shared state must be at most 256 KiB serialized",
        ));
    }
    request::check_shared_state(value).map_err(ApiError::validation)
}

/// Write `new` over version `over` (`None`: whatever is there), and answer the state written.
async fn write(
    state: &AppState,
    id: &JobId,
    new: &Value,
    over: Option<i64>,
    how: &str,
    actor: &str,
) -> Result<Option<Response>, ApiError> {
    let event = Event::action(
        Utc::now(),
        ActionKind::SharedState,
        actor,
        Some(format!("the shared state was {how}")),
    );
    let written = {
        let client = db(state).await?;
        within(
            state,
            store::write_shared_state(&client, id, new, over, &event),
        )
        .await?
    };
    match written {
        StateWritten::Done(_) => {
            wake(state, id).await;
            Ok(Some(state_response(new)))
        }
        StateWritten::Moved => Ok(None),
        StateWritten::NotFound => Err(ApiError::not_found(format!("no job {id}"))),
    }
}

/// `PUT`: the shared state replaced by the body (a JSON object, at most 256 KiB).
#[utoipa::path(put, path = "/jobs/{jobID}/shared-state", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("If-Match" = Option<String>, Header)), request_body(content = Object, content_type = "application/json"), responses((status = 200, description = "Replaced", body = Object, headers(("ETag" = String))), (status = 404, description = "No such job"), (status = 412, description = "If-Match does not hold the current ETag"), (status = 422, description = "Not an object, or too large")))]
pub async fn put_shared_state(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JobPath(id): JobPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let new = read_json(&headers, body, state.settings.max_body).await?;
    check_sent(&new)?;
    let over = match if_match(&headers) {
        None => None,
        Some(tags) => {
            let (current, version) = read(&state, &id).await?;
            let etag = etag_of(&current);
            if !matches_any(&tags, &etag) {
                return Err(precondition_failed(&etag));
            }
            Some(version)
        }
    };
    match write(&state, &id, &new, over, "replaced", &actor.0).await? {
        Some(resp) => Ok(resp),
        // Only a conditional write can find the version moved.
        None => {
            let (current, _) = read(&state, &id).await?;
            Err(precondition_failed(&etag_of(&current)))
        }
    }
}

/// `PATCH` with `application/merge-patch+json` (RFC 7396): the body merged into the shared state.
/// Without `If-Match` it is applied to whatever version is current when it is written.
#[utoipa::path(patch, path = "/jobs/{jobID}/shared-state", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("If-Match" = Option<String>, Header)), request_body(content = Object, content_type = "application/merge-patch+json"), responses((status = 200, description = "Merged (RFC 7396)", body = Object, headers(("ETag" = String))), (status = 404, description = "No such job"), (status = 412, description = "If-Match does not hold the current ETag"), (status = 422, description = "The result is not an object, or too large")))]
pub async fn patch_shared_state(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JobPath(id): JobPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/merge-patch+json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemType::UnsupportedMediaType,
            format!(
                "a PATCH of the shared state is a JSON Merge Patch: send Content-Type: application/merge-patch+json{}",
                if ctype.is_empty() {
                    String::new()
                } else {
                    format!(", not {ctype}")
                }
            ),
        ));
    }
    let patch = read_json(&headers, body, state.settings.max_body).await?;
    if !patch.is_object() {
        return Err(ApiError::validation(vec![FieldError::new(
            "",
            "the merge patch must be a JSON object (the shared state stays an object)",
        )]));
    }
    let wanted = if_match(&headers);
    for _ in 0..PATCH_TRIES {
        let (mut current, version) = read(&state, &id).await?;
        if let Some(tags) = &wanted {
            let etag = etag_of(&current);
            if !matches_any(tags, &etag) {
                return Err(precondition_failed(&etag));
            }
        }
        mapping::merge_patch(&mut current, &patch);
        request::check_shared_state(&current).map_err(ApiError::validation)?;
        if let Some(resp) = write(&state, &id, &current, Some(version), "patched", &actor.0).await?
        {
            return Ok(resp);
        }
        if wanted.is_some() {
            let (current, _) = read(&state, &id).await?;
            return Err(precondition_failed(&etag_of(&current)));
        }
    }
    Err(ApiError::conflict(
        "the shared state kept changing while the patch was being applied: try again",
    ))
}
