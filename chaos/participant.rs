//! A realistic TCC participant for the chaos suite.
//!
//! Each reservation lapses on its own at its expiry; a Try is deduplicated by
//! (`correlation-id`, `request-id`), so a coordinator that retries after a crash gets the same
//! reservation, and the same ids with another body (or another Try URL) answer 422; a Try that
//! arrives after its `tcc-deadline` reserves and stores nothing (409); confirm and cancel are
//! idempotent; a confirm after the lapse answers 404. The
//! ledger records every request, every effect applied, and requests that overlapped on one
//! reservation. Faults are set per run and drawn from a seeded generator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::rules::{ResState, Settle, past_deadline};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

/// What the participant does wrong, as probabilities in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Answer 503 without effect.
    pub error_rate: f64,
    /// Wait longer than the coordinator's timeouts before answering (and then apply).
    pub slow_rate: f64,
    /// Apply the effect, then never answer: the coordinator does not hear it.
    pub lose_answer_rate: f64,
    /// Refuse a confirm (403) without effect.
    pub refuse_confirm_rate: f64,
    /// Fail a Try for good (409).
    pub fail_try_rate: f64,
    /// Reserve for a new Try that arrives after its `tcc-deadline` (a participant that does not
    /// read the header), instead of answering 409 with nothing reserved: the coordinator must
    /// cope with reservations it never heard of.
    pub ignore_deadline_rate: f64,
    /// How long reservations last: drawn uniformly from this range.
    pub ttl: (Duration, Duration),
    /// How long a slow answer takes.
    pub slow_for: Duration,
    /// Every answer takes this long, drawn uniformly (the participant's own work).
    pub latency: (Duration, Duration),
}

/// One reservation in the ledger.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub id: String,
    pub correlation_id: String,
    pub task_id: String,
    /// What the Try asked for: its URL's last segment and its body. A repeat must ask the same.
    pub request: Asked,
    pub expires: DateTime<Utc>,
    pub state: ResState,
    /// How often the confirm's effect was applied: the invariant says at most once.
    pub confirms_applied: u32,
    pub cancels_applied: u32,
}

impl Reservation {
    /// Nothing is held any more: canceled, or lapsed unconfirmed.
    pub fn released(&self, now: DateTime<Utc>) -> bool {
        match self.state {
            ResState::Canceled => true,
            ResState::Reserved => self.expires <= now,
            ResState::Confirmed => false,
        }
    }
}

/// What a Try asked for: its kind (the Try URL's last segment) and its body, as JSON when it is
/// JSON (so that the order of an object's members does not matter), else as bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    pub kind: String,
    pub body: Result<serde_json::Value, Bytes>,
}

impl Asked {
    fn new(kind: String, body: Bytes) -> Asked {
        let body = serde_json::from_slice(&body).map_err(|_| body);
        Asked { kind, body }
    }
}

#[derive(Default)]
struct Ledger {
    reservations: HashMap<String, Reservation>,
    by_request: HashMap<(String, String), String>,
    in_flight: HashMap<String, u32>,
    overlaps: Vec<String>,
    next: u64,
}

struct Inner {
    ledger: Mutex<Ledger>,
    faults: Mutex<Faults>,
    rng: Mutex<fastrand::Rng>,
    base: String,
    /// Print every effect (the demo participant of the README).
    verbose: bool,
}

/// A running participant service.
#[derive(Clone)]
pub struct ParticipantService {
    inner: Arc<Inner>,
}

fn key_task(h: &HeaderMap) -> String {
    format!("{} of {}", hdr(h, "request-id"), hdr(h, "correlation-id"))
}

fn hdr(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

impl Inner {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64() < p
    }

    fn between(&self, (lo, hi): (Duration, Duration)) -> Duration {
        if hi <= lo {
            return lo;
        }
        let f = self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64();
        lo + (hi - lo).mul_f64(f)
    }

    fn ttl(&self) -> Duration {
        self.between(self.faults().ttl)
    }

    /// The participant's own work on a request.
    async fn work(&self) {
        let d = self.between(self.faults().latency);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    fn say(&self, line: impl FnOnce() -> String) {
        if self.verbose {
            println!("{}", line());
        }
    }

    fn enter(&self, id: &str) {
        let mut l = self.ledger();
        let n = l.in_flight.entry(id.to_string()).or_insert(0);
        *n += 1;
        if *n > 1 {
            l.overlaps.push(id.to_string());
        }
    }

    fn leave(&self, id: &str) {
        if let Some(n) = self.ledger().in_flight.get_mut(id) {
            *n = n.saturating_sub(1);
        }
    }
}

async fn never() -> Response {
    std::future::pending::<()>().await;
    StatusCode::GATEWAY_TIMEOUT.into_response()
}

/// What the ledger made of a Try.
enum Tried {
    /// Reserved now, or earlier under the same ids and request: the link.
    Reserved(String, DateTime<Utc>),
    /// The same ids were used for another request.
    OtherRequest,
    /// A new Try after its `tcc-deadline`: nothing reserved, nothing stored.
    Late,
}

async fn try_reserve(
    State(inner): State<Arc<Inner>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let correlation_id = hdr(&headers, "correlation-id");
    let task_id = hdr(&headers, "request-id");
    let asked = Asked::new(kind, body);
    inner.work().await;
    let faults = inner.faults();
    if inner.chance(faults.error_rate) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if inner.chance(faults.fail_try_rate) {
        return (StatusCode::CONFLICT, "no stock").into_response();
    }
    let slow = inner.chance(faults.slow_rate);
    let lose = inner.chance(faults.lose_answer_rate);
    let heeds_deadline = !inner.chance(faults.ignore_deadline_rate);
    if slow {
        tokio::time::sleep(faults.slow_for).await;
    }
    let key = (correlation_id.clone(), task_id.clone());
    let ttl = inner.ttl();
    let tried = {
        let mut l = inner.ledger();
        let now = Utc::now();
        if let Some(id) = l.by_request.get(&key).cloned() {
            let r = &l.reservations[&id];
            if r.request == asked {
                Tried::Reserved(id, r.expires)
            } else {
                Tried::OtherRequest
            }
        } else if heeds_deadline && past_deadline(&headers, now) {
            Tried::Late
        } else {
            l.next += 1;
            let id = format!("r{}", l.next);
            let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
            l.by_request.insert(key, id.clone());
            l.reservations.insert(
                id.clone(),
                Reservation {
                    id: id.clone(),
                    correlation_id,
                    task_id,
                    request: asked,
                    expires,
                    state: ResState::Reserved,
                    confirms_applied: 0,
                    cancels_applied: 0,
                },
            );
            Tried::Reserved(id, expires)
        }
    };
    let (id, expires) = match tried {
        Tried::Reserved(id, expires) => (id, expires),
        Tried::OtherRequest => {
            inner.say(|| format!("try      422: another request under {}", key_task(&headers)));
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                "these ids were used for another Try (another body or URL)",
            )
                .into_response();
        }
        Tried::Late => {
            inner.say(|| {
                format!(
                    "try      409: after its tcc-deadline, nothing reserved (task {})",
                    key_task(&headers)
                )
            });
            return (
                StatusCode::CONFLICT,
                "the Try arrived after its tcc-deadline: nothing was reserved",
            )
                .into_response();
        }
    };
    inner.say(|| {
        format!(
            "try      {id}: reserved until {expires} (task {})",
            key_task(&headers)
        )
    });
    if lose {
        return never().await;
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({"participantLink": {
            "uri": format!("{}/r/{id}", inner.base),
            "expires": expires.to_rfc3339_opts(SecondsFormat::Millis, true),
        }})),
    )
        .into_response()
}

/// Marks a request in flight on a reservation until dropped — also when the caller hangs up
/// (a killed coordinator) and the server drops the request half-way.
struct InFlight {
    inner: Arc<Inner>,
    id: String,
}

impl InFlight {
    fn new(inner: &Arc<Inner>, id: &str) -> InFlight {
        inner.enter(id);
        InFlight {
            inner: inner.clone(),
            id: id.to_string(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.leave(&self.id);
    }
}

async fn settle(inner: Arc<Inner>, id: String, op: Settle) -> Response {
    let mut tracked = Some(InFlight::new(&inner, &id));
    // Work while tracked, so that two requests sent together really overlap here.
    tokio::time::sleep(Duration::from_millis(3)).await;
    inner.work().await;
    let faults = inner.faults();
    let status = if inner.chance(faults.error_rate) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if op == Settle::Confirm && inner.chance(faults.refuse_confirm_rate) {
        inner.say(|| format!("confirm  {id}: 403 (refused)"));
        StatusCode::FORBIDDEN
    } else {
        if inner.chance(faults.slow_rate) {
            // The coordinator times out and may retry meanwhile: that retry is not an overlap
            // of two drivers, so the slow request stops counting as in flight.
            tracked = None;
            tokio::time::sleep(faults.slow_for).await;
        }
        let lose = inner.chance(faults.lose_answer_rate);
        let status = apply(&inner, &id, op);
        inner.say(|| {
            let what = if op == Settle::Confirm {
                "confirm "
            } else {
                "cancel  "
            };
            format!("{what} {id}: {}", status.as_u16())
        });
        if lose {
            drop(tracked);
            return never().await;
        }
        status
    };
    drop(tracked);
    status.into_response()
}

/// The effect of a confirm or cancel on the ledger, and its answer.
fn apply(inner: &Inner, id: &str, op: Settle) -> StatusCode {
    let mut l = inner.ledger();
    let now = Utc::now();
    let Some(r) = l.reservations.get_mut(id) else {
        return StatusCode::NOT_FOUND;
    };
    let before = r.state;
    let status = super::rules::settle(op, &mut r.state, r.expires, now);
    if r.state != before {
        match r.state {
            ResState::Confirmed => r.confirms_applied += 1,
            ResState::Canceled => r.cancels_applied += 1,
            ResState::Reserved => {}
        }
    }
    status
}

async fn confirm(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    settle(inner, id, Settle::Confirm).await
}

async fn cancel(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    settle(inner, id, Settle::Cancel).await
}

impl ParticipantService {
    /// Serve on `listener`; links name `public_base` (for example a proxy in front of this
    /// service). Returns the service and the task that serves it.
    pub fn serve(
        listener: tokio::net::TcpListener,
        public_base: Option<String>,
        seed: u64,
        verbose: bool,
    ) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            ledger: Mutex::new(Ledger::default()),
            faults: Mutex::new(Faults {
                ttl: (Duration::from_secs(60), Duration::from_secs(60)),
                ..Faults::default()
            }),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            base: public_base.unwrap_or_else(|| format!("http://{addr}")),
            verbose,
        });
        let app = Router::new()
            .route("/try/{kind}", post(try_reserve))
            .route("/r/{id}", put(confirm).delete(cancel))
            .with_state(inner.clone());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((ParticipantService { inner }, handle))
    }

    pub fn set_faults(&self, f: Faults) {
        *self.inner.faults.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    pub fn faults(&self) -> Faults {
        self.inner.faults()
    }

    /// The reservations made for one job (by its correlation id).
    pub fn reservations_of(&self, correlation_id: &str) -> Vec<Reservation> {
        self.inner
            .ledger()
            .reservations
            .values()
            .filter(|r| r.correlation_id == correlation_id)
            .cloned()
            .collect()
    }

    /// Reservations that saw two requests at once.
    pub fn overlaps(&self) -> Vec<String> {
        self.inner.ledger().overlaps.clone()
    }
}
