//! The database as handlers use it: every call bounded by `TCC_DB_TIMEOUT` (a 503 rather than a
//! request that hangs), the job loaded or a 404, the driver woken, a job's change waited for.

use std::time::Duration;

use tokio::time::Instant;

use super::app::AppState;
use super::error::ApiError;
use crate::domain::{JobId, JobStatus};
use crate::engine::Change;
use crate::store::{self, ClientRequest, JobRecord, RequestOutcome};

/// `work` with the database, given up after `TCC_DB_TIMEOUT`: a database that cannot answer or
/// commit (failing over, a synchronous standby missing) is a 503, not a request that hangs. The
/// work given up may still take effect (a commit already sent), which is why the answer says
/// so and why a new job is repeated under its `Idempotency-Key`.
pub(super) async fn within<T>(
    state: &AppState,
    work: impl Future<Output = Result<T, store::StoreError>>,
) -> Result<T, store::StoreError> {
    let limit = state.settings.db_timeout;
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(store::StoreError::Unavailable(format!(
            "the database did not answer within {limit:?} (TCC_DB_TIMEOUT); what was asked may still take effect: look before repeating it"
        )))
    })
}

/// A pooled database connection; an unreachable database is a 503.
pub(super) async fn db(state: &AppState) -> Result<deadpool_postgres::Client, ApiError> {
    Ok(within(state, async {
        state.pool.get().await.map_err(store::StoreError::from)
    })
    .await?)
}

/// Record a client's confirm or cancel, and wake the job's driver when it was taken.
pub(super) async fn record_request(
    state: &AppState,
    id: &JobId,
    what: ClientRequest,
    actor: &str,
) -> Result<RequestOutcome, ApiError> {
    let client = db(state).await?;
    let me = state.engine.instance_id();
    let outcome = within(state, store::request(&client, id, what, actor, me)).await?;
    drop(client);
    if outcome == RequestOutcome::Accepted {
        wake(state, id).await;
    }
    Ok(outcome)
}

/// Register a participant into a job (its target checked), and wake the job's driver when it
/// was added.
pub(super) async fn register(
    state: &AppState,
    job: store::JobRef<'_>,
    reg: &crate::domain::request::Registration,
    actor: &str,
    closed_by_request: bool,
) -> Result<store::Registered, ApiError> {
    super::extract::allowed(crate::domain::policy::refusals::registration(
        &state.settings.targets,
        reg,
    ))?;
    let mut client = db(state).await?;
    let me = state.engine.instance_id();
    let max = state.settings.max_tasks;
    let outcome = within(
        state,
        store::register(&mut client, job, reg, max, actor, me, closed_by_request),
    )
    .await?;
    drop(client);
    if let store::Registered::Created { job, .. } = &outcome {
        wake(state, job).await;
    }
    Ok(outcome)
}

/// Wake the job's driver, or claim the job, for a request just recorded; given up after
/// `TCC_DB_TIMEOUT` (the request is stored, and the scanner claims a job nobody drives).
pub(super) async fn wake(state: &AppState, id: &JobId) {
    let _ = tokio::time::timeout(state.settings.db_timeout, state.engine.wake(id)).await;
}

/// The job and its tasks only, for what shows no notifications (progress, its long poll).
pub(super) async fn load_tasks(state: &AppState, id: &JobId) -> Result<JobRecord, ApiError> {
    let client = db(state).await?;
    within(state, store::load_job(&client, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

/// The job as its representation shows it, notifications included.
pub(super) async fn load(state: &AppState, id: &JobId) -> Result<JobRecord, ApiError> {
    let client = db(state).await?;
    within(state, store::load_shown(&client, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

/// Wait up to `wait` for the job to reach a terminal status. The job is read again only when
/// this instance's driver announces a terminal status, when a change comes without one (a
/// client's request, or a re-check for changes made elsewhere), and once more at the end if a
/// change was let pass unread.
pub(super) async fn wait_terminal(
    state: &AppState,
    id: &JobId,
    wait: Duration,
) -> Result<JobRecord, ApiError> {
    let mut changes = state.engine.subscribe();
    let until = Instant::now() + wait;
    let mut record = load(state, id).await?;
    let mut unread = false;
    loop {
        if record.job.status().is_terminal() {
            return Ok(record);
        }
        if Instant::now() >= until {
            return if unread {
                load(state, id).await
            } else {
                Ok(record)
            };
        }
        match wait_change(&mut changes, id, until).await {
            Some(status) if !status.is_terminal() => unread = true,
            _ => {
                record = load(state, id).await?;
                unread = false;
            }
        }
    }
}

/// Until `id` changes here, `until`, or a short re-check interval (changes made by another
/// instance are not announced here). The status its driver announced, if it did.
pub(super) async fn wait_change(
    changes: &mut tokio::sync::broadcast::Receiver<Change>,
    id: &JobId,
    until: Instant,
) -> Option<JobStatus> {
    let recheck = (Instant::now() + Duration::from_millis(500)).min(until);
    loop {
        tokio::select! {
            r = changes.recv() => match r {
                Ok(changed) if changed.id == *id => return changed.status,
                Ok(_) => continue,
                Err(_) => return None,
            },
            _ = tokio::time::sleep_until(recheck) => return None,
        }
    }
}
