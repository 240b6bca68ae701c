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

/// A job's tasks, from its row `j`: what never changes in them (`task_specs`, V16) and their
/// states (`task_state`, V15), each an object keyed by the task's index (`tasks_of`).
pub(super) const TASK_COLUMNS: &str = "j.task_specs, j.task_state";

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

/// The tasks of a job's row (`TASK_COLUMNS`) from index `from` on, in order. Every task has its
/// state, and a Try, a link or its own URLs; a row that breaks either rule is corrupt.
pub(super) fn tasks_of(row: &tokio_postgres::Row, from: i32) -> Result<Vec<Task>> {
    let specs = row
        .try_get::<_, Json<std::collections::BTreeMap<i32, SpecIn>>>("task_specs")
        .map_err(|e| corrupt(format!("the job's tasks: {e}")))?
        .0;
    let mut states = row
        .try_get::<_, Json<std::collections::BTreeMap<i32, StateIn>>>("task_state")
        .map_err(|e| corrupt(format!("the job's tasks' states: {e}")))?
        .0;
    specs
        .into_iter()
        .filter(|(idx, _)| *idx >= from)
        .map(|(idx, spec)| {
            let state = states
                .remove(&idx)
                .ok_or_else(|| corrupt(format!("task {idx} has no state in its job's row")))?;
            task_of(idx, spec, state)
        })
        .collect()
}

fn task_of(idx: i32, spec: SpecIn, state: StateIn) -> Result<Task> {
    if spec.try_spec.is_none() && state.link_uri.is_none() && spec.callbacks.is_none() {
        return Err(corrupt(
            "a task with neither a Try, a link nor its own URLs",
        ));
    }
    Ok(Task {
        idx,
        task_id: TaskId::try_from(spec.task_id).map_err(corrupt)?,
        description: spec.description,
        try_spec: spec.try_spec.map(std::sync::Arc::new),
        callbacks: spec.callbacks.map(std::sync::Arc::new),
        callbacks_until: state.callbacks_until,
        status: state.status.parse::<TaskStatus>().map_err(corrupt)?,
        link: match (state.link_uri, state.link_expires) {
            (Some(uri), Some(expires)) => Some(Link {
                uri: TargetUrl::try_from(uri).map_err(corrupt)?,
                expires,
            }),
            (None, None) => None,
            _ => return Err(corrupt("a task link without its expiry, or the reverse")),
        },
        attempts: state.attempts,
        next_attempt_at: state.next_attempt_at,
        confirm: ConfirmState::from_flags(
            state.refused,
            state.confirm_pending,
            state.confirm_unknown,
        )
        .ok_or_else(|| corrupt("a task whose confirm is both refused and in flight"))?,
        start_time: state.start_time,
        end_time: state.end_time,
        last_message: state.last_message,
        try_response: state.try_response.map(std::sync::Arc::new),
    })
}

/// What never changes in a task, as its job's row holds it (`jobs.task_specs`, under the task's
/// index): read owned (`SpecIn`), written borrowed from the task (`SpecOut`), once, when the task
/// is stored. What a task has not got is absent.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound(
    deserialize = "S: serde::Deserialize<'de>, T: serde::Deserialize<'de>, C: serde::Deserialize<'de>"
))]
struct Spec<S, T, C> {
    task_id: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    try_spec: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    callbacks: Option<C>,
}

type SpecIn = Spec<String, TrySpec, Callbacks>;
type SpecOut<'a> = Spec<&'a str, &'a TrySpec, &'a Callbacks>;

/// Tasks' specifications keyed by their index, as a job's row holds them (`jobs.task_specs`):
/// a new job's, or one registered task's, added with `task_specs || $n`.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct TaskSpecs<'a>(std::collections::BTreeMap<i32, SpecOut<'a>>);

impl<'a> TaskSpecs<'a> {
    pub fn of<'t: 'a>(tasks: impl IntoIterator<Item = &'t Task>) -> Self {
        TaskSpecs(
            tasks
                .into_iter()
                .map(|t| {
                    (
                        t.idx,
                        Spec {
                            task_id: t.task_id.as_str(),
                            description: t.description.as_deref(),
                            try_spec: t.try_spec.as_deref(),
                            callbacks: t.callbacks.as_deref(),
                        },
                    )
                })
                .collect(),
        )
    }
}

/// A task's state as its job's row holds it (`jobs.task_state`, under the task's index): read
/// owned (`StateIn`), written borrowed from the task (`StateOut`). What a task has not got (no
/// link yet, no retry due, a flag not set) is absent, so that every version of the job's row,
/// which carries the states, logs less.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound(deserialize = "S: serde::Deserialize<'de>, V: serde::Deserialize<'de>"))]
struct State<S, V> {
    status: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_uri: Option<S>,
    #[serde(
        default,
        serialize_with = "crate::domain::timestamp::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    link_expires: Option<DateTime<Utc>>,
    #[serde(default)]
    attempts: i32,
    #[serde(
        default,
        serialize_with = "crate::domain::timestamp::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_false")]
    refused: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    confirm_pending: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    confirm_unknown: bool,
    #[serde(
        default,
        serialize_with = "crate::domain::timestamp::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    start_time: Option<DateTime<Utc>>,
    #[serde(
        default,
        serialize_with = "crate::domain::timestamp::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    end_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_message: Option<S>,
    /// Absent without a kept answer; an answer of JSON `null` is kept as one.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    try_response: Option<V>,
    #[serde(
        default,
        serialize_with = "crate::domain::timestamp::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    callbacks_until: Option<DateTime<Utc>>,
}

type StateIn = State<String, Value>;
type StateOut<'a> = State<&'a str, &'a Value>;

/// A field that is there, whatever its value (`null` included).
fn present<'de, D, V>(d: D) -> std::result::Result<Option<V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: serde::Deserialize<'de>,
{
    V::deserialize(d).map(Some)
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl<'a> StateOut<'a> {
    fn of(t: &'a Task) -> Self {
        let (refused, confirm_pending, confirm_unknown) = t.confirm.flags();
        State {
            status: t.status.as_str(),
            link_uri: t.link.as_ref().map(|l| l.uri.as_str()),
            link_expires: t.link.as_ref().map(|l| l.expires),
            attempts: t.attempts,
            next_attempt_at: t.next_attempt_at,
            refused,
            confirm_pending,
            confirm_unknown,
            start_time: t.start_time,
            end_time: t.end_time,
            last_message: t.last_message.as_deref(),
            try_response: t.try_response.as_deref(),
            callbacks_until: t.callbacks_until,
        }
    }
}

/// Tasks' states keyed by their index, as a job's row holds them (`jobs.task_state`): written
/// over the stored ones key by key (`task_state || $n`), the others left as they are.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct TaskStates<'a>(std::collections::BTreeMap<i32, StateOut<'a>>);

impl<'a> TaskStates<'a> {
    pub fn of<'t: 'a>(tasks: impl IntoIterator<Item = &'t Task>) -> Self {
        TaskStates(
            tasks
                .into_iter()
                .map(|t| (t.idx, StateOut::of(t)))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
