//! What a client or an operator may do with a job, and what the operators' actions do to it:
//! the one place that says which actions a job's state allows (docs/api.md, "Representations"). The representations'
//! links and the endpoints' refusals both come from here, so they cannot disagree.

use std::fmt;

use chrono::{DateTime, Utc};

use super::job::{ConfirmState, Job, Requested};
use super::status::{JobEvent, JobState, JobStatus, TaskEvent, TaskStatus};
use super::target::TaskId;

enum_with_all! {
    /// An action on a job, as its link relation names it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Action {
        Confirm,
        Cancel,
        Participants,
        Continue,
        Resolve,
        Restart,
    }
}

impl Action {
    pub fn rel(self) -> &'static str {
        match self {
            Action::Confirm => "confirm",
            Action::Cancel => "cancel",
            Action::Participants => "participants",
            Action::Continue => "continue",
            Action::Resolve => "resolve",
            Action::Restart => "restart",
        }
    }
}

/// Why a job's state does not allow an action now. Its text is what a 409 and the console say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Confirm, cancel, registering a participant: the decision is taken (the job is `status`).
    Decided(JobStatus, Action),
    CancelRequested,
    ConfirmRequested,
    /// A confirm of a job with no task.
    NoTasks,
    AlreadyResolved,
    NotHeuristic(JobStatus),
    /// `continue` of a heuristic job resolved by hand.
    ResolvedNotRetried,
    /// `continue` of a heuristic job whose heuristic tasks' links have all expired.
    LinksExpired,
    /// `continue` of a confirming job with no confirm waiting for its backoff.
    NoConfirmWaiting,
    NotContinuable(JobStatus),
    NoTaskToRestart,
    /// `restart` of a job with a task registered with a link (`taskID`).
    RegisteredLink(TaskId),
    NotRestartable(JobStatus),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Decided(status, action) => {
                write!(f, "the job is already {status}: the decision was taken")?;
                match action {
                    Action::Confirm => f.write_str(", and it can no longer be confirmed"),
                    Action::Cancel => f.write_str("; a cancel is only possible before it"),
                    Action::Participants => {
                        f.write_str("; participants can only register before it")
                    }
                    _ => Ok(()),
                }
            }
            Refusal::CancelRequested => f.write_str("a cancel of this job was already requested"),
            Refusal::ConfirmRequested => f.write_str(
                "a confirm of this job was already requested: the client's decision, which a cancel cannot undo",
            ),
            Refusal::NoTasks => f.write_str(
                "the job has no task yet: register participants before confirming",
            ),
            Refusal::AlreadyResolved => {
                f.write_str("the job's heuristic outcome was already resolved")
            }
            Refusal::NotHeuristic(status) => write!(
                f,
                "the job is {status}: only a heuristic job can be resolved"
            ),
            Refusal::ResolvedNotRetried => f.write_str(
                "the job's heuristic outcome was resolved by hand: it is not retried any more",
            ),
            Refusal::LinksExpired => f.write_str(
                "no heuristic task of this job can be confirmed any more: every one's participant link has expired",
            ),
            Refusal::NoConfirmWaiting => f.write_str(
                "no confirm of this job is waiting for a retry: they are in flight or done",
            ),
            Refusal::NotContinuable(status) => write!(
                f,
                "the job is {status}: continue retries the confirms of a heuristic or confirming job"
            ),
            Refusal::NoTaskToRestart => f.write_str("the job has no task to try again"),
            Refusal::RegisteredLink(task) => write!(
                f,
                "task {task} came reserved (a participant link, or its own confirm and cancel URLs), without a taskURL: the coordinator cannot reserve it again"
            ),
            Refusal::NotRestartable(status) => write!(
                f,
                "the job is {status}: only a failed or canceled job can be restarted"
            ),
        }
    }
}

/// What a client's confirm or cancel, or a participant's registration, is decided on: the job's
/// row as the store's guarded write finds it (it reports this when it changes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    pub state: JobState,
    pub requested: Requested,
    pub has_tasks: bool,
}

impl Gate {
    pub fn of(job: &Job) -> Gate {
        Gate {
            state: job.state,
            requested: job.requested,
            has_tasks: !job.tasks.is_empty(),
        }
    }
}

/// Why `action` (confirm, cancel or participants) is refused on a job at `gate`; `None` for the
/// operators' actions, which `refusal` decides on the whole job. A request recorded and not
/// acted on yet is not offered again, and a confirm request closes the cancel (repeating a
/// request is still answered as the first time: that is the endpoints' to say).
pub fn client_refusal(gate: &Gate, action: Action) -> Option<Refusal> {
    let status = gate.state.status();
    match action {
        Action::Confirm | Action::Cancel | Action::Participants if !status.is_undecided() => {
            Some(Refusal::Decided(status, action))
        }
        Action::Confirm | Action::Cancel | Action::Participants
            if gate.requested == Requested::Cancel =>
        {
            Some(Refusal::CancelRequested)
        }
        Action::Confirm | Action::Cancel if gate.requested == Requested::Confirm => {
            Some(Refusal::ConfirmRequested)
        }
        Action::Confirm if !gate.has_tasks => Some(Refusal::NoTasks),
        _ => None,
    }
}

/// Why the job's state does not allow `action` now; `None`: it does. `resolved`: an operator
/// has resolved the job's heuristic outcome.
pub fn refusal(job: &Job, resolved: bool, action: Action, now: DateTime<Utc>) -> Option<Refusal> {
    let status = job.status();
    match action {
        Action::Confirm | Action::Cancel | Action::Participants => {
            client_refusal(&Gate::of(job), action)
        }
        Action::Resolve => match status {
            JobStatus::Heuristic if resolved => Some(Refusal::AlreadyResolved),
            JobStatus::Heuristic => None,
            _ => Some(Refusal::NotHeuristic(status)),
        },
        Action::Continue => match status {
            JobStatus::Heuristic if resolved => Some(Refusal::ResolvedNotRetried),
            JobStatus::Heuristic if retryable(job, now).next().is_none() => {
                Some(Refusal::LinksExpired)
            }
            JobStatus::Heuristic => None,
            JobStatus::Confirming if waiting(job, now).next().is_none() => {
                Some(Refusal::NoConfirmWaiting)
            }
            JobStatus::Confirming => None,
            _ => Some(Refusal::NotContinuable(status)),
        },
        Action::Restart => match status {
            JobStatus::Failed | JobStatus::Canceled => {
                if job.tasks.is_empty() {
                    return Some(Refusal::NoTaskToRestart);
                }
                job.tasks
                    .iter()
                    .find(|t| t.try_spec.is_none())
                    .map(|t| Refusal::RegisteredLink(t.task_id.clone()))
            }
            _ => Some(Refusal::NotRestartable(status)),
        },
    }
}

/// Why a job definition does not start a job now (its `start` action): the one place that says
/// so, for the definition's links, its page and the start's refusal (410).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefusal {
    /// Retired at this time (`DELETE /job-definitions/{name}`).
    Retired(DateTime<Utc>),
}

impl fmt::Display for StartRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartRefusal::Retired(at) => write!(
                f,
                "the job definition was retired at {}: it starts no more jobs (PUT it again to bring it back)",
                super::rfc3339(*at)
            ),
        }
    }
}

/// Why a definition retired at `retired_at` (if it is) cannot start a job; `None`: it can.
pub fn start_refusal(retired_at: Option<DateTime<Utc>>) -> Option<StartRefusal> {
    retired_at.map(StartRefusal::Retired)
}

/// The actions the job's state allows now, in `Action::ALL`'s order.
pub fn allowed(job: &Job, resolved: bool, now: DateTime<Utc>) -> Vec<Action> {
    Action::ALL
        .into_iter()
        .filter(|a| refusal(job, resolved, *a, now).is_none())
        .collect()
}

/// The heuristic tasks whose confirm can still be sent: their link has not expired, or they
/// have their own confirm URL and it was their confirm that failed (a cancel that failed is not
/// turned into a confirm). `continue` retries their confirm.
fn retryable(job: &Job, now: DateTime<Utc>) -> impl Iterator<Item = usize> + '_ {
    job.tasks
        .iter()
        .enumerate()
        .filter(move |(_, t)| {
            t.status == TaskStatus::Heuristic
                && if t.callbacks.is_some() {
                    t.confirm.is_refused()
                } else {
                    !t.link_expired(now)
                }
        })
        .map(|(i, _)| i)
}

/// The confirming tasks whose next confirm waits for its backoff.
fn waiting(job: &Job, now: DateTime<Utc>) -> impl Iterator<Item = usize> + '_ {
    job.tasks
        .iter()
        .enumerate()
        .filter(move |(_, t)| {
            t.status == TaskStatus::Confirming
                && !t.confirm.is_refused()
                && !t.confirm.is_sent()
                && t.next_attempt_at.is_some_and(|at| at > now)
        })
        .map(|(i, _)| i)
}

/// `continue` on a heuristic job: confirming again, with the confirm of every heuristic task
/// whose link has not expired retried from its first attempt (what may have been applied stays
/// so). Returns how many tasks are retried, or why the job cannot continue.
pub fn continue_heuristic(
    job: &mut Job,
    resolved: bool,
    now: DateTime<Utc>,
) -> Result<usize, String> {
    if let Some(why) = refusal(job, resolved, Action::Continue, now) {
        return Err(why.to_string());
    }
    if job.status() != JobStatus::Heuristic {
        return Err(format!("the job is {}, not heuristic", job.status()));
    }
    let tasks: Vec<usize> = retryable(job, now).collect();
    job.job_on(JobEvent::Continue).map_err(|e| e.to_string())?;
    for &i in &tasks {
        job.task_on(i, TaskEvent::RetryConfirm, now)
            .map_err(|e| e.to_string())?;
        let t = &mut job.tasks[i];
        t.confirm = t.confirm.reset();
        t.attempts = 0;
        t.next_attempt_at = None;
        t.end_time = None;
        // A task with its own URLs is given a new horizon when the confirm is planned.
        t.callbacks_until = None;
        t.last_message = Some("the confirm is retried on an operator's request".into());
    }
    Ok(tasks.len())
}

/// `continue` on a confirming job: every confirm waiting for its backoff is due now. Returns how
/// many.
pub fn retry_now(job: &mut Job, now: DateTime<Utc>) -> usize {
    let tasks: Vec<usize> = waiting(job, now).collect();
    for &i in &tasks {
        job.tasks[i].next_attempt_at = None;
    }
    tasks.len()
}

/// `restart` of a failed or canceled job: a new attempt from the start, `pending` with every task
/// to be tried again, a new deadline `job_max_ttl` seconds from `now`. The earlier attempt's
/// links and answers are forgotten here (the event log keeps them).
pub fn restart(job: &mut Job, job_max_ttl: f64, now: DateTime<Utc>) -> Result<(), String> {
    if let Some(why) = refusal(job, false, Action::Restart, now) {
        return Err(why.to_string());
    }
    job.job_on(JobEvent::Restart).map_err(|e| e.to_string())?;
    job.attempt += 1;
    job.deadline = now + chrono::Duration::milliseconds((job_max_ttl * 1000.0).round() as i64);
    job.requested = Requested::Nothing;
    for i in 0..job.tasks.len() {
        job.task_on(i, TaskEvent::Restart, now)
            .map_err(|e| e.to_string())?;
        let t = &mut job.tasks[i];
        t.link = None;
        t.callbacks_until = None;
        t.attempts = 0;
        t.next_attempt_at = None;
        t.confirm = ConfirmState::default();
        t.start_time = None;
        t.end_time = None;
        t.last_message = None;
        t.try_response = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobState;

    #[test]
    fn a_definition_starts_jobs_until_it_is_retired() {
        assert_eq!(start_refusal(None), None);
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z")
            .expect("a time")
            .with_timezone(&Utc);
        let refusal = start_refusal(Some(at)).expect("refused");
        assert_eq!(refusal, StartRefusal::Retired(at));
        assert_eq!(
            refusal.to_string(),
            "the job definition was retired at 2026-12-04T10:00:00.000Z: it starts no more jobs (PUT it again to bring it back)"
        );
    }

    /// A state with the status `status` (and a reason where the status has one).
    fn state_of(status: JobStatus) -> JobState {
        use crate::domain::FailureReason as R;
        let reason = match status {
            JobStatus::Canceling | JobStatus::Failed => Some(R::TryFailed),
            JobStatus::Canceled => Some(R::Client),
            _ => None,
        };
        JobState::from_parts(status, reason).unwrap_or(JobState::Pending)
    }
    use crate::domain::request::{Limits, parse_job};
    use crate::domain::{JobId, Link, TargetUrl};

    fn job(tasks: serde_json::Value) -> Job {
        let now = Utc::now();
        let new = parse_job(
            &serde_json::json!({"autoConfirm": false, "tasks": tasks}),
            Limits { max_tasks: 10 },
            now,
        )
        .expect("valid");
        Job::new(&new, &JobId::parse("j").expect("id"), now, None)
    }

    fn link(expires: DateTime<Utc>) -> Option<Link> {
        Some(Link {
            uri: TargetUrl::parse("http://p/r/1").expect("url"),
            expires,
        })
    }

    /// Every status, with the tasks that make each action possible or not: exactly the allowed
    /// actions are offered.
    #[test]
    fn each_status_allows_exactly_its_actions() {
        use Action as A;
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(60);
        let tried = job(serde_json::json!([{"taskID": "a", "taskURL": "http://p/a"}]));
        for status in JobStatus::ALL {
            let mut j = tried.clone();
            j.state = state_of(status);
            let want: Vec<Action> = match status {
                JobStatus::Pending | JobStatus::Trying | JobStatus::Reserved => {
                    vec![A::Confirm, A::Cancel, A::Participants]
                }
                JobStatus::Failed | JobStatus::Canceled => vec![A::Restart],
                JobStatus::Heuristic => vec![A::Resolve],
                _ => vec![],
            };
            assert_eq!(allowed(&j, false, now), want, "{status}");
        }
        // A request recorded, not acted on yet: neither it nor its opposite is offered.
        let mut asked = tried.clone();
        asked.state = JobState::Reserved;
        asked.requested = Requested::Confirm;
        assert_eq!(allowed(&asked, false, now), vec![A::Participants]);
        asked.requested = Requested::Cancel;
        assert_eq!(allowed(&asked, false, now), vec![]);
        // A heuristic task whose link has not expired can be continued; resolved, nothing.
        let mut h = tried.clone();
        h.state = JobState::Heuristic;
        h.tasks[0].status = TaskStatus::Heuristic;
        h.tasks[0].link = link(later);
        assert_eq!(allowed(&h, false, now), vec![A::Continue, A::Resolve]);
        assert_eq!(allowed(&h, true, now), vec![]);
        h.tasks[0].link = link(now);
        assert_eq!(allowed(&h, false, now), vec![A::Resolve]);
        // A confirm waiting for its backoff can be hurried.
        let mut c = tried.clone();
        c.state = JobState::Confirming;
        c.tasks[0].status = TaskStatus::Confirming;
        c.tasks[0].link = link(later);
        assert_eq!(allowed(&c, false, now), vec![]);
        c.tasks[0].next_attempt_at = Some(now + chrono::Duration::seconds(5));
        assert_eq!(allowed(&c, false, now), vec![A::Continue]);
        // A job with a registered link cannot be restarted.
        let mut f = job(serde_json::json!([
            {"taskID": "a", "taskURL": "http://p/a"},
            {"taskID": "b", "participantLink": {"uri": "http://p/r/2", "expires": crate::domain::rfc3339(later)}}
        ]));
        f.state = JobState::Failed(crate::domain::FailureReason::Timeout);
        assert_eq!(allowed(&f, false, now), vec![]);
        assert!(
            refusal(&f, false, A::Restart, now).is_some_and(|w| w.to_string().contains("task b")),
            "names the task"
        );
    }

    #[test]
    fn continue_retries_only_the_heuristic_tasks_that_can_still_confirm() {
        let now = Utc::now();
        let mut j = job(serde_json::json!([
            {"taskID": "a", "taskURL": "http://p/a"},
            {"taskID": "b", "taskURL": "http://p/b"},
            {"taskID": "c", "taskURL": "http://p/c"}
        ]));
        j.state = JobState::Heuristic;
        for (t, status, expires) in [
            (0, TaskStatus::Confirmed, 60),
            (1, TaskStatus::Heuristic, 60),
            (2, TaskStatus::Heuristic, -1),
        ] {
            j.tasks[t].status = status;
            j.tasks[t].link = link(now + chrono::Duration::seconds(expires));
            j.tasks[t].end_time = Some(now);
        }
        j.tasks[1].confirm = ConfirmState::Refused {
            maybe_applied: true,
        };
        assert_eq!(continue_heuristic(&mut j, false, now), Ok(1));
        assert_eq!(j.status(), JobStatus::Confirming);
        let statuses: Vec<_> = j.tasks.iter().map(|t| t.status).collect();
        assert_eq!(
            statuses,
            vec![
                TaskStatus::Confirmed,
                TaskStatus::Confirming,
                TaskStatus::Heuristic
            ]
        );
        assert_eq!(
            j.tasks[1].confirm,
            ConfirmState::Ready {
                maybe_applied: true
            },
            "what may have been applied stays so"
        );
        assert_eq!(j.tasks[1].end_time, None);
        // Once confirming, a heuristic job's continue is refused.
        assert!(continue_heuristic(&mut j, false, now).is_err());
    }

    #[test]
    fn restart_starts_a_new_attempt_from_scratch() {
        let now = Utc::now();
        let mut j = job(serde_json::json!([{"taskID": "a", "taskURL": "http://p/a"}]));
        j.state = JobState::Failed(crate::domain::FailureReason::TryFailed);
        j.tasks[0].status = TaskStatus::Failed;
        j.tasks[0].attempts = 3;
        j.tasks[0].last_message = Some("400".into());
        j.requested = Requested::Cancel;
        restart(&mut j, 30.0, now).expect("restarted");
        assert_eq!(
            (j.status(), j.failure_reason(), j.attempt),
            (JobStatus::Pending, None, 2)
        );
        assert_eq!(j.deadline, now + chrono::Duration::seconds(30));
        assert_eq!(j.requested, Requested::Nothing);
        let t = &j.tasks[0];
        assert_eq!(
            (t.status, t.attempts, t.last_message.as_deref()),
            (TaskStatus::Pending, 0, None)
        );
        // A pending job cannot be restarted.
        assert!(restart(&mut j, 30.0, now).is_err());
    }
}
