//! The engine: claim a job → plan → persist → call participants → fold answers in → repeat.
//!
//! ```text
//!   POST /jobs ──accept: insert + claim + first Tries─┐
//!   client request ──▶ wake ──claim_one──────────────┤
//!   scanner (every TCC_SCAN_INTERVAL) ─claim_due─────┘
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
//! Recovery is the same loop: a job whose lease lapsed (its instance died) is claimed by the
//! scanner like any due job. The engine never holds a database transaction across an HTTP call,
//! and every spawned task is owned by the tracker and awaited at shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub mod group_commit;
mod identity;

use group_commit::GroupCommit;
use identity::Identity;

use crate::domain::planner::{self, Plan};
use crate::domain::status::IllegalTransition;
use crate::domain::{Answer, Job, JobStatus, Op, PlannerSettings, Step, mapping};
use crate::metrics as m;
use crate::participant::{CallIds, CallResult, ParticipantClient, TryCall};
use crate::store::{self, Fence, Inserted, Save, Saved, StoreError};

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
    pub retention: Duration,
    pub planner: PlannerSettings,
}

/// How long a driver keeps its lease while waiting for nothing but time (a retry falling due);
/// longer waits give the lease back and leave the job to the scanner.
const MAX_HOLD: Duration = Duration::from_secs(2);
/// How long a driver may hold back changes that need no write yet (see `must_write`).
const WRITE_DELAY: Duration = Duration::from_millis(100);
/// How many jobs one scan claims at most.
const CLAIM_BATCH: usize = 256;
/// Every how many seconds the gauges and the retention purge run.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// What `Engine::accept` did.
#[derive(Debug)]
pub enum Accepted {
    /// A new job, as stored; its driver has started.
    Created(Box<store::JobRecord>),
    /// The idempotency key was used before, for job `id`; `same_request` tells whether with the
    /// same document.
    Replay { id: String, same_request: bool },
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
    running: Mutex<HashMap<String, Arc<Notify>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Ids of jobs whose state changed, for long polls. Bounded: a slow listener lags and
    /// re-reads instead of holding the engine back.
    changes: broadcast::Sender<String>,
    /// This instance's identity lock: drivers run only while it is held.
    identity: Identity,
    /// The identity session, from `take_identity` until `start_background` watches it.
    identity_session: Mutex<Option<identity::Session>>,
    /// The task watching the identity session; it ends last, at shutdown.
    identity_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    identity_stop: CancellationToken,
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
                identity: Identity::new(settings_instance, db_identity),
                identity_session: Mutex::new(None),
                identity_task: Mutex::new(None),
                identity_stop: CancellationToken::new(),
            }),
        }
    }

    /// Take this instance's identity in the database (`store::instances`): fails when another
    /// live instance has the same id. Called once before `start_background`.
    pub async fn take_identity(&self) -> Result<(), StoreError> {
        let session = self
            .inner
            .identity
            .take(self.inner.settings.lease_ttl)
            .await?;
        *lock(&self.inner.identity_session) = Some(session);
        Ok(())
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.settings.instance_id
    }

    pub fn lease_ttl(&self) -> Duration {
        self.inner.settings.lease_ttl
    }

    /// Job ids whose state changed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.inner.changes.subscribe()
    }

    /// Tell long polls that a job changed.
    pub fn changed(&self, id: &str) {
        let _ = self.inner.changes.send(id.to_string());
    }

    /// Store a new job (claimed by this instance, its first Tries planned into the same write,
    /// committed synchronously with other writes of the moment) and start driving it. Runs as
    /// its own task: once asked, the job is stored and driven even if the client hangs up.
    pub async fn accept(&self, row: store::NewJobRow) -> Result<Accepted, StoreError> {
        let mut record = store::initial_record(&row)?;
        let first = self.plan_first(&mut record.job);
        let engine = self.clone();
        let task = self.inner.tracker.spawn(async move {
            let inner = &engine.inner;
            let inserted = inner
                .commits
                .insert(&inner.pool, row, record.clone())
                .await?;
            Ok(match inserted {
                Inserted::Created => {
                    engine.start_claimed(record.clone(), first);
                    Accepted::Created(Box::new(record))
                }
                Inserted::Replay { id, same_request } => Accepted::Replay { id, same_request },
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
                    && planned.status.is_undecided()
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
        self.spawn_driver(id, generation, Some((record, first)));
    }

    /// A client request changed the job: wake its driver here, or claim it.
    pub async fn wake(&self, id: &str) {
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
            Ok(Some(c)) => self.spawn_driver(c.id, c.generation, None),
            // Held elsewhere: that instance sees the request at its next write.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = id, error = %e, "could not claim a woken job; the scanner will")
            }
        }
    }

    /// Drive a claimed job here. `known`: the job as just stored, saving a read, with the steps
    /// already planned into it.
    fn spawn_driver(
        &self,
        id: String,
        generation: i64,
        known: Option<(store::JobRecord, Vec<Step>)>,
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
                inner.hand_back(id, fence);
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
                inner.hand_back(id, fence);
                return;
            }
            running.insert(id.clone(), notify.clone());
        }
        let tracker = inner.tracker.clone();
        tracker.spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            // Leaves the map however the driver ends: done, failed, panicked or stopped.
            let _running = Running(inner.clone(), id.clone());
            let driver = Driver::new(inner.clone(), id.clone(), fence.clone(), notify);
            let outcome = tokio::select! {
                r = std::panic::AssertUnwindSafe(driver.run(known))
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
            let failure = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(DriveError::Illegal(e))) => (DriverFailure::Illegal, e.to_string()),
                Ok(Err(e)) => {
                    metrics::counter!(m::ENGINE_DRIVER_FAILURES, "kind" => DriverFailure::Store.as_str()).increment(1);
                    tracing::warn!(job = %id, error = %e, "driving the job failed; handing it back");
                    if let Ok(client) = inner.pool.get().await {
                        let _ = store::release(&client, &id, &fence).await;
                    }
                    return;
                }
                Err(panic) => (DriverFailure::Panic, panic_message(&*panic)),
            };
            inner.driver_failed(&id, &fence, failure.0, &failure.1).await;
        });
    }

    /// Start the scanner (due retries, lapsed leases) with housekeeping, and the listener for
    /// wake-ups from other instances.
    pub fn start_background(&self) {
        if let Some(session) = lock(&self.inner.identity_session).take() {
            let inner = self.inner.clone();
            let stop = self.inner.identity_stop.clone();
            let task = tokio::spawn(async move { inner.identity.watch(session, stop).await });
            *lock(&self.inner.identity_task) = Some(task);
        }
        let engine = self.clone();
        self.inner
            .tracker
            .spawn(async move { engine.scan_loop().await });
        let engine = self.clone();
        self.inner
            .tracker
            .spawn(async move { engine.listen_loop().await });
    }

    /// Wake local drivers for requests other instances received. Only drivers running here are
    /// woken: a job nobody drives is claimed by the instance that took the request.
    async fn listen_loop(self) {
        loop {
            let inner = &self.inner;
            let listen = store::listen_wakes(&inner.db, |id| {
                if let Some(n) = inner.running_notify(id) {
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
                            self.spawn_driver(c.id, c.generation, None);
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
        let client = self.inner.pool.get().await?;
        let stats = store::active_stats(&client).await?;
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
        let purged = store::purge_finished(&client, self.inner.settings.retention).await?;
        if purged > 0 {
            tracing::info!(purged, "deleted finished jobs past TCC_RETENTION");
        }
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
        self.inner.identity_stop.cancel();
        let task = lock(&self.inner.identity_task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
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

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A job in the `running` map; removed from it when dropped.
struct Running(Arc<Inner>, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.lock_running().remove(&self.1);
    }
}

impl Inner {
    /// Give a claimed job back without driving it, for a scanner to claim later.
    fn hand_back(self: Arc<Self>, id: String, fence: Fence) {
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
    async fn driver_failed(&self, id: &str, fence: &Fence, kind: DriverFailure, message: &str) {
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

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // A poisoned map only means a driver panicked while inserting; the map is still valid.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running_notify(&self, id: &str) -> Option<Arc<Notify>> {
        self.lock_running().get(id).cloned()
    }
}

/// A mutex whose holder may have panicked: the data is still valid (every use replaces or takes
/// a value whole).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type CallFuture = BoxFuture<'static, (usize, Op, CallResult)>;

/// Drives one claimed job until it must wait for time or a client, ends, or loses its lease.
struct Driver {
    inner: Arc<Inner>,
    id: String,
    fence: Fence,
    wake: Arc<Notify>,
}

enum Wakeup {
    Answer(usize, Op, CallResult),
    Woken,
    Timer,
    Renew,
    Shutdown,
    GraceOver,
}

impl Driver {
    fn new(inner: Arc<Inner>, id: String, fence: Fence, wake: Arc<Notify>) -> Self {
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

    async fn run(self, known: Option<(store::JobRecord, Vec<Step>)>) -> Result<(), DriveError> {
        let settings = &self.inner.settings;
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
        let mut job = record.job;
        tracing::Span::current().record("correlationID", job.correlation_id.as_str());
        // `saved`: the job as last written. `durable`: as last written with a synchronous
        // commit, which makes every earlier write durable too. Rows are written as they differ
        // from `durable`, not from `saved`: an asynchronous commit that the database loses in a
        // crash while this driver goes on (the pool reconnects unseen) is written again with
        // the next save, never assumed.
        let mut saved = job.clone();
        let mut durable_base = job.clone();
        let mut seen_seq = record.wake_seq;
        let mut in_flight: HashSet<usize> = HashSet::new();
        let mut calls: FuturesUnordered<CallFuture> = FuturesUnordered::new();
        let mut stopping = false;
        let mut grace_until: Option<Instant> = None;
        let mut needs_refresh = false;
        let hold = MAX_HOLD.min(settings.lease_ttl / 4);
        let mut renew_at = Instant::now() + settings.lease_ttl / 3;
        // Since when the job has changes not yet written (see `must_write`).
        let mut unsaved_since: Option<Instant> = None;
        for step in first {
            in_flight.insert(step.task);
            calls.push(self.call(&job, step));
        }

        loop {
            if needs_refresh {
                needs_refresh = false;
                let client = self.inner.pool.get().await?;
                let r = store::refresh(&client, &self.id, &self.fence, job.tasks.len()).await?;
                if !r.still_ours {
                    self.lease_lost();
                    return Ok(());
                }
                seen_seq = r.wake_seq;
                for j in [&mut job, &mut saved, &mut durable_base] {
                    j.confirm_requested = r.confirm_requested;
                    j.cancel_requested = r.cancel_requested;
                    j.tasks.extend(r.new_tasks.iter().cloned());
                }
            }

            #[cfg(feature = "fault-injection")]
            injected_fault(&job)?;
            let now = Utc::now();
            let before_plan = job.clone();
            let plan = if stopping {
                Plan::default()
            } else {
                planner::plan(&mut job, &in_flight, now, &settings.planner)?
            };
            let idle = in_flight.is_empty() && plan.steps.is_empty();
            let release: Option<Option<DateTime<Utc>>> = if stopping {
                // Hand the job back to be picked up at once by whoever runs next.
                calls
                    .is_empty()
                    .then_some((!job.status.is_terminal()).then_some(now))
            } else if idle {
                if job.status.is_terminal() {
                    Some(None)
                } else {
                    // A job always has a deadline or an expiry to wait for; a minute is a net
                    // under that rule, not a schedule.
                    let at = plan.wake_at.unwrap_or(now + chrono::Duration::seconds(60));
                    let near = (at - now).to_std().unwrap_or_default() <= hold;
                    (!near).then_some(Some(at))
                }
            } else {
                None
            };
            let deciding = before_plan.status.is_undecided() && !job.status.is_undecided();
            let ending = job.status != saved.status && job.status.is_terminal();
            let durable = plan.durable || ending;
            let calls_pending = !in_flight.is_empty() || !plan.steps.is_empty();
            let write = job != saved
                && must_write(
                    durable,
                    deciding,
                    calls_pending,
                    unsaved_since.get_or_insert_with(Instant::now).elapsed(),
                );

            if write || release.is_some() {
                let changed: Vec<crate::domain::Task> = job
                    .tasks
                    .iter()
                    .zip(durable_base.tasks.iter())
                    .filter(|(a, b)| a != b)
                    .map(|(a, _)| a.clone())
                    .collect();
                let save = Save {
                    id: job.id.clone(),
                    status: job.status,
                    failure_reason: job.failure_reason,
                    fence: self.fence.clone(),
                    tasks: changed,
                    shared_state: (job.shared_state != durable_base.shared_state)
                        .then(|| job.shared_state.clone()),
                    guard_seq: (release.is_some() || deciding).then_some(seen_seq),
                    release,
                    durable,
                    lease_ttl: settings.lease_ttl,
                };
                let result = self.inner.commits.save(&self.inner.pool, save).await?;
                match result {
                    Saved::Ok { wake_seq, .. } => {
                        if job.status != saved.status {
                            self.on_status_change(&saved, &job, now);
                        }
                        saved = job.clone();
                        if durable {
                            durable_base = job.clone();
                        }
                        unsaved_since = None;
                        renew_at = Instant::now() + settings.lease_ttl / 3;
                        self.inner.changes.send(self.id.clone()).ok();
                        if release.is_some() {
                            return Ok(());
                        }
                        if wake_seq != seen_seq {
                            needs_refresh = true;
                        }
                    }
                    Saved::Conflict => {
                        // A client request arrived: forget this plan, learn it, plan again.
                        job = before_plan;
                        needs_refresh = true;
                        continue;
                    }
                    Saved::LeaseLost => {
                        self.lease_lost();
                        return Ok(());
                    }
                }
            }

            for step in plan.steps {
                in_flight.insert(step.task);
                calls.push(self.call(&job, step));
            }

            if job == saved {
                unsaved_since = None;
            }
            let timer = if stopping { None } else { plan.wake_at };
            // Changes held back are written at the latest WRITE_DELAY after the first of them.
            let flush_at = unsaved_since.map(|since| since + WRITE_DELAY);
            let wakeup = self
                .wait(&mut calls, timer, flush_at, renew_at, stopping, grace_until)
                .await;
            match wakeup {
                Wakeup::Answer(idx, op, result) => {
                    in_flight.remove(&idx);
                    self.apply(&mut job, idx, op, result);
                    // Fold in every other answer that is already there: one write for all.
                    while let Some(Some((idx, op, result))) = calls.next().now_or_never() {
                        in_flight.remove(&idx);
                        self.apply(&mut job, idx, op, result);
                    }
                }
                Wakeup::Woken => needs_refresh = true,
                Wakeup::Timer => {}
                Wakeup::Renew => {
                    let client = self.inner.pool.get().await?;
                    if !store::renew(&client, &self.id, &self.fence, settings.lease_ttl).await? {
                        self.lease_lost();
                        return Ok(());
                    }
                    renew_at = Instant::now() + settings.lease_ttl / 3;
                    // Requests that arrived meanwhile are picked up cheaply here too.
                    needs_refresh = true;
                }
                Wakeup::Shutdown => {
                    stopping = true;
                    grace_until = Some(Instant::now() + settings.shutdown_grace);
                }
                Wakeup::GraceOver => {
                    // Calls still in flight are abandoned: their answers are lost, and the next
                    // owner sends them again under the same request-id.
                    calls.clear();
                    in_flight.clear();
                }
            }
        }
    }

    async fn wait(
        &self,
        calls: &mut FuturesUnordered<CallFuture>,
        timer: Option<DateTime<Utc>>,
        flush_at: Option<Instant>,
        renew_at: Instant,
        stopping: bool,
        grace_until: Option<Instant>,
    ) -> Wakeup {
        // A wake-up already due still waits a moment: if a plan ever asked for a time in the
        // past while calls are in flight, the loop must not spin.
        let timer_at = timer.map(|at| {
            let d = (at - Utc::now()).to_std().unwrap_or_default();
            Instant::now() + d.max(Duration::from_millis(5))
        });
        tokio::select! {
            Some((idx, op, result)) = calls.next(), if !calls.is_empty() => Wakeup::Answer(idx, op, result),
            _ = self.wake.notified(), if !stopping => Wakeup::Woken,
            _ = sleep_until_opt(timer_at) => Wakeup::Timer,
            _ = sleep_until_opt(flush_at) => Wakeup::Timer,
            _ = tokio::time::sleep_until(renew_at) => Wakeup::Renew,
            _ = self.inner.shutdown.cancelled(), if !stopping => Wakeup::Shutdown,
            _ = sleep_until_opt(grace_until), if stopping => Wakeup::GraceOver,
        }
    }

    fn apply(&self, job: &mut Job, idx: usize, op: Op, result: CallResult) {
        metrics::counter!(m::PARTICIPANT_CALLS, "op" => op.as_str(), "outcome" => result.outcome.as_str())
            .increment(1);
        metrics::histogram!(m::PARTICIPANT_CALL_DURATION, "op" => op.as_str())
            .record(result.duration.as_secs_f64());
        tracing::debug!(job = %self.id, task = idx, op = op.as_str(), status = ?result.http_status, outcome = result.outcome.as_str(), "participant answered");
        if let Err(e) = planner::apply(job, idx, op, result.answer, Utc::now(), fastrand::f64()) {
            tracing::warn!(job = %self.id, task = idx, error = %e, "answer ignored");
        }
    }

    fn on_status_change(&self, before: &Job, after: &Job, now: DateTime<Utc>) {
        tracing::info!(job = %self.id, from = %before.status, to = %after.status, reason = ?after.failure_reason, "job status");
        if after.status.is_terminal() && !before.status.is_terminal() {
            metrics::counter!(m::JOBS_FINISHED, "status" => after.status.as_str()).increment(1);
            let secs = (now - after.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!(m::JOB_DURATION, "status" => after.status.as_str()).record(secs);
            if after.status == JobStatus::Heuristic {
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
        let request_id = task.task_id.clone();
        let idx = step.task;
        let op = step.op;
        match op {
            Op::Try => {
                let Some(spec) = task.try_spec.clone() else {
                    return immediate(idx, op, "a task without a taskURL cannot be tried".into());
                };
                let body = match mapping::try_body(&spec, &job.shared_state) {
                    Ok(b) => b,
                    Err(message) => return immediate(idx, op, message),
                };
                let deadline = job.deadline;
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
                            })
                            .await
                    };
                    (idx, op, result)
                }
                .boxed()
            }
            Op::Confirm | Op::Cancel => {
                let Some(link) = task.link.clone() else {
                    return immediate(idx, op, "the task holds no participant link".into());
                };
                let timeout = inner.settings.call_timeout;
                async move {
                    let _slot = inner.calls.acquire().await;
                    let ids = CallIds {
                        correlation_id: &correlation_id,
                        request_id: &request_id,
                        traceparent: traceparent.as_deref(),
                    };
                    let result = if op == Op::Confirm {
                        inner.client.confirm(&link, &ids, timeout).await
                    } else {
                        inner.client.cancel(&link, &ids, timeout).await
                    };
                    (idx, op, result)
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
            from: job.status.as_str().to_string(),
            event: "InjectedFault".into(),
        }),
        _ => Ok(()),
    }
}

/// A call that fails before anything is sent (an input mapping that does not resolve).
fn immediate(idx: usize, op: Op, message: String) -> CallFuture {
    let result = CallResult {
        answer: Answer::Refused { message },
        outcome: crate::participant::CallOutcome::Error,
        http_status: None,
        duration: Duration::ZERO,
    };
    futures::future::ready((idx, op, result)).boxed()
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
}
