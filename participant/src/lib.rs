#![doc = include_str!("../README.md")]
//!
//! # The crate in short
//!
//! The service implements [`Service`]: `reserve` (which may refuse with a message), `confirm` and
//! `release`, each handed the library's open transaction, so that the service's own rows change
//! in the same commit as the reservation's state. It never commits itself. The library keeps the
//! reservations in one table of the service's own PostgreSQL ([`MIGRATION`]) and answers the
//! coordinator:
//!
//! - the Try ([`Participant::try_reserve`], called from the service's own route, or
//!   [`Participant::reserve`] for other frameworks): keyed by `correlation-id` + `request-id`;
//!   the answer is stored and replayed exactly on a repeat (refusals too); another body under the
//!   same ids is 422; concurrent repeats make one reservation; a Try after its `tcc-deadline`
//!   holds and stores nothing (409);
//! - the link ([`Participant::router`]: `GET`, `PUT`, `DELETE /reservations/{id}`): confirm,
//!   cancel and expiry are decided under the reservation's row lock, so exactly one of them wins,
//!   in any order, on any number of replicas;
//! - the sweeper ([`Participant::sweep`], [`Participant::spawn_sweeper`]): releases lapsed
//!   reservations in the transaction that marks them expired, and purges settled ones after a
//!   retention, in batches with `SKIP LOCKED`.
//!
//! Every time is the database's clock. Serialization failures and deadlocks are retried a bounded
//! number of times; any other database failure answers 503 with `Retry-After` and leaves nothing
//! half done. Metrics go through the `metrics` facade: `tcc_participant_reservations_total`
//! (label `outcome`) and `tcc_participant_sweeper_releases_total`.

mod answer;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;

pub use answer::Answer;
pub use deadpool_postgres::Transaction;
pub use tokio_postgres::IsolationLevel;

/// The table the library keeps its reservations in (`tcc_reservations`) and its indexes. It can
/// run at every start ([`migrate`] does so) or be copied into the service's own migrations.
pub const MIGRATION: &str = include_str!("../migrations/V1__tcc_reservations.sql");

/// The reservations counter: `outcome` is `reserved`, `refused`, `late` (a Try after its
/// `tcc-deadline`), `confirmed`, `canceled` or `expired`.
pub const RESERVATIONS: &str = "tcc_participant_reservations_total";
/// Reservations the sweeper released because they lapsed.
pub const SWEEPER_RELEASES: &str = "tcc_participant_sweeper_releases_total";

/// Create the library's table if it is not there (one replica at a time: an advisory lock).
pub async fn migrate(pool: &Pool) -> Result<(), Error> {
    let mut client = pool.get().await.map_err(Error::pool)?;
    let tx = client.transaction().await?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(7361102648459313)")
        .await?;
    tx.batch_execute(MIGRATION).await?;
    tx.commit().await?;
    Ok(())
}

/// A pool of at most `max_size` connections to `database_url` (a URL or key=value pairs), which
/// waits at most 10 s for a connection. Any pool will do; this one is a sensible default.
pub fn pool(database_url: &str, max_size: usize) -> Result<Pool, Error> {
    use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
    let config: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e| Error(format!("the database URL is malformed: {e}"), false))?;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
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
        .map_err(|e| Error(format!("the database pool: {e}"), false))
}

/// What a Try asked for, as the service's `reserve` sees it.
#[derive(Debug, Clone)]
pub struct TryRequest {
    pub correlation_id: String,
    pub request_id: String,
    /// What the Try is for, as the service's route said it (a SKU, an account): part of the
    /// request, so a repeat under the same ids must name the same.
    pub subject: String,
    /// The Try's JSON body.
    pub body: Value,
}

/// A reservation, as `confirm` and `release` see it.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The link's last segment.
    pub id: String,
    pub correlation_id: String,
    pub request_id: String,
    pub subject: String,
    pub body: Value,
    /// What `reserve` returned.
    pub data: Value,
    pub expires: DateTime<Utc>,
}

/// Why a reservation is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The coordinator canceled it.
    Canceled,
    /// It lapsed: the sweeper, or a confirm or cancel that came too late.
    Expired,
}

/// Why `reserve` did not reserve.
#[derive(Debug)]
pub enum Refusal {
    /// The service will not (out of stock, say): 409 with this message, stored and replayed on a
    /// repeat. What the service wrote in `reserve` is undone; the refusal is kept.
    Refused(String),
    /// The body is not what the service takes: 422 with this message; nothing is kept.
    Invalid(String),
    /// The database failed: retried when it is a serialization failure or a deadlock, else 503.
    Database(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Refusal {
    fn from(e: tokio_postgres::Error) -> Self {
        Refusal::Database(e)
    }
}

/// What a service does; each method runs inside the library's open transaction and must not
/// commit it. They may run more than once for one call when the database asks for a retry
/// (serialization failure, deadlock): only the last run's writes are committed.
pub trait Service: Send + Sync + 'static {
    /// Hold what the Try asks for. `Ok(data)`: reserved; `data` is kept with the reservation and
    /// handed to `confirm` and `release`.
    fn reserve(
        &self,
        tx: &Transaction<'_>,
        request: &TryRequest,
    ) -> impl Future<Output = Result<Value, Refusal>> + Send;

    /// Make the reservation's effect final (sell what was held). Called once per reservation.
    fn confirm(
        &self,
        tx: &Transaction<'_>,
        reservation: &Reservation,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send;

    /// Give back what the reservation held. Called once per reservation, instead of `confirm`.
    fn release(
        &self,
        tx: &Transaction<'_>,
        reservation: &Reservation,
        why: Release,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send;
}

/// How the library behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The public URL at which [`Participant::router`] is served: links are
    /// `{links}/reservations/{id}`. No trailing slash.
    pub links: String,
    /// How long a reservation is held before it lapses (60 s by default).
    pub hold: Duration,
    /// How long settled reservations are kept (and their Try answers replayed) before the purge
    /// removes them (7 days). Keep it longer than any coordinator retries a Try.
    pub retention: Duration,
    /// How often the sweeper runs (1 s).
    pub sweep_every: Duration,
    /// How many rows one sweeper or purge transaction takes (100).
    pub batch: i64,
    /// The isolation of every transaction (`READ COMMITTED`; stricter levels are retried on
    /// serialization failures).
    pub isolation: IsolationLevel,
    /// How many times a call is run when the database asks for a retry (5).
    pub attempts: u32,
    /// How long a call may wait for the database before it answers 503 (5 s).
    pub db_timeout: Duration,
}

impl Config {
    /// The defaults, with links under `links` (the URL the router is served at).
    pub fn new(links: impl Into<String>) -> Self {
        Config {
            links: links.into().trim_end_matches('/').to_string(),
            hold: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
            sweep_every: Duration::from_secs(1),
            batch: 100,
            isolation: IsolationLevel::ReadCommitted,
            attempts: 5,
            db_timeout: Duration::from_secs(5),
        }
    }
}

/// A failure of the database (or of getting a connection).
#[derive(Debug)]
pub struct Error(String, bool);

impl Error {
    fn pool(e: deadpool_postgres::PoolError) -> Self {
        Error(format!("no database connection: {e}"), false)
    }

    /// Whether running the call again may succeed at once: a serialization failure or a deadlock.
    fn retryable(&self) -> bool {
        self.1
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let retry = e.code().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        });
        // The server's code and message (the error's own text is only "db error").
        let text = match e.as_db_error() {
            Some(db) => format!("database: {} ({})", db.message(), db.code().code()),
            None => format!("database: {e}"),
        };
        Error(text, retry)
    }
}

/// What the sweeper did in one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Lapsed reservations released and marked expired.
    pub expired: u64,
    /// Settled reservations purged after the retention.
    pub purged: u64,
}

/// A participant: the service, its database and the library's settings. Cheap to clone.
pub struct Participant<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    pool: Pool,
    service: S,
    config: Config,
}

impl<S> Clone for Participant<S> {
    fn clone(&self) -> Self {
        Participant {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Service> Participant<S> {
    pub fn new(pool: Pool, service: S, config: Config) -> Self {
        Participant {
            inner: Arc::new(Inner {
                pool,
                service,
                config,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.inner.service
    }

    /// A reservation's link.
    pub fn link(&self, id: &str) -> String {
        format!("{}/reservations/{id}", self.inner.config.links)
    }

    /// The Try, for any framework: `correlation_id`, `request_id` and `deadline` are the headers'
    /// values (`None` when absent), `subject` what the route names, `body` the raw body.
    pub async fn reserve(&self, call: TryCall<'_>) -> Answer {
        store::try_reserve(self, call).await
    }

    /// `PUT {link}`, for any framework: 204 confirmed (once; a repeat 204), 404 canceled, expired
    /// or unknown.
    pub async fn confirm(&self, id: &str) -> Answer {
        store::settle(self, id, store::Settle::Confirm).await
    }

    /// `DELETE {link}`, for any framework: 204 released (once; a repeat 204), 409 confirmed, 404
    /// expired or unknown.
    pub async fn cancel(&self, id: &str) -> Answer {
        store::settle(self, id, store::Settle::Cancel).await
    }

    /// `GET {link}`, for any framework: the reservation's state.
    pub async fn state(&self, id: &str) -> Answer {
        store::state(self, id).await
    }

    /// One run of the sweeper: release what lapsed, purge what was settled before the
    /// retention, each in batches of `batch` rows, each batch one transaction.
    pub async fn sweep(&self) -> Result<Swept, Error> {
        store::sweep(self).await
    }

    /// The sweeper, every `sweep_every`, until the task is aborted. Failures are logged and
    /// retried at the next run.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                // Each run in a task of its own: a service's panic ends the run, not the sweeper.
                let run = me.clone();
                match tokio::spawn(async move { run.sweep().await }).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the reservations' sweeper failed; retrying");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the reservations' sweeper panicked; retrying");
                    }
                }
                tokio::time::sleep(me.inner.config.sweep_every).await;
            }
        })
    }

    /// The Try for an axum route: reads the headers, answers as [`Participant::reserve`].
    pub async fn try_reserve(
        &self,
        headers: &axum::http::HeaderMap,
        subject: &str,
        body: &[u8],
    ) -> axum::response::Response {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        self.reserve(TryCall {
            correlation_id: header("correlation-id"),
            request_id: header("request-id"),
            deadline: header("tcc-deadline"),
            subject,
            body,
        })
        .await
        .into()
    }

    /// The links' routes, to merge or nest at the URL `links` names: `GET`, `PUT` and `DELETE
    /// /reservations/{id}`.
    pub fn router<St: Clone + Send + Sync + 'static>(&self) -> axum::Router<St> {
        use axum::extract::{Path, State};
        use axum::routing::get;
        axum::Router::new()
            .route(
                "/reservations/{id}",
                get(
                    |State(p): State<Participant<S>>, Path(id): Path<String>| async move {
                        axum::response::Response::from(p.state(&id).await)
                    },
                )
                .put(
                    |State(p): State<Participant<S>>, Path(id): Path<String>| async move {
                        axum::response::Response::from(p.confirm(&id).await)
                    },
                )
                .delete(
                    |State(p): State<Participant<S>>, Path(id): Path<String>| async move {
                        axum::response::Response::from(p.cancel(&id).await)
                    },
                ),
            )
            .with_state(self.clone())
    }
}

/// A Try as received: the headers' values (`None` when absent), what the route names, the body.
#[derive(Debug, Clone, Copy)]
pub struct TryCall<'a> {
    pub correlation_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// `tcc-deadline`: after it the coordinator no longer acts on the answer.
    pub deadline: Option<&'a str>,
    pub subject: &'a str,
    pub body: &'a [u8],
}
