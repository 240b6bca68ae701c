//! Job and task statuses and the only functions allowed to change them.
//!
//! Every status change in the program goes through [`JobStatus::on`] or [`TaskStatus::on`]; a pair
//! that the protocol does not allow is an [`IllegalTransition`], never a silent overwrite.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

enum_with_all! {
    /// The status of a job (docs/api.md, "Job statuses").
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum JobStatus {
        Pending,
        Trying,
        Reserved,
        Confirming,
        Canceling,
        Completed,
        Failed,
        Canceled,
        Heuristic,
    }
}

enum_with_all! {
    /// Why a job ended `failed` or `canceled`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "kebab-case")]
    pub enum FailureReason {
        TryFailed,
        Expiring,
        ConfirmRefused,
        Timeout,
        Client,
    }
}

/// What can happen to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobEvent {
    /// The first Try was sent.
    TryStarted,
    /// Every task holds a reservation.
    AllReserved,
    /// The decision to confirm was taken.
    DecideConfirm,
    /// The decision to cancel was taken, for this reason.
    DecideCancel(FailureReason),
    /// No task confirmed and a participant refused its first confirm: cancel the rest.
    ConfirmRefused,
    /// Every task confirmed.
    AllConfirmed,
    /// Every confirm has settled and at least one task could not be confirmed.
    ConfirmSettledHeuristic,
    /// Every reservation was canceled or lapsed.
    AllReleased,
    /// Every cancel has settled but a participant had already confirmed.
    ReleasedButConfirmed,
    /// An operator starts a new attempt of a failed or canceled job (`restart`).
    Restart,
    /// An operator has the confirms of a heuristic job retried (`continue`).
    Continue,
    /// An operator records the manual fix of a heuristic job (`resolve`): it stays heuristic,
    /// resolved.
    Resolve,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: {what} in status {from} cannot take event {event}")]
pub struct IllegalTransition {
    pub what: &'static str,
    pub from: String,
    pub event: String,
}

impl JobStatus {
    /// JCL's `working`: every status between acceptance and the end.
    pub const WORKING: [JobStatus; 4] = [
        JobStatus::Trying,
        JobStatus::Reserved,
        JobStatus::Confirming,
        JobStatus::Canceling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Trying => "trying",
            JobStatus::Reserved => "reserved",
            JobStatus::Confirming => "confirming",
            JobStatus::Canceling => "canceling",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
            JobStatus::Heuristic => "heuristic",
        }
    }

    pub fn is_terminal(self) -> bool {
        // Exhaustive, as `is_undecided`: a new status must be placed.
        match self {
            JobStatus::Completed
            | JobStatus::Failed
            | JobStatus::Canceled
            | JobStatus::Heuristic => true,
            JobStatus::Pending
            | JobStatus::Trying
            | JobStatus::Reserved
            | JobStatus::Confirming
            | JobStatus::Canceling => false,
        }
    }

    /// No confirm/cancel decision has been taken yet.
    pub fn is_undecided(self) -> bool {
        match self {
            JobStatus::Pending | JobStatus::Trying | JobStatus::Reserved => true,
            JobStatus::Confirming
            | JobStatus::Canceling
            | JobStatus::Completed
            | JobStatus::Failed
            | JobStatus::Canceled
            | JobStatus::Heuristic => false,
        }
    }

    fn illegal(self, event: JobEvent) -> IllegalTransition {
        IllegalTransition {
            what: "job",
            from: self.as_str().to_string(),
            event: format!("{event:?}"),
        }
    }
}

/// A job's status with what only some statuses have: why the job is being canceled, why it
/// failed, why it was canceled. `JobStatus` is its name alone (as stored, filtered on, counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Pending,
    Trying,
    Reserved,
    Confirming,
    Canceling(FailureReason),
    Completed,
    Failed(FailureReason),
    Canceled(FailureReason),
    Heuristic,
}

impl JobState {
    pub fn status(self) -> JobStatus {
        match self {
            JobState::Pending => JobStatus::Pending,
            JobState::Trying => JobStatus::Trying,
            JobState::Reserved => JobStatus::Reserved,
            JobState::Confirming => JobStatus::Confirming,
            JobState::Canceling(_) => JobStatus::Canceling,
            JobState::Completed => JobStatus::Completed,
            JobState::Failed(_) => JobStatus::Failed,
            JobState::Canceled(_) => JobStatus::Canceled,
            JobState::Heuristic => JobStatus::Heuristic,
        }
    }

    /// Why the job is being canceled, failed or was canceled.
    pub fn reason(self) -> Option<FailureReason> {
        match self {
            JobState::Canceling(r) | JobState::Failed(r) | JobState::Canceled(r) => Some(r),
            _ => None,
        }
    }

    /// The state a row's `status` and `failure_reason` hold; an error names a pair the program
    /// never writes (a reason missing, or where none belongs).
    pub fn from_parts(status: JobStatus, reason: Option<FailureReason>) -> Result<Self, String> {
        use JobStatus as S;
        Ok(match (status, reason) {
            (S::Pending, None) => JobState::Pending,
            (S::Trying, None) => JobState::Trying,
            (S::Reserved, None) => JobState::Reserved,
            (S::Confirming, None) => JobState::Confirming,
            (S::Canceling, Some(r)) => JobState::Canceling(r),
            (S::Completed, None) => JobState::Completed,
            (S::Failed, Some(r)) => JobState::Failed(r),
            (S::Canceled, Some(r)) => JobState::Canceled(r),
            (S::Heuristic, None) => JobState::Heuristic,
            (status, reason) => {
                return Err(format!("a job {status} with failure reason {reason:?}"));
            }
        })
    }

    /// The state this event leads to.
    pub fn on(self, event: JobEvent) -> Result<JobState, IllegalTransition> {
        use JobEvent as E;
        use JobState as S;
        let next = match (self, event) {
            (S::Pending, E::TryStarted) => S::Trying,
            (S::Pending | S::Trying, E::AllReserved) => S::Reserved,
            (S::Reserved, E::DecideConfirm) => S::Confirming,
            (S::Pending | S::Trying | S::Reserved, E::DecideCancel(r)) => S::Canceling(r),
            (S::Confirming, E::ConfirmRefused) => S::Canceling(FailureReason::ConfirmRefused),
            (S::Confirming, E::AllConfirmed) => S::Completed,
            (S::Confirming, E::ConfirmSettledHeuristic) => S::Heuristic,
            (S::Canceling(FailureReason::Client), E::AllReleased) => {
                S::Canceled(FailureReason::Client)
            }
            (S::Canceling(r), E::AllReleased) => S::Failed(r),
            (S::Canceling(_), E::ReleasedButConfirmed) => S::Heuristic,
            (S::Failed(_) | S::Canceled(_), E::Restart) => S::Pending,
            (S::Heuristic, E::Continue) => S::Confirming,
            (S::Heuristic, E::Resolve) => S::Heuristic,
            _ => return Err(self.status().illegal(event)),
        };
        Ok(next)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::TryFailed => "try-failed",
            FailureReason::Expiring => "expiring",
            FailureReason::ConfirmRefused => "confirm-refused",
            FailureReason::Timeout => "timeout",
            FailureReason::Client => "client",
        }
    }
}

impl FromStr for FailureReason {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureReason::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

enum_with_all! {
    /// The status of one task (docs/api.md, "Task statuses").
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum TaskStatus {
        Pending,
        Trying,
        Reserved,
        Confirming,
        Confirmed,
        Canceling,
        Canceled,
        Expired,
        Failed,
        Heuristic,
    }
}

/// What can happen to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEvent {
    /// A Try was sent (first or retry).
    TrySent,
    /// The Try yielded a participant link.
    Reserved,
    /// The Try failed for good.
    TryFailed,
    /// The decision to confirm reached this task.
    ConfirmStarted,
    /// The participant confirmed.
    Confirmed,
    /// The confirm cannot succeed (refused, gone, expired or unknown) while other tasks confirmed.
    ConfirmHeuristic,
    /// The decision to cancel reached this task, which holds a link, or has its own cancel URL
    /// and was tried (answered or not).
    CancelStarted,
    /// A task with its own cancel URL could not be canceled: refused, or still failing at the
    /// horizon. Nothing lapses by itself there, so the outcome is for an operator.
    CancelHeuristic,
    /// The participant canceled, or the reservation was already gone.
    Canceled,
    /// The reservation lapses by itself at the participant.
    Lapsed,
    /// A cancel was answered 409: the participant had already confirmed.
    FoundConfirmed,
    /// The job was canceled before this task held a reservation: nothing to release.
    Abandoned,
    /// The job starts a new attempt: the task is tried afresh.
    Restart,
    /// An operator has a heuristic task's confirm retried.
    RetryConfirm,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Trying => "trying",
            TaskStatus::Reserved => "reserved",
            TaskStatus::Confirming => "confirming",
            TaskStatus::Confirmed => "confirmed",
            TaskStatus::Canceling => "canceling",
            TaskStatus::Canceled => "canceled",
            TaskStatus::Expired => "expired",
            TaskStatus::Failed => "failed",
            TaskStatus::Heuristic => "heuristic",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Confirmed
                | TaskStatus::Canceled
                | TaskStatus::Expired
                | TaskStatus::Failed
                | TaskStatus::Heuristic
        )
    }

    pub fn on(self, event: TaskEvent) -> Result<TaskStatus, IllegalTransition> {
        use TaskEvent as E;
        use TaskStatus as S;
        let next = match (self, event) {
            (S::Pending | S::Trying, E::TrySent) => S::Trying,
            (S::Trying, E::Reserved) => S::Reserved,
            (S::Trying, E::TryFailed) => S::Failed,
            (S::Reserved, E::ConfirmStarted) => S::Confirming,
            (S::Confirming, E::Confirmed) => S::Confirmed,
            (S::Confirming, E::ConfirmHeuristic) => S::Heuristic,
            (S::Reserved | S::Confirming, E::CancelStarted) => S::Canceling,
            // Only a task with its own cancel URL: its Try may have reserved, answered or not.
            (S::Trying | S::Failed, E::CancelStarted) => S::Canceling,
            (S::Canceling, E::CancelHeuristic) => S::Heuristic,
            (S::Canceling, E::Canceled) => S::Canceled,
            (S::Canceling | S::Trying, E::Lapsed) => S::Expired,
            (S::Canceling, E::FoundConfirmed) => S::Confirmed,
            (S::Pending, E::Abandoned) => S::Canceled,
            (S::Canceled | S::Expired | S::Failed | S::Pending, E::Restart) => S::Pending,
            (S::Heuristic, E::RetryConfirm) => S::Confirming,
            _ => {
                return Err(IllegalTransition {
                    what: "task",
                    from: self.as_str().to_string(),
                    event: format!("{event:?}"),
                });
            }
        };
        Ok(next)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_job_events() -> Vec<JobEvent> {
        let mut events = vec![
            JobEvent::TryStarted,
            JobEvent::AllReserved,
            JobEvent::DecideConfirm,
            JobEvent::ConfirmRefused,
            JobEvent::AllConfirmed,
            JobEvent::ConfirmSettledHeuristic,
            JobEvent::AllReleased,
            JobEvent::ReleasedButConfirmed,
            JobEvent::Restart,
            JobEvent::Continue,
            JobEvent::Resolve,
        ];
        events.extend(FailureReason::ALL.map(JobEvent::DecideCancel));
        events
    }

    /// Every state a job can be in.
    fn all_job_states() -> Vec<JobState> {
        let mut states = vec![
            JobState::Pending,
            JobState::Trying,
            JobState::Reserved,
            JobState::Confirming,
            JobState::Completed,
            JobState::Heuristic,
        ];
        for r in FailureReason::ALL {
            states.extend([
                JobState::Canceling(r),
                JobState::Failed(r),
                JobState::Canceled(r),
            ]);
        }
        states
    }

    /// The whole table: every (state, event) pair, with the expected next state or `None` for
    /// an illegal pair. A pair missing from `legal` must be rejected.
    #[test]
    fn job_transition_table() {
        use FailureReason as R;
        use JobEvent as E;
        use JobState as S;
        let mut legal: Vec<(S, E, S)> = vec![
            (S::Pending, E::TryStarted, S::Trying),
            (S::Pending, E::AllReserved, S::Reserved),
            (S::Trying, E::AllReserved, S::Reserved),
            (S::Reserved, E::DecideConfirm, S::Confirming),
            (S::Confirming, E::AllConfirmed, S::Completed),
            (S::Confirming, E::ConfirmSettledHeuristic, S::Heuristic),
            (
                S::Confirming,
                E::ConfirmRefused,
                S::Canceling(R::ConfirmRefused),
            ),
            (
                S::Canceling(R::Client),
                E::AllReleased,
                S::Canceled(R::Client),
            ),
            (S::Heuristic, E::Continue, S::Confirming),
            (S::Heuristic, E::Resolve, S::Heuristic),
        ];
        for r in R::ALL {
            for from in [S::Pending, S::Trying, S::Reserved] {
                legal.push((from, E::DecideCancel(r), S::Canceling(r)));
            }
            if r != R::Client {
                legal.push((S::Canceling(r), E::AllReleased, S::Failed(r)));
            }
            legal.push((S::Canceling(r), E::ReleasedButConfirmed, S::Heuristic));
            // A restarted job carries no failure reason any more.
            legal.push((S::Failed(r), E::Restart, S::Pending));
            legal.push((S::Canceled(r), E::Restart, S::Pending));
        }
        for state in all_job_states() {
            for event in all_job_events() {
                let want = legal
                    .iter()
                    .find(|(f, e, _)| *f == state && *e == event)
                    .map(|(_, _, to)| *to);
                assert_eq!(state.on(event).ok(), want, "{state:?} + {event:?}");
            }
        }
    }

    /// A finished job takes only the operators' events: restart (failed, canceled), continue and
    /// resolve (heuristic). Completed takes nothing.
    #[test]
    fn terminal_job_states_take_only_the_operators_events() {
        use JobEvent as E;
        for state in all_job_states()
            .into_iter()
            .filter(|s| s.status().is_terminal())
        {
            for event in all_job_events() {
                let operator = match state.status() {
                    JobStatus::Failed | JobStatus::Canceled => event == E::Restart,
                    JobStatus::Heuristic => matches!(event, E::Continue | E::Resolve),
                    _ => false,
                };
                assert_eq!(state.on(event).is_ok(), operator, "{state:?} + {event:?}");
            }
        }
    }

    /// A row's status and reason are a state only as the program writes them.
    #[test]
    fn a_state_is_read_back_from_its_parts_and_only_from_pairs_the_program_writes() {
        for state in all_job_states() {
            assert_eq!(
                JobState::from_parts(state.status(), state.reason()),
                Ok(state)
            );
        }
        assert!(JobState::from_parts(JobStatus::Failed, None).is_err());
        assert!(JobState::from_parts(JobStatus::Completed, Some(FailureReason::Client)).is_err());
    }

    #[test]
    fn task_transition_table() {
        use TaskEvent as E;
        use TaskStatus as S;
        let events = [
            E::TrySent,
            E::Reserved,
            E::TryFailed,
            E::ConfirmStarted,
            E::Confirmed,
            E::ConfirmHeuristic,
            E::CancelStarted,
            E::CancelHeuristic,
            E::Canceled,
            E::Lapsed,
            E::FoundConfirmed,
            E::Abandoned,
            E::Restart,
            E::RetryConfirm,
        ];
        let legal = [
            (S::Pending, E::TrySent, S::Trying),
            (S::Trying, E::TrySent, S::Trying),
            (S::Trying, E::Reserved, S::Reserved),
            (S::Trying, E::TryFailed, S::Failed),
            (S::Trying, E::Lapsed, S::Expired),
            (S::Reserved, E::ConfirmStarted, S::Confirming),
            (S::Confirming, E::Confirmed, S::Confirmed),
            (S::Confirming, E::ConfirmHeuristic, S::Heuristic),
            (S::Reserved, E::CancelStarted, S::Canceling),
            (S::Confirming, E::CancelStarted, S::Canceling),
            (S::Trying, E::CancelStarted, S::Canceling),
            (S::Failed, E::CancelStarted, S::Canceling),
            (S::Canceling, E::CancelHeuristic, S::Heuristic),
            (S::Canceling, E::Canceled, S::Canceled),
            (S::Canceling, E::Lapsed, S::Expired),
            (S::Canceling, E::FoundConfirmed, S::Confirmed),
            (S::Pending, E::Abandoned, S::Canceled),
            (S::Pending, E::Restart, S::Pending),
            (S::Canceled, E::Restart, S::Pending),
            (S::Expired, E::Restart, S::Pending),
            (S::Failed, E::Restart, S::Pending),
            (S::Heuristic, E::RetryConfirm, S::Confirming),
        ];
        for status in TaskStatus::ALL {
            for event in events {
                let want = legal
                    .iter()
                    .find(|(f, e, _)| *f == status && *e == event)
                    .map(|(_, _, t)| *t);
                assert_eq!(status.on(event).ok(), want, "{status} + {event:?}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
            assert_eq!(serde_json::to_value(s).ok(), Some(s.as_str().into()));
        }
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>(), Ok(s));
            assert_eq!(serde_json::to_value(s).ok(), Some(s.as_str().into()));
        }
        for r in FailureReason::ALL {
            assert_eq!(r.as_str().parse::<FailureReason>(), Ok(r));
            assert_eq!(serde_json::to_value(r).ok(), Some(r.as_str().into()));
        }
        assert!("working".parse::<JobStatus>().is_err());
    }
}
