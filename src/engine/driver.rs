//! One job's driver: plan → save when it must → call → fold the answers in, until the job must
//! wait for time or a client, ends, or its lease is lost.
//!
//! The driver owns nothing but its `DriverState`; it never holds a database transaction across a
//! call, and every write it makes is fenced by its lease (`store::Fence`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::group_commit::InsertReply;
use super::{Accepted, DriveError, Inner};
use crate::domain::event::{self, CallRecord};
use crate::domain::planner::{self, Plan};
#[cfg(feature = "fault-injection")]
use crate::domain::status::IllegalTransition;
use crate::domain::{Answer, Event, Job, JobId, JobStatus, Op, Step, mapping};
use crate::domain::{actions, notify};
use crate::metrics as m;
use crate::participant::{CallIds, CallResult, TryCall};
use crate::store::{self, Fence, Inserted, LeaseAfter, Save, Saved, StoreError};

/// How long a driver keeps its lease while waiting for nothing but time (a retry falling due);
/// longer waits give the lease back and leave the job to the scanner.
const MAX_HOLD: Duration = Duration::from_secs(2);
/// How long a driver may hold back changes that need no write yet (see `must_write`).
const WRITE_DELAY: Duration = Duration::from_millis(100);

type CallFuture = BoxFuture<'static, (Step, CallResult)>;

/// Where a new job waits to be stored (`Unstored`), and who stores it.
pub(super) enum Slot {
    /// The job as accepted, its first Tries planned, and the row to store it by.
    Waiting(Box<(store::NewJobRow, store::JobRecord)>),
    /// Taken by its driver, which stores it; its request hears the outcome from the write.
    Storing,
    /// Taken back by its request, whose driver stopped before storing it: stored first.
    Reclaimed,
}

pub(super) type Pending = Arc<std::sync::Mutex<Slot>>;

impl Slot {
    /// Take the job, leaving `then`: `None` when it was taken already.
    pub fn take(
        pending: &Pending,
        then: Slot,
    ) -> Option<Box<(store::NewJobRow, store::JobRecord)>> {
        let mut slot = pending.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *slot, then) {
            Slot::Waiting(job) => Some(job),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Whether its driver took the job to store it.
    pub fn storing(pending: &Pending) -> bool {
        matches!(
            *pending.lock().unwrap_or_else(|p| p.into_inner()),
            Slot::Storing
        )
    }
}

/// A new job whose first Tries go out before it is stored (`Engine::accept`): its driver stores
/// it once they have all answered, or a decision needs writing, or at `until`, whichever comes
/// first; with what the answers brought (one synchronous write where there were two), unless
/// they ended the job (an end is written by a save, with its notifications): then as accepted,
/// and the end after it. The accepting request is answered when it is stored. Should it never
/// be (a write refused, the instance stopping), the reservations its Tries made lapse at their
/// participants, as a Try's whose answer never came: no cancel goes out for a job that does
/// not exist.
pub(super) struct Unstored {
    pub slot: Pending,
    pub until: DateTime<Utc>,
    pub reply: tokio::sync::oneshot::Sender<Result<Accepted, StoreError>>,
}

/// Drives one claimed job until it must wait for time or a client, ends, or loses its lease.
pub(super) struct Driver {
    inner: Arc<Inner>,
    id: JobId,
    fence: Fence,
    wake: Arc<Notify>,
}

enum Wakeup {
    Answer(Step, CallResult),
    Woken,
    Timer,
    Renew,
    Shutdown,
    GraceOver,
}

/// What a driver knows between its steps.
struct DriverState {
    /// The job as the driver sees it now.
    job: Job,
    /// As last written. Shared with `durable` when the last write was synchronous (one copy of
    /// the job per write, not two).
    saved: Arc<Job>,
    /// As last written with a synchronous commit, which makes every earlier write durable too.
    /// Rows are written as they differ from this, not from `saved`: an asynchronous commit that
    /// the database loses in a crash while this driver goes on (the pool reconnects unseen) is
    /// written again with the next save, never assumed.
    durable: Arc<Job>,
    /// The job's `wake_seq` as last read: client requests up to it are known.
    seen_seq: i64,
    /// The job's `retry_seq` as last read: `continue` requests up to it were acted on.
    seen_retry: i64,
    /// The version of the shared state this driver's writes go over (`state_seq`).
    seen_state: i64,
    /// The output mappings' writes to the shared state since the last synchronous commit: taken
    /// in again over a version another writer (a client) wrote first, and over the version the
    /// database went back to should it lose an asynchronous commit of them. (A client's write to
    /// the very pointer a mapping wrote, in that window, is written over by the mapping.)
    state_writes: Vec<(String, serde_json::Value)>,
    in_flight: HashSet<usize>,
    calls: FuturesUnordered<CallFuture>,
    /// Shutting down: until when the calls in flight may finish.
    stopping: Option<Instant>,
    needs_refresh: bool,
    renew_at: Instant,
    /// When a client last acted on the job (its creation, a wake for its request).
    client_at: Instant,
    /// Since when the job has changes not yet written (see `must_write`).
    unsaved_since: Option<Instant>,
    /// The calls answered since the last write, for the event log; written with the next save.
    events: Vec<Event>,
    /// The job's fields as accepted: who is told when it ends.
    fields: crate::domain::request::JobFields,
    /// Not stored yet (see `Unstored`).
    unstored: Option<Unstored>,
}

/// What the driver does after planning and saving.
enum Next {
    /// Send the plan's steps and wait.
    Go(Plan),
    /// A client request came in between: plan again.
    Replan,
    /// Done with the job here (released, ended, or the lease lost).
    Stop,
}

impl Driver {
    pub(super) fn new(inner: Arc<Inner>, id: JobId, fence: Fence, wake: Arc<Notify>) -> Self {
        Driver {
            inner,
            id,
            fence,
            wake,
        }
    }

    fn lease_lost(&self) {
        metrics::counter!(m::ENGINE_LEASE_LOST).increment(1);
        tracing::info!(job = %self.id, "lease lost to another instance; stopping");
    }

    /// `known`: the job as just stored, saving a read, with the steps already planned into it.
    pub(super) async fn run(
        self,
        known: Option<(store::JobRecord, Vec<Step>)>,
        unstored: Option<Unstored>,
    ) -> Result<(), DriveError> {
        let (record, first) = match known {
            Some(k) => k,
            None => {
                let client = self.inner.pool.get().await?;
                let record = store::load_job(&client, &self.id)
                    .await?
                    .ok_or(DriveError::Vanished)?;
                (record, Vec::new())
            }
        };
        if record.lease_owner.as_deref() != Some(self.fence.owner.as_str())
            || record.lease_generation != self.fence.generation
        {
            self.lease_lost();
            return Ok(());
        }
        tracing::Span::current().record("correlationID", record.job.correlation_id.as_str());
        let read = Arc::new(record.job.clone());
        let mut st = DriverState {
            saved: read.clone(),
            durable: read,
            job: record.job,
            seen_seq: record.wake_seq,
            seen_retry: record.retry_seq,
            seen_state: record.state_seq,
            state_writes: Vec::new(),
            in_flight: HashSet::new(),
            calls: FuturesUnordered::new(),
            stopping: None,
            needs_refresh: false,
            renew_at: self.next_renewal(),
            client_at: Instant::now(),
            unsaved_since: None,
            events: Vec::new(),
            fields: record.fields,
            unstored,
        };
        self.send(&mut st, first);
        loop {
            if st.needs_refresh && !self.refresh(&mut st).await? {
                self.lease_lost();
                return Ok(());
            }
            #[cfg(feature = "fault-injection")]
            injected_fault(&st.job)?;
            let plan = match self.plan_and_save(&mut st).await? {
                Next::Go(plan) => plan,
                Next::Replan => continue,
                Next::Stop => return Ok(()),
            };
            let timer = if st.stopping.is_some() {
                None
            } else {
                plan.wake_at
            };
            self.send(&mut st, plan.steps);
            if st.job == *st.saved {
                st.unsaved_since = None;
            }
            if !self.wait_and_fold(&mut st, timer).await? {
                self.lease_lost();
                return Ok(());
            }
        }
    }

    fn next_renewal(&self) -> Instant {
        Instant::now() + self.inner.settings.lease_ttl / 3
    }

    /// Learn the client requests and registrations that came in. `false`: the lease is lost.
    async fn refresh(&self, st: &mut DriverState) -> Result<bool, DriveError> {
        st.needs_refresh = false;
        let client = self.inner.pool.get().await?;
        let r = store::refresh(
            &client,
            &self.id,
            &self.fence,
            st.job.tasks.len(),
            st.seen_state,
        )
        .await?;
        if !r.still_ours {
            return Ok(false);
        }
        st.seen_seq = r.wake_seq;
        if r.retry_seq != st.seen_retry {
            // An operator's `continue`: the confirms waiting for their backoff go now.
            st.seen_retry = r.retry_seq;
            actions::retry_now(&mut st.job, Utc::now());
        }
        for j in [
            &mut st.job,
            Arc::make_mut(&mut st.saved),
            Arc::make_mut(&mut st.durable),
        ] {
            j.requested = r.requested;
            j.auto_confirm = r.auto_confirm;
            j.deadline = r.deadline;
            j.tasks.extend(r.new_tasks.iter().cloned());
        }
        if let Some(state) = r.shared_state {
            // Another writer (a client) wrote the shared state: this driver's writes not yet
            // written go over that version, never instead of it.
            st.seen_state = r.state_seq;
            Arc::make_mut(&mut st.saved).shared_state = state.clone();
            Arc::make_mut(&mut st.durable).shared_state = state.clone();
            st.job.shared_state = state;
            for (ptr, value) in &st.state_writes {
                if let Err(e) = mapping::write_shared(&mut st.job.shared_state, ptr, value.clone())
                {
                    tracing::warn!(job = %self.id, error = %e, "an output mapping no longer fits the shared state");
                }
            }
        }
        Ok(true)
    }

    /// Plan the next steps and write what must be written before they are sent (or the lease
    /// given back when only time or a client can move the job on).
    async fn plan_and_save(&self, st: &mut DriverState) -> Result<Next, DriveError> {
        let settings = &self.inner.settings;
        let now = Utc::now();
        let before_plan = st.job.clone();
        let plan = if st.stopping.is_some() {
            Plan::default()
        } else {
            planner::plan(&mut st.job, &st.in_flight, now, &settings.planner)?
        };
        let mut plan = plan;
        if let Some(until) = st.unstored.as_ref().map(|u| u.until) {
            let store_now = plan.durable
                || st.in_flight.is_empty()
                || !st.job.status().is_undecided()
                || st.stopping.is_some()
                || now >= until;
            if !store_now {
                // More Tries are out: wait for them, but not past `until`.
                plan.wake_at = Some(plan.wake_at.map_or(until, |w| w.min(until)));
                return Ok(Next::Go(plan));
            }
            if !self.store_new(st, now).await {
                return Ok(Next::Stop);
            }
        }
        let job = &st.job;
        let changed = *job != *st.saved;
        let decision = decide_write(
            &WriteView {
                before: before_plan.status(),
                status: job.status(),
                saved: st.saved.status(),
                changed,
                held_for: if changed {
                    st.unsaved_since.get_or_insert_with(Instant::now).elapsed()
                } else {
                    Duration::ZERO
                },
                sends: !plan.steps.is_empty(),
                plan_durable: plan.durable,
                wake_at: plan.wake_at,
                calls_out: !st.in_flight.is_empty(),
                stopping: st.stopping.is_some(),
                calls_done: st.calls.is_empty(),
                lease_ttl: settings.lease_ttl,
                since_client: st.client_at.elapsed(),
            },
            now,
        );
        // Held for a client that has just acted: look again when that hold is over, to give
        // the job back then if nothing came.
        if decision.lease == LeaseAfter::Keep && !st.job.status().is_terminal() {
            let hold = MAX_HOLD.min(settings.lease_ttl / 4);
            if let Some(over) =
                chrono::Duration::from_std(hold.saturating_sub(st.client_at.elapsed()))
                    .ok()
                    .and_then(|left| now.checked_add_signed(left))
                    .filter(|_| st.client_at.elapsed() <= hold)
            {
                plan.wake_at = Some(plan.wake_at.map_or(over, |w| w.min(over)));
            }
        }
        let WriteDecision {
            write,
            durable,
            lease,
            guarded,
            ending,
        } = decision;
        if !write && lease == LeaseAfter::Keep {
            return Ok(Next::Go(plan));
        }
        // The calls answered since the last write, then the status changes they and the plan
        // made.
        let mut events = st.events.clone();
        events.extend(event::status_changes(&st.saved, job, now, &st.events));
        let save = Save {
            id: job.id.to_string(),
            state: job.state,
            fence: self.fence.clone(),
            tasks: job
                .tasks
                .iter()
                .zip(st.durable.tasks.iter())
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.clone())
                .collect(),
            shared_state: (job.shared_state != st.durable.shared_state)
                .then(|| job.shared_state.clone()),
            state_guard: st.seen_state,
            guard_seq: guarded.then_some(st.seen_seq),
            lease,
            durable,
            lease_ttl: settings.lease_ttl,
            events,
            notifications: if ending {
                notify::on_end(
                    &st.fields,
                    job.status(),
                    settings.heuristic_webhook.as_deref(),
                )
            } else {
                Vec::new()
            },
        };
        let notifies = !save.notifications.is_empty();
        let carries_state = save.shared_state.is_some();
        match self.inner.commits.save(&self.inner.pool, save).await? {
            Saved::Ok {
                wake_seq,
                state_seq,
                state_written,
                ..
            } => {
                if state_written {
                    // Only a save that wrote the shared state knows what the version it
                    // returns holds. Without one, a client's write may have come in since the
                    // last refresh: taking its version here would keep the refresh its wake
                    // asks for from reading it, and a later mapping would be written over it.
                    if carries_state {
                        st.seen_state = state_seq;
                    }
                    if durable {
                        // A synchronous commit makes every earlier write durable too.
                        st.state_writes.clear();
                    }
                } else {
                    // A client wrote the shared state first: learn it, and write ours over it.
                    st.needs_refresh = true;
                }
                if st.job.status() != st.saved.status() {
                    self.on_status_change(&st.saved, &st.job, now);
                }
                st.saved = Arc::new(st.job.clone());
                if durable {
                    st.durable = st.saved.clone();
                }
                st.unsaved_since = None;
                st.events.clear();
                if notifies {
                    self.inner.outbox.notify_one();
                }
                st.renew_at = self.next_renewal();
                self.announce(st.saved.status());
                if lease.releases() {
                    return Ok(Next::Stop);
                }
                if wake_seq != st.seen_seq {
                    st.needs_refresh = true;
                }
                Ok(Next::Go(plan))
            }
            Saved::Conflict => {
                // A client request arrived: forget this plan, learn it, plan again.
                st.job = before_plan;
                st.needs_refresh = true;
                Ok(Next::Replan)
            }
            Saved::LeaseLost => {
                self.lease_lost();
                Ok(Next::Stop)
            }
        }
    }

    /// Store a new job (`Unstored`) and answer its request. `false`: it was not stored (the
    /// request has its error), and the driver stops, its calls dropped.
    async fn store_new(&self, st: &mut DriverState, now: DateTime<Utc>) -> bool {
        let Some(Unstored { slot, reply, .. }) = st.unstored.take() else {
            return true;
        };
        let Some(pending) = Slot::take(&slot, Slot::Storing) else {
            return false;
        };
        let (mut row, initial) = *pending;
        let source = row.submission.source.as_str();
        // An end is written by a save, with its notifications: the job is stored as accepted
        // first, and the answers stay in `st.events` for that save.
        let with_answers = !st.job.status().is_terminal();
        let record = if with_answers {
            let mut events = std::mem::take(&mut st.events);
            let changes = event::status_changes(&initial.job, &st.job, now, &events);
            events.extend(changes);
            row.answered = events;
            store::JobRecord {
                job: st.job.clone(),
                ..initial
            }
        } else {
            initial
        };
        let stored = Arc::new(record.job.clone());
        // The write answers the request itself, first: whatever becomes of this driver while
        // it waits (the instance's identity lost, say), the request hears what was stored. The
        // writer hands back the record it wrote, for the answer.
        let (created_tx, created) = tokio::sync::oneshot::channel();
        let answer = move |outcome: Result<Inserted, StoreError>, record: store::JobRecord| {
            let was_created = matches!(outcome, Ok(Inserted::Created));
            let _ = reply.send(outcome.map(|inserted| Accepted::of(inserted, record)));
            let _ = created_tx.send(was_created);
        };
        self.inner.commits.insert_then(
            &self.inner.pool,
            row,
            record,
            InsertReply::Call(Box::new(answer)),
        );
        if created.await != Ok(true) {
            return false;
        }
        metrics::counter!(m::JOBS_CREATED, "source" => source).increment(1);
        if stored.status() != st.saved.status() {
            self.on_status_change(&st.saved, &stored, now);
        }
        if with_answers {
            // Written, and synchronously: the output mappings' writes with it.
            st.state_writes.clear();
        }
        st.saved = stored.clone();
        st.durable = stored;
        st.unsaved_since = None;
        st.renew_at = self.next_renewal();
        self.announce(st.saved.status());
        true
    }

    /// Tell this instance's waiters the status just written.
    fn announce(&self, status: JobStatus) {
        self.inner
            .changes
            .send(super::Change {
                id: self.id.clone(),
                status: Some(status),
            })
            .ok();
    }

    fn send(&self, st: &mut DriverState, steps: Vec<Step>) {
        for step in steps {
            st.in_flight.insert(step.task);
            st.calls.push(self.call(&st.job, step));
        }
    }

    /// Wait for the next thing that can move the job on and take it in. `false`: the lease is
    /// lost.
    async fn wait_and_fold(
        &self,
        st: &mut DriverState,
        timer: Option<DateTime<Utc>>,
    ) -> Result<bool, DriveError> {
        // Changes held back are written at the latest WRITE_DELAY after the first of them.
        let flush_at = st.unsaved_since.map(|since| since + WRITE_DELAY);
        let wakeup = self
            .wait(&mut st.calls, timer, flush_at, st.renew_at, st.stopping)
            .await;
        match wakeup {
            Wakeup::Answer(step, result) => {
                st.in_flight.remove(&step.task);
                self.apply(st, step, result);
                // Fold in every other answer that is already there: one write for all.
                while let Some(Some((step, result))) = st.calls.next().now_or_never() {
                    st.in_flight.remove(&step.task);
                    self.apply(st, step, result);
                }
            }
            // Nobody knows a job not stored yet; nothing to learn.
            Wakeup::Woken if st.unstored.is_some() => {}
            Wakeup::Woken => {
                st.needs_refresh = true;
                st.client_at = Instant::now();
            }
            Wakeup::Renew if st.unstored.is_some() => st.renew_at = self.next_renewal(),
            Wakeup::Timer => {}
            Wakeup::Renew => {
                let client = self.inner.pool.get().await?;
                let ttl = self.inner.settings.lease_ttl;
                if !store::renew(&client, &self.id, &self.fence, ttl).await? {
                    return Ok(false);
                }
                st.renew_at = self.next_renewal();
                // Requests that arrived meanwhile are picked up cheaply here too.
                st.needs_refresh = true;
            }
            Wakeup::Shutdown => {
                st.stopping = Some(Instant::now() + self.inner.settings.shutdown_grace);
            }
            Wakeup::GraceOver => {
                // Calls still in flight are abandoned: their answers are lost, and the next
                // owner sends them again under the same request-id.
                st.calls.clear();
                st.in_flight.clear();
            }
        }
        Ok(true)
    }

    async fn wait(
        &self,
        calls: &mut FuturesUnordered<CallFuture>,
        timer: Option<DateTime<Utc>>,
        flush_at: Option<Instant>,
        renew_at: Instant,
        stopping: Option<Instant>,
    ) -> Wakeup {
        // A wake-up already due still waits a moment: if a plan ever asked for a time in the
        // past while calls are in flight, the loop must not spin.
        let timer_at = timer.map(|at| {
            let d = (at - Utc::now()).to_std().unwrap_or_default();
            Instant::now() + d.max(Duration::from_millis(5))
        });
        tokio::select! {
            Some((step, result)) = calls.next(), if !calls.is_empty() => Wakeup::Answer(step, result),
            _ = self.wake.notified(), if stopping.is_none() => Wakeup::Woken,
            _ = sleep_until_opt(timer_at) => Wakeup::Timer,
            _ = sleep_until_opt(flush_at) => Wakeup::Timer,
            _ = tokio::time::sleep_until(renew_at) => Wakeup::Renew,
            _ = self.inner.shutdown.cancelled(), if stopping.is_none() => Wakeup::Shutdown,
            _ = sleep_until_opt(stopping), if stopping.is_some() => Wakeup::GraceOver,
        }
    }

    /// Take a participant's answer in, and log the call.
    fn apply(&self, st: &mut DriverState, step: Step, result: CallResult) {
        let (idx, op) = (step.task, step.op);
        let task = &st.job.tasks[idx];
        let target = match op {
            Op::Try => task.try_spec.as_ref().map(|s| s.task_url.as_str()),
            Op::Confirm | Op::Cancel => match &task.callbacks {
                Some(c) if op == Op::Cancel => Some(c.cancel_url.as_str()),
                Some(c) => Some(c.confirm_url.as_str()),
                None => task.link.as_ref().map(|l| l.uri.as_str()),
            },
        };
        m::participant_call(target, op, result.outcome, result.duration);
        tracing::debug!(job = %self.id, task = idx, op = op.as_str(), status = ?result.http_status, outcome = result.outcome.as_str(), "participant answered");
        let now = Utc::now();
        let job = &mut st.job;
        let was = job.tasks[idx].status;
        if let (
            Op::Try,
            Answer::Reserved {
                response: Some(resp),
                ..
            },
        ) = (op, &result.answer)
            && let Some(spec) = job.tasks[idx].try_spec.as_deref()
            && !spec.output_mapping.is_empty()
            && was == crate::domain::TaskStatus::Trying
        {
            st.state_writes.extend(mapping::output_writes(spec, resp));
        }
        if let Err(e) = planner::apply(job, idx, op, result.answer, now, fastrand::f64()) {
            tracing::warn!(job = %self.id, task = idx, error = %e, "answer ignored");
        }
        let task = &job.tasks[idx];
        st.events.push(
            CallRecord {
                at: now,
                task_id: task.task_id.as_str(),
                op,
                attempt: step.attempt,
                http_status: result.http_status,
                duration: result.duration,
                task_status: task.status,
                message: task.last_message.clone(),
            }
            .into(),
        );
    }

    fn on_status_change(&self, before: &Job, after: &Job, now: DateTime<Utc>) {
        tracing::info!(job = %self.id, from = %before.status(), to = %after.status(), reason = ?after.failure_reason(), "job status");
        if after.status().is_terminal() && !before.status().is_terminal() {
            metrics::counter!(m::JOBS_FINISHED, "status" => after.status().as_str()).increment(1);
            let secs = (now - after.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!(m::JOB_DURATION, "status" => after.status().as_str()).record(secs);
            if after.status() == JobStatus::Heuristic {
                metrics::counter!(m::HEURISTIC_JOBS).increment(1);
                tracing::warn!(job = %self.id, correlation_id = %after.correlation_id, "job ended HEURISTIC: participants disagree");
            }
        }
    }

    /// The future of one participant call. It waits for a slot among the calls in flight.
    fn call(&self, job: &Job, step: Step) -> CallFuture {
        let inner = self.inner.clone();
        let task = &job.tasks[step.task];
        let correlation_id = job.correlation_id.clone();
        let traceparent = job.traceparent.clone();
        // Later attempts of a restarted job are new requests to the participants (docs/participant.md).
        let request_id = if job.attempt > 1 {
            format!("{}/{}", task.task_id, job.attempt)
        } else {
            task.task_id.to_string()
        };
        let op = step.op;
        match op {
            Op::Try => {
                let Some(spec) = task.try_spec.clone() else {
                    return immediate(step, "a task without a taskURL cannot be tried".into());
                };
                let body = match mapping::try_body(&spec, &job.shared_state) {
                    Ok(b) => b,
                    Err(message) => return immediate(step, message),
                };
                let deadline = job.deadline;
                let needs_link = task.callbacks.is_none();
                let left = (deadline - Utc::now()).to_std().unwrap_or_default();
                let timeout = Duration::from_secs_f64(spec.task_max_ttl).min(left);
                async move {
                    let result = if timeout.is_zero() {
                        CallResult {
                            answer: Answer::Retryable {
                                message: "no time left before the job deadline".into(),
                                retry_after: None,
                            },
                            outcome: crate::participant::CallOutcome::Timeout,
                            http_status: None,
                            duration: Duration::ZERO,
                        }
                    } else {
                        let _slot = inner.calls.acquire().await;
                        inner
                            .client
                            .try_reserve(TryCall {
                                url: &spec.task_url,
                                body: &body,
                                ids: CallIds {
                                    correlation_id: &correlation_id,
                                    request_id: &request_id,
                                    traceparent: traceparent.as_deref(),
                                },
                                timeout,
                                job_deadline: deadline,
                                needs_link,
                            })
                            .await
                    };
                    (step, result)
                }
                .boxed()
            }
            Op::Confirm | Op::Cancel => {
                // Where the confirm or cancel goes: the task's own URL, else its link.
                enum Target {
                    Own(
                        std::sync::Arc<crate::domain::Callbacks>,
                        Vec<(String, String)>,
                    ),
                    Link(crate::domain::Link),
                }
                let target = match (&task.callbacks, &task.link) {
                    (Some(own), _) => Target::Own(
                        own.clone(),
                        if own.dtm.is_some() {
                            crate::domain::job::DtmBranch::headers(&job.shared_state)
                        } else {
                            Vec::new()
                        },
                    ),
                    (None, Some(link)) => Target::Link(link.clone()),
                    (None, None) => {
                        return immediate(step, "the task holds no participant link".into());
                    }
                };
                let timeout = inner.settings.call_timeout;
                async move {
                    let _slot = inner.calls.acquire().await;
                    let ids = CallIds {
                        correlation_id: &correlation_id,
                        request_id: &request_id,
                        traceparent: traceparent.as_deref(),
                    };
                    let client = &inner.client;
                    let result = match (&target, op) {
                        (Target::Own(own, headers), _) => {
                            client.settle_own(op, own, headers, &ids, timeout).await
                        }
                        (Target::Link(link), Op::Confirm) => {
                            client.confirm(link, &ids, timeout).await
                        }
                        (Target::Link(link), _) => client.cancel(link, &ids, timeout).await,
                    };
                    (step, result)
                }
                .boxed()
            }
        }
    }
}

/// Test-only faults (the `fault-injection` feature): a job whose correlation id asks for one
/// makes its driver panic, or meet an illegal transition, at every step.
#[cfg(feature = "fault-injection")]
fn injected_fault(job: &Job) -> Result<(), IllegalTransition> {
    match job.correlation_id.as_str() {
        "fault:panic" => panic!("fault injected: panic"),
        "fault:illegal" => Err(IllegalTransition {
            what: "job",
            from: job.status().as_str().to_string(),
            event: "InjectedFault".into(),
        }),
        _ => Ok(()),
    }
}

/// A call that fails before anything is sent (an input mapping that does not resolve).
fn immediate(step: Step, message: String) -> CallFuture {
    let result = CallResult {
        answer: Answer::Refused { message },
        outcome: crate::participant::CallOutcome::Error,
        http_status: None,
        duration: Duration::ZERO,
    };
    futures::future::ready((step, result)).boxed()
}

/// What `decide_write` looks at: the driver's state once the plan is made.
#[derive(Debug, Clone, Copy)]
struct WriteView {
    /// The job's status before this plan, after it, and as last written.
    before: JobStatus,
    status: JobStatus,
    saved: JobStatus,
    /// The job differs from what was last written, and has for `held_for`.
    changed: bool,
    held_for: Duration,
    /// The plan sends calls; it needs the job durable before they go (a confirm or cancel
    /// follows); the next time the job must be looked at (a retry, an expiry, the deadline).
    sends: bool,
    plan_durable: bool,
    wake_at: Option<DateTime<Utc>>,
    /// Calls sent earlier are still out.
    calls_out: bool,
    /// The instance is shutting down, and whether every call has answered.
    stopping: bool,
    calls_done: bool,
    lease_ttl: Duration,
    /// A client acted on the job (created it, registered into it, asked for its decision) this
    /// long ago: the next request is likely near.
    since_client: Duration,
}

/// What a driver writes after planning, how durably, and what becomes of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WriteDecision {
    /// Write the job's changes now (else they wait for a write that must happen).
    write: bool,
    /// With a synchronous commit.
    durable: bool,
    lease: LeaseAfter,
    /// Only if no client request came in since the job was read: a decision, or a job given
    /// back, must not pass over a request it has not seen.
    guarded: bool,
    /// The job ends with this write: its notifications go with it.
    ending: bool,
}

/// The driver's write decision (SPEC §3.3 rule 5): the decision, every link and the end are
/// durable before any confirm or cancel is sent or anyone is told; a job that only time can
/// move on is given back with its next time in the database (so a retry survives a crash), unless
/// that time is near enough to wait for while holding the lease; a driver shutting down gives
/// its jobs back once their calls have answered.
fn decide_write(v: &WriteView, now: DateTime<Utc>) -> WriteDecision {
    let idle = !v.calls_out && !v.sends;
    let lease = if v.stopping {
        // Hand the job back to be picked up at once by whoever runs next.
        match (v.calls_done, v.status.is_terminal()) {
            (false, _) => LeaseAfter::Keep,
            (true, true) => LeaseAfter::Ended,
            (true, false) => LeaseAfter::Release(now),
        }
    } else if idle {
        if v.status.is_terminal() {
            LeaseAfter::Ended
        } else {
            // A job always has a deadline or an expiry to wait for; a minute is a net under
            // that rule, not a schedule.
            let at = v.wake_at.unwrap_or(now + chrono::Duration::seconds(60));
            let hold = MAX_HOLD.min(v.lease_ttl / 4);
            let near = (at - now).to_std().unwrap_or_default() <= hold;
            // A job waiting for its client, which has just acted on it (a DTM transaction
            // between its registrations and its submit, an open job taking participants), is
            // held a little longer: giving it back and claiming it again would cost two writes
            // per request. The driver looks again once that time is over.
            let client_near = v.status.is_undecided() && v.since_client <= hold;
            if near || client_near {
                LeaseAfter::Keep
            } else {
                LeaseAfter::Release(at)
            }
        }
    } else {
        LeaseAfter::Keep
    };
    let deciding = v.before.is_undecided() && !v.status.is_undecided();
    let ending = v.status != v.saved && v.status.is_terminal();
    let durable = v.plan_durable || ending;
    let calls_pending = v.calls_out || v.sends;
    WriteDecision {
        write: v.changed && must_write(durable, deciding, calls_pending, v.held_for),
        durable,
        lease,
        guarded: lease.releases() || deciding,
        ending,
    }
}

/// Whether a driver writes its changes now. Changes that need no synchronous commit and come
/// while calls are still out (a Try answered while the other Tries run, one confirm of several
/// done) are held back and written with the next change that must be written (the decision,
/// the end) or after `WRITE_DELAY`, whichever comes first: losing them in a crash only means
/// sending the same call again under the same request-id, which participants treat as a repeat.
/// Decisions, ends, changes that precede a confirm or cancel (`durable`), and changes made when
/// no call is out (the job is about to wait) are written at once.
fn must_write(durable: bool, deciding: bool, calls_pending: bool, held_for: Duration) -> bool {
    durable || deciding || !calls_pending || held_for >= WRITE_DELAY
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_at_once_and_what_may_wait() {
        let fresh = Duration::ZERO;
        // Decisions, ends and what precedes a confirm or cancel: always at once.
        assert!(must_write(true, false, true, fresh));
        assert!(must_write(false, true, true, fresh));
        // Nothing out: the job is about to wait, so its state is written.
        assert!(!must_write(false, false, true, fresh));
        assert!(must_write(false, false, false, fresh));
        // Held back no longer than WRITE_DELAY.
        assert!(!must_write(false, false, true, WRITE_DELAY / 2));
        assert!(must_write(false, false, true, WRITE_DELAY));
    }

    /// A driver in the middle of confirming: the decision written, calls out, nothing new.
    fn confirming() -> WriteView {
        WriteView {
            before: JobStatus::Confirming,
            status: JobStatus::Confirming,
            saved: JobStatus::Confirming,
            changed: false,
            held_for: Duration::ZERO,
            sends: false,
            plan_durable: false,
            wake_at: None,
            calls_out: true,
            stopping: false,
            calls_done: false,
            lease_ttl: Duration::from_secs(30),
            since_client: Duration::from_secs(3600),
        }
    }

    fn at(now: DateTime<Utc>, secs: i64) -> Option<DateTime<Utc>> {
        Some(now + chrono::Duration::seconds(secs))
    }

    #[test]
    fn the_decision_is_durable_and_guarded_before_the_first_confirm_is_sent() {
        let now = Utc::now();
        let d = decide_write(
            &WriteView {
                before: JobStatus::Reserved,
                status: JobStatus::Confirming,
                saved: JobStatus::Reserved,
                changed: true,
                sends: true,
                plan_durable: true,
                calls_out: false,
                ..confirming()
            },
            now,
        );
        assert_eq!(
            d,
            WriteDecision {
                write: true,
                durable: true,
                lease: LeaseAfter::Keep,
                guarded: true,
                ending: false
            }
        );
    }

    #[test]
    fn a_cancel_decision_is_written_at_once_even_while_tries_are_out() {
        let now = Utc::now();
        let d = decide_write(
            &WriteView {
                before: JobStatus::Trying,
                status: JobStatus::Canceling,
                saved: JobStatus::Trying,
                changed: true,
                sends: true,
                plan_durable: true,
                ..confirming()
            },
            now,
        );
        assert!(d.write && d.durable && d.guarded, "{d:?}");
    }

    #[test]
    fn links_are_durable_before_a_confirm_or_cancel_that_follows_them() {
        // A Try answered with a link while confirms are planned for the others: the plan asks
        // for durability, so the link is written synchronously before the calls go.
        let now = Utc::now();
        let d = decide_write(
            &WriteView {
                changed: true,
                sends: true,
                plan_durable: true,
                ..confirming()
            },
            now,
        );
        assert!(d.write && d.durable && !d.guarded, "{d:?}");
    }

    #[test]
    fn an_answer_that_needs_no_commit_waits_while_calls_are_out_but_not_longer_than_the_delay() {
        let now = Utc::now();
        let held = WriteView {
            changed: true,
            ..confirming()
        };
        let d = decide_write(&held, now);
        assert_eq!((d.write, d.lease), (false, LeaseAfter::Keep));
        let d = decide_write(
            &WriteView {
                held_for: WRITE_DELAY,
                ..held
            },
            now,
        );
        assert!(d.write && !d.durable, "{d:?}");
    }

    #[test]
    fn the_end_is_durable_carries_its_notifications_and_gives_the_job_back_for_good() {
        let now = Utc::now();
        let d = decide_write(
            &WriteView {
                status: JobStatus::Completed,
                changed: true,
                calls_out: false,
                ..confirming()
            },
            now,
        );
        assert_eq!(
            d,
            WriteDecision {
                write: true,
                durable: true,
                lease: LeaseAfter::Ended,
                guarded: true,
                ending: true
            }
        );
    }

    #[test]
    fn a_retry_far_enough_off_is_scheduled_in_the_database_and_the_job_given_back() {
        let now = Utc::now();
        let d = decide_write(
            &WriteView {
                changed: true,
                calls_out: false,
                wake_at: at(now, 10),
                ..confirming()
            },
            now,
        );
        assert_eq!(
            (d.write, d.lease, d.guarded),
            (
                true,
                LeaseAfter::Release(now + chrono::Duration::seconds(10)),
                true
            )
        );
        // Nothing changed: the lease alone is given back, with the time to look again.
        let d = decide_write(
            &WriteView {
                calls_out: false,
                wake_at: at(now, 10),
                ..confirming()
            },
            now,
        );
        assert_eq!((d.write, d.lease.releases()), (false, true));
    }

    #[test]
    fn a_retry_near_enough_is_waited_for_with_the_lease_held() {
        let now = Utc::now();
        let view = WriteView {
            calls_out: false,
            wake_at: Some(now + chrono::Duration::milliseconds(500)),
            ..confirming()
        };
        assert_eq!(decide_write(&view, now).lease, LeaseAfter::Keep);
        // Near is bounded by a quarter of the lease: with a short lease the job is given back.
        let short = WriteView {
            lease_ttl: Duration::from_millis(400),
            ..view
        };
        assert!(decide_write(&short, now).lease.releases());
    }

    #[test]
    fn a_job_waiting_for_a_client_that_has_just_acted_is_held_a_little_longer() {
        let now = Utc::now();
        let waiting = WriteView {
            before: JobStatus::Reserved,
            status: JobStatus::Reserved,
            saved: JobStatus::Reserved,
            calls_out: false,
            wake_at: at(now, 35),
            since_client: Duration::from_millis(100),
            ..confirming()
        };
        assert_eq!(decide_write(&waiting, now).lease, LeaseAfter::Keep);
        // Once the client has been quiet for the hold, it is given back until its deadline.
        let quiet = WriteView {
            since_client: Duration::from_secs(3),
            ..waiting
        };
        assert_eq!(
            decide_write(&quiet, now).lease,
            LeaseAfter::Release(now + chrono::Duration::seconds(35))
        );
        // A decided job waits for nobody's request.
        let decided = WriteView {
            before: JobStatus::Confirming,
            status: JobStatus::Confirming,
            saved: JobStatus::Confirming,
            ..waiting
        };
        assert!(decide_write(&decided, now).lease.releases());
    }

    #[test]
    fn a_job_with_nothing_to_wait_for_is_looked_at_again_within_a_minute() {
        let now = Utc::now();
        let d = decide_write(
            &WriteView {
                calls_out: false,
                ..confirming()
            },
            now,
        );
        assert_eq!(
            d.lease,
            LeaseAfter::Release(now + chrono::Duration::seconds(60))
        );
    }

    #[test]
    fn shutting_down_gives_the_job_back_at_once_but_only_when_its_calls_have_answered() {
        let now = Utc::now();
        let out = WriteView {
            stopping: true,
            ..confirming()
        };
        assert_eq!(decide_write(&out, now).lease, LeaseAfter::Keep);
        let done = WriteView {
            calls_done: true,
            calls_out: false,
            ..out
        };
        assert_eq!(decide_write(&done, now).lease, LeaseAfter::Release(now));
        let ended = WriteView {
            status: JobStatus::Completed,
            saved: JobStatus::Completed,
            ..done
        };
        assert_eq!(decide_write(&ended, now).lease, LeaseAfter::Ended);
    }

    #[test]
    fn nothing_changed_and_calls_out_is_neither_a_write_nor_a_release() {
        let d = decide_write(&confirming(), Utc::now());
        assert_eq!(
            (d.write, d.lease, d.guarded),
            (false, LeaseAfter::Keep, false)
        );
    }
}
