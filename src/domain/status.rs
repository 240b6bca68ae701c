//! Job and task statuses and the only functions allowed to change them.
//!
//! Every status change in the program goes through [`JobStatus::on`] or [`TaskStatus::on`]; a pair
//! that the protocol does not allow is an [`IllegalTransition`], never a silent overwrite.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
    pub const ALL: [JobStatus; 9] = [
        JobStatus::Pending,
        JobStatus::Trying,
        JobStatus::Reserved,
        JobStatus::Confirming,
        JobStatus::Canceling,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Canceled,
        JobStatus::Heuristic,
    ];

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
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Canceled | JobStatus::Heuristic
        )
    }

    /// No confirm/cancel decision has been taken yet.
    pub fn is_undecided(self) -> bool {
        matches!(
            self,
            JobStatus::Pending | JobStatus::Trying | JobStatus::Reserved
        )
    }

    /// The status this event leads to, with the failure reason the job carries afterwards.
    pub fn on(
        self,
        reason: Option<FailureReason>,
        event: JobEvent,
    ) -> Result<(JobStatus, Option<FailureReason>), IllegalTransition> {
        use JobEvent as E;
        use JobStatus as S;
        let next = match (self, event) {
            (S::Pending, E::TryStarted) => (S::Trying, None),
            (S::Pending | S::Trying, E::AllReserved) => (S::Reserved, None),
            (S::Reserved, E::DecideConfirm) => (S::Confirming, None),
            (S::Pending | S::Trying | S::Reserved, E::DecideCancel(r)) => (S::Canceling, Some(r)),
            (S::Confirming, E::ConfirmRefused) => {
                (S::Canceling, Some(FailureReason::ConfirmRefused))
            }
            (S::Confirming, E::AllConfirmed) => (S::Completed, None),
            (S::Confirming, E::ConfirmSettledHeuristic) => (S::Heuristic, None),
            (S::Canceling, E::AllReleased) => match reason {
                Some(FailureReason::Client) => (S::Canceled, reason),
                Some(_) => (S::Failed, reason),
                None => return Err(self.illegal(event)),
            },
            (S::Canceling, E::ReleasedButConfirmed) => (S::Heuristic, None),
            (S::Failed | S::Canceled, E::Restart) => (S::Pending, None),
            (S::Heuristic, E::Continue) => (S::Confirming, None),
            (S::Heuristic, E::Resolve) => (S::Heuristic, None),
            _ => return Err(self.illegal(event)),
        };
        Ok(next)
    }

    fn illegal(self, event: JobEvent) -> IllegalTransition {
        IllegalTransition {
            what: "job",
            from: self.as_str().to_string(),
            event: format!("{event:?}"),
        }
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
    pub const ALL: [FailureReason; 5] = [
        FailureReason::TryFailed,
        FailureReason::Expiring,
        FailureReason::ConfirmRefused,
        FailureReason::Timeout,
        FailureReason::Client,
    ];

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
    /// The decision to cancel reached this task, which holds a link.
    CancelStarted,
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
    pub const ALL: [TaskStatus; 10] = [
        TaskStatus::Pending,
        TaskStatus::Trying,
        TaskStatus::Reserved,
        TaskStatus::Confirming,
        TaskStatus::Confirmed,
        TaskStatus::Canceling,
        TaskStatus::Canceled,
        TaskStatus::Expired,
        TaskStatus::Failed,
        TaskStatus::Heuristic,
    ];

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

    /// The whole table: every (status, event) pair, with the expected next status or `None` for
    /// an illegal pair. A pair missing from `legal` must be rejected.
    #[test]
    fn job_transition_table() {
        use FailureReason as R;
        use JobEvent as E;
        use JobStatus as S;
        type Row = (S, Option<R>, E, S, Option<R>);
        let legal: Vec<Row> = vec![
            (S::Pending, None, E::TryStarted, S::Trying, None),
            (S::Pending, None, E::AllReserved, S::Reserved, None),
            (S::Trying, None, E::AllReserved, S::Reserved, None),
            (S::Reserved, None, E::DecideConfirm, S::Confirming, None),
            (S::Confirming, None, E::AllConfirmed, S::Completed, None),
            (
                S::Confirming,
                None,
                E::ConfirmSettledHeuristic,
                S::Heuristic,
                None,
            ),
            (
                S::Confirming,
                None,
                E::ConfirmRefused,
                S::Canceling,
                Some(R::ConfirmRefused),
            ),
            (
                S::Canceling,
                Some(R::Client),
                E::AllReleased,
                S::Canceled,
                Some(R::Client),
            ),
            (
                S::Canceling,
                Some(R::Timeout),
                E::AllReleased,
                S::Failed,
                Some(R::Timeout),
            ),
            (
                S::Canceling,
                Some(R::TryFailed),
                E::AllReleased,
                S::Failed,
                Some(R::TryFailed),
            ),
            (
                S::Canceling,
                None,
                E::ReleasedButConfirmed,
                S::Heuristic,
                None,
            ),
            (S::Failed, None, E::Restart, S::Pending, None),
            (S::Canceled, None, E::Restart, S::Pending, None),
            (S::Heuristic, None, E::Continue, S::Confirming, None),
            (S::Heuristic, None, E::Resolve, S::Heuristic, None),
        ];
        let mut expected = legal.clone();
        for from in [S::Pending, S::Trying, S::Reserved] {
            for r in R::ALL {
                expected.push((from, None, E::DecideCancel(r), S::Canceling, Some(r)));
            }
        }
        for status in JobStatus::ALL {
            for event in all_job_events() {
                for reason in [None, Some(R::Client), Some(R::Timeout), Some(R::TryFailed)] {
                    let got = status.on(reason, event);
                    let want = expected
                        .iter()
                        .find(|(f, fr, e, _, _)| {
                            *f == status && *e == event && (fr.is_none() || *fr == reason)
                        })
                        .map(|(_, _, _, to, tr)| (*to, *tr));
                    match (got, want) {
                        (Ok((to, tr)), Some((wto, wtr))) => {
                            assert_eq!(to, wto, "{status} + {event:?}");
                            // A table row without a reason only fixes the resulting status.
                            if wtr.is_some() {
                                assert_eq!(tr, wtr, "{status} + {event:?} reason");
                            }
                        }
                        (Err(_), None) => {}
                        // AllReleased with no reason on record is an inconsistency, rejected.
                        (Err(_), Some(_)) if event == E::AllReleased && reason.is_none() => {}
                        (got, want) => {
                            panic!("{status} ({reason:?}) + {event:?}: got {got:?}, want {want:?}")
                        }
                    }
                }
            }
        }
    }

    /// A finished job takes only the operators' events: restart (failed, canceled), continue and
    /// resolve (heuristic). Completed takes nothing.
    #[test]
    fn terminal_job_statuses_take_only_the_operators_events() {
        use JobEvent as E;
        for status in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in all_job_events() {
                let operator = match status {
                    JobStatus::Failed | JobStatus::Canceled => event == E::Restart,
                    JobStatus::Heuristic => matches!(event, E::Continue | E::Resolve),
                    _ => false,
                };
                assert_eq!(
                    status.on(Some(FailureReason::Client), event).is_ok(),
                    operator,
                    "{status} + {event:?}"
                );
            }
        }
        // A restarted job carries no failure reason any more.
        assert_eq!(
            JobStatus::Failed.on(Some(FailureReason::Timeout), E::Restart),
            Ok((JobStatus::Pending, None))
        );
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
