//! Scenarios: a load of jobs against coordinator instances while faults are injected, then the
//! promise is checked from the participants' side.
//!
//! The promise, for every accepted job: it reaches a terminal status within a bound; either every
//! participant applied the confirm exactly once, or none applied a confirm and every reservation
//! was released (canceled or lapsed), or the job is heuristic; no reservation ever saw two calls
//! at once; the coordinator's view of each task matches the participant's ledger; and every
//! heuristic job was reported to its contact and to the operators.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use tcc_coordinator::domain::{JobId, JobStatus, TaskStatus};
use tcc_coordinator::embedded_pg::{EmbeddedPostgres, create_database};
use tcc_coordinator::store::{self, JobRecord};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::participant::{Faults, ParticipantService, Reservation};
use super::procs::{Instance, pause_postgres};
use super::proxy::{Mode, Proxy, Target};
use super::receiver::Receiver;
use super::replication::Pair;
use super::rules::ResState;
use super::sdk;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One instance, SIGKILLed and restarted again and again, during tries, confirms, cancels.
    KillCoordinator,
    /// Three instances on one database, killed and started while jobs run.
    ThreeInstances,
    /// PostgreSQL restarted (fast and immediate), paused, and its link cut past a lease.
    Postgres,
    /// Participants failing, slow past the timeouts, losing answers, partitioned past expiry.
    FlakyParticipants,
    /// Reservations that expire close to the confirm.
    ShortExpiries,
    /// A primary and a synchronous standby (`replication::Pair`): the primary killed, the
    /// standby promoted, the old primary rebuilt as the new standby, and again, while jobs run.
    Failover,
    /// The participants are replicas of `inventory`, the tcc-participant library's example
    /// service, on one database of their own, SIGKILLed and restarted while coordinators are
    /// killed too; the stock ledger is checked against every job's outcome (`sdk.rs`).
    SdkParticipant,
}

impl Scenario {
    /// Every scenario: what the runner and the soak cycle through.
    pub const ALL: [Scenario; 7] = [
        Scenario::KillCoordinator,
        Scenario::ThreeInstances,
        Scenario::Postgres,
        Scenario::FlakyParticipants,
        Scenario::ShortExpiries,
        Scenario::Failover,
        Scenario::SdkParticipant,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillCoordinator => "kill-coordinator",
            Scenario::ThreeInstances => "three-instances",
            Scenario::Postgres => "postgres",
            Scenario::FlakyParticipants => "flaky-participants",
            Scenario::ShortExpiries => "short-expiries",
            Scenario::Failover => "failover",
            Scenario::SdkParticipant => "sdk-participant",
        }
    }

    /// Whether the scenario runs the `inventory` example (`Options::inventory`).
    pub fn needs_inventory(self) -> bool {
        self == Scenario::SdkParticipant
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    fn instances(self) -> usize {
        match self {
            Scenario::KillCoordinator => 1,
            Scenario::ThreeInstances => 3,
            _ => 2,
        }
    }
}

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Options {
    /// The coordinator binary.
    pub coordinator: PathBuf,
    /// The `inventory` example of tcc-participant (`super::find_inventory`): needed by the
    /// `sdk-participant` scenario only.
    pub inventory: Option<PathBuf>,
    pub jobs: usize,
    /// The submissions are spread over this long, so that the faults hit jobs in every phase.
    pub duration: Duration,
    pub concurrency: usize,
    /// How long every accepted job may take to end once the faults stop.
    pub settle: Duration,
}

/// What one scenario run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub accepted: usize,
    pub completed: usize,
    pub failed: usize,
    pub canceled: usize,
    pub heuristic: usize,
    /// Heuristic jobs whose participants turn out to agree: the coordinator could not know
    /// (an answer was lost and the link expired) and said so instead of guessing.
    pub heuristic_unknown: usize,
    pub violations: Vec<String>,
    pub longest: Duration,
    pub elapsed: Duration,
    /// Failover: from each promotion to the first job answered 202 after it.
    pub promotion_to_accept: Vec<Duration>,
    /// Jobs sent once without an idempotency key whose answer was lost, and how many of them
    /// turned out stored (`resolve_unanswered`).
    pub unanswered: usize,
    pub unanswered_stored: usize,
}

impl Report {
    pub fn line(&self) -> String {
        format!(
            "{:<19} seed={:<20} accepted={:<5} completed={:<5} failed={:<5} canceled={:<4} heuristic={:<3} (unknown outcome {}) violations={} longest={:.1}s elapsed={:.1}s",
            self.scenario,
            self.seed,
            self.accepted,
            self.completed,
            self.failed,
            self.canceled,
            self.heuristic,
            self.heuristic_unknown,
            self.violations.len(),
            self.longest.as_secs_f64(),
            self.elapsed.as_secs_f64(),
        ) + &self.failovers()
            + &self.unanswered()
    }

    /// ` unanswered=N (stored M)`, for runs that lost the answer to a job sent without a key.
    fn unanswered(&self) -> String {
        if self.unanswered == 0 {
            return String::new();
        }
        format!(
            " unanswered={} (stored {})",
            self.unanswered, self.unanswered_stored
        )
    }

    /// ` failovers=N promotion-to-accept max=…s`, for runs with failovers.
    fn failovers(&self) -> String {
        match self.promotion_to_accept.iter().max() {
            Some(max) => format!(
                " failovers={} promotion-to-accept max={:.2}s",
                self.promotion_to_accept.len(),
                max.as_secs_f64()
            ),
            None => String::new(),
        }
    }
}

/// The database cluster shared by the scenarios of one run.
pub struct World {
    pub(super) pg: Arc<EmbeddedPostgres>,
    socket: PathBuf,
}

impl World {
    /// Blocking: starts (or adopts) the cluster under `dir`.
    pub fn start(dir: &std::path::Path) -> Result<World, String> {
        let pg = Arc::new(EmbeddedPostgres::start(dir).map_err(|e| e.to_string())?);
        let socket = pg.socket_dir().join(".s.PGSQL.5432");
        Ok(World { pg, socket })
    }

    pub fn stop(&self) {
        let _ = self.pg.stop();
    }
}

/// What the client does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientPlan {
    AutoConfirm,
    Confirm,
    Cancel,
}

/// A job some coordinator answered 202, and the document it was submitted with.
pub(super) struct Accepted {
    pub(super) id: String,
    pub(super) correlation_id: String,
    pub(super) document: Value,
}

/// Makes a job's document from the run's generator, its correlation id and the client's plan.
pub(super) type Document = Arc<dyn Fn(&mut fastrand::Rng, &str, ClientPlan) -> Value + Send + Sync>;

fn job_document(
    rng: &mut fastrand::Rng,
    base: &str,
    hooks: &str,
    correlation_id: &str,
    plan: ClientPlan,
) -> Value {
    let n = rng.usize(1..=5);
    let tasks: Vec<Value> = (0..n)
        .map(|t| {
            json!({
                "taskID": format!("t{t}"),
                "taskURL": format!("{base}/try/item"),
                "taskMaxTTL": 2,
                // Checked after the run: the shared state must hold every value mapped out of a
                // Try answer, however the coordinator's writes fared.
                "outputMapping": {format!("/links/t{t}"): "/participantLink/uri"}
            })
        })
        .collect();
    json!({
        "correlationID": correlation_id,
        "jobMaxTTL": 20,
        "autoConfirm": plan == ClientPlan::AutoConfirm,
        "retryPolicy": {"maxAttempts": 4, "initialDelay": 0.05, "maxDelay": 1},
        // A heuristic outcome must reach the contact (and the operators) at least once.
        "contact": {"webhook": format!("{hooks}/contact")},
        "tasks": tasks,
    })
}

/// Send until some instance answers; the idempotency key makes retries safe.
pub(super) async fn submit(
    http: &reqwest::Client,
    instances: &[String],
    rng: &mut fastrand::Rng,
    job: &Value,
    key: &str,
    until: Instant,
) -> Option<String> {
    let body = job.to_string();
    while Instant::now() < until {
        let addr = &instances[rng.usize(..instances.len())];
        let resp = http
            .post(format!("{addr}/jobs"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.clone())
            .send()
            .await;
        if let Ok(r) = resp
            && r.status() == 202
            && let Ok(text) = r.text().await
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(id) = v["jobID"].as_str()
        {
            return Some(id.to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Sent once to some instance, without an idempotency key: the job's id if it answered 202.
async fn submit_once(
    http: &reqwest::Client,
    instances: &[String],
    rng: &mut fastrand::Rng,
    job: &Value,
) -> Option<String> {
    let addr = &instances[rng.usize(..instances.len())];
    let r = http
        .post(format!("{addr}/jobs"))
        .header("content-type", "application/json")
        .body(job.to_string())
        .send()
        .await
        .ok()?;
    if r.status() != 202 {
        return None;
    }
    let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
    v["jobID"].as_str().map(str::to_string)
}

/// Jobs sent without a key whose answer was lost (`load`), once the run has settled: one that
/// was stored joins `accepted`, to be checked as any; one that was not must have had nothing
/// confirmed (its Tries may have reserved: those reservations lapse); a correlation id stored
/// twice is a violation.
pub(super) async fn resolve_unanswered(
    client: &impl tokio_postgres::GenericClient,
    unanswered: Vec<Accepted>,
    participant: &ParticipantService,
    accepted: &mut Vec<Accepted>,
    report: &mut Report,
) -> Result<(), String> {
    report.unanswered += unanswered.len();
    for mut u in unanswered {
        let rows = client
            .query(
                "SELECT id FROM jobs WHERE correlation_id = $1",
                &[&u.correlation_id],
            )
            .await
            .map_err(|e| e.to_string())?;
        match rows.as_slice() {
            [row] => {
                u.id = row.get(0);
                accepted.push(u);
                report.unanswered_stored += 1;
            }
            [] => {
                for r in participant.reservations_of(&u.correlation_id) {
                    if r.state == ResState::Confirmed {
                        report.violations.push(format!(
                            "{}: never stored, yet its reservation {} was confirmed",
                            u.correlation_id, r.id
                        ));
                    }
                }
            }
            _ => report.violations.push(format!(
                "{}: sent once, stored {} times",
                u.correlation_id,
                rows.len()
            )),
        }
    }
    Ok(())
}

/// A client request (confirm or cancel) retried until some instance records it.
pub(super) async fn client_request(
    http: &reqwest::Client,
    instances: &[String],
    rng: &mut fastrand::Rng,
    path: &str,
    until: Instant,
) {
    while Instant::now() < until {
        let addr = &instances[rng.usize(..instances.len())];
        let resp = http.post(format!("{addr}{path}")).send().await;
        if let Ok(r) = resp
            && (r.status().is_success() || r.status() == 409)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Check one job against the participant's ledger; returns the violations.
fn check_job(record: &JobRecord, reservations: &[Reservation], report: &mut Report) -> Vec<String> {
    let job = &record.job;
    let now = Utc::now();
    let mut v = own_rows(record, report);
    let by_task = |task_id: &str| reservations.iter().find(|r| r.task_id == task_id);
    for r in reservations {
        if r.confirms_applied > 1 {
            v.push(format!(
                "{}: reservation {} confirmed {} times",
                job.id, r.id, r.confirms_applied
            ));
        }
    }
    let confirmed: Vec<&Reservation> = reservations
        .iter()
        .filter(|r| r.state == ResState::Confirmed)
        .collect();
    match job.status() {
        JobStatus::Completed => {
            report.completed += 1;
            for t in &job.tasks {
                if by_task(&t.task_id).map(|r| r.state) != Some(ResState::Confirmed) {
                    v.push(format!(
                        "{}: completed, but task {} is not confirmed at the participant",
                        job.id, t.task_id
                    ));
                }
            }
        }
        JobStatus::Failed | JobStatus::Canceled => {
            if job.status() == JobStatus::Failed {
                report.failed += 1;
            } else {
                report.canceled += 1;
            }
            for r in &confirmed {
                v.push(format!(
                    "{}: {}, but reservation {} (task {}) was confirmed",
                    job.id,
                    job.status(),
                    r.id,
                    r.task_id
                ));
            }
            for t in &job.tasks {
                if let Some(r) = by_task(&t.task_id)
                    && t.status == TaskStatus::Canceled
                    && !r.released(now)
                {
                    v.push(format!(
                        "{}: task {} canceled, but the participant still holds {}",
                        job.id, t.task_id, r.id
                    ));
                }
            }
        }
        JobStatus::Heuristic => {
            report.heuristic += 1;
            let all = job
                .tasks
                .iter()
                .all(|t| by_task(&t.task_id).map(|r| r.state) == Some(ResState::Confirmed));
            if all || confirmed.is_empty() {
                report.heuristic_unknown += 1;
            }
        }
        other => v.push(format!("{}: still {other} after the settle time", job.id)),
    }
    // Per task: what the coordinator says must not contradict the ledger.
    for t in &job.tasks {
        let state = by_task(&t.task_id).map(|r| r.state);
        let contradiction = match t.status {
            TaskStatus::Confirmed => state != Some(ResState::Confirmed),
            TaskStatus::Canceled | TaskStatus::Failed | TaskStatus::Expired => {
                state == Some(ResState::Confirmed)
            }
            _ => false,
        };
        if contradiction {
            v.push(format!(
                "{}: task {} is {} but the participant's reservation is {:?}",
                job.id, t.task_id, t.status, state
            ));
        }
    }
    v
}

/// The checks of a job's own rows, which must agree with its status whatever was lost in a
/// crash: a finished job has no unfinished task, a heuristic job has a task that explains it,
/// and every value mapped out of a Try answer is in the shared state. Also counts the time the
/// job took to end into `report.longest`.
pub(super) fn own_rows(record: &JobRecord, report: &mut Report) -> Vec<String> {
    let job = &record.job;
    let mut v = Vec::new();
    if job.status().is_terminal() {
        for t in job.tasks.iter().filter(|t| !t.status.is_terminal()) {
            v.push(format!(
                "{}: {}, but task {} is still {}",
                job.id,
                job.status(),
                t.task_id,
                t.status
            ));
        }
    }
    if job.status() == JobStatus::Heuristic {
        let some = |s: &[TaskStatus]| job.tasks.iter().any(|t| s.contains(&t.status));
        let explained = some(&[TaskStatus::Heuristic])
            || (some(&[TaskStatus::Confirmed])
                && some(&[
                    TaskStatus::Canceled,
                    TaskStatus::Expired,
                    TaskStatus::Failed,
                ]));
        if !explained {
            v.push(format!(
                "{}: heuristic, but no task explains it ({})",
                job.id,
                job.tasks
                    .iter()
                    .map(|t| format!("{} {}", t.task_id, t.status))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for t in &job.tasks {
        let Some(mapped) = t
            .try_response
            .as_deref()
            .and_then(|r| r.pointer("/participantLink/uri"))
        else {
            continue;
        };
        let held = job.shared_state.pointer(&format!("/links/{}", t.task_id));
        if held != Some(mapped) {
            v.push(format!(
                "{}: task {} answered {mapped} for /links/{}, but the shared state holds {held:?}",
                job.id, t.task_id, t.task_id
            ));
        }
    }
    if job.status().is_terminal() {
        let took = (record.updated_at - job.created_at)
            .to_std()
            .unwrap_or_default();
        report.longest = report.longest.max(took);
    }
    v
}

/// Run one scenario.
pub async fn run(world: &World, scenario: Scenario, seed: u64, opts: &Options) -> Report {
    let started = Instant::now();
    let mut report = Report {
        scenario: scenario.name().into(),
        seed,
        ..Report::default()
    };
    let ran = if scenario == Scenario::SdkParticipant {
        sdk::run(world, seed, opts, &mut report).await
    } else {
        run_inner(world, scenario, seed, opts, &mut report).await
    };
    match ran {
        Ok(()) => {}
        Err(e) => report
            .violations
            .push(format!("the run itself failed: {e}")),
    }
    report.elapsed = started.elapsed();
    report
}

async fn run_inner(
    world: &World,
    scenario: Scenario,
    seed: u64,
    opts: &Options,
    report: &mut Report,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let db = format!("chaos_{}_{seed}", scenario.name().replace('-', "_"));
    // The failover scenario has a replicated pair of its own; the others share the world's.
    let pair = if scenario == Scenario::Failover {
        let dir = world.pg.socket_dir().join(format!("fo-{seed}"));
        let pair = tokio::task::spawn_blocking(move || Pair::start(&dir))
            .await
            .map_err(|e| err(&e))??;
        create_database(&pair.primary_config("postgres"), &db)
            .await
            .map_err(|e| err(&e))?;
        Some(Arc::new(std::sync::Mutex::new(pair)))
    } else {
        create_database(&world.pg.config_for("postgres"), &db)
            .await
            .map_err(|e| err(&e))?;
        None
    };

    let (pg_proxy, _pg_task) = Proxy::start(Target::Unix(world.socket.clone()), stop.clone())
        .await
        .map_err(|e| err(&e))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err(&e))?;
    let participant_addr = listener.local_addr().map_err(|e| err(&e))?;
    let (p_proxy, _p_task) = Proxy::start(Target::Tcp(participant_addr), stop.clone())
        .await
        .map_err(|e| err(&e))?;
    let base = format!("http://{}", p_proxy.addr);
    let (participant, _participant_task) =
        ParticipantService::serve(listener, Some(base.clone()), seed, false)
            .map_err(|e| err(&e))?;
    let receiver = Receiver::start(seed).await?;
    let hooks = receiver.base.clone();
    let operators = receiver.url("ops");

    let database_url = match &pair {
        Some(p) => lock(p).url(&db),
        None => format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5",
            pg_proxy.addr.port()
        ),
    };
    let instances = start_instances(scenario, opts, &database_url, Some(&operators))?;
    let addrs: Vec<String> = instances.iter().map(|i| i.addr.clone()).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| err(&e))?;
    wait_ready(&http, &addrs).await?;

    match scenario {
        Scenario::FlakyParticipants => participant.set_faults(Faults {
            error_rate: 0.1,
            slow_rate: 0.05,
            lose_answer_rate: 0.05,
            refuse_confirm_rate: 0.01,
            fail_try_rate: 0.05,
            // Half the slow Tries still reserve after their deadline, unheard: reservations the
            // coordinator never learns of must lapse without harm.
            ignore_deadline_rate: 0.5,
            ttl: (Duration::from_secs(4), Duration::from_secs(8)),
            slow_for: Duration::from_millis(1500),
            latency: (Duration::ZERO, Duration::from_millis(100)),
        }),
        Scenario::ShortExpiries => participant.set_faults(Faults {
            // Some inside the confirm margin (1 s), some lapsing while a confirm is retried.
            ttl: (Duration::from_millis(900), Duration::from_millis(2500)),
            error_rate: 0.15,
            ..participant.faults()
        }),
        _ => participant.set_faults(Faults {
            fail_try_rate: 0.03,
            // Calls take long enough for kills and restarts to land in the middle of them.
            latency: (Duration::from_millis(20), Duration::from_millis(400)),
            ..participant.faults()
        }),
    }

    let instances = Arc::new(Mutex::new(instances));
    let load_done = CancellationToken::new();
    let accepted = Arc::new(Mutex::new(Vec::<Accepted>::new()));
    let failover = pair.clone().map(|pair| Failover {
        pair,
        http: http.clone(),
        addrs: addrs.clone(),
        base: base.clone(),
        hooks: hooks.clone(),
        accepted: accepted.clone(),
    });
    let faults = tokio::spawn(inject(
        scenario,
        seed,
        instances.clone(),
        world.pg.clone(),
        pg_proxy.clone(),
        p_proxy.clone(),
        failover,
        load_done.clone(),
    ));

    let document: Document = {
        let (base, hooks) = (base.clone(), hooks.clone());
        Arc::new(move |rng, correlation_id, plan| {
            job_document(rng, &base, &hooks, correlation_id, plan)
        })
    };
    let unanswered = Arc::new(Mutex::new(Vec::<Accepted>::new()));
    load(
        scenario,
        seed,
        opts,
        &http,
        &addrs,
        document,
        &accepted,
        Some(&unanswered),
    )
    .await;
    load_done.cancel();
    match faults.await {
        Ok(Injected {
            promotion_to_accept,
            errors,
        }) => {
            if scenario == Scenario::Failover && promotion_to_accept.is_empty() {
                report
                    .violations
                    .push("the run never failed over".to_string());
            }
            for (i, took) in promotion_to_accept.iter().enumerate() {
                if *took > MAX_PROMOTION_TO_ACCEPT {
                    report.violations.push(format!(
                        "failover {}: the first job was accepted {:.1}s after the promotion (at most {:?})",
                        i + 1,
                        took.as_secs_f64(),
                        MAX_PROMOTION_TO_ACCEPT
                    ));
                }
            }
            report.promotion_to_accept = promotion_to_accept;
            report.violations.extend(errors);
        }
        Err(e) => report
            .violations
            .push(format!("the fault injector failed: {e}")),
    }

    // Heal everything, and let every accepted job end.
    pg_proxy.set(Mode::Pass);
    p_proxy.set(Mode::Pass);
    participant.set_faults(Faults {
        ttl: participant.faults().ttl,
        latency: participant.faults().latency,
        ..Faults::default()
    });
    if let Some(pid) = world.pg.postmaster_pid() {
        pause_postgres(pid, false);
    }
    for inst in instances.lock().await.iter_mut() {
        inst.revive().map_err(|e| err(&e))?;
    }
    let mut accepted = std::mem::take(&mut *accepted.lock().await);
    let unanswered = std::mem::take(&mut *unanswered.lock().await);

    let checker_config = match &pair {
        Some(p) => lock(p).primary_config(&db),
        None => world.pg.config_for(&db),
    };
    let checker = store::pool(checker_config, 2).map_err(|e| err(&e))?;
    wait_terminal(&checker, opts.settle).await?;
    // Reservations of canceled jobs may still be lapsing: give the longest one its time.
    let client = checker.get().await.map_err(|e| err(&e))?;
    resolve_unanswered(&**client, unanswered, &participant, &mut accepted, report).await?;
    report.accepted = accepted.len();
    for a in &accepted {
        let Some(record) = store::load_job(&client, &JobId::parse(&a.id).map_err(|e| err(&e))?)
            .await
            .map_err(|e| err(&e))?
        else {
            report
                .violations
                .push(format!("{}: accepted but not stored", a.id));
            continue;
        };
        let reservations = participant.reservations_of(&a.correlation_id);
        let found = check_job(&record, &reservations, report);
        report.violations.extend(found);
    }
    // Every heuristic job was reported to its contact and to the operators, at least once
    // (deliveries are retried with backoff: give them their time).
    let heuristic: Vec<&str> = {
        let mut ids = Vec::new();
        for a in &accepted {
            if let Some(r) = store::load_job(&client, &JobId::parse(&a.id).map_err(|e| err(&e))?)
                .await
                .map_err(|e| err(&e))?
                && r.job.status() == JobStatus::Heuristic
            {
                ids.push(a.id.as_str());
            }
        }
        ids
    };
    let told_until = Instant::now() + Duration::from_secs(60);
    loop {
        let untold: Vec<(&str, &str)> = heuristic
            .iter()
            .flat_map(|id| [("contact", *id), ("ops", *id)])
            .filter(|(path, id)| !receiver.told(path, id))
            .collect();
        if untold.is_empty() {
            break;
        }
        if Instant::now() >= told_until {
            for (path, id) in untold {
                let whom = if path == "ops" {
                    "the operators' webhook"
                } else {
                    "its contact's webhook"
                };
                report
                    .violations
                    .push(format!("{id}: heuristic, but {whom} was never told"));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in participant.overlaps() {
        report
            .violations
            .push(format!("reservation {id} saw two calls at once"));
    }
    terminate(&instances, report).await;
    Ok(())
}

/// A graceful stop of every instance, which must exit 0.
pub(super) async fn terminate(instances: &Mutex<Vec<Instance>>, report: &mut Report) {
    for inst in instances.lock().await.iter_mut() {
        match inst.terminate() {
            Some(0) | None => {}
            Some(code) => report
                .violations
                .push(format!("instance {} exited {code} on SIGTERM", inst.name)),
        }
    }
}

/// The scenario's coordinator instances on `database_url`, started; `operators` is the
/// operators' webhook.
pub(super) fn start_instances(
    scenario: Scenario,
    opts: &Options,
    database_url: &str,
    operators: Option<&str>,
) -> Result<Vec<Instance>, String> {
    let mut env: Vec<(String, String)> = [
        ("DATABASE_URL", database_url),
        ("TCC_LEASE_TTL", "3s"),
        ("TCC_CALL_TIMEOUT", "1s"),
        ("TCC_SCAN_INTERVAL", "100ms"),
        ("TCC_SHUTDOWN_GRACE", "1s"),
        ("TCC_DB_POOL_SIZE", "8"),
        ("RUST_LOG", "error"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(hook) = operators {
        env.push(("TCC_HEURISTIC_WEBHOOK".into(), hook.into()));
    }
    let mut instances = Vec::new();
    for i in 0..scenario.instances() {
        let mut inst = Instance::new(
            &format!("{}-{i}", scenario.name()),
            opts.coordinator.clone(),
            env.clone(),
        )
        .map_err(|e| e.to_string())?;
        inst.start().map_err(|e| e.to_string())?;
        instances.push(inst);
    }
    Ok(instances)
}

/// The load: a closed loop of `opts.concurrency` clients submitting `opts.jobs` jobs spread
/// over `opts.duration`, each made by `document`; 10 % confirmed by the client, 10 % canceled.
/// Every job answered 202 joins `accepted`. With `unanswered`, a third of the jobs the
/// coordinator confirms on its own go once without an idempotency key (their first Tries may go
/// before they are stored): one whose answer is lost joins `unanswered` (its `id` empty), to be
/// looked up by its correlation id once the run is over (`resolve_unanswered`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn load(
    scenario: Scenario,
    seed: u64,
    opts: &Options,
    http: &reqwest::Client,
    addrs: &[String],
    document: Document,
    accepted: &Arc<Mutex<Vec<Accepted>>>,
    unanswered: Option<&Arc<Mutex<Vec<Accepted>>>>,
) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    let load_start = Instant::now();
    let deadline = load_start + opts.duration + Duration::from_secs(120) + opts.settle;
    for c in 0..opts.concurrency {
        let (http, addrs, accepted, next, document) = (
            http.clone(),
            addrs.to_vec(),
            accepted.clone(),
            next.clone(),
            document.clone(),
        );
        let unanswered = unanswered.cloned();
        let jobs = opts.jobs;
        let pace = opts.duration.div_f64(jobs.max(1) as f64);
        let name = scenario.name();
        clients.spawn(async move {
            let mut rng =
                fastrand::Rng::with_seed(seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs {
                    return;
                }
                tokio::time::sleep_until((load_start + pace.mul_f64(i as f64)).into()).await;
                let plan = match rng.u8(..10) {
                    0 => ClientPlan::Confirm,
                    1 => ClientPlan::Cancel,
                    _ => ClientPlan::AutoConfirm,
                };
                let correlation_id = format!("{name}-{seed}-{i}");
                let doc = document(&mut rng, &correlation_id, plan);
                if let Some(unanswered) = &unanswered
                    && plan == ClientPlan::AutoConfirm
                    && rng.u8(..3) == 0
                {
                    let id = submit_once(&http, &addrs, &mut rng, &doc).await;
                    let known = Accepted {
                        id: id.clone().unwrap_or_default(),
                        correlation_id,
                        document: doc,
                    };
                    match id {
                        Some(_) => accepted.lock().await.push(known),
                        None => unanswered.lock().await.push(known),
                    }
                    continue;
                }
                let Some(id) =
                    submit(&http, &addrs, &mut rng, &doc, &correlation_id, deadline).await
                else {
                    continue;
                };
                let path = match plan {
                    ClientPlan::Confirm => Some(format!("/jobs/{id}/confirm")),
                    ClientPlan::Cancel => Some(format!("/jobs/{id}/cancel")),
                    ClientPlan::AutoConfirm => None,
                };
                if let Some(path) = path {
                    client_request(&http, &addrs, &mut rng, &path, deadline).await;
                }
                accepted.lock().await.push(Accepted {
                    id,
                    correlation_id,
                    document: doc,
                });
            }
        });
    }
    while clients.join_next().await.is_some() {}
}

/// Wait until no job of the database `checker` reaches is unfinished, or `settle` has passed.
pub(super) async fn wait_terminal(
    checker: &deadpool_postgres::Pool,
    settle: Duration,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let settle_until = Instant::now() + settle;
    loop {
        let client = checker.get().await.map_err(|e| err(&e))?;
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM jobs WHERE status NOT IN ('completed', 'failed', 'canceled', 'heuristic')",
                &[],
            )
            .await
            .map_err(|e| err(&e))?
            .get(0);
        if open == 0 || Instant::now() >= settle_until {
            return Ok(());
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until every instance at `addrs` answers `/health/ready` with 200 (at most 60 s).
pub(super) async fn wait_ready(http: &reqwest::Client, addrs: &[String]) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(60);
    for addr in addrs {
        loop {
            let ok = http
                .get(format!("{addr}/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            if Instant::now() >= until {
                return Err(format!("instance {addr} never became ready"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// What the failover scenario's injector needs: the pair, and a client to submit the job that
/// times each failover (it joins the accepted jobs, and is checked like them).
struct Failover {
    pair: SharedPair,
    http: reqwest::Client,
    addrs: Vec<String>,
    base: String,
    /// The webhook receiver's base (`job_document`).
    hooks: String,
    accepted: Arc<Mutex<Vec<Accepted>>>,
}

type SharedPair = Arc<std::sync::Mutex<Pair>>;

fn lock(pair: &SharedPair) -> std::sync::MutexGuard<'_, Pair> {
    pair.lock().unwrap_or_else(|p| p.into_inner())
}

/// The contract: a coordinator accepts jobs again within 10 s of a promotion.
const MAX_PROMOTION_TO_ACCEPT: Duration = Duration::from_secs(10);

/// What the injector saw: the failovers' times, and faults it could not inject.
#[derive(Default)]
struct Injected {
    promotion_to_accept: Vec<Duration>,
    errors: Vec<String>,
}

/// One failover: the primary killed, the standby promoted a moment later (a failover manager
/// noticing), a job submitted until one is accepted (timed from the promotion), the old
/// primary rebuilt as the synchronous standby.
async fn fail_over(
    f: &Failover,
    rng: &mut fastrand::Rng,
    seed: u64,
    n: usize,
    out: &mut Injected,
) -> Result<(), String> {
    let blocking = |op: fn(&mut Pair) -> Result<(), String>| {
        let pair = f.pair.clone();
        async move {
            tokio::task::spawn_blocking(move || op(&mut lock(&pair)))
                .await
                .map_err(|e| e.to_string())?
        }
    };
    blocking(|p| p.kill_primary()).await?;
    tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
    blocking(Pair::promote).await?;
    let promoted = Instant::now();
    let correlation_id = format!("failover-{seed}-probe-{n}");
    let doc = job_document(
        rng,
        &f.base,
        &f.hooks,
        &correlation_id,
        ClientPlan::AutoConfirm,
    );
    let until = promoted + Duration::from_secs(60);
    let id = submit(&f.http, &f.addrs, rng, &doc, &correlation_id, until).await;
    out.promotion_to_accept.push(promoted.elapsed());
    if let Some(id) = id {
        f.accepted.lock().await.push(Accepted {
            id,
            correlation_id,
            document: doc,
        });
    }
    blocking(|p| p.rebuild_standby()).await
}

/// The faults of each scenario, drawn from the seed, until the load is done.
#[allow(clippy::too_many_arguments)]
async fn inject(
    scenario: Scenario,
    seed: u64,
    instances: Arc<Mutex<Vec<Instance>>>,
    pg: Arc<EmbeddedPostgres>,
    pg_proxy: Proxy,
    p_proxy: Proxy,
    failover: Option<Failover>,
    done: CancellationToken,
) -> Injected {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(17));
    let mut out = Injected::default();
    loop {
        let pause = Duration::from_millis(rng.u64(300..1500));
        tokio::select! {
            _ = done.cancelled() => return out,
            _ = tokio::time::sleep(pause) => {}
        }
        match scenario {
            Scenario::KillCoordinator => {
                let mut list = instances.lock().await;
                for inst in list.iter_mut() {
                    inst.kill();
                    let _ = inst.start();
                }
            }
            Scenario::ThreeInstances => kill_a_coordinator(&instances, &mut rng).await,
            Scenario::Postgres => {
                match rng.u8(..4) {
                    0 => {
                        let immediate = rng.bool();
                        let pg = pg.clone();
                        let _ = tokio::task::spawn_blocking(move || pg.restart(immediate)).await;
                    }
                    1 => {
                        if let Some(pid) = pg.postmaster_pid() {
                            pause_postgres(pid, true);
                            tokio::time::sleep(Duration::from_millis(rng.u64(500..2500))).await;
                            pause_postgres(pid, false);
                        }
                    }
                    2 => {
                        // Sometimes an instance also dies while it cannot reach the database.
                        if rng.bool() {
                            let mut list = instances.lock().await;
                            let victim = rng.usize(..list.len());
                            list[victim].kill();
                        }
                        pg_proxy
                            .cut_for(Duration::from_millis(rng.u64(3500..5000)))
                            .await
                    }
                    _ => pg_proxy.reset(),
                }
                let mut list = instances.lock().await;
                for inst in list.iter_mut() {
                    let _ = inst.revive();
                }
            }
            Scenario::FlakyParticipants => match rng.u8(..5) {
                0 => {
                    p_proxy
                        .cut_for(Duration::from_millis(rng.u64(1000..9000)))
                        .await
                }
                1 => p_proxy.reset(),
                2 => {
                    p_proxy.set(Mode::Refuse);
                    tokio::time::sleep(Duration::from_millis(rng.u64(100..800))).await;
                    p_proxy.set(Mode::Pass);
                }
                _ => {}
            },
            Scenario::ShortExpiries => {
                p_proxy.set(Mode::Latency(Duration::from_millis(rng.u64(0..300))));
            }
            // Its faults are its own (`sdk::inject`).
            Scenario::SdkParticipant => return out,
            Scenario::Failover => {
                let Some(f) = &failover else { return out };
                let n = out.promotion_to_accept.len() + 1;
                if let Err(e) = fail_over(f, &mut rng, seed, n, &mut out).await {
                    out.errors
                        .push(format!("failover {n} could not be done: {e}"));
                    return out;
                }
            }
        }
    }
}

/// A random instance SIGKILLed, started again now or later; each instance that is down is
/// started again with a chance of one in three.
pub(super) async fn kill_a_coordinator(instances: &Mutex<Vec<Instance>>, rng: &mut fastrand::Rng) {
    let mut list = instances.lock().await;
    let n = list.len();
    let victim = rng.usize(..n);
    list[victim].kill();
    if rng.bool() {
        let _ = list[victim].start();
    }
    for inst in list.iter_mut() {
        if rng.u8(..3) == 0 {
            let _ = inst.revive();
        }
    }
}
