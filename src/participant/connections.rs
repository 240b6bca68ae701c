//! Plain `http://` participant calls over HTTP/1.1 connections kept per host, each driven by the
//! call that holds it: the call writes its request and reads the answer on its own task. A
//! pooled client (hyper's) gives every connection a task of its own, so that each call hands
//! its request to that task and is handed the answer back: two task wake-ups per call, across
//! the runtime's threads, and a pool reached through futures of its own.
//!
//! A connection goes back to its host's idle list only once its answer has been read to the end
//! and the participant kept it open. An idle connection is looked at before it is used again
//! (one the participant closed is dropped, and the request goes out on another), and one idle
//! longer than [`IDLE_TIMEOUT`] is closed. The idle lists are swept when a call returns (at
//! most every [`SWEEP_EVERY`]), with no task of their own: while no call is made, idle
//! connections stay open, at most `max_idle_per_host` per host, until the next call. A request
//! that may have been received is never sent again here: whether a call is repeated is the
//! engine's decision.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::ServiceExt as _;

use crate::outbound::PolicyDns;

/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often, at most, the idle lists are swept (connections idle too long, or closed by their
/// participant), at a call's return.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

type Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One connection: the handle requests are given to, and the connection itself, polled by
/// whoever holds it (`None` once it has ended).
struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    conn: Option<Connection>,
}

/// Poll `f` to its end while driving `conn`; `conn` becomes `None` when the connection ends
/// (closed, or broken: an answer it was reading then fails).
async fn drive<T>(conn: &mut Option<Connection>, f: impl Future<Output = T>) -> T {
    let mut f = pin!(f);
    poll_fn(|cx| {
        if let Some(c) = conn.as_mut()
            && Pin::new(c).poll(cx).is_ready()
        {
            // Dropping it hands any answer still expected its error.
            *conn = None;
        }
        f.as_mut().poll(cx)
    })
    .await
}

/// Why no answer came.
pub enum SendError {
    /// Nothing was sent (no connection could be made, or it closed before the request was
    /// written).
    NotSent(Box<dyn std::error::Error + Send + Sync>),
    /// The request may have been received.
    Broken(hyper::Error),
}

/// The idle connections by host (`host:port` as the URL writes it).
struct Idle {
    hosts: HashMap<String, Vec<(Conn, Instant)>>,
    swept: Instant,
}

pub struct Connections {
    connector: HttpConnector<PolicyDns>,
    idle: Mutex<Idle>,
    max_idle_per_host: usize,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("max_idle_per_host", &self.max_idle_per_host)
            .finish_non_exhaustive()
    }
}

/// A connection in use by one call, with the host it goes back to.
pub struct Lease<'a> {
    pool: &'a Connections,
    host: &'a str,
    conn: Conn,
}

impl Lease<'_> {
    /// Poll `f` (a read of the answer's body) while driving the connection.
    pub async fn drive<T>(&mut self, f: impl Future<Output = T>) -> T {
        drive(&mut self.conn.conn, f).await
    }

    /// The answer has been read to the end: keep the connection for the host's next call, if
    /// the participant kept it open.
    pub fn give_back(self) {
        self.pool.give_back(self.host, self.conn);
    }
}

impl Connections {
    /// `connector` makes new connections (it resolves through the target policy); at most
    /// `max_idle_per_host` idle connections are kept per host.
    pub fn new(connector: HttpConnector<PolicyDns>, max_idle_per_host: usize) -> Self {
        Connections {
            connector,
            idle: Mutex::new(Idle {
                hosts: HashMap::new(),
                swept: Instant::now(),
            }),
            max_idle_per_host,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // A poisoned lock only means a call panicked while taking or giving back; the lists
        // are valid.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send `req` to `url` (its method, headers and body; the URI and `Host` come from `url`):
    /// on an idle connection to its host if there is one still open, else on a new one. The
    /// answer's head, and the connection to read its body on.
    pub async fn send<'a>(
        &'a self,
        url: &'a url::Url,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Lease<'a>, Response<Incoming>), SendError> {
        use url::Position;
        let host = &url[Position::BeforeHost..Position::AfterPort];
        let target = &url[Position::BeforePath..Position::AfterQuery];
        *req.uri_mut() = hyper::Uri::try_from(target).map_err(|e| SendError::NotSent(e.into()))?;
        let host_header = HeaderValue::from_str(host).map_err(|e| SendError::NotSent(e.into()))?;
        req.headers_mut().insert(HOST, host_header);
        loop {
            let (mut conn, reused) = match self.take_idle(host) {
                Some(c) => (c, true),
                None => (self.connect(host).await?, false),
            };
            if let Err(e) = drive(&mut conn.conn, conn.send.ready()).await {
                if reused {
                    continue;
                }
                return Err(SendError::NotSent(e.into()));
            }
            match drive(&mut conn.conn, conn.send.try_send_request(req)).await {
                Ok(resp) => {
                    let lease = Lease {
                        pool: self,
                        host,
                        conn,
                    };
                    return Ok((lease, resp));
                }
                Err(mut e) => match e.take_message() {
                    // Closed before the request was written: a reused connection the
                    // participant had just closed. Another one.
                    Some(unsent) if reused => req = unsent,
                    Some(_) => return Err(SendError::NotSent(e.into_error().into())),
                    None => return Err(SendError::Broken(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self, host: &str) -> Result<Conn, SendError> {
        let authority = hyper::Uri::try_from(format!("http://{host}"))
            .map_err(|e| SendError::NotSent(e.into()))?;
        let io = self
            .connector
            .clone()
            .oneshot(authority)
            .await
            .map_err(|e| SendError::NotSent(e.into()))?;
        let (send, conn) = http1::handshake(io)
            .await
            .map_err(|e| SendError::NotSent(e.into()))?;
        Ok(Conn {
            send,
            conn: Some(conn),
        })
    }

    /// The most recently used idle connection to `host` (the likeliest to be open).
    fn take_idle(&self, host: &str) -> Option<Conn> {
        let mut idle = self.lock();
        let list = idle.hosts.get_mut(host)?;
        let (conn, since) = list.pop()?;
        if since.elapsed() < IDLE_TIMEOUT {
            return Some(conn);
        }
        // The newest is too old: so are the rest.
        let stale = std::mem::take(list);
        drop(idle);
        drop((conn, stale));
        None
    }

    fn give_back(&self, host: &str, conn: Conn) {
        if conn.conn.is_none() || conn.send.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut closing = Vec::new();
        let mut idle = self.lock();
        if now.duration_since(idle.swept) >= SWEEP_EVERY {
            idle.swept = now;
            closing = sweep(&mut idle.hosts, now);
        }
        match idle.hosts.get_mut(host) {
            Some(list) if list.len() < self.max_idle_per_host => list.push((conn, now)),
            Some(_) => closing.push(conn),
            None => {
                idle.hosts.insert(host.to_owned(), vec![(conn, now)]);
            }
        }
        drop(idle);
        // Sockets are closed outside the lock.
        drop(closing);
    }
}

/// Take out of `hosts` every connection idle for `IDLE_TIMEOUT` or closed by its participant
/// (a look at each: one poll, which reads the participant's close if it has come).
fn sweep(hosts: &mut HashMap<String, Vec<(Conn, Instant)>>, now: Instant) -> Vec<Conn> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut closing = Vec::new();
    for list in hosts.values_mut() {
        let done = list.extract_if(.., |(conn, since)| {
            let open = now.duration_since(*since) < IDLE_TIMEOUT
                && conn
                    .conn
                    .as_mut()
                    .is_some_and(|c| Pin::new(c).poll(&mut cx).is_pending());
            !open
        });
        closing.extend(done.map(|(conn, _)| conn));
    }
    hosts.retain(|_, list| !list.is_empty());
    closing
}
