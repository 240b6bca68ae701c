//! This instance's identity in the database: a session that holds the identity lock
//! (`store::instances`) for as long as the process lives.
//!
//! Other instances treat a lease whose owner holds no identity lock as free, so a process that
//! dies hands its jobs over within a scan interval. The flip side: when this session is lost
//! while the process lives (the database restarted, the session was terminated, or it stopped
//! answering), other instances may take this instance's jobs at any moment. So every driver
//! runs under the current incarnation's token and stops at once, writing nothing and calling
//! nobody, when the session is lost; the engine drives again only after the lock is taken anew,
//! its registration written and its former leases freed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::store::{self, StoreError};

/// How often the identity session is checked, and how long one check may take: a session that
/// stops answering is given up well before any lease (at least twice a call timeout) lapses.
const CHECK_EVERY: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One open identity session.
pub struct Session {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

/// This instance's identity: the current incarnation (a token cancelled when the session holding
/// the identity lock is lost), the session until it is watched, and the watching task.
pub struct Identity {
    id: String,
    db: tokio_postgres::Config,
    current: Mutex<CancellationToken>,
    /// From `take` until `start` hands it to the watching task.
    session: Mutex<Option<Session>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every use replaces or takes a value whole: a holder that panicked left it valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Identity {
    pub fn new(id: String, db: tokio_postgres::Config) -> Self {
        let lost = CancellationToken::new();
        lost.cancel();
        Identity {
            id,
            db,
            current: Mutex::new(lost),
            session: Mutex::new(None),
            task: Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    /// The token drivers run under, while the identity is held.
    pub fn live(&self) -> Option<CancellationToken> {
        let t = lock(&self.current).clone();
        (!t.is_cancelled()).then_some(t)
    }

    /// Take the identity for the first time (fails when another live instance holds the id).
    pub async fn take(&self, patience: Duration) -> Result<(), StoreError> {
        let session = self.open(patience).await?;
        *lock(&self.session) = Some(session);
        Ok(())
    }

    /// Watch the session taken by `take` until `stop`.
    pub fn start(self: &Arc<Self>) {
        if let Some(session) = lock(&self.session).take() {
            let this = self.clone();
            let task = tokio::spawn(async move { this.watch(session).await });
            *lock(&self.task) = Some(task);
        }
    }

    /// Deregister and close the session; returns when the watching task has ended.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Open a session, take the identity lock (waiting up to `patience` for an earlier process
    /// under the same id to be gone), register, free that process's leases, and start a new
    /// incarnation.
    async fn open(&self, patience: Duration) -> Result<Session, StoreError> {
        let (client, connection) = self.db.connect(NoTls).await?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let until = tokio::time::Instant::now() + patience;
        loop {
            if store::try_lock_identity(&client, &self.id).await? {
                break;
            }
            if tokio::time::Instant::now() >= until {
                connection.abort();
                return Err(StoreError::Unavailable(format!(
                    "another live instance holds the instance id {:?} (TCC_INSTANCE_ID): give each instance its own id",
                    self.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let freed = store::register_instance(&client, &self.id).await?;
        if freed > 0 {
            tracing::info!(
                freed,
                "freed the leases an earlier process under this instance id left"
            );
        }
        *lock(&self.current) = CancellationToken::new();
        Ok(Session { client, connection })
    }

    /// Watch `session` until `stop`; when it is lost, stop every driver and take the identity
    /// anew. At `stop`, deregister and close.
    async fn watch(&self, mut session: Session) {
        let stop = self.stop.clone();
        loop {
            let lost = tokio::select! {
                _ = stop.cancelled() => false,
                _ = Self::until_lost(&mut session) => true,
            };
            if !lost {
                if let Err(e) = store::deregister_instance(&session.client, &self.id).await {
                    tracing::warn!(error = %e, "could not deregister this instance; others will notice it is gone");
                }
                session.connection.abort();
                return;
            }
            lock(&self.current).cancel();
            session.connection.abort();
            tracing::warn!(
                "the database session holding this instance's identity was lost: drivers stopped; taking it anew"
            );
            let mut delay = Duration::from_millis(100);
            session = loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = self.open(CHECK_TIMEOUT) => match r {
                        Ok(s) => break s,
                        Err(e) => tracing::warn!(error = %e, "taking the instance identity failed; retrying"),
                    },
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            };
            tracing::info!("instance identity taken anew: driving again");
        }
    }

    /// Resolves when the session ends or stops answering.
    async fn until_lost(session: &mut Session) {
        loop {
            tokio::select! {
                _ = &mut session.connection => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            match tokio::time::timeout(CHECK_TIMEOUT, session.client.simple_query("SELECT 1")).await
            {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    }
}
