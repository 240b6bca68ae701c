//! The Atomikos-compatible coordinator: `PUT /coordinator/confirm` and `PUT /coordinator/cancel`
//! with `{"participantLinks": [{"uri", "expires"}...]}` (`application/tcc+json`), as the
//! Atomikos TCC client sends them after it has run the Tries itself.
//!
//! Each request becomes a job of link tasks (`source: atomikos`), stored under a key derived
//! from the link set, so that the same set again, on any instance, finds the same job and
//! confirms nothing twice. The participants see what an Atomikos coordinator sends: `PUT` (or
//! `DELETE`) on each link with `application/tcc`.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use utoipa::ToSchema;

use super::app::AppState;
use super::auth::Actor;
use super::db::{record_request, wait_terminal, within};
use super::error::{ApiError, ProblemType};
use super::extract::read_json;
use super::respond::{base_url, outcomes};
use crate::domain::request::{self, FieldError, LinkSet};
use crate::domain::{JobId, JobSource, JobStatus, Submission};
use crate::engine::Accepted;
use crate::store::{ClientRequest, JobRecord};

/// `PUT /coordinator/confirm` and `/coordinator/cancel` (Atomikos-compatible).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // read as JSON by the handler; described here
pub(super) struct LinkSetRequest {
    #[schema(min_items = 1)]
    participant_links: Vec<crate::domain::request::LinkWire>,
}

/// A link set that breaks the rules: 400, as the Atomikos contract has it (not 422).
fn invalid(errors: Vec<FieldError>) -> ApiError {
    ApiError::validation(errors).with_status(
        StatusCode::BAD_REQUEST,
        ProblemType::InvalidParticipantLinks,
    )
}

async fn link_set(state: &AppState, headers: &HeaderMap, body: Body) -> Result<LinkSet, ApiError> {
    // A body that breaks a rule is 400 here (a number too large, for example), never 422.
    let value = read_json(headers, body, state.settings.max_body)
        .await
        .map_err(|e| match e.status() {
            StatusCode::UNPROCESSABLE_ENTITY => e.with_status(
                StatusCode::BAD_REQUEST,
                ProblemType::InvalidParticipantLinks,
            ),
            _ => e,
        })?;
    let set =
        request::parse_link_set(&value, state.settings.max_tasks, Utc::now()).map_err(invalid)?;
    let refused = crate::domain::policy::refusals::link_set(&state.settings.targets, &value);
    if refused.is_empty() {
        Ok(set)
    } else {
        Err(invalid(refused))
    }
}

/// Store the job for `set` (or find the one stored for the same set before): its id.
async fn job_for(state: &AppState, set: &LinkSet, confirm: bool) -> Result<JobId, ApiError> {
    let digest = set.digest();
    let what = if confirm { "confirm" } else { "cancel" };
    let submission = Submission {
        id: JobId::generate(),
        job: set.job(confirm),
        source: JobSource::Atomikos,
        created_at: Utc::now(),
        idempotency_key: Some(format!("atomikos-{what}:{digest}")),
        request_hash: Some(digest),
        key_holder: None,
        traceparent: None,
    };
    match within(state, state.engine.accept(submission, false)).await? {
        Accepted::Created(record) => Ok(record.job.id.clone()),
        // The key lives in the Atomikos endpoints' own namespace (keys are per source), and is
        // the set's digest; a replay is taken only if the stored job was made for this very
        // set, so nothing but this request can ever stand in for it.
        Accepted::Replay {
            id,
            same_request: true,
            ..
        } => Ok(id),
        Accepted::Replay { id, .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            ProblemType::Conflict,
            format!(
                "job {id} holds this link set's key but was made for another request; nothing was {what}ed"
            ),
        )),
    }
}

fn with_location(mut resp: Response, base: &str, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/jobs/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The answer for a job that has ended (or not, after the longest wait).
fn confirm_answer(record: &JobRecord) -> Response {
    match record.job.status() {
        JobStatus::Completed => StatusCode::NO_CONTENT.into_response(),
        JobStatus::Heuristic => ApiError::new(StatusCode::CONFLICT, ProblemType::Heuristic, "some participants confirmed and others could not: the outcome is heuristic and needs an operator",
        )
        .with_tasks(outcomes(record))
        .into_response(),
        JobStatus::Failed | JobStatus::Canceled => ApiError::new(StatusCode::NOT_FOUND, ProblemType::TooLate, "nothing was confirmed: the reservations were canceled or lapsed before every participant confirmed",
        )
        .with_tasks(outcomes(record))
        .into_response(),
        status => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ProblemType::OutcomePending, format!(
                "the job is still {status} (a participant is being retried); repeat the same request to wait for its outcome"
            ),
        )
        .with_tasks(outcomes(record))
        .into_response(),
    }
}

/// `PUT /coordinator/confirm`: confirm every link; answer once the outcome is known.
#[utoipa::path(put, path = "/coordinator/confirm", tag = "atomikos", request_body(content = LinkSetRequest, content_type = "application/tcc+json"), responses((status = 204, description = "All confirmed", headers(("Location" = String))), (status = 400, description = "A link without uri or expires"), (status = 404, description = "All canceled or lapsed"), (status = 409, description = "Heuristic: tasks lists each link's outcome"), (status = 503, description = "The outcome is not known within the request's time limit (a participant is still being retried; tasks lists each link): repeat the same request, after Retry-After, to wait for it")))]
pub async fn confirm(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let set = link_set(&state, &headers, body).await?;
    let base = base_url(&state, &headers);
    if let Some(late) = set.lapsed.first() {
        // Not every participant can confirm any more: release the others.
        let id = if set.open.is_empty() {
            None
        } else {
            let id = job_for(&state, &set, false).await?;
            cancel_job(&state, &id, &actor.0).await?;
            Some(id)
        };
        let e = ApiError::new(StatusCode::NOT_FOUND, ProblemType::TooLate, format!(
                "the reservation at {} lapsed at {}: nothing is confirmed, and the other links are canceled",
                late.uri,
                late.expires.to_rfc3339()
            ),
        )
        .into_response();
        return Ok(match id {
            Some(id) => with_location(e, &base, &id),
            None => e,
        });
    }
    let id = job_for(&state, &set, true).await?;
    let record = wait_terminal(&state, &id, state.settings.max_wait()).await?;
    Ok(with_location(confirm_answer(&record), &base, &id))
}

/// `PUT /coordinator/cancel`: cancel every link (those already lapsed need nothing); 204 once the
/// cancel is recorded, the calls follow.
#[utoipa::path(put, path = "/coordinator/cancel", tag = "atomikos", request_body(content = LinkSetRequest, content_type = "application/tcc+json"), responses((status = 204, description = "All canceled"), (status = 400, description = "A link without uri or expires")))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let set = link_set(&state, &headers, body).await?;
    let base = base_url(&state, &headers);
    if set.open.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let id = job_for(&state, &set, false).await?;
    cancel_job(&state, &id, &actor.0).await?;
    Ok(with_location(
        StatusCode::NO_CONTENT.into_response(),
        &base,
        &id,
    ))
}

/// Record the cancel of a job made for a link set (again, for a replay: harmless).
async fn cancel_job(state: &AppState, id: &JobId, actor: &str) -> Result<(), ApiError> {
    // Anything but Accepted is a replay: the cancel was recorded before, or the job is already
    // at its end.
    record_request(state, id, ClientRequest::Cancel, actor).await?;
    Ok(())
}
