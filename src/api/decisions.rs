//! A client's decision: `POST /jobs/{id}/confirm`, `DELETE /jobs/{id}` and its form twin
//! `POST /jobs/{id}/cancel`.

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::app::AppState;
use super::auth::Actor;
use super::db::{load, record_request, wait_terminal};
use super::error::{ApiError, ProblemType};
use super::extract::JobPath;
use super::respond::{base_url, job_response, outcomes, prefer_wait};
use crate::domain::actions::{Action, Gate, client_refusal};
use crate::domain::{FailureReason, JobState, JobStatus};
use crate::store::{ClientRequest, JobRecord, RequestOutcome};

#[utoipa::path(delete, path = "/jobs/{jobID}", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), responses((status = 202, description = "Canceling", body = crate::api::repr::JobRepr), (status = 200, description = "Already canceled", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "The decision was taken, or the client asked to confirm: the detail says which")))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JobPath(id): JobPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let outcome = record_request(&state, &id, ClientRequest::Cancel, &actor.0).await?;
    let base = base_url(&state, &headers);
    let gate = match outcome {
        RequestOutcome::Accepted => {
            let record = load(&state, &id).await?;
            return Ok(job_response(StatusCode::ACCEPTED, &base, &record, true));
        }
        RequestOutcome::NotFound => return Err(ApiError::not_found(format!("no job {id}"))),
        RequestOutcome::Unchanged(gate) => gate,
    };
    // A repeat is answered as the first time: canceled (200), or being canceled at the client's
    // request (202).
    match gate.state {
        JobState::Canceled(_) => {
            let record = load(&state, &id).await?;
            Ok(job_response(StatusCode::OK, &base, &record, false))
        }
        JobState::Canceling(FailureReason::Client) => {
            let record = load(&state, &id).await?;
            Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
        }
        _ => Err(refused(&gate, Action::Cancel)),
    }
}

/// The domain's refusal of a request the store did not write; none only when the job changed
/// between the write and the read of its row.
fn refused(gate: &Gate, action: Action) -> ApiError {
    match client_refusal(gate, action) {
        Some(refusal) => refusal.into(),
        None => ApiError::conflict(
            "the job changed while the request was being recorded: look at it again and repeat the request if it is still offered",
        ),
    }
}

/// `POST /jobs/{id}/cancel`: the same as `DELETE /jobs/{id}`, for HTML forms.
#[utoipa::path(post, path = "/jobs/{jobID}/cancel", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), responses((status = 202, description = "Canceling", body = crate::api::repr::JobRepr), (status = 200, description = "Already canceled", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "The decision was taken, or the client asked to confirm: the detail says which")))]
pub async fn cancel_form(
    state: State<AppState>,
    actor: Extension<Actor>,
    id: JobPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    cancel_job(state, actor, id, headers).await
}

#[utoipa::path(post, path = "/jobs/{jobID}/confirm", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("Prefer" = Option<String>, Header, description = "wait=N: answer when terminal, waiting up to N s")), responses((status = 202, description = "Confirming", body = crate::api::repr::JobRepr), (status = 200, description = "Completed (Prefer: wait)", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "Decided otherwise, or heuristic or failed: tasks lists each outcome")))]
pub async fn confirm_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JobPath(id): JobPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let outcome = record_request(&state, &id, ClientRequest::Confirm, &actor.0).await?;
    let base = base_url(&state, &headers);
    let gate = match outcome {
        RequestOutcome::Accepted => None,
        RequestOutcome::NotFound => return Err(ApiError::not_found(format!("no job {id}"))),
        RequestOutcome::Unchanged(gate) => Some(gate),
    };
    match gate {
        // Taken, or a repeat while the confirms run: answered as the first time.
        None
        | Some(Gate {
            state: JobState::Confirming,
            ..
        }) => match prefer_wait(&headers, state.settings.max_wait()) {
            Some(wait) => {
                let record = wait_terminal(&state, &id, wait).await?;
                if record.job.status().is_terminal() {
                    let mut resp = match confirm_outcome(&base, &record) {
                        Ok(r) => r,
                        Err(e) => e.into_response(),
                    };
                    resp.headers_mut().insert(
                        "preference-applied",
                        HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
                            .unwrap_or(HeaderValue::from_static("wait")),
                    );
                    Ok(resp)
                } else {
                    Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
                }
            }
            None => {
                let record = load(&state, &id).await?;
                Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
            }
        },
        Some(gate) if gate.state.status().is_terminal() => {
            let record = load(&state, &id).await?;
            confirm_outcome(&base, &record)
        }
        // Being canceled: the refusal, with each task's outcome so far.
        Some(gate) if !gate.state.status().is_undecided() => {
            let record = load(&state, &id).await?;
            Err(refused(&gate, Action::Confirm).with_tasks(outcomes(&record)))
        }
        Some(gate) => Err(refused(&gate, Action::Confirm)),
    }
}

/// The answer to a confirm once the job is final.
fn confirm_outcome(base: &str, record: &JobRecord) -> Result<Response, ApiError> {
    match record.job.status() {
        JobStatus::Completed => Ok(job_response(StatusCode::OK, base, record, false)),
        JobStatus::Heuristic => Err(ApiError::new(StatusCode::CONFLICT, ProblemType::Heuristic, "some participants confirmed and others could not: the outcome is heuristic and needs an operator",
        )
        .with_tasks(outcomes(record))),
        status => Err(ApiError::new(StatusCode::CONFLICT, ProblemType::NotConfirmed, format!(
                "the job is {status}{}: nothing was confirmed",
                record
                    .job
                    .failure_reason()
                    .map(|r| format!(" ({})", r.as_str()))
                    .unwrap_or_default()
            ),
        )
        .with_tasks(outcomes(record))),
    }
}
