//! A TCP proxy that can break the link it carries: add latency, reset connections, black-hole
//! traffic, or cut the link for a while (a partition). It forwards to a TCP address or to a
//! Unix socket (the embedded PostgreSQL listens on one only).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub enum Target {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// How the proxy treats traffic now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Forward.
    Pass,
    /// Forward, delaying every new connection by this much.
    Latency(Duration),
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

async fn pipe<A, B>(a: A, b: B, stop: CancellationToken)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a, mut b) = (a, b);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
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
                        Mode::Pass | Mode::Latency(_) => {
                            if let Mode::Latency(d) = mode {
                                tokio::time::sleep(d).await;
                            }
                            match target {
                                Target::Tcp(a) => {
                                    if let Ok(out) = TcpStream::connect(a).await {
                                        let _ = out.set_nodelay(true);
                                        pipe(inbound, out, generation).await;
                                    }
                                }
                                Target::Unix(p) => {
                                    if let Ok(out) = UnixStream::connect(p).await {
                                        pipe(inbound, out, generation).await;
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
