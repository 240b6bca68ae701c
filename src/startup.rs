//! Building and running the whole coordinator: database, migrations, engine, HTTP servers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, ApiSettings, AppState, Shared};
use crate::config::{Config, ListenAddr};
use crate::domain::PlannerSettings;
use crate::embedded_pg::EmbeddedPostgres;
use crate::engine::{Engine, EngineSettings};
use crate::participant::ParticipantClient;
use crate::store;

/// Where the database comes from, resolved once.
pub struct Database {
    pub config: tokio_postgres::Config,
    /// The embedded cluster, when `DATABASE_URL` is unset; stopped at shutdown.
    pub embedded: Option<Arc<EmbeddedPostgres>>,
    /// Held while this process owns the embedded cluster (`TCC_DATA_DIR/coordinator.lock`):
    /// the operating system lets it go when the process ends, however it ends.
    _owner: Option<std::fs::File>,
}

/// The file a coordinator holds locked while it owns the embedded cluster under a data
/// directory.
const OWNER_LOCK: &str = "coordinator.lock";

/// Take ownership of the embedded cluster under `dir`, or say why not: another coordinator
/// owns it. A cluster left running by a coordinator that died is not owned: it is adopted.
fn own_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("TCC_DATA_DIR {}: {e}", dir.display()))?;
    let path = dir.join(OWNER_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("TCC_DATA_DIR {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            let socket = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            Err(anyhow::anyhow!(
                "TCC_DATA_DIR {} is in use: another coordinator runs the embedded PostgreSQL there, and only the coordinator that started it may stop it. \
                 To run several instances on one machine, let them share that PostgreSQL: start each other one with DATABASE_URL='{}' \
                 and its own TCC_LISTEN (and TCC_INSTANCE_ID); or give it its own TCC_DATA_DIR for a cluster of its own",
                dir.display(),
                EmbeddedPostgres::connection_string(&socket)
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::anyhow!(
            "TCC_DATA_DIR {}: cannot lock it: {e}",
            path.display()
        )),
    }
}

impl Database {
    /// `DATABASE_URL`, or the embedded PostgreSQL under `TCC_DATA_DIR` (refused when another
    /// coordinator owns it).
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        if let Some(c) = &config.database_url {
            return Ok(Database {
                config: c.clone(),
                embedded: None,
                _owner: None,
            });
        }
        let dir = config.data_dir.clone();
        let owner = own_data_dir(&dir)?;
        tracing::info!(data_dir = %dir.display(), "DATABASE_URL unset: starting the embedded PostgreSQL");
        let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir)).await??;
        pg.ensure_database().await?;
        Ok(Database {
            config: pg.config(),
            embedded: Some(Arc::new(pg)),
            _owner: Some(owner),
        })
    }

    /// Stop the embedded cluster, if this process runs one.
    pub async fn close(self) {
        if let Some(pg) = self.embedded {
            match tokio::task::spawn_blocking(move || pg.stop()).await {
                Ok(Ok(())) => tracing::info!("embedded PostgreSQL stopped"),
                Ok(Err(e)) => tracing::warn!(error = %e, "stopping the embedded PostgreSQL failed"),
                Err(e) => tracing::warn!(error = %e, "stopping the embedded PostgreSQL failed"),
            }
        }
    }
}

/// The listening sockets, bound before anything else starts.
pub struct Listeners {
    api: TcpListener,
    metrics: Option<TcpListener>,
}

impl Listeners {
    /// Bind `TCC_LISTEN` (and `TCC_METRICS_LISTEN`); host names are resolved here.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        async fn bind(name: &str, addr: &ListenAddr) -> anyhow::Result<TcpListener> {
            TcpListener::bind((addr.host.as_str(), addr.port))
                .await
                .map_err(|e| anyhow::anyhow!("{name} {addr}: {e}"))
        }
        let api = bind("TCC_LISTEN", &config.listen).await?;
        let metrics = match &config.metrics_listen {
            Some(addr) => Some(bind("TCC_METRICS_LISTEN", addr).await?),
            None => None,
        };
        Ok(Listeners { api, metrics })
    }
}

/// A coordinator, built and bound, ready to run.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    serve_limits: crate::server::ServeLimits,
    state: AppState,
    engine: Engine,
    notifier: crate::notify::Notifier,
}

impl Application {
    /// Bind the listeners, migrate the database, build the engine.
    pub async fn build(config: &Config, db: &tokio_postgres::Config) -> anyhow::Result<Self> {
        Self::build_on(Listeners::bind(config).await?, config, db).await
    }

    /// Migrate the database and build the engine, serving on listeners already bound.
    pub async fn build_on(
        listeners: Listeners,
        config: &Config,
        db: &tokio_postgres::Config,
    ) -> anyhow::Result<Self> {
        let Listeners {
            api: listener,
            metrics: metrics_listener,
        } = listeners;
        let mut db = db.clone();
        store::connection_defaults(&mut db);
        let db = &db;
        let applied = store::migrate(db).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "migrations applied");
        }
        let pool = store::pool(db.clone(), config.db_pool_size)?;
        let instance_id = config.instance_id();
        // `TCC_ALLOWED_TARGETS`: the API checks what requests name, the clients what they call.
        let targets = Arc::new(config.allowed_targets.clone());
        let engine = Engine::new(
            pool.clone(),
            db.clone(),
            ParticipantClient::new(config.max_inflight_calls, targets.clone())?,
            EngineSettings {
                instance_id: instance_id.clone(),
                lease_ttl: config.lease_ttl.0,
                scan_interval: config.scan_interval.0,
                call_timeout: config.call_timeout.0,
                max_inflight_calls: config.max_inflight_calls,
                max_active_jobs: config.max_active_jobs,
                max_inflight_requests: config.max_inflight_requests,
                shutdown_grace: config.shutdown_grace.0,
                try_first_wait: config.try_first_wait.0,
                retention: config.retention.0,
                planner: PlannerSettings {
                    confirm_margin: config.confirm_margin.0,
                    callback_horizon: config.callback_horizon.0,
                },
                heuristic_webhook: config.heuristic_webhook.clone(),
            },
        );
        engine
            .take_identity()
            .await
            .map_err(|e| anyhow::anyhow!("instance identity: {e}"))?;
        let state = AppState::new(Shared {
            pool,
            engine: engine.clone(),
            settings: Arc::new(ApiSettings {
                public_url: config.public_url.clone(),
                max_tasks: config.max_tasks,
                max_body: config.max_body.0,
                listen: listener.local_addr()?,
                request_timeout: config.request_timeout.0,
                body_read_timeout: config.header_read_timeout.0,
                db_timeout: config.db_timeout.0,
                max_inflight_requests: config.max_inflight_requests,
                api_keys: Arc::new(config.api_keys()),
                targets: targets.clone(),
            }),
            metrics: {
                let handle = crate::metrics::install();
                crate::metrics::set_max_participants(config.metrics_max_participants);
                handle
            },
            streams: Arc::new(tokio::sync::Semaphore::new(config.max_inflight_requests)),
        });
        let base_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", state.settings.listen));
        let notifier = crate::notify::Notifier::new(
            state.pool.clone(),
            crate::notify::NotifySettings {
                secret: config.webhook_secret.clone(),
                max_age: config.notify_max_age.0,
                base_url,
                scan_interval: config.scan_interval.0,
                call_timeout: config.call_timeout.0,
                smtp: config
                    .smtp_url
                    .as_deref()
                    .map(|url| {
                        crate::notify::Smtp::new(url, &config.smtp_from, config.call_timeout.0)
                    })
                    .transpose()?,
                targets: targets.clone(),
            },
            engine.outbox_signal(),
        )?;
        if config.smtp_url.is_none() {
            tracing::warn!(
                "TCC_SMTP_URL is not set: a heuristic job's contact.email cannot be told (its email notification fails, saying so)"
            );
        }
        tracing::info!(instance = %instance_id, "coordinator built");
        Ok(Application {
            listener,
            metrics_listener,
            serve_limits: crate::server::ServeLimits {
                header_read_timeout: config.header_read_timeout.0,
                max_connections: config.max_connections,
                write_timeout: config.header_read_timeout.0,
                shutdown_grace: config.shutdown_grace.0,
            },
            state,
            engine,
            notifier,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` resolves, then stop accepting, let the engine finish or hand back
    /// its work and release its leases, and return.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = tokio_util::sync::CancellationToken::new();
        self.engine.start_background();
        let notifier = tokio::spawn(self.notifier.run(stop.clone()));
        let limits = self.serve_limits;
        let metrics_server = self.metrics_listener.map(|l| {
            let app = api::metrics_router(self.state.clone());
            let stop = stop.clone();
            // A scraper or two: a few connections are plenty.
            let limits = crate::server::ServeLimits {
                max_connections: 64,
                ..limits
            };
            tokio::spawn(crate::server::serve(l, app, limits, async move {
                stop.cancelled().await
            }))
        });
        let app = api::router(self.state.clone());
        tracing::info!(addr = %self.listener.local_addr()?, "listening");
        let stop_api = stop.clone();
        let served = crate::server::serve(self.listener, app, limits, async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests");
            stop_api.cancel();
        })
        .await;
        stop.cancel();
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        self.engine.shutdown().await;
        let _ = notifier.await;
        self.state.pool.close();
        tracing::info!("engine stopped, leases released");
        served.map_err(Into::into)
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
