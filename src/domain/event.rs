//! The job's event log (`GET /jobs/{id}/events`): what happened to a job, in order. Events are
//! written with the state change they describe, in the same statement; each has a sequence
//! number, 1-based and gapless per job, which orders them and resumes an event stream.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::Job;
use super::planner::Op;
use super::status::{FailureReason, JobStatus, TaskStatus};

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The job's status changed (or the job was accepted).
    Status,
    /// A participant answered a call (or the call failed without an answer).
    Call,
    /// A task's status changed without a call answering: a reservation lapsed, a Try was
    /// abandoned, a confirm ran out of time.
    Task,
    /// A client, a participant or an operator acted on the job.
    Action,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Status,
        EventKind::Call,
        EventKind::Task,
        EventKind::Action,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Call => "call",
            EventKind::Task => "task",
            EventKind::Action => "action",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One entry of the log. Which fields are set depends on the kind: a status change has
/// `status` (the job's) and perhaps `reason`; a call has `task_id`, `op`, `attempt`,
/// `http_status` (when an answer came), `duration_ms` and `status` (the task's, after the
/// answer); an action has `action`, `actor` and perhaps `task_id`.
/// Stored as JSON in this shape (the statements that write a batch of events write them as one
/// JSON array).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(rename = "taskID", skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i32>,
    /// The job's status (`Status`) or the task's (`Call`, `Task`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// `confirm`, `cancel`, `register`, `resolve`, `continue`, `restart`, `update`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Who acted: the API key's name, `anonymous` while the API is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Event {
    /// An event of `kind` at `at` with no other field set.
    pub fn new(at: DateTime<Utc>, kind: EventKind) -> Self {
        Event {
            at,
            kind,
            task_id: None,
            op: None,
            attempt: None,
            http_status: None,
            duration_ms: None,
            status: None,
            reason: None,
            action: None,
            actor: None,
            message: None,
        }
    }

    pub fn job_status(at: DateTime<Utc>, status: JobStatus, reason: Option<FailureReason>) -> Self {
        Event {
            status: Some(status.as_str().to_string()),
            reason,
            ..Event::new(at, EventKind::Status)
        }
    }

    pub fn action(at: DateTime<Utc>, action: &str, actor: &str, message: Option<String>) -> Self {
        Event {
            action: Some(action.to_string()),
            actor: Some(actor.to_string()),
            message,
            ..Event::new(at, EventKind::Action)
        }
    }
}

/// One participant call as the log records it.
pub struct CallRecord<'a> {
    pub at: DateTime<Utc>,
    pub task_id: &'a str,
    pub op: Op,
    pub attempt: i32,
    pub http_status: Option<u16>,
    pub duration: std::time::Duration,
    /// The task's status after the answer was taken in.
    pub task_status: TaskStatus,
    pub message: Option<String>,
}

impl From<CallRecord<'_>> for Event {
    fn from(c: CallRecord<'_>) -> Self {
        Event {
            task_id: Some(c.task_id.to_string()),
            op: Some(c.op),
            attempt: Some(c.attempt),
            http_status: c.http_status.map(i32::from),
            duration_ms: Some(c.duration.as_millis().min(i32::MAX as u128) as i32),
            status: Some(c.task_status.as_str().to_string()),
            message: c.message,
            ..Event::new(c.at, EventKind::Call)
        }
    }
}

/// The status changes from `before` to `after` as events: the job's, and each task's that no
/// call in `calls` (the call events since `before`) already reports. Tasks entering a status in
/// which a call is about to go out (`trying`, `confirming`, `canceling`) are not logged: the
/// job's own change and the call say it.
pub fn status_changes(before: &Job, after: &Job, at: DateTime<Utc>, calls: &[Event]) -> Vec<Event> {
    let mut events = Vec::new();
    if before.status != after.status || before.failure_reason != after.failure_reason {
        events.push(Event::job_status(at, after.status, after.failure_reason));
    }
    for (b, a) in before.tasks.iter().zip(after.tasks.iter()) {
        if b.status == a.status
            || matches!(
                a.status,
                TaskStatus::Trying | TaskStatus::Confirming | TaskStatus::Canceling
            )
        {
            continue;
        }
        let reported = calls.iter().rev().any(|c| {
            c.kind == EventKind::Call
                && c.task_id.as_deref() == Some(a.task_id.as_str())
                && c.status.as_deref() == Some(a.status.as_str())
        });
        if !reported {
            events.push(Event {
                task_id: Some(a.task_id.to_string()),
                status: Some(a.status.as_str().to_string()),
                message: a.last_message.clone(),
                ..Event::new(at, EventKind::Task)
            });
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::{Limits, parse_job};
    use crate::domain::{JobId, TaskStatus};

    fn job() -> Job {
        let now = Utc::now();
        let doc = serde_json::json!({"tasks": [
            {"taskID": "a", "taskURL": "http://p/a"},
            {"taskID": "b", "taskURL": "http://p/b"}
        ]});
        let new = parse_job(&doc, Limits { max_tasks: 10 }, now).expect("valid");
        Job::new(&new, &JobId::parse("j").expect("id"), now, None)
    }

    #[test]
    fn a_status_change_is_logged_once_and_a_task_change_only_when_no_call_said_it() {
        let before = job();
        let mut after = before.clone();
        let now = Utc::now();
        after.status = JobStatus::Reserved;
        after.tasks[0].status = TaskStatus::Reserved;
        after.tasks[1].status = TaskStatus::Failed;
        let call: Event = CallRecord {
            at: now,
            task_id: "a",
            op: Op::Try,
            attempt: 1,
            http_status: Some(201),
            duration: std::time::Duration::from_millis(3),
            task_status: TaskStatus::Reserved,
            message: None,
        }
        .into();
        let events = status_changes(&before, &after, now, &[call]);
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.task_id.clone(), e.status.clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EventKind::Status, None, Some("reserved".into())),
                (EventKind::Task, Some("b".into()), Some("failed".into())),
            ]
        );
        // Nothing changed: nothing logged; a task about to be called: not logged either.
        assert!(status_changes(&before, &before, now, &[]).is_empty());
        let mut trying = before.clone();
        trying.tasks[0].status = TaskStatus::Trying;
        assert!(status_changes(&before, &trying, now, &[]).is_empty());
    }

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }
}
