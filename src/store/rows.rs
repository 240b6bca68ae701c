//! Rows to the domain's types and back: the column lists and their readers. A row that breaks
//! a rule the schema no longer checks on every write is `Corrupt`, never silently taken.

use super::*;
use crate::domain::request::JobFields;
use crate::domain::{TargetUrl, TaskId};
use tokio_postgres::types::Json;

/// A job as stored, with what only the API shows.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub job: Job,
    pub fields: JobFields,
    pub updated_at: DateTime<Utc>,
    pub wake_seq: i64,
    /// `continue` requests on a confirming job so far (`store::retry_now`).
    pub retry_seq: i64,
    /// Writes of the shared state so far (the version `shared_state` is).
    pub state_seq: i64,
    pub lease_owner: Option<String>,
    pub lease_generation: i64,
    /// An operator's resolution of a heuristic outcome.
    pub resolution: Option<Resolution>,
    /// The job's notifications: read only where they are shown (`notifications_of`), empty
    /// otherwise.
    pub notifications: Vec<super::Notification>,
}

/// A job's columns, for a statement that reads them from `jobs j` beside its tasks `t` (the
/// job's `status` as `job_status`, as tasks have one too).
pub(super) const JOB_COLUMNS: &str = "j.id, j.status AS job_status, j.failure_reason, \
    j.correlation_id, j.traceparent, j.auto_confirm, j.confirm_requested, j.cancel_requested, \
    j.created_at, j.deadline, j.shared_state, j.retry_policy, j.fields, j.updated_at, j.attempt, \
    j.wake_seq, j.retry_seq, j.state_seq, j.lease_owner, j.lease_generation, j.resolution";

/// A task's columns, from `tasks t`.
pub(super) const TASK_COLUMNS: &str = "t.idx, t.task_id, t.description, t.try_spec, t.status, \
    t.link_uri, t.link_expires, t.attempts, t.next_attempt_at, t.refused, t.confirm_pending, \
    t.confirm_unknown, t.start_time, t.end_time, t.last_message, t.try_response, t.callbacks, \
    t.callbacks_until";

/// The job-level fields (`jobs.fields`), as typed.
pub(super) fn fields_from_row(row: &tokio_postgres::Row) -> Result<JobFields> {
    Ok(row
        .try_get::<_, Json<JobFields>>("fields")
        .map_err(|e| corrupt(format!("the job's fields: {e}")))?
        .0)
}

/// A job's state from a row's `status` column (named `status_column`) and `failure_reason`. The
/// rule the schema checks too (V5): failed and canceled jobs say why, a canceling one does, other
/// jobs carry no reason.
pub(super) fn state_from_row(row: &tokio_postgres::Row, status_column: &str) -> Result<JobState> {
    let status: JobStatus = row
        .try_get::<_, String>(status_column)?
        .parse()
        .map_err(corrupt)?;
    let reason = row
        .try_get::<_, Option<String>>("failure_reason")?
        .map(|r| r.parse::<FailureReason>())
        .transpose()
        .map_err(corrupt)?;
    JobState::from_parts(status, reason).map_err(corrupt)
}

pub(super) fn job_from_row(row: &tokio_postgres::Row, tasks: Vec<Task>) -> Result<JobRecord> {
    let retry_policy: Option<Value> = row.try_get("retry_policy")?;
    let retry_policy: Option<RetryPolicyPatch> = retry_policy
        .map(serde_json::from_value)
        .transpose()
        .map_err(corrupt)?;
    let state = state_from_row(row, "job_status")?;
    Ok(JobRecord {
        job: Job {
            id: stored_id(row, "id")?,
            state,
            correlation_id: row.try_get("correlation_id")?,
            traceparent: row.try_get("traceparent")?,
            auto_confirm: row.try_get("auto_confirm")?,
            requested: Requested::from_flags(
                row.try_get("confirm_requested")?,
                row.try_get("cancel_requested")?,
            ),
            created_at: row.try_get("created_at")?,
            deadline: row.try_get("deadline")?,
            attempt: row.try_get("attempt")?,
            shared_state: row.try_get("shared_state")?,
            retry_policy,
            tasks,
        },
        fields: fields_from_row(row)?,
        updated_at: row.try_get("updated_at")?,
        wake_seq: row.try_get("wake_seq")?,
        retry_seq: row.try_get("retry_seq")?,
        state_seq: row.try_get("state_seq")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_generation: row.try_get("lease_generation")?,
        resolution: row
            .try_get::<_, Option<Json<Resolution>>>("resolution")
            .map_err(|e| corrupt(format!("the job's resolution: {e}")))?
            .map(|j| j.0),
        notifications: Vec::new(),
    })
}

pub(super) fn task_from_row(row: &tokio_postgres::Row) -> Result<Task> {
    let status: String = row.try_get("status")?;
    let spec: Option<Value> = row.try_get("try_spec")?;
    let link_uri: Option<String> = row.try_get("link_uri")?;
    let link_expires: Option<DateTime<Utc>> = row.try_get("link_expires")?;
    let callbacks: Option<Value> = row.try_get("callbacks")?;
    if spec.is_none() && link_uri.is_none() && callbacks.is_none() {
        return Err(corrupt(
            "a task with neither a Try, a link nor its own URLs",
        ));
    }
    Ok(Task {
        idx: row.try_get("idx")?,
        task_id: TaskId::try_from(row.try_get::<_, String>("task_id")?).map_err(corrupt)?,
        description: row.try_get("description")?,
        try_spec: spec
            .map(serde_json::from_value::<TrySpec>)
            .transpose()
            .map_err(corrupt)?
            .map(std::sync::Arc::new),
        callbacks: callbacks
            .map(serde_json::from_value::<Callbacks>)
            .transpose()
            .map_err(corrupt)?
            .map(std::sync::Arc::new),
        callbacks_until: row.try_get("callbacks_until")?,
        status: status.parse::<TaskStatus>().map_err(corrupt)?,
        link: match (link_uri, link_expires) {
            (Some(uri), Some(expires)) => Some(Link {
                uri: TargetUrl::try_from(uri).map_err(corrupt)?,
                expires,
            }),
            (None, None) => None,
            _ => return Err(corrupt("a task link without its expiry, or the reverse")),
        },
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        confirm: ConfirmState::from_flags(
            row.try_get("refused")?,
            row.try_get("confirm_pending")?,
            row.try_get("confirm_unknown")?,
        )
        .ok_or_else(|| corrupt("a task whose confirm is both refused and in flight"))?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
        last_message: row.try_get("last_message")?,
        try_response: row
            .try_get::<_, Option<Value>>("try_response")?
            .map(std::sync::Arc::new),
    })
}

/// Tasks' rows as the parallel arrays a statement unnests to update them (`update_tasks`).
#[derive(Default)]
pub(super) struct TaskColumns<'a> {
    job: Vec<&'a str>,
    idx: Vec<i32>,
    status: Vec<&'static str>,
    uri: Vec<Option<&'a str>>,
    expires: Vec<Option<DateTime<Utc>>>,
    attempts: Vec<i32>,
    next_at: Vec<Option<DateTime<Utc>>>,
    refused: Vec<bool>,
    start: Vec<Option<DateTime<Utc>>>,
    end: Vec<Option<DateTime<Utc>>>,
    message: Vec<Option<&'a str>>,
    response: Vec<Option<&'a Value>>,
    pending: Vec<bool>,
    unknown: Vec<bool>,
    until: Vec<Option<DateTime<Utc>>>,
}

impl<'a> TaskColumns<'a> {
    pub fn push(&mut self, job: &'a str, t: &'a Task) {
        self.job.push(job);
        self.idx.push(t.idx);
        self.status.push(t.status.as_str());
        self.uri.push(t.link.as_ref().map(|l| l.uri.as_str()));
        self.expires.push(t.link.as_ref().map(|l| l.expires));
        self.attempts.push(t.attempts);
        self.next_at.push(t.next_attempt_at);
        let (is_refused, sent, maybe_applied) = t.confirm.flags();
        self.refused.push(is_refused);
        self.pending.push(sent);
        self.unknown.push(maybe_applied);
        self.start.push(t.start_time);
        self.end.push(t.end_time);
        self.message.push(t.last_message.as_deref());
        self.response.push(t.try_response.as_deref());
        self.until.push(t.callbacks_until);
    }

    /// The arrays as statement parameters, in the order of `update_tasks`.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        [
            &self.job,
            &self.idx,
            &self.status,
            &self.uri,
            &self.expires,
            &self.attempts,
            &self.next_at,
            &self.refused,
            &self.start,
            &self.end,
            &self.message,
            &self.response,
            &self.pending,
            &self.unknown,
            &self.until,
        ]
    }
}

/// The update of a `TaskColumns` batch whose fifteen parameters start at `$first`, for the tasks
/// of jobs that the CTE `jobs` (`id`) holds; returns a row per task updated.
pub(super) fn update_tasks(first: usize, jobs: &str) -> String {
    let p: Vec<String> = (first..first + 15).map(|i| format!("${i}")).collect();
    format!(
        "UPDATE tasks SET status = u.status, link_uri = u.link_uri,
                    link_expires = u.link_expires, attempts = u.attempts,
                    next_attempt_at = u.next_attempt_at, refused = u.refused,
                    confirm_pending = u.confirm_pending, confirm_unknown = u.confirm_unknown,
                    start_time = u.start_time, end_time = u.end_time,
                    last_message = u.last_message, try_response = u.try_response,
                    callbacks_until = u.callbacks_until
                FROM unnest({}::text[], {}::int[], {}::text[], {}::text[],
                    {}::timestamptz[], {}::int[], {}::timestamptz[], {}::bool[],
                    {}::timestamptz[], {}::timestamptz[], {}::text[], {}::jsonb[],
                    {}::bool[], {}::bool[], {}::timestamptz[])
                    AS u(job_id, idx, status, link_uri, link_expires, attempts, next_attempt_at,
                         refused, start_time, end_time, last_message, try_response,
                         confirm_pending, confirm_unknown, callbacks_until)
                WHERE tasks.job_id = u.job_id AND tasks.idx = u.idx
                  AND u.job_id IN (SELECT id FROM {jobs})
                RETURNING 1",
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        p[6],
        p[7],
        p[8],
        p[9],
        p[10],
        p[11],
        p[12],
        p[13],
        p[14]
    )
}
