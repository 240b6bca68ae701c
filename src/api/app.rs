//! What every handler shares (`AppState`: the pool, the engine, the settings) and what the HTTP
//! server runs (`HttpService`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;

use super::auth;
use crate::engine::Engine;

/// What the handlers share: one reference, cloned for every request and by every layer it
/// passes through (one count, not one per part).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of `AppState`.
pub struct Shared {
    pub pool: Pool,
    pub engine: Engine,
    pub settings: Arc<ApiSettings>,
    pub metrics: Option<PrometheusHandle>,
    /// Event streams open at once (`GET /jobs/{id}/events` as `text/event-stream`): at most
    /// `max_inflight_requests`, which they do not count against while they stream.
    pub streams: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub public_url: Option<String>,
    pub max_tasks: usize,
    pub max_body: usize,
    pub listen: std::net::SocketAddr,
    /// Every request's time limit (`TCC_REQUEST_TIMEOUT`).
    pub request_timeout: Duration,
    /// How long a request's body may take to arrive (`TCC_HEADER_READ_TIMEOUT`).
    pub body_read_timeout: Duration,
    /// Most requests in progress at once (`TCC_MAX_INFLIGHT_REQUESTS`).
    pub max_inflight_requests: usize,
    /// How long a request waits for the database (`TCC_DB_TIMEOUT`).
    pub db_timeout: Duration,
    /// `TCC_API_KEYS`; empty: the API is open.
    pub api_keys: Arc<auth::ApiKeys>,
    /// `TCC_ALLOWED_TARGETS`: the URLs a request may name.
    pub targets: Arc<crate::domain::policy::TargetPolicy>,
}

impl ApiSettings {
    /// The longest `Prefer: wait=N` honoured: a long poll answers well within the request's
    /// time limit.
    pub fn max_wait(&self) -> Duration {
        self.request_timeout.mul_f64(0.75)
    }
}

/// What the HTTP server runs: a request in, a response out, never an error.
pub trait HttpService:
    tower::Service<
        Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> HttpService for S where
    S: tower::Service<
            Request,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}
