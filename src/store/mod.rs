//! The store: every SQL statement of the program, and nothing else.
//!
//! Writes that follow a claim are fenced by the lease owner and generation: a write that matches
//! no row means the lease was lost, and the caller must stop. Nothing here holds a transaction
//! open across anything but SQL. Timestamps the planner reasons about come from the caller; lease
//! times come from the database clock so that instances agree on them.
//!
//! By concern: [`rows`] (columns ↔ domain types), [`jobs`] (insert, load, save, list), [`leases`]
//! (claim, renew, release), [`requests`] (client requests, wake-ups), [`events`] (the event
//! log), [`instances`] (liveness), [`housekeeping`] (gauges, retention), [`definitions`] (job
//! definitions and their versions).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, tokio_postgres,
};
use serde_json::Value;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use crate::domain::actions::{Action, Gate, Refusal, client_refusal};
use crate::domain::event::{ActionKind, What};
use crate::domain::request::{Hold, Registration};
use crate::domain::retry::RetryPolicyPatch;
use crate::domain::{
    Callbacks, ConfirmState, Event, FailureReason, Job, JobId, JobSource, JobState, JobStatus,
    Link, Requested, Resolution, Submission, Task, TaskStatus, TrySpec,
};

mod definitions;
mod events;
mod housekeeping;
mod instances;
mod jobs;
mod leases;
mod notifications;
mod requests;
mod rows;

pub use definitions::*;
use events::{EventColumns, insert_events};
pub use events::{StoredEvent, list_events, log_action};
pub use housekeeping::*;
pub use instances::{deregister_instance, reap_dead, register_instance, try_lock_identity};
pub use jobs::*;
pub use leases::*;
pub use notifications::*;
pub use requests::*;
pub use rows::JobRecord;
use rows::{
    JOB_COLUMNS, TASK_COLUMNS, TaskSpecs, TaskStates, fields_from_row, job_from_row,
    state_from_row, tasks_of,
};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Serialises concurrent migration runs of several instances.
const MIGRATION_LOCK: i64 = 0x7463_635f_6d69_6772; // "tcc_migr"

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is shutting down: worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(tokio_postgres::Error),
    /// A row the program wrote cannot be read back: a bug or a manual edit.
    #[error("inconsistent row: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migration(String),
    /// A bounded queue in front of the database is full: nothing was written.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let unavailable = e.is_closed()
            || e.code().is_some_and(|c| {
                let c = c.code();
                // connection exceptions, insufficient resources, operator intervention
                c.starts_with("08") || c.starts_with("53") || c.starts_with("57")
            })
            || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if unavailable {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Db(e)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// A job id as stored in `column` (every one was checked on its way in).
fn stored_id(row: &tokio_postgres::Row, column: &str) -> Result<JobId> {
    JobId::try_from(row.try_get::<_, String>(column)?).map_err(corrupt)
}

/// Connection settings no session may go without, unless `DATABASE_URL` sets them: a connect
/// attempt gives up after 5 s (per host, so a dead first host of a multi-host URL does not hold
/// up the next), and a TCP connection whose peer vanished without a word (a machine gone, a
/// network cut: no reset ever comes) is noticed within about 15 s, idle (keepalive probes
/// after 5 s, every 2 s, 5 of them) or not (unacknowledged data for 15 s ends it). Every
/// session of the program, pooled, identity, wake-up listener and migrations, uses them.
pub fn connection_defaults(config: &mut tokio_postgres::Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_keepalives_idle() >= Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(5));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(2));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(5);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(15));
    }
}

/// A connection pool over `config`.
///
/// Its sessions plan each prepared statement once (`plan_cache_mode = force_generic_plan`): every
/// statement here is written so that one plan fits all parameters (lookups by key, and a list
/// query whose text carries only the filters given), and re-planning the engine's statements on
/// every execution cost more than a quarter of PostgreSQL's CPU. A plan made once must not bet on
/// the table being small (as it is when an instance starts on a new database): every statement
/// here reaches its rows through an index, so the sessions rule out sequential scans and hash or
/// merge joins where an index path exists.
///
/// JIT compilation is off: every statement here is short, and the cost penalty of a disabled
/// sequential scan (on a table too small for an index to matter, such as `instances`) pushes a
/// plan's estimate past `jit_above_cost`, which once made PostgreSQL compile the per-scan
/// liveness statement, 0.2 ms of work, for 460 ms of CPU every second (docs/performance.md).
///
/// `synchronous_commit` is set, not inherited: a server configured `off` must not turn "202 only
/// once durable" into a promise the database does not keep. Writes that may be lost (and are
/// written again, see the engine's durable baseline) turn it off for their own transaction.
pub fn pool(mut config: tokio_postgres::Config, max_size: usize) -> Result<Pool> {
    const SESSION: &str = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
                           -c enable_hashjoin=off -c enable_mergejoin=off \
                           -c synchronous_commit=on -c jit=off";
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {SESSION}"),
        _ => SESSION.to_string(),
    };
    config.options(&options);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Apply the forward-only migrations under an advisory lock, so that instances starting together
/// take turns. Returns the versions applied now.
pub async fn migrate(config: &tokio_postgres::Config) -> Result<Vec<i32>> {
    run_migrations(config, refinery::Target::Latest).await
}

/// Apply the migrations up to `version` only (`migrate` applies them all): the tests of a
/// migration store rows as the version before it left them.
pub async fn migrate_up_to(config: &tokio_postgres::Config, version: i32) -> Result<Vec<i32>> {
    run_migrations(config, refinery::Target::Version(version)).await
}

async fn run_migrations(
    config: &tokio_postgres::Config,
    target: refinery::Target,
) -> Result<Vec<i32>> {
    let (mut client, connection) = config.connect(NoTls).await?;
    let conn = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_target(target)
        .run_async(&mut client)
        .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = conn.await;
    let report = report.map_err(|e| StoreError::Migration(e.to_string()))?;
    unlock?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.version())
        .collect())
}

/// The newest migration this build knows.
pub fn latest_migration() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

/// What `ready` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The schema is older than this build.
    NotMigrated,
    /// This instance has no row in `instances` (its identity is being taken anew).
    NotRegistered,
}

/// Reachable, writable, able to commit durably, and migrated at least as far as this build
/// expects. The statement rewrites this instance's row in `instances` (to the same values), so
/// its commit writes WAL and is a real one: on a standby it fails (read-only), and on a primary
/// whose required synchronous standby is missing it waits (the caller's time limit answers for
/// it), as every job's commit would. (A transaction that only takes a transaction id writes no
/// WAL of its own, and PostgreSQL neither flushes nor replicates its commit before answering.)
pub async fn ready(pool: &Pool, instance: &str) -> Result<Readiness> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "WITH touched AS (
                UPDATE instances SET started_at = started_at WHERE id = $1 RETURNING 1
             )
             SELECT (SELECT max(version) FROM refinery_schema_history),
                    (SELECT count(*) FROM touched)",
            &[&instance],
        )
        .await?;
    let version: Option<i32> = row.try_get(0)?;
    let touched: i64 = row.try_get(1)?;
    Ok(if version.is_none_or(|v| v < latest_migration()) {
        Readiness::NotMigrated
    } else if touched == 0 {
        Readiness::NotRegistered
    } else {
        Readiness::Ready
    })
}

/// The lease a driver holds: every write after the claim names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub generation: i64,
}
