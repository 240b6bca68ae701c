//! The job's event log (`GET /jobs/{id}/events`): what happened to a job, in order. Events are
//! written with the state change they describe, in the same statement; each has a sequence
//! number, 1-based and gapless per job, which orders them and resumes an event stream.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::Job;
use super::planner::Op;
use super::status::{FailureReason, JobStatus, TaskStatus};

/// What kind of thing happened: an event's `type` (`What`'s tag), and its name in an event
/// stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Call => "call",
            EventKind::Task => "task",
            EventKind::Action => "action",
        }
    }
}

/// One entry of the log: when, and what happened. Stored as JSON in exactly this shape
/// (`{"at", "type", ...}`; the statements that write a batch of events write them as one JSON
/// array), and read back from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub what: What,
}

/// What happened, by kind (`type`): each kind carries its own fields and no other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum What {
    /// The job's status changed (or the job was accepted), with the failure reason it carries.
    Status {
        status: JobStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<FailureReason>,
    },
    /// A participant answered a call (or the call failed without an answer): the task's status
    /// after the answer was taken in.
    #[serde(rename_all = "camelCase")]
    Call {
        #[serde(rename = "taskID")]
        task_id: String,
        op: Op,
        attempt: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<i32>,
        duration_ms: i32,
        status: TaskStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A task's status changed without a call answering: a reservation lapsed, a Try was
    /// abandoned, a confirm ran out of time.
    Task {
        #[serde(rename = "taskID")]
        task_id: String,
        status: TaskStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A client, a participant or an operator acted on the job (on one task: a registration).
    Action {
        #[serde(rename = "taskID", default, skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
        action: ActionKind,
        /// Who acted: the API key's name, `anonymous` while the API is open.
        actor: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

/// What a client, a participant or an operator did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Confirm,
    Cancel,
    Register,
    Resolve,
    Continue,
    Restart,
    Update,
    /// A write of the shared state by a client.
    #[serde(rename = "shared-state")]
    SharedState,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Confirm => "confirm",
            ActionKind::Cancel => "cancel",
            ActionKind::Register => "register",
            ActionKind::Resolve => "resolve",
            ActionKind::Continue => "continue",
            ActionKind::Restart => "restart",
            ActionKind::Update => "update",
            ActionKind::SharedState => "shared-state",
        }
    }
}

impl What {
    pub fn kind(&self) -> EventKind {
        match self {
            What::Status { .. } => EventKind::Status,
            What::Call { .. } => EventKind::Call,
            What::Task { .. } => EventKind::Task,
            What::Action { .. } => EventKind::Action,
        }
    }

    /// The task the event is about, if any.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            What::Call { task_id, .. } | What::Task { task_id, .. } => Some(task_id),
            What::Action { task_id, .. } => task_id.as_deref(),
            What::Status { .. } => None,
        }
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            What::Call { message, .. }
            | What::Task { message, .. }
            | What::Action { message, .. } => message.as_deref(),
            What::Status { .. } => None,
        }
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        self.what.kind()
    }

    pub fn job_status(at: DateTime<Utc>, status: JobStatus, reason: Option<FailureReason>) -> Self {
        Event {
            at,
            what: What::Status { status, reason },
        }
    }

    pub fn action(
        at: DateTime<Utc>,
        action: ActionKind,
        actor: &str,
        message: Option<String>,
    ) -> Self {
        Event {
            at,
            what: What::Action {
                task_id: None,
                action,
                actor: actor.to_string(),
                message,
            },
        }
    }

    /// A task's status change that no call reports.
    pub fn task(
        at: DateTime<Utc>,
        task_id: &str,
        status: TaskStatus,
        message: Option<String>,
    ) -> Self {
        Event {
            at,
            what: What::Task {
                task_id: task_id.to_string(),
                status,
                message,
            },
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
            at: c.at,
            what: What::Call {
                task_id: c.task_id.to_string(),
                op: c.op,
                attempt: c.attempt,
                http_status: c.http_status.map(i32::from),
                duration_ms: c.duration.as_millis().min(i32::MAX as u128) as i32,
                status: c.task_status,
                message: c.message,
            },
        }
    }
}

/// The status changes from `before` to `after` as events: the job's, and each task's that no
/// call in `calls` (the call events since `before`) already reports. Tasks entering a status in
/// which a call is about to go out (`trying`, `confirming`, `canceling`) are not logged: the
/// job's own change and the call say it.
pub fn status_changes(before: &Job, after: &Job, at: DateTime<Utc>, calls: &[Event]) -> Vec<Event> {
    let mut events = Vec::new();
    if before.status() != after.status() || before.failure_reason() != after.failure_reason() {
        events.push(Event::job_status(
            at,
            after.status(),
            after.failure_reason(),
        ));
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
            matches!(&c.what, What::Call { task_id, status, .. }
                if task_id == a.task_id.as_str() && *status == a.status)
        });
        if !reported {
            events.push(Event::task(
                at,
                &a.task_id,
                a.status,
                a.last_message.clone(),
            ));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobState;
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
        after.state = JobState::Reserved;
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
        assert_eq!(
            events,
            vec![
                Event::job_status(now, JobStatus::Reserved, None),
                Event::task(now, "b", TaskStatus::Failed, None),
            ]
        );
        // Nothing changed: nothing logged; a task about to be called: not logged either.
        assert!(status_changes(&before, &before, now, &[]).is_empty());
        let mut trying = before.clone();
        trying.tasks[0].status = TaskStatus::Trying;
        assert!(status_changes(&before, &trying, now, &[]).is_empty());
    }

    /// Each kind is stored exactly as before the log's events were an enum: rows written then
    /// read back, and the JSON written now is the same.
    #[test]
    fn every_kind_is_stored_in_the_shape_it_always_had() {
        let at = DateTime::parse_from_rfc3339("2026-12-04T00:00:00.123Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("a time");
        let register = Event {
            at,
            what: What::Action {
                task_id: Some("participant-1".into()),
                action: ActionKind::Register,
                actor: "svc".into(),
                message: Some("registered the link http://x/1".into()),
            },
        };
        let cases: Vec<(Event, &str)> = vec![
            (
                CallRecord {
                    at,
                    task_id: "a",
                    op: Op::Confirm,
                    attempt: 2,
                    http_status: Some(204),
                    duration: std::time::Duration::from_millis(7),
                    task_status: TaskStatus::Confirmed,
                    message: Some("ok".into()),
                }
                .into(),
                r#"{"at":"2026-12-04T00:00:00.123Z","type":"call","taskID":"a","op":"confirm","attempt":2,"httpStatus":204,"durationMs":7,"status":"confirmed","message":"ok"}"#,
            ),
            (
                CallRecord {
                    at,
                    task_id: "b",
                    op: Op::Try,
                    attempt: 1,
                    http_status: None,
                    duration: std::time::Duration::from_millis(30000),
                    task_status: TaskStatus::Trying,
                    message: None,
                }
                .into(),
                r#"{"at":"2026-12-04T00:00:00.123Z","type":"call","taskID":"b","op":"try","attempt":1,"durationMs":30000,"status":"trying"}"#,
            ),
            (
                Event::job_status(at, JobStatus::Failed, Some(FailureReason::TryFailed)),
                r#"{"at":"2026-12-04T00:00:00.123Z","type":"status","status":"failed","reason":"try-failed"}"#,
            ),
            (
                Event::job_status(at, JobStatus::Pending, None),
                r#"{"at":"2026-12-04T00:00:00.123Z","type":"status","status":"pending"}"#,
            ),
            (
                Event::action(at, ActionKind::Resolve, "ops", Some("fixed".into())),
                r#"{"at":"2026-12-04T00:00:00.123Z","type":"action","action":"resolve","actor":"ops","message":"fixed"}"#,
            ),
            (
                Event::action(at, ActionKind::Cancel, "anonymous", None),
                r#"{"at":"2026-12-04T00:00:00.123Z","type":"action","action":"cancel","actor":"anonymous"}"#,
            ),
            (
                register,
                r#"{"at":"2026-12-04T00:00:00.123Z","type":"action","taskID":"participant-1","action":"register","actor":"svc","message":"registered the link http://x/1"}"#,
            ),
            (
                Event::task(at, "c", TaskStatus::Expired, Some("lapsed".into())),
                r#"{"at":"2026-12-04T00:00:00.123Z","type":"task","taskID":"c","status":"expired","message":"lapsed"}"#,
            ),
            (
                Event::task(at, "c", TaskStatus::Canceled, None),
                r#"{"at":"2026-12-04T00:00:00.123Z","type":"task","taskID":"c","status":"canceled"}"#,
            ),
        ];
        for (event, stored) in cases {
            assert_eq!(serde_json::to_string(&event).ok().as_deref(), Some(stored));
            let read: Event = serde_json::from_str(stored).expect("read back");
            assert_eq!(read, event, "{stored}");
            // An event stream names each event by the type it is stored under.
            let doc: serde_json::Value = serde_json::from_str(stored).expect("JSON");
            assert_eq!(doc["type"], event.kind().as_str(), "{stored}");
        }
    }
}
