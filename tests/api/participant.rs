//! A real HTTP participant for the tests: it reserves, confirms and cancels resources, keeps a
//! ledger of every request and effect, and can be told, per resource name and operation, to
//! answer a status, stall, or let its reservation lapse.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::helpers::{header_in, poll_within};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Try,
    Confirm,
    Cancel,
}

/// How the participant answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Do what was asked.
    Ok,
    /// Answer this status without any effect.
    Status(u16),
    /// Answer this status with `Retry-After`.
    StatusRetryAfter(u16, u64),
    /// Never answer (the coordinator's timeout must end the call).
    Stall,
    /// Confirm or cancel only: apply the effect, then never answer (a lost answer).
    ApplyThenStall,
    /// Try only: reserve, with the link lapsing after this long.
    ReserveFor(Duration),
    /// Try only: reserve, answering only a relative `Location` (no body, no expiry).
    ReserveLocationOnly,
    /// Try only: reserve, with this `note` beside the link in the answer.
    ReserveWithNote(String),
    /// Try only: reserve, with these members beside the link in the answer (a large or deep
    /// value, say).
    ReserveWith(serde_json::Map<String, Value>),
    /// Answer this status with this body, without any effect.
    StatusBody(u16, String),
    /// Hold the request until this many requests of its operation have arrived (so many are
    /// out at once), for at most 30 s; then do what was asked.
    Together(usize),
}

pub use crate::rules::ResState;
use crate::rules::Settle;

#[derive(Debug, Clone)]
pub struct Reservation {
    pub name: String,
    pub expires: DateTime<Utc>,
    pub state: ResState,
    /// How often the confirm's effect was applied (must never exceed 1).
    pub confirms_applied: u32,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub op: Op,
    pub name: String,
    pub correlation_id: Option<String>,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub traceparent: Option<String>,
    /// `tcc-deadline`: after it the coordinator no longer acts on the answer.
    pub deadline: Option<String>,
    pub body: Option<Value>,
    pub at: std::time::Instant,
    /// The connection it came on (the caller's address and port).
    pub peer: SocketAddr,
}

#[derive(Default)]
struct Ledger {
    received: Vec<Received>,
    scripts: HashMap<(Op, String), VecDeque<Reply>>,
    defaults: HashMap<(Op, String), Reply>,
    reservations: HashMap<String, Reservation>,
    in_flight: HashMap<String, u32>,
    overlaps: u32,
    next_id: u64,
}

#[derive(Clone)]
struct Shared {
    ledger: Arc<Mutex<Ledger>>,
    base: String,
}

pub struct Participant {
    pub base: String,
    ledger: Arc<Mutex<Ledger>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_reply(&self, op: Op, name: &str) -> Reply {
        let mut l = self.lock();
        let key = (op, name.to_string());
        if let Some(r) = l.scripts.get_mut(&key).and_then(|q| q.pop_front()) {
            return r;
        }
        l.defaults.get(&key).cloned().unwrap_or(Reply::Ok)
    }

    fn record(
        &self,
        op: Op,
        name: &str,
        peer: SocketAddr,
        headers: &HeaderMap,
        body: Option<Value>,
    ) {
        self.lock().received.push(Received {
            op,
            name: name.to_string(),
            correlation_id: header_in(headers, "correlation-id"),
            request_id: header_in(headers, "request-id"),
            content_type: header_in(headers, "content-type"),
            accept: header_in(headers, "accept"),
            traceparent: header_in(headers, "traceparent"),
            deadline: header_in(headers, "tcc-deadline"),
            body,
            at: std::time::Instant::now(),
            peer,
        });
    }

    /// Wait until `n` requests of `op` have arrived, or 30 s have passed.
    async fn together(&self, op: Op, n: usize) {
        let arrived = || {
            let count = self.lock().received.iter().filter(|r| r.op == op).count();
            async move { (count >= n).then_some(()) }
        };
        poll_within(Duration::from_secs(30), Duration::from_millis(5), arrived).await;
    }

    /// Mark a request on a resource in flight until the guard is dropped; overlapping ones are
    /// counted.
    fn enter(&self, id: &str) -> InFlight {
        let mut l = self.lock();
        let n = l.in_flight.entry(id.to_string()).or_insert(0);
        *n += 1;
        if *n > 1 {
            l.overlaps += 1;
        }
        InFlight {
            shared: self.clone(),
            id: id.to_string(),
        }
    }

    fn leave(&self, id: &str) {
        if let Some(n) = self.lock().in_flight.get_mut(id) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A request on a resource being handled. It ends when its handler ends, also when the caller
/// hung up and the handler was dropped half-way (a killed coordinator's call).
struct InFlight {
    shared: Shared,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.leave(&self.id);
    }
}

async fn stall() -> Response {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    StatusCode::GATEWAY_TIMEOUT.into_response()
}

fn status(code: u16) -> Response {
    StatusCode::from_u16(code)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response()
}

async fn try_handler(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    s.record(Op::Try, &name, peer, &headers, parsed);
    let reply = s.next_reply(Op::Try, &name);
    if let Reply::Together(n) = &reply {
        s.together(Op::Try, *n).await;
    }
    let ttl = match &reply {
        Reply::Ok
        | Reply::ApplyThenStall
        | Reply::ReserveWithNote(_)
        | Reply::ReserveWith(_)
        | Reply::Together(_) => Duration::from_secs(60),
        Reply::ReserveFor(d) => *d,
        Reply::ReserveLocationOnly => Duration::from_secs(60),
        Reply::Status(c) => return status(*c),
        Reply::StatusBody(c, body) => return (status(*c).status(), body.clone()).into_response(),
        Reply::StatusRetryAfter(c, secs) => {
            return (status(*c).status(), [("retry-after", secs.to_string())]).into_response();
        }
        Reply::Stall => return stall().await,
    };
    let expires = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    let id = {
        let mut l = s.lock();
        l.next_id += 1;
        let id = format!("{name}-{}", l.next_id);
        l.reservations.insert(
            id.clone(),
            Reservation {
                name: name.clone(),
                expires,
                state: ResState::Reserved,
                confirms_applied: 0,
            },
        );
        id
    };
    if matches!(reply, Reply::ReserveLocationOnly) {
        return (StatusCode::CREATED, [("location", format!("../r/{id}"))]).into_response();
    }
    let mut answer = json!({
        "participantLink": {
            "uri": format!("{}/r/{id}", s.base),
            "expires": expires.to_rfc3339_opts(SecondsFormat::Millis, true),
        },
        "reservation": id,
        "note": match &reply {
            Reply::ReserveWithNote(note) => Value::String(note.clone()),
            _ => Value::Null,
        },
    });
    if let (Reply::ReserveWith(extra), Some(members)) = (reply, answer.as_object_mut()) {
        members.extend(extra);
    }
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

fn name_of(s: &Shared, id: &str) -> String {
    s.lock()
        .reservations
        .get(id)
        .map(|r| r.name.clone())
        .unwrap_or_else(|| id.rsplit_once('-').map_or(id, |(n, _)| n).to_string())
}

async fn settle(s: Shared, op: Op, id: String, peer: SocketAddr, headers: HeaderMap) -> Response {
    let name = name_of(&s, &id);
    s.record(op, &name, peer, &headers, None);
    let in_flight = s.enter(&id);
    // A little work, so that two requests arriving together really overlap here.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let reply = s.next_reply(op, &name);
    if let Reply::Together(n) = &reply {
        s.together(op, *n).await;
    }
    let lose_answer = matches!(reply, Reply::ApplyThenStall);
    let resp = match reply {
        Reply::Status(c) => status(c),
        Reply::StatusBody(c, body) => (status(c).status(), body).into_response(),
        Reply::StatusRetryAfter(c, secs) => {
            (status(c).status(), [("retry-after", secs.to_string())]).into_response()
        }
        Reply::Stall => {
            drop(in_flight);
            return stall().await;
        }
        _ => {
            let mut l = s.lock();
            match l.reservations.get_mut(&id) {
                None => status(404),
                Some(r) => {
                    let before = r.state;
                    let op = if op == Op::Confirm {
                        Settle::Confirm
                    } else {
                        Settle::Cancel
                    };
                    let answer = crate::rules::settle(op, &mut r.state, r.expires, Utc::now());
                    if before != ResState::Confirmed && r.state == ResState::Confirmed {
                        r.confirms_applied += 1;
                    }
                    answer.into_response()
                }
            }
        }
    };
    drop(in_flight);
    if lose_answer {
        return stall().await;
    }
    resp
}

async fn confirm_handler(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    settle(s, Op::Confirm, id, peer, headers).await
}

async fn cancel_handler(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    settle(s, Op::Cancel, id, peer, headers).await
}

impl Participant {
    pub async fn start() -> Participant {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind participant");
        let addr = listener.local_addr().expect("participant address");
        let base = format!("http://{addr}");
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let shared = Shared {
            ledger: ledger.clone(),
            base: base.clone(),
        };
        let app = Router::new()
            .route("/try/{name}", post(try_handler))
            .route("/r/{id}", put(confirm_handler).delete(cancel_handler))
            .with_state(shared);
        let server = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app).await;
        });
        Participant {
            base,
            ledger,
            _server: server,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Try URL of resource `name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/try/{name}", self.base)
    }

    /// Answer the next requests of `op` on `name` like this, in order; then the default.
    pub fn script(&self, op: Op, name: &str, replies: Vec<Reply>) {
        self.lock()
            .scripts
            .entry((op, name.to_string()))
            .or_default()
            .extend(replies);
    }

    /// Answer every request of `op` on `name` like this once the script is used up.
    pub fn set_default(&self, op: Op, name: &str, reply: Reply) {
        self.lock().defaults.insert((op, name.to_string()), reply);
    }

    pub fn count(&self, op: Op, name: &str) -> usize {
        self.lock()
            .received
            .iter()
            .filter(|r| r.op == op && r.name == name)
            .count()
    }

    pub fn count_all(&self, op: Op) -> usize {
        self.lock().received.iter().filter(|r| r.op == op).count()
    }

    pub fn received(&self, op: Op, name: &str) -> Vec<Received> {
        self.lock()
            .received
            .iter()
            .filter(|r| r.op == op && r.name == name)
            .cloned()
            .collect()
    }

    /// The reservations made for `name`.
    pub fn reservations(&self, name: &str) -> Vec<Reservation> {
        self.lock()
            .reservations
            .values()
            .filter(|r| r.name == name)
            .cloned()
            .collect()
    }

    pub fn all_reservations(&self) -> Vec<Reservation> {
        self.lock().reservations.values().cloned().collect()
    }

    /// `name` holds exactly one reservation and it is confirmed, applied once.
    pub fn confirmed(&self, name: &str) -> bool {
        let r = self.reservations(name);
        r.len() == 1 && r[0].state == ResState::Confirmed && r[0].confirms_applied == 1
    }

    /// No reservation of `name` is confirmed; each is canceled or has lapsed.
    pub fn released(&self, name: &str) -> bool {
        let now = Utc::now();
        self.reservations(name).iter().all(|r| match r.state {
            ResState::Canceled => true,
            ResState::Reserved => r.expires <= now,
            ResState::Confirmed => false,
        })
    }

    /// The connections that requests of `op` came on.
    pub fn peers(&self, op: Op) -> HashSet<SocketAddr> {
        self.lock()
            .received
            .iter()
            .filter(|r| r.op == op)
            .map(|r| r.peer)
            .collect()
    }

    /// Requests that arrived on a resource while another was still being answered.
    pub fn overlaps(&self) -> u32 {
        self.lock().overlaps
    }
}
