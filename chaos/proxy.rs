//! A TCP proxy that can break the link it carries: add latency, reset connections, black-hole
//! traffic, or cut the link for a while (a partition). It forwards to a TCP address, to a
//! Unix socket (the embedded PostgreSQL listens on one only), or to any of several TCP addresses
//! (a balancer in front of a service's replicas).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;

/// Where the proxy forwards to.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
    /// Each new connection goes to one of these at random, or, when that one refuses it, to the
    /// next that accepts it: a balancer in front of replicas, some of which may be down.
    Any(Vec<std::net::SocketAddr>),
}

/// A connection to one of `addrs` (tried from a random one on), or `None` when all refuse.
async fn connect_any(addrs: &[std::net::SocketAddr]) -> Option<TcpStream> {
    let first = fastrand::usize(..addrs.len().max(1));
    for i in 0..addrs.len() {
        if let Ok(out) = TcpStream::connect(addrs[(first + i) % addrs.len()]).await {
            return Some(out);
        }
    }
    None
}

/// How the proxy treats traffic now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Forward.
    Pass,
    /// Forward, delaying every new connection by this much.
    Latency(Duration),
    /// Forward, holding every chunk sent towards the target for a time drawn from this range:
    /// each request takes that much longer, on kept-alive connections too (the time a service
    /// takes to work). Applies to the connections accepted while it is set.
    Slow(Duration, Duration),
    /// Accept, forward nothing, answer nothing.
    Blackhole,
    /// Refuse: every connection is closed at once.
    Refuse,
}

struct State {
    mode: Mode,
    /// Canceled to drop every open connection at once.
    generation: CancellationToken,
}

#[derive(Clone)]
pub struct Proxy {
    state: Arc<Mutex<State>>,
    pub addr: std::net::SocketAddr,
}

/// Forward between `a` (the client) and `b` (the target) until either closes or `stop`;
/// `slow`: each chunk from `a` is held for a time drawn from the range first.
async fn pipe<A, B>(a: A, b: B, stop: CancellationToken, slow: Option<(Duration, Duration)>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a, mut b) = (a, b);
    let Some((lo, hi)) = slow else {
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
            _ = stop.cancelled() => {}
        }
        return;
    };
    let (mut from_client, mut to_client) = tokio::io::split(a);
    let (mut from_target, mut to_target) = tokio::io::split(b);
    let forward = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from_client.read(&mut buf).await {
            let held = lo + hi.saturating_sub(lo).mul_f64(fastrand::f64());
            tokio::time::sleep(held).await;
            if to_target.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_target.shutdown().await;
    };
    let back = async {
        let _ = tokio::io::copy(&mut from_target, &mut to_client).await;
        // The target closed (or died): so does the client's connection.
        let _ = to_client.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(forward, back) } => {}
        _ = stop.cancelled() => {}
    }
}

impl Proxy {
    /// Listen on a free loopback port and forward to `target`.
    pub async fn start(
        target: Target,
        stop: CancellationToken,
    ) -> std::io::Result<(Proxy, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Pass,
            generation: CancellationToken::new(),
        }));
        let proxy = Proxy {
            state: state.clone(),
            addr,
        };
        let handle = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    a = listener.accept() => a,
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                let Ok((inbound, _)) = accepted else { continue };
                let _ = inbound.set_nodelay(true);
                let (mode, generation) = {
                    let s = state.lock().unwrap_or_else(|p| p.into_inner());
                    (s.mode, s.generation.clone())
                };
                let target = target.clone();
                conns.spawn(async move {
                    match mode {
                        Mode::Refuse => {}
                        Mode::Blackhole => {
                            let _hold = inbound;
                            generation.cancelled().await;
                        }
                        Mode::Pass | Mode::Latency(_) | Mode::Slow(..) => {
                            if let Mode::Latency(d) = mode {
                                tokio::time::sleep(d).await;
                            }
                            let slow = match mode {
                                Mode::Slow(lo, hi) => Some((lo, hi)),
                                _ => None,
                            };
                            match target {
                                Target::Tcp(a) => {
                                    if let Ok(out) = TcpStream::connect(a).await {
                                        let _ = out.set_nodelay(true);
                                        pipe(inbound, out, generation, slow).await;
                                    }
                                }
                                Target::Unix(p) => {
                                    if let Ok(out) = UnixStream::connect(p).await {
                                        pipe(inbound, out, generation, slow).await;
                                    }
                                }
                                Target::Any(addrs) => {
                                    if let Some(out) = connect_any(&addrs).await {
                                        let _ = out.set_nodelay(true);
                                        pipe(inbound, out, generation, slow).await;
                                    }
                                }
                            }
                        }
                    }
                });
            }
            conns.shutdown().await;
        });
        Ok((proxy, handle))
    }

    /// Change how new connections are treated; open ones are left alone.
    pub fn set(&self, mode: Mode) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).mode = mode;
    }

    /// Drop every open connection (a reset).
    pub fn reset(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.generation.cancel();
        s.generation = CancellationToken::new();
    }

    /// A partition: drop everything and refuse new connections, for `d`; then heal.
    pub async fn cut_for(&self, d: Duration) {
        self.set(Mode::Blackhole);
        self.reset();
        tokio::time::sleep(d).await;
        self.reset();
        self.set(Mode::Pass);
    }
}
