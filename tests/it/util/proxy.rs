//! A TCP proxy in front of LocalStack that injects network faults: it can
//! refuse every connection (an outage), or cut each connection once it has
//! carried a number of response bytes (a download reset mid-object).
//!
//! Why a proxy and not stopping LocalStack: LocalStack (community) keeps no
//! state across a restart, so a real restart would delete the test's bucket
//! and queues — and those of every test running in parallel. From the
//! worker's side, refused and reset connections are what an outage is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Close new connections at once and drop open ones.
    Down,
    /// Forward, but close a connection after this many response bytes.
    CutAfter(u64),
}

pub struct ChaosProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    connections: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl ChaosProxy {
    /// Listens on an ephemeral port and forwards to `upstream` (host:port).
    pub async fn start(upstream: &str) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let proxy = ChaosProxy {
            addr,
            mode,
            connections: Arc::default(),
            refused: Arc::default(),
            cuts: Arc::default(),
            requests: Arc::default(),
        };
        let upstream = upstream.to_owned();
        let (connections, refused, cuts, requests) = (
            proxy.connections.clone(),
            proxy.refused.clone(),
            proxy.cuts.clone(),
            proxy.requests.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                if *mode_rx.borrow() == Mode::Down {
                    refused.fetch_add(1, Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let mode_rx = mode_rx.clone();
                let cuts = cuts.clone();
                let requests = requests.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        forward(client, server, mode_rx, cuts, requests).await;
                    }
                });
            }
        });
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted, including refused ones.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the proxy was down.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections cut mid-response.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }

    /// HTTP requests forwarded (counted by request line).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn forward(
    mut client: TcpStream,
    mut server: TcpStream,
    mut mode: watch::Receiver<Mode>,
    cuts: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
) {
    let mut to_server = [0u8; 16 * 1024];
    let mut to_client = [0u8; 16 * 1024];
    let mut response_bytes = 0u64;
    loop {
        tokio::select! {
            read = client.read(&mut to_server) => {
                let Ok(n) = read else { return };
                if n == 0 {
                    return;
                }
                // Rough, but enough to count attempts: one request line each.
                let data = &to_server[..n];
                let lines = data.windows(10).filter(|w| *w == b" HTTP/1.1\r").count();
                requests.fetch_add(lines as u64, Ordering::Relaxed);
                if server.write_all(data).await.is_err() {
                    return;
                }
            }
            read = server.read(&mut to_client) => {
                let Ok(n) = read else { return };
                if n == 0 {
                    return;
                }
                let limit = match *mode.borrow() {
                    Mode::CutAfter(limit) => Some(limit),
                    _ => None,
                };
                if let Some(limit) = limit
                    && response_bytes + n as u64 > limit
                {
                    let allowed = limit.saturating_sub(response_bytes) as usize;
                    let _ = client.write_all(&to_client[..allowed]).await;
                    cuts.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                response_bytes += n as u64;
                if client.write_all(&to_client[..n]).await.is_err() {
                    return;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Down {
                    return;
                }
            }
        }
    }
}
