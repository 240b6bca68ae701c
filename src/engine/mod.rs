//! The engine: claim a job → plan → persist → call participants → fold answers in → repeat.
//!
//! ```text
//!   POST /jobs ──accept: insert + claim + first Tries─┐
//!   client request ──▶ wake ──claim_one──────────────┤
//!   scanner (every TCC_SCAN_INTERVAL) ─reap_dead, claim_due─┘
//!                                                    ▼
//!                     ┌──────────── driver (one per claimed job) ────────────┐
//!                     │ plan(job, in_flight, now)  (pure, domain::planner)   │
//!                     │ save when it must (group_commit; fenced by owner and │
//!                     │ generation; synchronous for decisions and ends)      │
//!                     │ send the steps ─▶ participants (bounded in flight)   │
//!                     │ wait: an answer │ a wake │ wake_at │ renew │ shutdown │
//!                     │ release the lease with next_wake when only time or a │
//!                     │ client can move the job on                           │
//!                     └──────────────────────────────────────────────────────┘
//! ```
//!
//! A new job without an idempotency key is stored by its driver once its first Tries have
//! answered (or `TCC_TRY_FIRST_WAIT` has passed), with what they brought (`driver::Unstored`);
//! any other is stored first, then driven.
//!
//! Recovery is the same loop: a job whose instance died is claimed by the scanner like any due
//! job — at once when the instance's identity lock is free (`identity`, `store::reap_dead`),
//! after its lease lapses when the instance is alive but cut off. The driver is `driver`; a
//! driver that panics or meets an illegal transition is caught, counted and retried with backoff.
//! The engine never holds a database transaction across an HTTP call, and every spawned task
//! (drivers, group-commit writers, the scanner, the listener) is owned by the tracker and awaited
//! at shutdown; the identity session goes last.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use futures::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod driver;
pub mod group_commit;
mod identity;

use driver::Driver;
use group_commit::GroupCommit;
use identity::Identity;

use crate::domain::planner;
use crate::domain::status::IllegalTransition;
use crate::domain::{Job, JobId, JobStatus, Op, PlannerSettings, Step, Submission};
use crate::metrics as m;
use crate::participant::ParticipantClient;
use crate::store::{self, Fence, Inserted, StoreError};

/// A change to a job, as this instance announces it: the status its driver has just written,
/// or none for a client's request (then only the job's row tells its status). A waiter for a
/// job's end reads the job only when the status announced is terminal or not known.
#[derive(Debug, Clone)]
pub struct Change {
    pub id: JobId,
    pub status: Option<JobStatus>,
}

/// Settings of the engine, from the configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub instance_id: String,
    pub lease_ttl: Duration,
    pub scan_interval: Duration,
    pub call_timeout: Duration,
    pub max_inflight_calls: usize,
    pub max_active_jobs: usize,
    /// Most HTTP requests in progress (each may queue one new job).
    pub max_inflight_requests: usize,
    pub shutdown_grace: Duration,
    /// How long a new job without an idempotency key waits for its first Tries' answers before
    /// it is stored (`TCC_TRY_FIRST_WAIT`; zero: stored first).
    pub try_first_wait: Duration,
    pub retention: Duration,
    pub planner: PlannerSettings,
    /// The operators' webhook (`TCC_HEURISTIC_WEBHOOK`): told of every heuristic outcome.
    pub heuristic_webhook: Option<String>,
}

/// How many jobs one scan claims at most.
const CLAIM_BATCH: usize = 256;
/// Jobs deleted per batch of the retention sweep, the least pause after a batch, and how
/// often the sweep looks again once nothing is left.
const SWEEP_BATCH: i64 = 500;
const SWEEP_PAUSE: Duration = Duration::from_millis(50);
/// After each batch the sweep rests this many times as long as the batch took: it uses at most
/// a tenth of one connection's time, however fast or slow the database is (docs/performance.md,
/// *The retention sweep*: resting five times as long cost 10–15 % of the throughput at 32
/// clients).
const SWEEP_REST: u32 = 9;
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Every how many seconds the gauges are read from the database.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// What `Engine::accept` did.
#[derive(Debug)]
pub enum Accepted {
    /// A new job, as stored; its driver has started.
    Created(Box<store::JobRecord>),
    /// The idempotency key was used before, for job `id`; `same_request` tells whether with the
    /// same document and by the same key holder, `another_holder` whether by another API key.
    Replay {
        id: JobId,
        same_request: bool,
        another_holder: bool,
    },
}

impl Accepted {
    /// What the request hears of a new job's write: `record` is what was written.
    fn of(inserted: Inserted, record: store::JobRecord) -> Accepted {
        match inserted {
            Inserted::Created => Accepted::Created(Box::new(record)),
            Inserted::Replay {
                id,
                same_request,
                another_holder,
            } => Accepted::Replay {
                id,
                same_request,
                another_holder,
            },
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Drivers' writes, committed in batches.
    commits: Arc<GroupCommit>,
    db: tokio_postgres::Config,
    client: ParticipantClient,
    settings: EngineSettings,
    /// Participant calls in flight.
    calls: Arc<Semaphore>,
    /// Jobs driven at once.
    drivers: Arc<Semaphore>,
    /// The wake-up of each job driven here.
    running: Mutex<HashMap<JobId, Arc<Notify>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Jobs whose state changed, for long polls and waiters. Bounded: a slow listener lags and
    /// re-reads instead of holding the engine back.
    changes: broadcast::Sender<Change>,
    /// This instance's identity lock: drivers run only while it is held. Its task ends last,
    /// at shutdown.
    identity: Arc<Identity>,
    /// Rung when a write put notifications in the outbox, so that they go out at once.
    outbox: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("job vanished")]
    Vanished,
}

impl Engine {
    /// `db`: where to listen for wake-ups sent by other instances.
    pub fn new(
        pool: Pool,
        db: tokio_postgres::Config,
        client: ParticipantClient,
        settings: EngineSettings,
    ) -> Self {
        let (changes, _) = broadcast::channel(4096);
        // A quarter of the connections write batches; the rest serve the API and the drivers'
        // reads.
        let writers = (pool.status().max_size / 4).max(1);
        let (settings_instance, db_identity) = (settings.instance_id.clone(), db.clone());
        let tracker = TaskTracker::new();
        Engine {
            inner: Arc::new(Inner {
                commits: Arc::new(GroupCommit::new(
                    writers,
                    settings.max_active_jobs + settings.max_inflight_requests,
                    tracker.clone(),
                )),
                pool,
                db,
                client,
                calls: Arc::new(Semaphore::new(settings.max_inflight_calls)),
                drivers: Arc::new(Semaphore::new(settings.max_active_jobs)),
                settings,
                running: Mutex::new(HashMap::new()),
                tracker,
                shutdown: CancellationToken::new(),
                changes,
                identity: Arc::new(Identity::new(settings_instance, db_identity)),
                outbox: Arc::new(Notify::new()),
            }),
        }
    }

    /// Whether drivers may run now: the identity is held (see `identity`).
    pub fn driving(&self) -> bool {
        self.inner.identity.live().is_some()
    }

    /// Take this instance's identity in the database (`store::instances`): fails when another
    /// live instance has the same id. Called once before `start_background`.
    pub async fn take_identity(&self) -> Result<(), StoreError> {
        self.inner
            .identity
            .take(self.inner.settings.lease_ttl)
            .await
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.settings.instance_id
    }

    /// The jobs whose state changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Tell long polls that a job changed.
    /// Rung whenever this instance wrote notifications to the outbox.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        self.inner.outbox.clone()
    }

    pub fn changed(&self, id: &JobId) {
        let _ = self.inner.changes.send(Change {
            id: id.clone(),
            status: None,
        });
    }

    /// Store a new job (claimed by this instance, its first Tries planned into the same write,
    /// committed synchronously with other writes of the moment) and start driving it; with
    /// `try_first`, start driving it and let its driver store it once its first Tries have
    /// answered (see the conditions below, and `driver::Unstored`). Either way the write runs
    /// as its own task: once asked, the job is stored and driven even if the client hangs up
    /// (unless its driver fails before storing it and the client has gone: then its request,
    /// which would have stored it instead, is gone too, and its reservations lapse).
    pub async fn accept(
        &self,
        submission: Submission,
        try_first: bool,
    ) -> Result<Accepted, StoreError> {
        let source = submission.source.as_str();
        let row = store::NewJobRow {
            submission,
            owner: self.instance_id().to_string(),
            lease_ttl: self.inner.settings.lease_ttl,
            answered: Vec::new(),
        };
        let mut record = store::initial_record(&row);
        let first = self.plan_first(&mut record.job);
        // Tries first, the job stored with their answers (`driver::Unstored`): only a job that
        // cannot be a replay (no idempotency key, an id of the coordinator's); only while the
        // database takes writes, so that an outage does not reserve at participants for jobs it
        // will refuse; and only when every reservation its Tries make lapses by itself (a task
        // with its own confirm and cancel URLs has no expiry: it is canceled, or confirmed).
        let wait = self.inner.settings.try_first_wait;
        let (row, record, first) = if try_first
            && !wait.is_zero()
            && !first.is_empty()
            && record.job.tasks.iter().all(|t| t.callbacks.is_none())
            && self.inner.commits.healthy()
        {
            let (reply, stored) = tokio::sync::oneshot::channel();
            // The job as it will be stored, where its request finds it again should the driver
            // stop before it answers (a panic): then it is stored as accepted, and driven again
            // like any other.
            let slot = Arc::new(Mutex::new(driver::Slot::Waiting(Box::new((
                row,
                record.clone(),
            )))));
            let steps = first.clone();
            let unstored = driver::Unstored {
                slot: slot.clone(),
                until: Utc::now() + chrono::TimeDelta::from_std(wait).unwrap_or_default(),
                reply,
            };
            let id = record.job.id.clone();
            let generation = record.lease_generation;
            // Not started (at capacity, stopping): stored first, as any job.
            self.spawn_driver(id, generation, Some((record, first)), Some(unstored));
            if let Ok(answer) = stored.await {
                return answer;
            }
            match driver::Slot::take(&slot, driver::Slot::Reclaimed) {
                Some(pending) => {
                    let (row, record) = *pending;
                    (row, record, steps)
                }
                None => {
                    return Err(StoreError::Unavailable(
                        "the new job's driver stopped while storing it".into(),
                    ));
                }
            }
        } else {
            (row, record, first)
        };
        let engine = self.clone();
        let task = self.inner.tracker.spawn(async move {
            let inner = &engine.inner;
            let inserted = inner
                .commits
                .insert(&inner.pool, row, record.clone())
                .await?;
            Ok(match inserted {
                Inserted::Created => {
                    metrics::counter!(crate::metrics::JOBS_CREATED, "source" => source)
                        .increment(1);
                    engine.start_claimed(record.clone(), first);
                    Accepted::Created(Box::new(record))
                }
                replay => Accepted::of(replay, record),
            })
        });
        task.await
            .map_err(|e| StoreError::Unavailable(format!("accepting the job failed: {e}")))?
    }

    /// Plan a new job's first Tries before it is stored, so that the accepting write records
    /// them too (one write fewer per job). Anything more than Tries (a job made of links only
    /// decides at once) is left to the driver, which commits it before acting.
    fn plan_first(&self, job: &mut Job) -> Vec<Step> {
        let mut planned = job.clone();
        match planner::plan(
            &mut planned,
            &HashSet::new(),
            Utc::now(),
            &self.inner.settings.planner,
        ) {
            Ok(plan)
                if !plan.durable
                    && planned.status().is_undecided()
                    && !plan.steps.is_empty()
                    && plan.steps.iter().all(|s| s.op == Op::Try) =>
            {
                *job = planned;
                plan.steps
            }
            _ => Vec::new(),
        }
    }

    /// Start driving a job this instance created and claimed, from the record it stored and the
    /// first steps planned into it (`plan_first`).
    fn start_claimed(&self, record: store::JobRecord, first: Vec<Step>) {
        let (id, generation) = (record.job.id.clone(), record.lease_generation);
        self.spawn_driver(id, generation, Some((record, first)), None);
    }

    /// A client request changed the job: wake its driver here, or claim it.
    pub async fn wake(&self, id: &JobId) {
        self.changed(id);
        let notify = self.inner.running_notify(id);
        if let Some(n) = notify {
            n.notify_one();
            return;
        }
        let claimed = async {
            let client = self.inner.pool.get().await?;
            store::claim_one(
                &client,
                id,
                &self.inner.settings.instance_id,
                self.inner.settings.lease_ttl,
            )
            .await
        }
        .await;
        match claimed {
            Ok(Some(c)) => self.spawn_driver(c.id, c.generation, None, None),
            // Held elsewhere: that instance sees the request at its next write.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "could not claim a woken job; the scanner will")
            }
        }
    }

    /// Drive a claimed job here. `known`: the job as just stored, saving a read, with the steps
    /// already planned into it; with `unstored`, the job as it will be stored, once its first
    /// Tries have answered. An unstored job whose driver cannot start here is left in its slot,
    /// for its request to store first.
    fn spawn_driver(
        &self,
        id: JobId,
        generation: i64,
        known: Option<(store::JobRecord, Vec<Step>)>,
        unstored: Option<driver::Unstored>,
    ) {
        let inner = self.inner.clone();
        let fence = Fence {
            owner: inner.settings.instance_id.clone(),
            generation,
        };
        // Drivers run only while this instance holds its identity (see `identity`).
        let live = inner.identity.live();
        let (permit, live) = match (inner.drivers.clone().try_acquire_owned(), live) {
            (Ok(p), Some(live)) if !inner.shutdown.is_cancelled() => (p, live),
            _ => {
                // At capacity, stopping, or without identity: hand the job back for a scanner
                // to claim later.
                if unstored.is_none() {
                    inner.hand_back(id, fence);
                }
                return;
            }
        };
        let notify = Arc::new(Notify::new());
        {
            let mut running = inner.lock_running();
            if running.contains_key(&id) {
                // Already driven here under an older generation; that driver will find its
                // lease lost at its next write. Let it finish first.
                drop(running);
                if unstored.is_none() {
                    inner.hand_back(id, fence);
                }
                return;
            }
            running.insert(id.clone(), notify.clone());
        }
        // A driver that fails before it stored its new job has nothing to give back: its
        // request stores the job instead (`accept`).
        let slot = unstored.as_ref().map(|u| u.slot.clone());
        let tracker = inner.tracker.clone();
        tracker.spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            // Leaves the map however the driver ends: done, failed, panicked or stopped.
            let _running = Running(inner.clone(), id.clone());
            let driver = Driver::new(inner.clone(), id.clone(), fence.clone(), notify);
            // Boxed, as are the failure paths' below: the driver's future is kilobytes (a
            // database call's several), and every move of this task's future (into the tracker,
            // into the runtime) would copy them all.
            let run = Box::pin(driver.run(known, unstored));
            let outcome = tokio::select! {
                r = std::panic::AssertUnwindSafe(run)
                    .catch_unwind()
                    .instrument(tracing::info_span!(
                        "job",
                        jobID = %id,
                        correlationID = tracing::field::Empty
                    )) => r,
                // The identity was lost: others may take the job now. Stop at once, writing
                // nothing and calling nobody; the calls in flight are dropped.
                _ = live.cancelled() => return,
            };
            if slot.is_some_and(|s| !driver::Slot::storing(&s)) {
                let (kind, why) = match &outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(DriveError::Illegal(e))) => (DriverFailure::Illegal, e.to_string()),
                    Ok(Err(e)) => (DriverFailure::Store, e.to_string()),
                    Err(panic) => (DriverFailure::Panic, panic_message(&**panic)),
                };
                metrics::counter!(m::ENGINE_DRIVER_FAILURES, "kind" => kind.as_str()).increment(1);
                tracing::warn!(job = %id, kind = kind.as_str(), error = %why, "a new job's driver failed before storing it; its request stores it");
                return;
            }
            let failure = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(DriveError::Illegal(e))) => (DriverFailure::Illegal, e.to_string()),
                Ok(Err(e)) => {
                    metrics::counter!(m::ENGINE_DRIVER_FAILURES, "kind" => DriverFailure::Store.as_str()).increment(1);
                    tracing::warn!(job = %id, error = %e, "driving the job failed; handing it back");
                    Box::pin(async {
                        if let Ok(client) = inner.pool.get().await {
                            let _ = store::release(&client, &id, &fence).await;
                        }
                    })
                    .await;
                    return;
                }
                Err(panic) => (DriverFailure::Panic, panic_message(&*panic)),
            };
            Box::pin(inner.driver_failed(&id, &fence, failure.0, &failure.1)).await;
        });
    }

    /// Start the scanner (due retries, lapsed leases) with housekeeping, and the listener for
    /// wake-ups from other instances.
    pub fn start_background(&self) {
        self.inner.identity.start();
        let engine = self.clone();
        self.inner
            .tracker
            .spawn(async move { engine.scan_loop().await });
        let engine = self.clone();
        self.inner
            .tracker
            .spawn(async move { engine.listen_loop().await });
        let engine = self.clone();
        self.inner
            .tracker
            .spawn(async move { engine.sweep_loop().await });
    }

    /// The retention sweep: finished jobs past `TCC_RETENTION` are deleted in small batches,
    /// each its own short transaction, with a rest after each `SWEEP_REST` times as long as the
    /// batch took (so the sweep takes at most a tenth of one connection's time, and the engine
    /// never waits for it); the batches go on until nothing is left, then the sweep sleeps. Several
    /// instances sweep different rows (`SKIP LOCKED`).
    async fn sweep_loop(self) {
        let inner = &self.inner;
        loop {
            loop {
                let started = Instant::now();
                let swept = match inner.pool.get().await {
                    Ok(client) => {
                        store::purge_finished(&client, inner.settings.retention, SWEEP_BATCH).await
                    }
                    Err(e) => Err(e.into()),
                };
                let took = started.elapsed();
                match swept {
                    Ok(n) if n > 0 => {
                        tracing::debug!(deleted = n, "deleted finished jobs past TCC_RETENTION")
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "the retention sweep failed; trying again later");
                        break;
                    }
                }
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep((took * SWEEP_REST).max(SWEEP_PAUSE)) => {}
                }
            }
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    }

    /// Wake local drivers for requests other instances received. Only drivers running here are
    /// woken: a job nobody drives is claimed by the instance that took the request. Wake-ups
    /// sent while the listener was reconnecting (the database restarted or failed over) are
    /// lost, so once listening again every driver here looks for requests.
    async fn listen_loop(self) {
        loop {
            let inner = &self.inner;
            let wake_all = || {
                for n in inner.lock_running().values() {
                    n.notify_one();
                }
            };
            let listen = store::listen_wakes(&inner.db, wake_all, |id| {
                if let Some(n) = JobId::parse(id)
                    .ok()
                    .and_then(|id| inner.running_notify(&id))
                {
                    n.notify_one();
                }
            });
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                r = listen => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "wake-up listener lost its connection; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn scan_loop(self) {
        let mut last_housekeeping = Instant::now() - HOUSEKEEPING;
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.inner.settings.scan_interval) => {}
            }
            // Instances whose process ended free their leases first, so that their jobs are
            // claimed in this very scan.
            if let Err(e) = self.reap_dead_instances().await {
                tracing::warn!(error = %e, "looking for ended instances failed");
            }
            let capacity = self.inner.drivers.available_permits().min(CLAIM_BATCH);
            if capacity > 0 && self.inner.identity.live().is_some() {
                match self.claim_due(capacity as i64).await {
                    Ok(claimed) => {
                        for c in claimed {
                            self.spawn_driver(c.id, c.generation, None, None);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "scanning for due jobs failed"),
                }
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                last_housekeeping = Instant::now();
                if let Err(e) = self.housekeeping().await {
                    tracing::warn!(error = %e, "housekeeping failed");
                }
            }
        }
    }

    async fn reap_dead_instances(&self) -> Result<(), StoreError> {
        let client = self.inner.pool.get().await?;
        for dead in store::reap_dead(&client).await? {
            tracing::info!(instance = %dead, "an instance's process ended: its jobs are taken over");
        }
        Ok(())
    }

    async fn claim_due(&self, limit: i64) -> Result<Vec<store::Claimed>, StoreError> {
        let client = self.inner.pool.get().await?;
        store::claim_due(
            &client,
            &self.inner.settings.instance_id,
            self.inner.settings.lease_ttl,
            limit,
        )
        .await
    }

    async fn housekeeping(&self) -> Result<(), StoreError> {
        let status = self.inner.pool.status();
        metrics::gauge!(m::DB_POOL_CONNECTIONS, "state" => "idle").set(status.available as f64);
        metrics::gauge!(m::DB_POOL_CONNECTIONS, "state" => "in_use")
            .set(status.size.saturating_sub(status.available) as f64);
        let mut client = self.inner.pool.get().await?;
        let stats = store::active_stats(&mut client).await?;
        for s in [
            JobStatus::Pending,
            JobStatus::Trying,
            JobStatus::Reserved,
            JobStatus::Confirming,
            JobStatus::Canceling,
        ] {
            let (count, age) = stats
                .iter()
                .find(|(st, _, _)| *st == s)
                .map(|(_, c, a)| (*c as f64, *a))
                .unwrap_or((0.0, 0.0));
            metrics::gauge!(m::JOBS_ACTIVE, "status" => s.as_str()).set(count);
            metrics::gauge!(m::OLDEST_ACTIVE_JOB_AGE, "status" => s.as_str()).set(age);
        }
        let heuristic = store::count_heuristic(&client).await?;
        metrics::gauge!(m::HEURISTIC_UNRESOLVED).set(heuristic as f64);
        if let Some(h) = m::install() {
            h.run_upkeep();
        }
        Ok(())
    }

    /// Stop: no new work; drivers finish or hand back their in-flight calls, release their
    /// leases and exit. Returns when every task the engine spawned has ended.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        // The identity goes last: the leases are released by now.
        self.inner.identity.stop().await;
    }
}

/// Why a driver ended without finishing its step (`tcc_engine_driver_failures_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverFailure {
    /// The driver panicked (a bug): caught, the job retried with backoff.
    Panic,
    /// The planner met a transition the protocol does not allow (a bug or a hand-edited row).
    Illegal,
    /// The database failed or refused a write: the job is handed back.
    Store,
}

impl DriverFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverFailure::Panic => "panic",
            DriverFailure::Illegal => "illegal",
            DriverFailure::Store => "store",
        }
    }
}

/// The message a panic carried, for a log line or a task's `lastMessage`.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A job in the `running` map; removed from it when dropped.
struct Running(Arc<Inner>, JobId);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.lock_running().remove(&self.1);
    }
}

impl Inner {
    /// Give a claimed job back without driving it, for a scanner to claim later.
    fn hand_back(self: Arc<Self>, id: JobId, fence: Fence) {
        let tracker = self.tracker.clone();
        tracker.spawn(async move {
            if let Ok(client) = self.pool.get().await {
                let _ = store::release(&client, &id, &fence).await;
            }
        });
    }

    /// A driver panicked or met an illegal transition: count it, say so on the job's open
    /// tasks, and hand the job back to be driven again after a backoff that grows with each
    /// failure. It never drops out of the engine.
    async fn driver_failed(&self, id: &JobId, fence: &Fence, kind: DriverFailure, message: &str) {
        metrics::counter!(m::ENGINE_DRIVER_FAILURES, "kind" => kind.as_str()).increment(1);
        tracing::error!(job = %id, kind = kind.as_str(), error = %message, "driving the job failed; retrying it after a backoff");
        let text = format!(
            "the coordinator failed while driving this job ({}: {message}); it retries with backoff",
            kind.as_str()
        );
        let recorded = async {
            let client = self.pool.get().await?;
            store::record_driver_failure(&client, id, fence, &text).await
        }
        .await;
        if let Err(e) = recorded {
            tracing::warn!(job = %id, error = %e, "could not record the driver failure; the lease will lapse");
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Notify>>> {
        // A poisoned map only means a driver panicked while inserting; the map is still valid.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running_notify(&self, id: &JobId) -> Option<Arc<Notify>> {
        self.lock_running().get(id).cloned()
    }
}
