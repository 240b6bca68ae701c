//! The planner: given a job, what is in flight and the time, decide what happens next.
//!
//! `plan` moves statuses forward (through the transition functions only) and returns the
//! participant calls to make and when to look again; `apply` folds one participant answer into
//! the job. Both are pure: no I/O, no clock, no randomness of their own. The engine persists what
//! they decided before it makes the calls they asked for. The rules are in docs/api.md, "Rules".

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::job::{Job, Link, Requested};
use super::mapping;
use super::retry::RetryPolicy;
use super::status::{FailureReason, IllegalTransition, JobEvent, JobStatus, TaskEvent, TaskStatus};

/// A participant operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Try,
    Confirm,
    Cancel,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Try => "try",
            Op::Confirm => "confirm",
            Op::Cancel => "cancel",
        }
    }
}

/// One participant call to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub task: usize,
    pub op: Op,
    /// 1-based attempt of this operation.
    pub attempt: i32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// When to plan again if nothing else happens first (a retry falls due, a deadline or an
    /// expiry passes). `None`: only an answer or a client request can change anything.
    pub wake_at: Option<DateTime<Utc>>,
    /// The changes must be committed synchronously before the steps are sent: they carry a
    /// decision, an end, or precede a confirm or cancel.
    pub durable: bool,
}

impl Plan {
    fn wake(&mut self, at: DateTime<Utc>) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannerSettings {
    /// Every link must outlive now + this margin for the job to be confirmed.
    pub confirm_margin: Duration,
    /// How long after the decision the confirm or cancel of a task with its own URLs is
    /// retried (`TCC_CALLBACK_HORIZON`): such a task has no expiry.
    pub callback_horizon: Duration,
}

/// A participant's answer, classified (docs/participant.md).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A Try yielded a usable link (`None` for a task with its own confirm and cancel URLs, whose
    /// Try answer needs none). `note` says what the coordinator assumed (a missing expiry).
    /// `response` is the whole answer when it was JSON: the output mappings read it. It is kept
    /// on the task (for display) only when `keep` (small and shallow enough).
    Reserved {
        link: Option<Link>,
        note: Option<String>,
        response: Option<Value>,
        keep: bool,
    },
    /// A confirm or cancel succeeded.
    Done,
    /// Worth another attempt: 408, 429, 5xx, a timeout, a connection error.
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The call may have reached the participant, but no answer came that says what happened:
    /// a timeout, a dropped connection, 500, 502, 504. Retried like `Retryable`; for a confirm
    /// it means the participant may have confirmed.
    Unknown { message: String },
    /// The participant said no (4xx), or the answer was unusable.
    Refused { message: String },
    /// 404 or 410: the reservation is gone.
    Gone { message: String },
    /// A cancel answered 405: the participant does not implement cancel.
    NotImplemented { message: String },
    /// A cancel answered 409: the participant had already confirmed.
    AlreadyConfirmed { message: String },
}

fn due(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    at.is_none_or(|t| t <= now)
}

fn margin(settings: &PlannerSettings) -> chrono::Duration {
    chrono::Duration::from_std(settings.confirm_margin).unwrap_or(chrono::Duration::MAX)
}

/// The instant until which a task with its own URLs is confirmed or canceled from `now` on.
pub fn horizon(settings: &PlannerSettings, now: DateTime<Utc>) -> DateTime<Utc> {
    chrono::Duration::from_std(settings.callback_horizon)
        .ok()
        .and_then(|h| now.checked_add_signed(h))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Decide what happens next. Tasks in `in_flight` have a call outstanding and are left alone.
pub fn plan(
    job: &mut Job,
    in_flight: &HashSet<usize>,
    now: DateTime<Utc>,
    settings: &PlannerSettings,
) -> Result<Plan, IllegalTransition> {
    let start = job.status();
    let mut plan = Plan::default();
    // Tasks given a step in an earlier pass count as in flight in the later ones.
    let mut busy = in_flight.clone();
    // A pass may move the job several steps at once (reserved → confirming → confirms issued).
    for _ in 0..8 {
        let before = job.status();
        match job.status() {
            JobStatus::Pending | JobStatus::Trying | JobStatus::Reserved => {
                plan_undecided(job, &busy, now, settings, &mut plan)?
            }
            JobStatus::Confirming => plan_confirming(job, &busy, now, settings, &mut plan)?,
            JobStatus::Canceling => plan_canceling(job, &busy, now, settings, &mut plan)?,
            JobStatus::Completed
            | JobStatus::Failed
            | JobStatus::Canceled
            | JobStatus::Heuristic => {}
        }
        busy.extend(plan.steps.iter().map(|s| s.task));
        if job.status() == before {
            break;
        }
        plan.wake_at = None;
    }
    plan.durable = (job.status() != start && !job.status().is_undecided())
        || plan.steps.iter().any(|s| s.op != Op::Try);
    Ok(plan)
}

fn plan_undecided(
    job: &mut Job,
    in_flight: &HashSet<usize>,
    now: DateTime<Utc>,
    settings: &PlannerSettings,
    plan: &mut Plan,
) -> Result<(), IllegalTransition> {
    let margin = margin(settings);
    let cancel = if job.requested == Requested::Cancel {
        Some(FailureReason::Client)
    } else if now >= job.deadline {
        Some(FailureReason::Timeout)
    } else if job.tasks.iter().any(|t| t.status == TaskStatus::Failed) {
        Some(FailureReason::TryFailed)
    } else if job.tasks.iter().any(|t| {
        t.status == TaskStatus::Reserved
            && t.link.as_ref().is_some_and(|l| l.expires <= now + margin)
    }) {
        Some(FailureReason::Expiring)
    } else {
        None
    };
    if let Some(reason) = cancel {
        return job.job_on(JobEvent::DecideCancel(reason));
    }

    if !job.tasks.is_empty() && job.tasks.iter().all(|t| t.status == TaskStatus::Reserved) {
        if job.status() != JobStatus::Reserved {
            job.job_on(JobEvent::AllReserved)?;
        }
        if job.auto_confirm || job.requested == Requested::Confirm {
            job.job_on(JobEvent::DecideConfirm)?;
            let until = horizon(settings, now);
            for i in 0..job.tasks.len() {
                job.task_on(i, TaskEvent::ConfirmStarted, now)?;
                let task = &mut job.tasks[i];
                task.attempts = 0;
                task.next_attempt_at = None;
                if task.callbacks.is_some() {
                    task.callbacks_until = Some(until);
                }
            }
            return Ok(());
        }
        // Waiting for the client: look again when the deadline or an expiry comes near.
        plan.wake(job.deadline);
        for t in &job.tasks {
            if let Some(l) = &t.link {
                plan.wake(l.expires - margin);
            }
        }
        return Ok(());
    }

    let mut issued = false;
    for i in 0..job.tasks.len() {
        if in_flight.contains(&i) {
            continue;
        }
        let task = &job.tasks[i];
        match task.status {
            TaskStatus::Pending | TaskStatus::Trying if task.try_spec.is_some() => {
                if due(task.next_attempt_at, now) {
                    job.task_on(i, TaskEvent::TrySent, now)?;
                    let task = &mut job.tasks[i];
                    task.attempts += 1;
                    task.next_attempt_at = None;
                    task.start_time.get_or_insert(now);
                    plan.steps.push(Step {
                        task: i,
                        op: Op::Try,
                        attempt: task.attempts,
                    });
                    issued = true;
                } else if let Some(at) = task.next_attempt_at {
                    plan.wake(at);
                }
            }
            TaskStatus::Reserved => {
                if let Some(l) = &task.link {
                    plan.wake(l.expires - margin);
                }
            }
            _ => {}
        }
    }
    if issued && job.status() == JobStatus::Pending {
        job.job_on(JobEvent::TryStarted)?;
    }
    plan.wake(job.deadline);
    Ok(())
}

fn plan_confirming(
    job: &mut Job,
    in_flight: &HashSet<usize>,
    now: DateTime<Utc>,
    settings: &PlannerSettings,
    plan: &mut Plan,
) -> Result<(), IllegalTransition> {
    for (i, task) in job.tasks.iter_mut().enumerate() {
        if in_flight.contains(&i) || task.status != TaskStatus::Confirming {
            continue;
        }
        // A confirm retried on an operator's request starts a new horizon.
        if task.callbacks.is_some() && task.callbacks_until.is_none() {
            task.callbacks_until = Some(horizon(settings, now));
        }
        // A confirm was sent and nobody folded its answer in: this driver crashed or handed
        // the job back. It may have been applied.
        task.confirm = task.confirm.lost();
        if task.confirm.is_refused() {
            continue;
        }
        if task.settle_until().is_some_and(|u| u <= now) {
            task.confirm = task.confirm.refuse();
            let why = if task.callbacks.is_some() {
                "the confirm did not succeed within the callback horizon"
            } else {
                "the link expired before the confirm succeeded"
            };
            task.last_message = Some(match task.last_message.take() {
                Some(last) if task.attempts > 0 => format!("{why} (last answer: {last})"),
                _ => why.to_string(),
            });
        }
    }

    // A task already settled heuristic (a job continued by an operator) is as good as a
    // confirmed one here: the outcome is already mixed, and going back to cancel would be a guess.
    let any_confirmed = job
        .tasks
        .iter()
        .any(|t| matches!(t.status, TaskStatus::Confirmed | TaskStatus::Heuristic));
    let refused: Vec<usize> = (0..job.tasks.len())
        .filter(|i| {
            let t = &job.tasks[*i];
            t.status == TaskStatus::Confirming && t.confirm.is_refused() && !in_flight.contains(i)
        })
        .collect();
    let maybe_confirmed = job
        .tasks
        .iter()
        .any(|t| t.status == TaskStatus::Confirming && t.confirm.maybe_applied());
    let still_confirmable = job
        .tasks
        .iter()
        .any(|t| t.status == TaskStatus::Confirming && !t.confirm.is_refused());
    if !refused.is_empty() {
        if any_confirmed {
            for i in refused {
                job.task_on(i, TaskEvent::ConfirmHeuristic, now)?;
            }
        } else if !in_flight.is_empty() {
            // Wait for the confirms in flight before deciding; send no further confirm.
            return Ok(());
        } else if !maybe_confirmed {
            // Nobody confirmed and nobody can any more: cancel the rest (rule 4).
            return job.job_on(JobEvent::ConfirmRefused);
        } else if !still_confirmable {
            // Every confirm is refused or expired, and some may have been applied: the
            // outcome is unknown, and the coordinator does not guess.
            for i in refused {
                job.task_on(i, TaskEvent::ConfirmHeuristic, now)?;
            }
        }
        // Otherwise some confirm may already have been applied: going back to cancel would be
        // a guess (rule 6), so the confirms go on; the refused tasks wait for the outcome.
    }

    let one_at_a_time = one_at_a_time(job);
    let mut turn_taken = one_at_a_time && !in_flight.is_empty();
    for i in order(job.tasks.len(), one_at_a_time) {
        if in_flight.contains(&i) {
            continue;
        }
        let task = &mut job.tasks[i];
        if task.status != TaskStatus::Confirming || task.confirm.is_refused() {
            continue;
        }
        if std::mem::replace(&mut turn_taken, one_at_a_time) {
            continue;
        }
        if due(task.next_attempt_at, now) {
            task.attempts += 1;
            task.next_attempt_at = None;
            task.confirm = task.confirm.send();
            plan.steps.push(Step {
                task: i,
                op: Op::Confirm,
                attempt: task.attempts,
            });
        } else if let Some(at) = task.next_attempt_at {
            plan.wake(at);
        }
        if let Some(until) = task.settle_until() {
            plan.wake(until);
        }
    }

    if in_flight.is_empty()
        && plan.steps.is_empty()
        && job
            .tasks
            .iter()
            .all(|t| matches!(t.status, TaskStatus::Confirmed | TaskStatus::Heuristic))
    {
        if job.tasks.iter().all(|t| t.status == TaskStatus::Confirmed) {
            job.job_on(JobEvent::AllConfirmed)?;
        } else {
            job.job_on(JobEvent::ConfirmSettledHeuristic)?;
        }
    }
    Ok(())
}

fn plan_canceling(
    job: &mut Job,
    in_flight: &HashSet<usize>,
    now: DateTime<Utc>,
    settings: &PlannerSettings,
    plan: &mut Plan,
) -> Result<(), IllegalTransition> {
    let one_at_a_time = one_at_a_time(job);
    let mut turn_taken = one_at_a_time && !in_flight.is_empty();
    for i in order(job.tasks.len(), one_at_a_time) {
        if in_flight.contains(&i) {
            continue;
        }
        let own_urls = job.tasks[i].callbacks.is_some();
        match job.tasks[i].status {
            // A task with its own cancel URL gets a cancel once its Try was sent, answered or not:
            // nothing there lapses by itself, and a participant that never saw the Try answers
            // the cancel with an empty compensation.
            TaskStatus::Trying | TaskStatus::Failed
                if own_urls && job.tasks[i].try_spec.is_some() && job.tasks[i].attempts > 0 =>
            {
                job.task_on(i, TaskEvent::CancelStarted, now)?;
                let task = &mut job.tasks[i];
                task.attempts = 0;
                task.next_attempt_at = None;
                task.end_time = None;
                task.callbacks_until = Some(horizon(settings, now));
            }
            TaskStatus::Pending => {
                job.task_on(i, TaskEvent::Abandoned, now)?;
                job.tasks[i].last_message = Some("not tried: the job was canceled".into());
                continue;
            }
            TaskStatus::Trying => {
                job.task_on(i, TaskEvent::Lapsed, now)?;
                let task = &mut job.tasks[i];
                task.last_message = Some(match task.last_message.take() {
                    Some(last) => format!(
                        "no reservation known (last answer: {last}); anything a Try reserved lapses at the participant"
                    ),
                    None => {
                        "no reservation known; anything a Try reserved lapses at the participant"
                            .to_string()
                    }
                });
                continue;
            }
            TaskStatus::Reserved | TaskStatus::Confirming => {
                job.task_on(i, TaskEvent::CancelStarted, now)?;
                let task = &mut job.tasks[i];
                task.attempts = 0;
                task.next_attempt_at = None;
                task.confirm = task.confirm.reset();
                if own_urls {
                    task.callbacks_until = Some(horizon(settings, now));
                }
            }
            _ => {}
        }
        let task = &mut job.tasks[i];
        if task.status != TaskStatus::Canceling {
            continue;
        }
        let expires = task.settle_until();
        if own_urls && expires.is_none_or(|e| e <= now) {
            job.task_on(i, TaskEvent::CancelHeuristic, now)?;
            let task = &mut job.tasks[i];
            let why = "the cancel did not succeed within the callback horizon";
            task.last_message = Some(match task.last_message.take() {
                Some(last) if task.attempts > 0 => format!("{why} (last answer: {last})"),
                _ => why.to_string(),
            });
            continue;
        }
        if expires.is_none_or(|e| e <= now) {
            job.task_on(i, TaskEvent::Lapsed, now)?;
            let task = &mut job.tasks[i];
            task.last_message = Some(match task.last_message.take() {
                Some(last) if task.attempts > 0 => format!(
                    "the reservation lapsed before a cancel succeeded (last answer: {last})"
                ),
                _ => "the reservation lapsed before it could be canceled".to_string(),
            });
            continue;
        }
        if std::mem::replace(&mut turn_taken, one_at_a_time) {
            continue;
        }
        if due(task.next_attempt_at, now) {
            task.attempts += 1;
            task.next_attempt_at = None;
            plan.steps.push(Step {
                task: i,
                op: Op::Cancel,
                attempt: task.attempts,
            });
        } else if let Some(at) = task.next_attempt_at {
            plan.wake(at);
        }
        if let Some(e) = expires {
            plan.wake(e);
        }
    }

    if in_flight.is_empty()
        && plan.steps.is_empty()
        && job.tasks.iter().all(|t| t.status.is_terminal())
    {
        if job
            .tasks
            .iter()
            .any(|t| matches!(t.status, TaskStatus::Confirmed | TaskStatus::Heuristic))
        {
            job.job_on(JobEvent::ReleasedButConfirmed)?;
        } else {
            job.job_on(JobEvent::AllReleased)?;
        }
    }
    Ok(())
}

/// A DTM global transaction's branches are confirmed, and canceled, one at a time in the reverse
/// order of their registration, as DTM does: the next waits until the one before has settled.
fn one_at_a_time(job: &Job) -> bool {
    job.tasks
        .iter()
        .any(|t| t.callbacks.as_ref().is_some_and(|c| c.dtm.is_some()))
}

/// The tasks in the order their confirms and cancels go out.
fn order(n: usize, reverse: bool) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| if reverse { n - 1 - i } else { i })
}

/// Fold one participant answer into the job. `jitter` in [0, 1] draws the retry delay.
pub fn apply(
    job: &mut Job,
    idx: usize,
    op: Op,
    answer: Answer,
    now: DateTime<Utc>,
    jitter: f64,
) -> Result<(), IllegalTransition> {
    let policy = job.tasks[idx].try_policy(job.retry_policy.as_ref());
    match op {
        Op::Try => apply_try(job, idx, answer, now, jitter, policy),
        Op::Confirm => {
            let task = &mut job.tasks[idx];
            if task.status != TaskStatus::Confirming {
                return Err(out_of_turn(task.status, op));
            }
            task.confirm = task.confirm.answered(false);
            match answer {
                Answer::Done => {
                    job.task_on(idx, TaskEvent::Confirmed, now)?;
                    job.tasks[idx].last_message = Some("confirmed".into());
                }
                Answer::Retryable {
                    message,
                    retry_after,
                } => retry_later(task, message, retry_after, policy, now, jitter),
                Answer::Unknown { message } => {
                    task.confirm = task.confirm.answered(true);
                    retry_later(
                        task,
                        format!("{message} (the confirm may have been applied)"),
                        None,
                        policy,
                        now,
                        jitter,
                    );
                }
                Answer::Refused { message }
                | Answer::Gone { message }
                | Answer::NotImplemented { message }
                | Answer::AlreadyConfirmed { message }
                | Answer::Reserved {
                    note: Some(message),
                    ..
                } => {
                    task.confirm = task.confirm.refuse();
                    task.last_message = Some(message);
                }
                Answer::Reserved { note: None, .. } => {
                    task.confirm = task.confirm.refuse();
                    task.last_message = Some("unexpected answer to a confirm".into());
                }
            }
            Ok(())
        }
        Op::Cancel => {
            let task = &mut job.tasks[idx];
            if task.status != TaskStatus::Canceling {
                return Err(out_of_turn(task.status, op));
            }
            if task.callbacks.is_some() {
                return apply_own_cancel(job, idx, answer, now, jitter, policy);
            }
            match answer {
                Answer::Done => {
                    job.task_on(idx, TaskEvent::Canceled, now)?;
                    job.tasks[idx].last_message = Some("canceled".into());
                }
                Answer::Gone { message } => {
                    job.task_on(idx, TaskEvent::Canceled, now)?;
                    job.tasks[idx].last_message = Some(format!("already gone: {message}"));
                }
                Answer::NotImplemented { message } => {
                    job.task_on(idx, TaskEvent::Lapsed, now)?;
                    let task = &mut job.tasks[idx];
                    let expires = task
                        .link
                        .as_ref()
                        .map(|l| crate::domain::rfc3339(l.expires))
                        .unwrap_or_default();
                    task.last_message = Some(format!(
                        "{message}; the participant does not implement cancel, the reservation lapses at {expires}"
                    ));
                }
                Answer::AlreadyConfirmed { message } => {
                    job.task_on(idx, TaskEvent::FoundConfirmed, now)?;
                    job.tasks[idx].last_message = Some(format!(
                        "{message}; the participant says the reservation is already confirmed"
                    ));
                }
                Answer::Retryable {
                    message,
                    retry_after,
                } => retry_later(task, message, retry_after, policy, now, jitter),
                Answer::Refused { message } | Answer::Unknown { message } => {
                    retry_later(task, message, None, policy, now, jitter)
                }
                Answer::Reserved { .. } => retry_later(
                    task,
                    "unexpected answer to a cancel".into(),
                    None,
                    policy,
                    now,
                    jitter,
                ),
            }
            Ok(())
        }
    }
}

/// A cancel's answer for a task with its own cancel URL: success, a retry, or, refused, a
/// heuristic task (nothing there lapses by itself).
fn apply_own_cancel(
    job: &mut Job,
    idx: usize,
    answer: Answer,
    now: DateTime<Utc>,
    jitter: f64,
    policy: RetryPolicy,
) -> Result<(), IllegalTransition> {
    match answer {
        Answer::Done => {
            job.task_on(idx, TaskEvent::Canceled, now)?;
            job.tasks[idx].last_message = Some("canceled".into());
        }
        Answer::Retryable {
            message,
            retry_after,
        } => retry_later(
            &mut job.tasks[idx],
            message,
            retry_after,
            policy,
            now,
            jitter,
        ),
        Answer::Unknown { message } => {
            retry_later(&mut job.tasks[idx], message, None, policy, now, jitter)
        }
        Answer::Refused { message }
        | Answer::Gone { message }
        | Answer::NotImplemented { message }
        | Answer::AlreadyConfirmed { message } => {
            job.task_on(idx, TaskEvent::CancelHeuristic, now)?;
            job.tasks[idx].last_message = Some(format!("the cancel was refused: {message}"));
        }
        Answer::Reserved { .. } => retry_later(
            &mut job.tasks[idx],
            "unexpected answer to a cancel".into(),
            None,
            policy,
            now,
            jitter,
        ),
    }
    Ok(())
}

fn apply_try(
    job: &mut Job,
    idx: usize,
    answer: Answer,
    now: DateTime<Utc>,
    jitter: f64,
    policy: RetryPolicy,
) -> Result<(), IllegalTransition> {
    let status = job.tasks[idx].status;
    if status != TaskStatus::Trying {
        return Err(out_of_turn(status, Op::Try));
    }
    match answer {
        Answer::Reserved { link: None, .. } if job.tasks[idx].callbacks.is_none() => {
            job.task_on(idx, TaskEvent::TryFailed, now)?;
            job.tasks[idx].last_message = Some("the Try answer held no participant link".into());
        }
        Answer::Reserved {
            link,
            note,
            response,
            keep,
        } => {
            job.task_on(idx, TaskEvent::Reserved, now)?;
            let mut notes: Vec<String> = note.into_iter().collect();
            if let (Some(spec), Some(resp)) = (job.tasks[idx].try_spec.clone(), response.as_ref()) {
                notes.extend(mapping::apply_output(&spec, resp, &mut job.shared_state));
            }
            let task = &mut job.tasks[idx];
            task.link = link;
            task.try_response = response.filter(|_| keep).map(std::sync::Arc::new);
            task.next_attempt_at = None;
            task.last_message = Some(if notes.is_empty() {
                "reserved".to_string()
            } else {
                notes.join("; ")
            });
        }
        Answer::Unknown { message } => apply_try(
            job,
            idx,
            Answer::Retryable {
                message,
                retry_after: None,
            },
            now,
            jitter,
            policy,
        )?,
        Answer::Retryable {
            message,
            retry_after,
        } => {
            let attempts = job.tasks[idx].attempts.max(0) as u32;
            if attempts >= policy.max_attempts {
                job.task_on(idx, TaskEvent::TryFailed, now)?;
                job.tasks[idx].last_message =
                    Some(format!("gave up after {attempts} attempts: {message}"));
            } else {
                retry_later(
                    &mut job.tasks[idx],
                    message,
                    retry_after,
                    policy,
                    now,
                    jitter,
                );
            }
        }
        Answer::Refused { message }
        | Answer::Gone { message }
        | Answer::NotImplemented { message }
        | Answer::AlreadyConfirmed { message } => {
            job.task_on(idx, TaskEvent::TryFailed, now)?;
            job.tasks[idx].last_message = Some(message);
        }
        Answer::Done => {
            job.task_on(idx, TaskEvent::TryFailed, now)?;
            job.tasks[idx].last_message = Some("the Try answer held no participant link".into());
        }
    }
    Ok(())
}

fn retry_later(
    task: &mut super::job::Task,
    message: String,
    retry_after: Option<Duration>,
    policy: RetryPolicy,
    now: DateTime<Utc>,
    jitter: f64,
) {
    let delay = policy.delay(task.attempts.max(1) as u32, retry_after, jitter);
    let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    task.next_attempt_at = Some(now.checked_add_signed(delay).unwrap_or(now));
    task.last_message = Some(message);
}

fn out_of_turn(status: TaskStatus, op: Op) -> IllegalTransition {
    IllegalTransition {
        what: "task",
        from: status.as_str().to_string(),
        event: format!("{} answer", op.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobState;
    use crate::domain::job::{Task, TrySpec};
    use chrono::TimeZone;
    use serde_json::json;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    fn settings() -> PlannerSettings {
        PlannerSettings {
            confirm_margin: Duration::from_secs(1),
            callback_horizon: Duration::from_secs(3600),
        }
    }

    fn try_task(idx: i32) -> Task {
        Task {
            idx,
            task_id: crate::domain::TaskId::parse(&format!("t{idx}")).expect("an id"),
            description: None,
            try_spec: Some(std::sync::Arc::new(TrySpec {
                task_url: crate::domain::TargetUrl::parse(&format!("http://p/{idx}"))
                    .expect("a URL"),
                body: None,
                input_mapping: vec![],
                output_mapping: vec![],
                task_max_ttl: 10.0,
                retry_policy: None,
            })),
            callbacks: None,
            callbacks_until: None,
            status: TaskStatus::Pending,
            link: None,
            attempts: 0,
            next_attempt_at: None,
            confirm: Default::default(),
            start_time: None,
            end_time: None,
            last_message: None,
            try_response: None,
        }
    }

    fn job(tasks: usize) -> Job {
        Job {
            id: crate::domain::JobId::parse("j").expect("an id"),
            state: JobState::Pending,
            correlation_id: "c".into(),
            traceparent: None,
            auto_confirm: true,
            requested: Requested::Nothing,
            created_at: t0(),
            deadline: t0() + secs(60),
            attempt: 1,
            shared_state: json!({}),
            retry_policy: None,
            tasks: (0..tasks as i32).map(try_task).collect(),
        }
    }

    fn link(expires: DateTime<Utc>) -> Link {
        Link {
            uri: crate::domain::TargetUrl::parse("http://p/r").expect("a URL"),
            expires,
        }
    }

    fn reserved(expires: DateTime<Utc>) -> Answer {
        Answer::Reserved {
            link: Some(link(expires)),
            note: None,
            response: None,
            keep: true,
        }
    }

    fn retry503() -> Answer {
        Answer::Retryable {
            message: "503".into(),
            retry_after: None,
        }
    }

    fn none() -> HashSet<usize> {
        HashSet::new()
    }

    fn ops(plan: &Plan) -> Vec<(usize, Op)> {
        plan.steps.iter().map(|s| (s.task, s.op)).collect()
    }

    fn statuses(job: &Job) -> Vec<TaskStatus> {
        job.tasks.iter().map(|t| t.status).collect()
    }

    /// Drive every step to the answer `answer_for` gives, until nothing is left to do.
    fn settle(job: &mut Job, now: DateTime<Utc>, answer_for: impl Fn(&Step) -> Answer) {
        for _ in 0..20 {
            let plan = plan(job, &none(), now, &settings()).expect("plan");
            if plan.steps.is_empty() {
                return;
            }
            for step in &plan.steps {
                apply(job, step.task, step.op, answer_for(step), now, 0.5).expect("apply");
            }
        }
        panic!("did not settle");
    }

    #[test]
    fn happy_path_tries_then_confirms_then_completes() {
        let mut j = job(2);
        let now = t0();
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(0, Op::Try), (1, Op::Try)]);
        assert_eq!(j.status(), JobStatus::Trying);
        assert!(!p.durable, "sending tries needs no synchronous commit");
        assert_eq!(p.wake_at, Some(j.deadline));

        apply(&mut j, 0, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        let in_flight: HashSet<usize> = [1].into();
        let p = plan(&mut j, &in_flight, now, &settings()).expect("plan");
        assert!(p.steps.is_empty());
        assert_eq!(j.status(), JobStatus::Trying);

        apply(&mut j, 1, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Confirming);
        assert_eq!(ops(&p), vec![(0, Op::Confirm), (1, Op::Confirm)]);
        assert!(
            p.durable,
            "the decision is durable before the first confirm"
        );

        apply(&mut j, 0, Op::Confirm, Answer::Done, now, 0.5).expect("apply");
        apply(&mut j, 1, Op::Confirm, Answer::Done, now, 0.5).expect("apply");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Completed);
        assert!(p.steps.is_empty() && p.durable && p.wake_at.is_none());
        assert!(j.tasks.iter().all(|t| t.end_time == Some(now)));
    }

    #[test]
    fn a_failed_try_cancels_the_reserved_ones() {
        let mut j = job(3);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        apply(
            &mut j,
            1,
            Op::Try,
            Answer::Refused {
                message: "400".into(),
            },
            now,
            0.5,
        )
        .expect("apply");
        // Task 2's Try is still in flight: task 0 is canceled now, task 2 waits for its answer.
        let in_flight: HashSet<usize> = [2].into();
        let p = plan(&mut j, &in_flight, now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Canceling);
        assert_eq!(j.failure_reason(), Some(FailureReason::TryFailed));
        assert_eq!(ops(&p), vec![(0, Op::Cancel)]);
        assert!(p.durable);
        apply(&mut j, 0, Op::Cancel, Answer::Done, now, 0.5).expect("apply");
        // The late Try answer brings a link: it is canceled too (rule 3).
        apply(&mut j, 2, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(2, Op::Cancel)]);
        apply(&mut j, 2, Op::Cancel, Answer::Done, now, 0.5).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Failed);
        assert_eq!(
            statuses(&j),
            vec![
                TaskStatus::Canceled,
                TaskStatus::Failed,
                TaskStatus::Canceled
            ]
        );
    }

    #[test]
    fn try_retries_up_to_max_attempts_then_fails() {
        let mut j = job(1);
        let mut now = t0();
        for attempt in 1..=3 {
            let p = plan(&mut j, &none(), now, &settings()).expect("plan");
            assert_eq!(p.steps.len(), 1, "attempt {attempt}");
            assert_eq!(p.steps[0].attempt, attempt);
            apply(&mut j, 0, Op::Try, retry503(), now, 1.0).expect("apply");
            if attempt < 3 {
                let at = j.tasks[0].next_attempt_at.expect("retry scheduled");
                let p = plan(&mut j, &none(), now, &settings()).expect("plan");
                assert!(p.steps.is_empty());
                assert_eq!(p.wake_at, Some(at));
                now = at;
            }
        }
        assert_eq!(j.tasks[0].status, TaskStatus::Failed);
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Failed);
        assert_eq!(j.failure_reason(), Some(FailureReason::TryFailed));
    }

    #[test]
    fn confirm_is_retried_and_attempts_counted() {
        let mut j = job(1);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        let mut now = now;
        for _ in 0..2 {
            let p = plan(&mut j, &none(), now, &settings()).expect("plan");
            assert_eq!(ops(&p), vec![(0, Op::Confirm)]);
            apply(&mut j, 0, Op::Confirm, retry503(), now, 1.0).expect("apply");
            now = j.tasks[0].next_attempt_at.expect("scheduled");
        }
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(0, Op::Confirm)]);
        apply(&mut j, 0, Op::Confirm, Answer::Done, now, 0.5).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Completed);
        assert_eq!(j.tasks[0].attempts, 3);
    }

    #[test]
    fn expiry_while_retrying_after_another_confirmed_is_heuristic() {
        let mut j = job(2);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        apply(&mut j, 1, Op::Try, reserved(now + secs(3)), now, 0.5).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Confirm, Answer::Done, now, 0.5).expect("apply");
        apply(
            &mut j,
            1,
            Op::Confirm,
            Answer::Retryable {
                message: "503".into(),
                retry_after: Some(Duration::from_secs(10)),
            },
            now,
            0.0,
        )
        .expect("apply");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert!(p.steps.is_empty());
        assert_eq!(p.wake_at, Some(now + secs(3)), "wakes at the expiry");
        plan(&mut j, &none(), now + secs(3), &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Heuristic);
        assert_eq!(
            statuses(&j),
            vec![TaskStatus::Confirmed, TaskStatus::Heuristic]
        );
    }

    #[test]
    fn first_confirm_refused_before_any_confirmed_cancels_the_rest() {
        let mut j = job(3);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        for i in 0..3 {
            apply(&mut j, i, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        }
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(
            &mut j,
            0,
            Op::Confirm,
            Answer::Gone {
                message: "404".into(),
            },
            now,
            0.5,
        )
        .expect("apply");
        // Confirms 1 and 2 are still in flight: wait for them, send nothing.
        let p = plan(&mut j, &[1, 2].into(), now, &settings()).expect("plan");
        assert!(p.steps.is_empty());
        assert_eq!(j.status(), JobStatus::Confirming);
        apply(&mut j, 1, Op::Confirm, retry503(), now, 0.5).expect("apply");
        apply(&mut j, 2, Op::Confirm, retry503(), now, 0.5).expect("apply");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Canceling);
        assert_eq!(j.failure_reason(), Some(FailureReason::ConfirmRefused));
        assert_eq!(
            ops(&p),
            vec![(0, Op::Cancel), (1, Op::Cancel), (2, Op::Cancel)]
        );
        settle(&mut j, now, |_| Answer::Done);
        assert_eq!(j.status(), JobStatus::Failed);
    }

    #[test]
    fn refusal_after_a_confirm_is_heuristic_not_cancel() {
        let mut j = job(2);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        for i in 0..2 {
            apply(&mut j, i, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        }
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(
            &mut j,
            0,
            Op::Confirm,
            Answer::Refused {
                message: "403".into(),
            },
            now,
            0.5,
        )
        .expect("apply");
        plan(&mut j, &[1].into(), now, &settings()).expect("plan");
        apply(&mut j, 1, Op::Confirm, Answer::Done, now, 0.5).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Heuristic);
        assert_eq!(
            statuses(&j),
            vec![TaskStatus::Heuristic, TaskStatus::Confirmed]
        );
    }

    #[test]
    fn a_link_inside_the_margin_fails_the_job_expiring() {
        let mut j = job(2);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        apply(
            &mut j,
            1,
            Op::Try,
            reserved(now + chrono::Duration::milliseconds(500)),
            now,
            0.5,
        )
        .expect("apply");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Canceling);
        assert_eq!(j.failure_reason(), Some(FailureReason::Expiring));
        assert!(p.steps.iter().all(|s| s.op == Op::Cancel));
        settle(&mut j, now, |_| Answer::Done);
        assert_eq!(j.status(), JobStatus::Failed);
        assert!(!j.tasks.iter().any(|t| t.status == TaskStatus::Confirmed));
    }

    #[test]
    fn deadline_cancels_while_a_try_is_in_flight() {
        let mut j = job(2);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Try, reserved(now + secs(300)), now, 0.5).expect("apply");
        let later = j.deadline;
        let p = plan(&mut j, &[1].into(), later, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Canceling);
        assert_eq!(j.failure_reason(), Some(FailureReason::Timeout));
        assert_eq!(ops(&p), vec![(0, Op::Cancel)]);
        apply(&mut j, 0, Op::Cancel, Answer::Done, later, 0.5).expect("apply");
        // The stalled Try times out: nothing known was reserved.
        apply(
            &mut j,
            1,
            Op::Try,
            Answer::Retryable {
                message: "timeout".into(),
                retry_after: None,
            },
            later,
            0.5,
        )
        .expect("apply");
        plan(&mut j, &none(), later, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Failed);
        assert_eq!(
            statuses(&j),
            vec![TaskStatus::Canceled, TaskStatus::Expired]
        );
    }

    #[test]
    fn client_decisions() {
        // autoConfirm false waits in reserved until the client asks.
        let mut j = job(1);
        j.auto_confirm = false;
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Reserved);
        assert!(p.steps.is_empty());
        assert_eq!(p.wake_at, Some(now + secs(29)), "expiry minus the margin");
        j.requested = Requested::Confirm;
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Confirming);
        assert_eq!(ops(&p), vec![(0, Op::Confirm)]);

        // A cancel request wins before the decision.
        let mut j = job(1);
        j.auto_confirm = false;
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        j.requested = Requested::Cancel;
        settle(&mut j, now, |_| Answer::Done);
        assert_eq!(j.status(), JobStatus::Canceled);
        assert_eq!(j.failure_reason(), Some(FailureReason::Client));
    }

    #[test]
    fn open_job_waits_then_times_out_with_nothing_to_cancel() {
        let mut j = job(0);
        j.auto_confirm = false;
        let now = t0();
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Pending);
        assert_eq!(p.wake_at, Some(j.deadline));
        let deadline = j.deadline;
        plan(&mut j, &none(), deadline, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Failed);
        assert_eq!(j.failure_reason(), Some(FailureReason::Timeout));
    }

    #[test]
    fn cancel_answers() {
        let mut j = job(4);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        for i in 0..4 {
            apply(&mut j, i, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        }
        j.auto_confirm = false;
        j.requested = Requested::Cancel;
        plan(&mut j, &none(), now, &settings()).expect("plan");
        let answers = [
            Answer::Gone {
                message: "404".into(),
            },
            Answer::NotImplemented {
                message: "405".into(),
            },
            Answer::AlreadyConfirmed {
                message: "409".into(),
            },
            Answer::Done,
        ];
        for (i, a) in answers.into_iter().enumerate() {
            apply(&mut j, i, Op::Cancel, a, now, 0.5).expect("apply");
        }
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(
            statuses(&j),
            vec![
                TaskStatus::Canceled,
                TaskStatus::Expired,
                TaskStatus::Confirmed,
                TaskStatus::Canceled
            ]
        );
        assert_eq!(
            j.status(),
            JobStatus::Heuristic,
            "a participant that confirmed makes it heuristic"
        );
    }

    #[test]
    fn cancel_retries_until_the_link_lapses() {
        let mut j = job(1);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Try, reserved(now + secs(5)), now, 0.5).expect("apply");
        j.requested = Requested::Cancel;
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Cancel, retry503(), now, 0.5).expect("apply");
        plan(&mut j, &none(), now + secs(5), &settings()).expect("plan");
        assert_eq!(j.tasks[0].status, TaskStatus::Expired);
        assert_eq!(j.status(), JobStatus::Canceled);
    }

    fn unknown() -> Answer {
        Answer::Unknown {
            message: "timed out".into(),
        }
    }

    fn refused(code: &str) -> Answer {
        Answer::Refused {
            message: code.into(),
        }
    }

    /// Two tasks reserved, the decision taken, both confirms sent.
    fn confirming_pair(now: DateTime<Utc>) -> Job {
        let mut j = job(2);
        plan(&mut j, &none(), now, &settings()).expect("plan");
        for i in 0..2 {
            apply(&mut j, i, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        }
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(0, Op::Confirm), (1, Op::Confirm)]);
        assert!(j.tasks.iter().all(|t| t.confirm.is_sent()));
        j
    }

    /// Regression (found by the chaos soak): a confirm whose answer was lost may have been
    /// applied, so a refusal elsewhere must not turn the job back to cancel.
    #[test]
    fn a_refusal_never_cancels_when_a_confirm_may_have_been_applied() {
        let now = t0();
        let mut j = confirming_pair(now);
        apply(&mut j, 0, Op::Confirm, unknown(), now, 0.0).expect("apply");
        apply(&mut j, 1, Op::Confirm, refused("403"), now, 0.0).expect("apply");
        assert!(j.tasks[0].confirm.maybe_applied() && !j.tasks[0].confirm.is_sent());
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(
            j.status(),
            JobStatus::Confirming,
            "no cancel: t0 may be confirmed"
        );
        assert_eq!(ops(&p), vec![(0, Op::Confirm)], "t0's confirm goes on");
        // t0 turns out confirmed: the refusal is a real disagreement.
        apply(&mut j, 0, Op::Confirm, Answer::Done, now, 0.0).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Heuristic);
        assert_eq!(
            statuses(&j),
            vec![TaskStatus::Confirmed, TaskStatus::Heuristic]
        );
    }

    #[test]
    fn an_unknown_confirm_that_can_never_be_settled_is_heuristic() {
        let now = t0();
        let mut j = confirming_pair(now);
        apply(&mut j, 0, Op::Confirm, unknown(), now, 0.0).expect("apply");
        apply(&mut j, 1, Op::Confirm, refused("403"), now, 0.0).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        // t0's link lapses before any confirm is answered.
        let later = now + secs(30);
        let p = plan(&mut j, &none(), later, &settings()).expect("plan");
        assert!(p.steps.is_empty());
        assert_eq!(
            j.status(),
            JobStatus::Heuristic,
            "the coordinator does not guess"
        );
        assert_eq!(
            statuses(&j),
            vec![TaskStatus::Heuristic, TaskStatus::Heuristic]
        );
    }

    /// A heuristic job continued by an operator: t0 stays heuristic (its link lapsed, its confirm
    /// may have been applied), t1 is retried and refused again. Nothing was seen confirmed, yet
    /// the job must not turn to cancel: it is heuristic again.
    #[test]
    fn a_continued_job_refused_again_is_heuristic_again_never_canceled() {
        let now = t0();
        let mut j = confirming_pair(now);
        apply(&mut j, 0, Op::Confirm, unknown(), now, 0.0).expect("apply");
        apply(&mut j, 1, Op::Confirm, refused("403"), now, 0.0).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        // t0's link lapses: heuristic, both of them.
        let later = now + secs(30);
        plan(&mut j, &none(), later, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Heuristic);
        // t1's reservation is extended by hand, and an operator continues.
        j.tasks[1].link = Some(link(later + secs(60)));
        crate::domain::actions::continue_heuristic(&mut j, false, later).expect("continue");
        let p = plan(&mut j, &none(), later, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(1, Op::Confirm)]);
        apply(&mut j, 1, Op::Confirm, refused("403"), later, 0.0).expect("apply");
        let p = plan(&mut j, &none(), later, &settings()).expect("plan");
        assert!(p.steps.is_empty());
        assert_eq!(j.status(), JobStatus::Heuristic, "never back to cancel");
        assert_eq!(
            statuses(&j),
            vec![TaskStatus::Heuristic, TaskStatus::Heuristic]
        );
    }

    #[test]
    fn a_confirm_sent_before_a_crash_counts_as_maybe_applied() {
        let now = t0();
        let mut j = confirming_pair(now);
        // The driver died with both confirms in flight; the next owner plans with nothing in
        // flight. Then t1 is refused.
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert!(j.tasks.iter().all(|t| t.confirm.maybe_applied()));
        assert_eq!(ops(&p), vec![(0, Op::Confirm), (1, Op::Confirm)]);
        apply(&mut j, 1, Op::Confirm, refused("404"), now, 0.0).expect("apply");
        apply(&mut j, 0, Op::Confirm, retry503(), now, 0.0).expect("apply");
        plan(&mut j, &none(), now + secs(1), &settings()).expect("plan");
        assert_eq!(
            j.status(),
            JobStatus::Confirming,
            "no cancel after a lost answer"
        );
    }

    #[test]
    fn definite_refusals_still_cancel() {
        let now = t0();
        let mut j = confirming_pair(now);
        apply(&mut j, 0, Op::Confirm, retry503(), now, 0.0).expect("apply");
        apply(&mut j, 1, Op::Confirm, refused("403"), now, 0.0).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Canceling);
        assert_eq!(j.failure_reason(), Some(FailureReason::ConfirmRefused));
    }

    #[test]
    fn an_answer_out_of_turn_is_rejected() {
        let mut j = job(1);
        let now = t0();
        assert!(apply(&mut j, 0, Op::Confirm, Answer::Done, now, 0.5).is_err());
        assert!(apply(&mut j, 0, Op::Cancel, Answer::Done, now, 0.5).is_err());
        assert!(apply(&mut j, 0, Op::Try, reserved(now + secs(5)), now, 0.5).is_err());
    }

    #[test]
    fn orphaned_try_after_a_crash_is_sent_again() {
        let mut j = job(1);
        let now = t0();
        j.state = JobState::Trying;
        j.tasks[0].status = TaskStatus::Trying;
        j.tasks[0].attempts = 1;
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(
            p.steps,
            vec![Step {
                task: 0,
                op: Op::Try,
                attempt: 2
            }]
        );
    }

    // ---- Tasks with their own confirm and cancel URLs (docs/api.md) ----

    /// A task with its own URLs: with a Try the coordinator sends (`tried`), else registered
    /// (reserved); a DTM branch when `dtm`.
    fn own_task(idx: i32, tried: bool, dtm: bool) -> Task {
        let mut t = try_task(idx);
        if !tried {
            t.try_spec = None;
            t.status = TaskStatus::Reserved;
        }
        let url = |op: &str| {
            crate::domain::TargetUrl::parse(&format!("http://p/{idx}/{op}")).expect("a URL")
        };
        t.callbacks = Some(std::sync::Arc::new(crate::domain::job::Callbacks {
            confirm_url: url("confirm"),
            cancel_url: url("cancel"),
            body: None,
            dtm: dtm.then(|| crate::domain::job::DtmBranch {
                gid: "g".into(),
                branch_id: format!("0{idx}"),
                data: String::new(),
            }),
            retry_policy: None,
        }));
        t
    }

    fn own_job(tasks: Vec<Task>, auto_confirm: bool) -> Job {
        let mut j = job(0);
        j.tasks = tasks;
        j.auto_confirm = auto_confirm;
        j
    }

    fn own_reserved() -> Answer {
        Answer::Reserved {
            link: None,
            note: None,
            response: Some(json!({"ok": true})),
            keep: true,
        }
    }

    fn hour() -> chrono::Duration {
        chrono::Duration::from_std(settings().callback_horizon).expect("an hour")
    }

    #[test]
    fn a_tried_task_with_its_own_urls_is_reserved_without_a_link_and_confirmed_at_its_url() {
        let mut j = own_job(vec![own_task(0, true, false), try_task(1)], true);
        let now = t0();
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(0, Op::Try), (1, Op::Try)]);
        apply(&mut j, 0, Op::Try, own_reserved(), now, 0.5).expect("apply");
        apply(&mut j, 1, Op::Try, reserved(now + secs(30)), now, 0.5).expect("apply");
        assert_eq!(j.tasks[0].status, TaskStatus::Reserved);
        assert!(j.tasks[0].link.is_none(), "no link is needed");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(0, Op::Confirm), (1, Op::Confirm)]);
        assert_eq!(j.tasks[0].callbacks_until, Some(now + hour()));
        assert_eq!(j.tasks[1].callbacks_until, None, "a link has its expiry");
        settle(&mut j, now, |_| Answer::Done);
        assert_eq!(j.status(), JobStatus::Completed);
    }

    #[test]
    fn a_link_task_still_needs_its_link_from_the_try() {
        let mut j = job(1);
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Try, own_reserved(), now, 0.5).expect("apply");
        assert_eq!(j.tasks[0].status, TaskStatus::Failed);
    }

    #[test]
    fn registered_own_urls_have_no_expiry_and_wait_for_the_client() {
        let mut j = own_job(vec![own_task(0, false, false)], false);
        let now = t0();
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Reserved);
        assert_eq!(p.wake_at, Some(j.deadline), "only the deadline, no expiry");
        // Long after any margin would have mattered: still reserved, not `expiring`.
        let p = plan(&mut j, &none(), now + secs(59), &settings()).expect("plan");
        assert!(p.steps.is_empty());
        assert_eq!(j.status(), JobStatus::Reserved);
    }

    #[test]
    fn a_confirm_failing_until_the_horizon_makes_the_task_heuristic_when_another_confirmed() {
        let mut j = own_job(
            vec![own_task(0, false, false), own_task(1, false, false)],
            true,
        );
        let now = t0();
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(0, Op::Confirm), (1, Op::Confirm)]);
        apply(&mut j, 0, Op::Confirm, Answer::Done, now, 0.5).expect("apply");
        apply(&mut j, 1, Op::Confirm, retry503(), now, 0.5).expect("apply");
        // Retried before the horizon.
        let later = now + hour() - secs(1);
        let p = plan(&mut j, &none(), later, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(1, Op::Confirm)]);
        apply(&mut j, 1, Op::Confirm, retry503(), later, 0.5).expect("apply");
        // At the horizon: heuristic, and the job with it.
        let p = plan(&mut j, &none(), now + hour(), &settings()).expect("plan");
        assert!(p.steps.is_empty());
        assert_eq!(j.tasks[1].status, TaskStatus::Heuristic);
        assert!(
            j.tasks[1]
                .last_message
                .as_deref()
                .is_some_and(|m| m.contains("callback horizon") && m.contains("503")),
            "{:?}",
            j.tasks[1].last_message
        );
        assert_eq!(j.status(), JobStatus::Heuristic);
    }

    #[test]
    fn a_refused_first_confirm_cancels_the_rest_at_their_cancel_urls() {
        let mut j = own_job(
            vec![own_task(0, false, false), own_task(1, false, false)],
            true,
        );
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Confirm, refused("400"), now, 0.5).expect("apply");
        apply(&mut j, 1, Op::Confirm, retry503(), now, 0.5).expect("apply");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Canceling);
        assert_eq!(ops(&p), vec![(0, Op::Cancel), (1, Op::Cancel)]);
        settle(&mut j, now, |_| Answer::Done);
        assert_eq!(j.state, JobState::Failed(FailureReason::ConfirmRefused));
    }

    #[test]
    fn a_cancel_goes_to_every_own_url_task_whose_try_was_sent_answered_or_not() {
        // 0: Try in flight, unanswered; 1: Try refused (failed); 2: never tried.
        let mut j = own_job(
            vec![
                own_task(0, true, false),
                own_task(1, true, false),
                own_task(2, true, false),
            ],
            true,
        );
        let now = t0();
        j.tasks[2].try_spec = None; // a registered one, reserved
        j.tasks[2].status = TaskStatus::Pending;
        j.tasks[2].try_spec = try_task(2).try_spec;
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p).len(), 3);
        // Task 2's Try was never sent in this job: make it pending again.
        j.tasks[2].status = TaskStatus::Pending;
        j.tasks[2].attempts = 0;
        apply(&mut j, 1, Op::Try, refused("400"), now, 0.5).expect("apply");
        let in_flight: HashSet<usize> = [0].into();
        let p = plan(&mut j, &in_flight, now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Canceling);
        assert_eq!(
            ops(&p),
            vec![(1, Op::Cancel)],
            "the refused Try is canceled too"
        );
        assert_eq!(
            j.tasks[2].status,
            TaskStatus::Canceled,
            "never tried: abandoned"
        );
        // The Try in flight is answered (or its driver is gone): canceled, not lapsed.
        let busy: HashSet<usize> = [1].into();
        let p = plan(&mut j, &busy, now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(0, Op::Cancel)]);
        assert_eq!(j.tasks[0].status, TaskStatus::Canceling);
        apply(&mut j, 0, Op::Cancel, Answer::Done, now, 0.5).expect("apply");
        apply(&mut j, 1, Op::Cancel, Answer::Done, now, 0.5).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.state, JobState::Failed(FailureReason::TryFailed));
    }

    #[test]
    fn a_cancel_refused_or_failing_until_the_horizon_is_heuristic() {
        let mut j = own_job(
            vec![own_task(0, false, false), own_task(1, false, false)],
            false,
        );
        j.requested = Requested::Cancel;
        let now = t0();
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(0, Op::Cancel), (1, Op::Cancel)]);
        apply(&mut j, 0, Op::Cancel, refused("400"), now, 0.5).expect("apply");
        assert_eq!(
            j.tasks[0].status,
            TaskStatus::Heuristic,
            "refused: nothing lapses there"
        );
        apply(&mut j, 1, Op::Cancel, retry503(), now, 0.5).expect("apply");
        let p = plan(&mut j, &none(), now + hour() - secs(1), &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(1, Op::Cancel)], "retried, not lapsed");
        apply(&mut j, 1, Op::Cancel, retry503(), now, 0.5).expect("apply");
        plan(&mut j, &none(), now + hour(), &settings()).expect("plan");
        assert_eq!(j.tasks[1].status, TaskStatus::Heuristic);
        assert_eq!(j.status(), JobStatus::Heuristic);
        // `continue` would retry confirms: a failed cancel is not one of them.
        assert!(crate::domain::actions::continue_heuristic(&mut j, false, now + hour()).is_err());
    }

    #[test]
    fn continue_retries_a_failed_own_url_confirm_with_a_new_horizon() {
        let mut j = own_job(
            vec![own_task(0, false, false), own_task(1, false, false)],
            true,
        );
        let now = t0();
        plan(&mut j, &none(), now, &settings()).expect("plan");
        apply(&mut j, 0, Op::Confirm, Answer::Done, now, 0.5).expect("apply");
        apply(&mut j, 1, Op::Confirm, refused("400"), now, 0.5).expect("apply");
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.status(), JobStatus::Heuristic);
        let later = now + hour() * 2;
        assert_eq!(
            crate::domain::actions::continue_heuristic(&mut j, false, later),
            Ok(1)
        );
        let p = plan(&mut j, &none(), later, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(1, Op::Confirm)]);
        assert_eq!(j.tasks[1].callbacks_until, Some(later + hour()));
    }

    #[test]
    fn dtm_branches_are_confirmed_and_canceled_one_at_a_time_last_registered_first() {
        let tasks = (0..3).map(|i| own_task(i, false, true)).collect();
        let mut j = own_job(tasks, true);
        let now = t0();
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(2, Op::Confirm)]);
        // Nothing more while it is out.
        let busy: HashSet<usize> = [2].into();
        assert!(
            plan(&mut j, &busy, now, &settings())
                .expect("plan")
                .steps
                .is_empty()
        );
        // ONGOING: the same branch again when due, not the next one.
        apply(&mut j, 2, Op::Confirm, retry503(), now, 0.5).expect("apply");
        let p = plan(&mut j, &none(), now, &settings()).expect("plan");
        assert!(p.steps.is_empty() && p.wake_at.is_some());
        let due = j.tasks[2].next_attempt_at.expect("a retry");
        let p = plan(&mut j, &none(), due, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(2, Op::Confirm)]);
        apply(&mut j, 2, Op::Confirm, Answer::Done, due, 0.5).expect("apply");
        let p = plan(&mut j, &none(), due, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(1, Op::Confirm)]);
        apply(&mut j, 1, Op::Confirm, Answer::Done, due, 0.5).expect("apply");
        let p = plan(&mut j, &none(), due, &settings()).expect("plan");
        assert_eq!(ops(&p), vec![(0, Op::Confirm)]);

        let tasks = (0..3).map(|i| own_task(i, false, true)).collect();
        let mut j = own_job(tasks, false);
        j.requested = Requested::Cancel;
        let mut order = vec![];
        for _ in 0..3 {
            let p = plan(&mut j, &none(), now, &settings()).expect("plan");
            assert_eq!(p.steps.len(), 1);
            order.push(p.steps[0].task);
            apply(&mut j, p.steps[0].task, Op::Cancel, Answer::Done, now, 0.5).expect("apply");
        }
        assert_eq!(order, vec![2, 1, 0]);
        plan(&mut j, &none(), now, &settings()).expect("plan");
        assert_eq!(j.state, JobState::Canceled(FailureReason::Client));
    }
}
