//! The job and its tasks as the engine and the planner see them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::request::{Hold, NewJob, NewTaskKind};
use super::retry::{RetryPolicy, RetryPolicyPatch};
use super::status::{FailureReason, JobState, JobStatus, TaskStatus};
use super::target::{JobId, TargetUrl, TaskId};

/// A participant link: the URI of a reservation and the moment it lapses by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub uri: TargetUrl,
    pub expires: DateTime<Utc>,
}

/// An operator's record of the manual fix of a heuristic outcome (`POST /jobs/{id}/resolve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    pub note: String,
    pub resolved_at: DateTime<Utc>,
    /// Who resolved it: the API key's name (`anonymous` while the API is open).
    pub resolved_by: String,
}

/// How a task came to the job: a Try the coordinator sends, or a link a service registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrySpec {
    #[serde(rename = "taskURL")]
    pub task_url: TargetUrl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// `(pointer into the Try body, pointer into the shared state)`, in the client's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_mapping: Vec<(String, String)>,
    /// `(pointer into the shared state, pointer into the Try answer)`, in the client's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_mapping: Vec<(String, String)>,
    /// Seconds for one Try call.
    #[serde(rename = "taskMaxTTL")]
    pub task_max_ttl: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicyPatch>,
}

/// Where a task with its own confirm and cancel URLs (docs/api.md, "Tasks with confirm and
/// cancel URLs") is settled: `POST {confirmURL}` or `POST {cancelURL}` with its body, or, for a
/// branch of a DTM global transaction, as DTM calls a branch. It never changes once accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Callbacks {
    #[serde(rename = "confirmURL")]
    pub confirm_url: TargetUrl,
    #[serde(rename = "cancelURL")]
    pub cancel_url: TargetUrl,
    /// Sent with the confirm and the cancel (default `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The branch of a DTM global transaction this task is: called as DTM calls one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtm: Option<DtmBranch>,
    /// The backoff of the confirm and cancel of a task without a taskURL (with one, the Try's
    /// policy applies to both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicyPatch>,
}

/// How DTM calls a branch: `POST` with `data` as the body when it is not empty, else `GET`, with
/// the query parameters `gid`, `trans_type`, `branch_id` and `op`, and the transaction's
/// `branch_headers` (kept with the job's options, `sharedState.dtm`: read when the call is made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmBranch {
    pub gid: String,
    pub branch_id: String,
    /// The branch's `data` as the client registered it (a string, usually JSON).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
}

impl DtmBranch {
    /// The transaction's `branch_headers`, from the job's shared state (`dtm.branch_headers`,
    /// where `prepare` keeps the options).
    pub fn headers(shared_state: &Value) -> Vec<(String, String)> {
        shared_state
            .pointer("/dtm/branch_headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect()
    }
}

/// Where a task's confirm stands, as one value, so that "sent", "refused" and "may have been
/// applied" cannot disagree. `maybe_applied` is sticky: some confirm may have been applied
/// without the coordinator hearing it (a timeout, a dropped connection, a 500/502/504, or an
/// answer lost with its driver), and going back to cancel would then be a guess (rules 4, 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmState {
    /// No confirm is out; the next one is sent when due.
    Ready { maybe_applied: bool },
    /// A confirm was sent and its answer has not been folded in yet. Persisted before the call,
    /// so that after a crash or a hand-back the next owner knows an answer was lost.
    Sent { maybe_applied: bool },
    /// The confirm cannot succeed (refused, gone, or the link expired while retrying); whether
    /// that makes the task heuristic or the job cancel depends on the others (rule 4).
    Refused { maybe_applied: bool },
}

impl Default for ConfirmState {
    fn default() -> Self {
        ConfirmState::Ready {
            maybe_applied: false,
        }
    }
}

impl ConfirmState {
    pub fn maybe_applied(self) -> bool {
        match self {
            ConfirmState::Ready { maybe_applied }
            | ConfirmState::Sent { maybe_applied }
            | ConfirmState::Refused { maybe_applied } => maybe_applied,
        }
    }

    pub fn is_refused(self) -> bool {
        matches!(self, ConfirmState::Refused { .. })
    }

    pub fn is_sent(self) -> bool {
        matches!(self, ConfirmState::Sent { .. })
    }

    /// A confirm goes out.
    pub fn send(self) -> Self {
        ConfirmState::Sent {
            maybe_applied: self.maybe_applied(),
        }
    }

    /// The sent confirm was answered without settling it: it waits for the next attempt.
    /// `maybe_applied`: the answer leaves open whether it was applied.
    pub fn answered(self, maybe_applied: bool) -> Self {
        ConfirmState::Ready {
            maybe_applied: maybe_applied || self.maybe_applied(),
        }
    }

    /// A confirm was out with nobody left to hear its answer (its driver crashed or handed the
    /// job back): it may have been applied.
    pub fn lost(self) -> Self {
        match self {
            ConfirmState::Sent { .. } => ConfirmState::Ready {
                maybe_applied: true,
            },
            other => other,
        }
    }

    /// The confirm cannot succeed.
    pub fn refuse(self) -> Self {
        ConfirmState::Refused {
            maybe_applied: self.maybe_applied(),
        }
    }

    /// The job turned to cancel: no confirm is refused any more, what may have been applied
    /// stays so.
    pub fn reset(self) -> Self {
        ConfirmState::Ready {
            maybe_applied: self.maybe_applied(),
        }
    }

    /// As stored: `(refused, sent, maybe_applied)`.
    pub fn flags(self) -> (bool, bool, bool) {
        (self.is_refused(), self.is_sent(), self.maybe_applied())
    }

    /// From the stored flags; `None` for a combination no state has (refused and sent).
    pub fn from_flags(refused: bool, sent: bool, maybe_applied: bool) -> Option<Self> {
        match (refused, sent) {
            (true, true) => None,
            (true, false) => Some(ConfirmState::Refused { maybe_applied }),
            (false, true) => Some(ConfirmState::Sent { maybe_applied }),
            (false, false) => Some(ConfirmState::Ready { maybe_applied }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Position in the job, 0-based, stable.
    pub idx: i32,
    pub task_id: TaskId,
    pub description: Option<String>,
    /// `None` for a task registered with a link. Shared: it never changes, and the engine copies
    /// its tasks on every step.
    pub try_spec: Option<Arc<TrySpec>>,
    /// The task's own confirm and cancel URLs; `None` for a task settled through its link.
    pub callbacks: Option<Arc<Callbacks>>,
    /// Until when the current confirm or cancel of a task with `callbacks` is retried: the
    /// decision plus `TCC_CALLBACK_HORIZON` (such a task has no expiry).
    pub callbacks_until: Option<DateTime<Utc>>,
    pub status: TaskStatus,
    pub link: Option<Link>,
    /// Calls of the task's current operation (Try, then confirm, then cancel).
    pub attempts: i32,
    /// When the next call of the current operation is due, after a retryable answer.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Where the task's confirm stands.
    pub confirm: ConfirmState,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub last_message: Option<String>,
    /// The Try answer as kept; shared, as it never changes once there.
    pub try_response: Option<Arc<Value>>,
}

#[cfg(test)]
mod tests {
    use super::{ConfirmState, Job};
    use crate::domain::request::{Limits, parse_job};
    use crate::domain::{JobStatus, TaskStatus};

    #[test]
    fn a_new_job_is_pending_with_its_deadline_and_default_correlation_id() {
        let now = chrono::Utc::now();
        let doc = serde_json::json!({
            "jobMaxTTL": 1.5,
            "tasks": [
                {"taskID": "a", "taskURL": "http://p/a"},
                {"taskID": "b", "participantLink": {"uri": "http://p/r/1", "expires": crate::domain::rfc3339(now + chrono::Duration::seconds(60))}}
            ]
        });
        let new = parse_job(&doc, Limits { max_tasks: 10 }, now).expect("valid");
        let id = crate::domain::JobId::parse("j1").expect("an id");
        let job = Job::new(&new, &id, now, None);
        assert_eq!(job.status(), JobStatus::Pending);
        assert_eq!(job.correlation_id, "j1", "defaults to the job id");
        assert_eq!(job.deadline, now + chrono::Duration::milliseconds(1500));
        let statuses: Vec<_> = job.tasks.iter().map(|t| t.status).collect();
        assert_eq!(statuses, vec![TaskStatus::Pending, TaskStatus::Reserved]);
        assert!(job.tasks[0].try_spec.is_some() && job.tasks[1].link.is_some());
        assert_eq!(job.tasks[1].idx, 1);
    }

    #[test]
    fn the_confirm_state_round_trips_through_its_flags_and_keeps_maybe_applied() {
        for refused in [false, true] {
            for sent in [false, true] {
                for maybe in [false, true] {
                    match ConfirmState::from_flags(refused, sent, maybe) {
                        Some(s) => assert_eq!(s.flags(), (refused, sent, maybe)),
                        None => assert!(refused && sent),
                    }
                }
            }
        }
        let s = ConfirmState::default().send().lost();
        assert!(s.maybe_applied() && !s.is_sent());
        assert!(s.refuse().reset().maybe_applied(), "sticky");
        assert!(
            !ConfirmState::default()
                .send()
                .answered(false)
                .maybe_applied()
        );
        assert!(
            ConfirmState::default()
                .send()
                .answered(true)
                .maybe_applied()
        );
    }
}

impl Task {
    /// A task as it is first stored: nothing tried, settled or said about it yet.
    pub fn fresh(
        idx: i32,
        task_id: TaskId,
        description: Option<String>,
        status: TaskStatus,
        try_spec: Option<Arc<TrySpec>>,
        callbacks: Option<Arc<Callbacks>>,
        link: Option<Link>,
    ) -> Task {
        Task {
            idx,
            task_id,
            description,
            try_spec,
            callbacks,
            callbacks_until: None,
            status,
            link,
            attempts: 0,
            next_attempt_at: None,
            confirm: ConfirmState::default(),
            start_time: None,
            end_time: None,
            last_message: None,
            try_response: None,
        }
    }

    /// A participant registered with a job (`Registration`): reserved from `now`, with its link
    /// or its own URLs.
    pub fn registered(
        idx: i32,
        task_id: TaskId,
        description: Option<String>,
        hold: &Hold,
        now: DateTime<Utc>,
    ) -> Task {
        let (link, callbacks) = match hold {
            Hold::Link(l) => (Some(l.clone()), None),
            Hold::Callbacks(c) => (None, Some(Arc::new((**c).clone()))),
        };
        Task {
            start_time: Some(now),
            ..Task::fresh(
                idx,
                task_id,
                description,
                TaskStatus::Reserved,
                None,
                callbacks,
                link,
            )
        }
    }

    /// The policy for this task's Try attempts: the task's fields over the job's over the defaults.
    pub fn try_policy(&self, job_policy: Option<&RetryPolicyPatch>) -> RetryPolicy {
        let base = job_policy
            .map(|p| p.over(RetryPolicy::default()))
            .unwrap_or_default();
        let own = match (&self.try_spec, &self.callbacks) {
            (Some(s), _) => s.retry_policy.as_ref(),
            (None, Some(c)) => c.retry_policy.as_ref(),
            (None, None) => None,
        };
        match own {
            Some(p) => p.over(base),
            None => base,
        }
    }

    pub fn link_expired(&self, now: DateTime<Utc>) -> bool {
        self.link.as_ref().is_some_and(|l| l.expires <= now)
    }

    /// The instant until which the current confirm or cancel is retried: the link's expiry, or
    /// for a task with its own URLs the horizon of the decision.
    pub fn settle_until(&self) -> Option<DateTime<Utc>> {
        if self.callbacks.is_some() {
            self.callbacks_until
        } else {
            self.link.as_ref().map(|l| l.expires)
        }
    }

    fn set_status_end(&mut self, status: TaskStatus, now: DateTime<Utc>) {
        self.status = status;
        if status.is_terminal() {
            self.end_time = Some(now);
            self.next_attempt_at = None;
        }
    }
}

/// The client's request a job has recorded before the decision and not acted on yet. A confirm
/// request is the client's decision: no cancel is taken after it; a cancel request is final too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requested {
    #[default]
    Nothing,
    Confirm,
    Cancel,
}

impl Requested {
    /// As the `jobs` row keeps it: `(confirm_requested, cancel_requested)`. Rows written before
    /// a confirm request closed the cancel may hold both: the cancel is what the planner acts on.
    pub fn from_flags(confirm: bool, cancel: bool) -> Self {
        match (confirm, cancel) {
            (_, true) => Requested::Cancel,
            (true, false) => Requested::Confirm,
            (false, false) => Requested::Nothing,
        }
    }

    pub fn flags(self) -> (bool, bool) {
        (self == Requested::Confirm, self == Requested::Cancel)
    }
}

/// Where a job came from. Each source keeps its own namespace of idempotency keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSource {
    /// The Job Control Language: `POST /jobs`, `PUT /jobs/{id}`.
    Jcl,
    /// The Atomikos-compatible `PUT /coordinator/confirm` and `/cancel`.
    Atomikos,
    /// DTM's HTTP API (`/api/dtmsvr/`): a global transaction, keyed by its gid.
    Dtm,
}

impl JobSource {
    /// As stored, and as the `source` label of `tcc_jobs_created_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobSource::Jcl => "jcl",
            JobSource::Atomikos => "atomikos",
            JobSource::Dtm => "dtm",
        }
    }
}

/// A new job as a client asked for it, parsed and checked: what the API hands the engine. The
/// engine adds what only it knows (its instance, the lease) and stores it.
#[derive(Debug, Clone)]
pub struct Submission {
    pub id: JobId,
    pub job: NewJob,
    pub source: JobSource,
    pub created_at: DateTime<Utc>,
    /// The client's `Idempotency-Key` (or the Atomikos endpoints' key of the link set).
    pub idempotency_key: Option<String>,
    /// Who gave the idempotency key (the API key's name): a replay by another is refused.
    pub key_holder: Option<String>,
    /// What a replay under the same key must match: a hash of the request.
    pub request_hash: Option<String>,
    /// The incoming W3C `traceparent`, carried to the participants.
    pub traceparent: Option<String>,
}

/// Everything the engine needs about a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    /// The status, with why the job is being canceled or ended failed or canceled.
    pub state: JobState,
    pub correlation_id: String,
    /// The W3C `traceparent` of the creating request, sent on with every participant call.
    pub traceparent: Option<String>,
    pub auto_confirm: bool,
    /// The client's confirm or cancel, recorded and not acted on yet.
    pub requested: Requested,
    pub created_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// 1, and one more with each `restart`. Later attempts call participants with
    /// `request-id: {taskID}/{attempt}`, so that none merges two attempts.
    pub attempt: i32,
    pub shared_state: Value,
    pub retry_policy: Option<RetryPolicyPatch>,
    pub tasks: Vec<Task>,
}

impl Job {
    /// A job as accepted from `new`, before anything was planned: `pending`, its Try tasks
    /// `pending`, its link tasks `reserved`; the deadline `jobMaxTTL` after `created_at`; the
    /// correlation id defaulting to the job's id.
    pub fn new(
        new: &NewJob,
        id: &JobId,
        created_at: DateTime<Utc>,
        traceparent: Option<String>,
    ) -> Job {
        let tasks = new
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (try_spec, status, link, callbacks) = match &t.kind {
                    NewTaskKind::Try(spec) => (
                        Some(Arc::new(spec.clone())),
                        TaskStatus::Pending,
                        None,
                        None,
                    ),
                    NewTaskKind::Link(link) => {
                        (None, TaskStatus::Reserved, Some(link.clone()), None)
                    }
                    NewTaskKind::Callbacks {
                        try_spec,
                        callbacks,
                    } => (
                        try_spec.clone().map(Arc::new),
                        if try_spec.is_some() {
                            TaskStatus::Pending
                        } else {
                            TaskStatus::Reserved
                        },
                        None,
                        Some(Arc::new(callbacks.as_ref().clone())),
                    ),
                };
                Task::fresh(
                    i as i32,
                    t.task_id.clone(),
                    t.description.clone(),
                    status,
                    try_spec,
                    callbacks,
                    link,
                )
            })
            .collect();
        let ttl = chrono::Duration::milliseconds((new.fields.job_max_ttl * 1000.0).round() as i64);
        Job {
            id: id.clone(),
            state: JobState::Pending,
            correlation_id: new
                .fields
                .correlation_id
                .clone()
                .unwrap_or_else(|| id.to_string()),
            traceparent,
            auto_confirm: new.fields.auto_confirm,
            requested: Requested::Nothing,
            created_at,
            deadline: created_at + ttl,
            attempt: 1,
            shared_state: new.shared_state.clone(),
            retry_policy: new.fields.retry_policy,
            tasks,
        }
    }

    /// Apply a task transition; the task must exist.
    pub fn task_on(
        &mut self,
        idx: usize,
        event: super::status::TaskEvent,
        now: DateTime<Utc>,
    ) -> Result<(), super::status::IllegalTransition> {
        let task = &mut self.tasks[idx];
        let next = task.status.on(event)?;
        task.set_status_end(next, now);
        Ok(())
    }

    pub fn job_on(
        &mut self,
        event: super::status::JobEvent,
    ) -> Result<(), super::status::IllegalTransition> {
        self.state = self.state.on(event)?;
        Ok(())
    }

    pub fn status(&self) -> JobStatus {
        self.state.status()
    }

    /// Why the job is being canceled, or ended failed or canceled.
    pub fn failure_reason(&self) -> Option<FailureReason> {
        self.state.reason()
    }
}
