//! The HTTP/1.1 server: hyper's connection loop, with the limits `axum::serve` does not offer: a
//! time limit on request heads that is also the idle keep-alive limit, and a cap on open
//! connections answered with a 503 rather than a failed accept.
//!
//! It must never hold a connection without a bound: a client that never finishes its head, or
//! idles between requests, is closed after `header_read_timeout`, and so is one that stops
//! reading what it is sent; a request in progress is bounded by the API's own time limit
//! (`TCC_REQUEST_TIMEOUT`); at shutdown, connections still open after `shutdown_grace` are
//! dropped.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use crate::api::HttpService;

/// How a listener's connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// How long a connection may take to send a request's head, counted from accept and again
    /// from the end of each response (so also how long an idle keep-alive connection is kept).
    /// Past it the connection is closed without an answer.
    pub header_read_timeout: Duration,
    /// Most connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// How long an answer may wait for the client to read it (a write that makes no progress
    /// this long closes the connection).
    pub write_timeout: Duration,
    /// At shutdown, how long open connections may take to finish.
    pub shutdown_grace: Duration,
}

/// The most a request's head may buffer (its line and headers): well above any real request
/// (URLs are at most 8 KiB), and a bound on what a half-sent head can hold in memory.
const MAX_HEAD_BUFFER: usize = 64 * 1024;

/// Connections being turned away at once (each for at most `REFUSE_WINDOW`): a bound on the
/// work a flood of connections over the cap can cause. Past it, such a connection is closed
/// without an answer.
const MAX_REFUSING: usize = 64;
const REFUSE_WINDOW: Duration = Duration::from_secs(2);

/// The whole answer to a connection over the cap: a problem with `Retry-After`, as every 503.
static REFUSAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = serde_json::json!({
        "type": "/problems/unavailable",
        "title": "Service unavailable",
        "status": 503,
        "detail": "the coordinator has as many connections open as it takes (TCC_MAX_CONNECTIONS); try again shortly",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Serve `app` on `listener` until `shutdown` resolves; then stop accepting, let every open
/// connection finish the request it is on (idle ones close at once), and return once all are
/// closed or `shutdown_grace` has passed. Each connection runs as a task of its own, as under
/// `axum::serve`: the graceful shutdown is what bounds them.
pub async fn serve<S: HttpService>(
    listener: TcpListener,
    app: S,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEAD_BUFFER)
        .max_buf_size(MAX_HEAD_BUFFER);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::error!(error = %e, "accept failed; retrying in 1s");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::API_REJECTED, "reason" => "overloaded").increment(1);
            if let Ok(turn) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REFUSE_WINDOW, refuse(stream)).await;
                    drop(turn);
                });
            }
            continue;
        };
        let svc = TowerToHyperService::new(
            app.clone()
                .map_request(|req: Request<Incoming>| req.map(Body::new)),
        );
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let conn = graceful.watch(http.serve_connection(TokioIo::new(Box::pin(stream)), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended in error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after the shutdown grace (a stream, or a client that does not read) are dropped"
        );
    }
    Ok(())
}

/// Answer 503 and close. The answer goes first (a server may answer before the request is
/// read); then what the client sent is read and dropped until it closes, since closing a socket
/// with unread input sends a reset that can destroy the answer before the client reads it.
async fn refuse(mut stream: TcpStream) {
    if stream.write_all(&REFUSAL).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
