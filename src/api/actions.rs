//! The operators' actions on finished jobs: `POST /jobs/{id}/continue` and
//! `POST /jobs/{id}/restart`. Each reads the job, lets the domain say whether the job's state
//! allows the action (`domain::actions`, where the advertised links come from too) and what it
//! does, writes that only if the job did not change meanwhile, and wakes whichever instance is
//! to drive the job.

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;

use super::app::AppState;
use super::auth::Actor;
use super::db::{db, load, wake, within};
use super::error::ApiError;
use super::extract::JobPath;
use super::respond::{base_url, job_response};
use crate::domain::actions::{self, Action};
use crate::domain::{ActionKind, Event, JobId, JobStatus};
use crate::store;

/// The answer when the job changed between reading and writing it.
fn changed_meanwhile() -> ApiError {
    ApiError::conflict(
        "the job changed while the action was being taken (or an instance is still driving it): look at it again and repeat the action if it is still offered",
    )
}

/// The answer to an action: 202 with the job as it stands, once its driver is woken; or 409 if
/// it was not `written` (the job changed meanwhile).
async fn taken(
    state: &AppState,
    id: &JobId,
    headers: &HeaderMap,
    written: bool,
) -> Result<Response, ApiError> {
    if !written {
        return Err(changed_meanwhile());
    }
    wake(state, id).await;
    let record = load(state, id).await?;
    Ok(job_response(
        StatusCode::ACCEPTED,
        &base_url(state, headers),
        &record,
        true,
    ))
}

/// `POST /jobs/{id}/continue`: a heuristic job retries the confirm of every task whose link has
/// not expired (and completes if they all confirm); a confirming job sends the confirms waiting
/// for their backoff now.
#[utoipa::path(post, path = "/jobs/{jobID}/continue", tag = "operators", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), responses((status = 202, description = "Retrying", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "Nothing to continue")))]
pub async fn continue_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JobPath(id): JobPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = load(&state, &id).await?;
    let now = Utc::now();
    let resolved = record.resolution.is_some();
    if let Some(why) = actions::refusal(&record.job, resolved, Action::Continue, now) {
        return Err(why.into());
    }
    let written = if record.job.status() == JobStatus::Heuristic {
        let mut job = record.job.clone();
        let n = actions::continue_heuristic(&mut job, resolved, now).map_err(ApiError::conflict)?;
        let events = [
            Event::action(
                now,
                ActionKind::Continue,
                &actor.0,
                Some(format!("the confirm of {n} heuristic task(s) is retried")),
            ),
            Event::job_status(now, job.status(), None),
        ];
        let client = db(&state).await?;
        within(
            &state,
            store::rewrite_job(&client, &job, record.updated_at, &events),
        )
        .await?
    } else {
        let event = Event::action(
            now,
            ActionKind::Continue,
            &actor.0,
            Some("the confirms waiting for a retry are sent now".into()),
        );
        let client = db(&state).await?;
        within(&state, store::retry_now(&client, &id, &event)).await?
    };
    taken(&state, &id, &headers, written).await
}

/// `POST /jobs/{id}/restart`: a failed or canceled job whose tasks all have a `taskURL` starts
/// a new attempt: `pending`, every task tried afresh under `request-id: {taskID}/{attempt}`, a
/// new deadline `jobMaxTTL` from now. The earlier attempt stays in the event log.
#[utoipa::path(post, path = "/jobs/{jobID}/restart", tag = "operators", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), responses((status = 202, description = "A new attempt", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "Not failed or canceled, or a task has no taskURL")))]
pub async fn restart_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JobPath(id): JobPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = load(&state, &id).await?;
    let now = Utc::now();
    let mut job = record.job.clone();
    actions::restart(&mut job, record.fields.job_max_ttl, now).map_err(ApiError::conflict)?;
    let events = [
        Event::action(
            now,
            ActionKind::Restart,
            &actor.0,
            Some(format!("attempt {} starts", job.attempt)),
        ),
        Event::job_status(now, job.status(), None),
    ];
    let written = {
        let client = db(&state).await?;
        within(
            &state,
            store::rewrite_job(&client, &job, record.updated_at, &events),
        )
        .await?
    };
    taken(&state, &id, &headers, written).await
}
