//! The operator's HTTP endpoints: `/metrics` (Prometheus), `/healthz`
//! (the process is alive and its receive loop is not stuck) and `/readyz`
//! (the configured queue is reachable and no component refuses the
//! deployment: see `deployment.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::deployment::DeploymentHealth;
use crate::queue::Reachable;
use crate::telemetry;

/// Liveness of the receive loop: it records a tick every time it goes
/// round (or while it waits for a free slot), and is stuck when the last
/// tick is older than `stuck_after`. Ages are read on the monotonic clock:
/// a wall-clock step (NTP, a VM resumed) must not make a healthy worker
/// look stuck, nor a stuck one healthy.
#[derive(Debug)]
pub struct Liveness {
    origin: tokio::time::Instant,
    /// Milliseconds after `origin` of the last tick.
    last_tick_ms: AtomicU64,
    stuck_after: Duration,
}

impl Liveness {
    pub fn new(stuck_after: Duration) -> Liveness {
        Liveness {
            origin: tokio::time::Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            stuck_after,
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn tick(&self) {
        self.last_tick_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long since the loop last went round, when that is too long.
    pub fn stuck_for(&self) -> Option<Duration> {
        let age = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_tick_ms.load(Ordering::Relaxed)),
        );
        (age > self.stuck_after).then_some(age)
    }
}

#[derive(Clone)]
struct StatusState {
    liveness: Arc<Liveness>,
    queues: Vec<Arc<dyn Reachable>>,
    deployment: Arc<DeploymentHealth>,
}

/// Binds `addr` and serves until `shutdown`; returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: &str,
    liveness: Arc<Liveness>,
    queues: Vec<Arc<dyn Reachable>>,
    deployment: Arc<DeploymentHealth>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    telemetry::prometheus();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(StatusState {
            liveness,
            queues,
            deployment,
        });
    info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(bound)
}

async fn metrics() -> String {
    telemetry::render()
}

async fn healthz(State(state): State<StatusState>) -> (StatusCode, String) {
    match state.liveness.stuck_for() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("receive loop has not gone round for {}s\n", age.as_secs()),
        ),
    }
}

async fn readyz(State(state): State<StatusState>) -> (StatusCode, String) {
    if let Err(reason) = state.deployment.readiness() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
    }
    for queue in &state.queues {
        match tokio::time::timeout(Duration::from_secs(5), queue.check_reachable()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("queue not reachable: {err} ({})\n", err.hint()),
                );
            }
            Err(_) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue not reachable: no answer within 5s\n".into(),
                );
            }
        }
    }
    (StatusCode::OK, "ok\n".into())
}

/// Where the container health check finds `/healthz` of a worker serving
/// on `listen_addr` (`host:port`): the same port on the loopback interface.
pub fn local_healthz_url(listen_addr: &str) -> String {
    let port = listen_addr.rsplit(':').next().unwrap_or("9090");
    format!("http://127.0.0.1:{port}/healthz")
}

/// The container health check: GETs `url` (plain HTTP on the loopback
/// interface, never through a proxy the environment names) and succeeds
/// on a 200.
pub async fn probe(url: &str) -> Result<(), String> {
    if !url.starts_with("http://") {
        return Err(format!("{url}: only http:// URLs are probed"));
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|err| format!("{url}: {}", crate::error::with_causes(&err)))?;
    let response = client.get(url).send().await.map_err(|err| {
        if err.is_timeout() {
            format!("{url}: no answer within 5s")
        } else {
            format!("{url}: {}", crate::error::with_causes(&err.without_url()))
        }
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::OK {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(format!("{url}: {status}: {}", body.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_check_probes_the_listen_port_on_loopback() {
        assert_eq!(
            local_healthz_url("0.0.0.0:9090"),
            "http://127.0.0.1:9090/healthz"
        );
        assert_eq!(
            local_healthz_url("[::]:9100"),
            "http://127.0.0.1:9100/healthz"
        );
    }
    use crate::queue::memory::MemoryQueue;

    #[tokio::test]
    async fn endpoints_answer_and_the_probe_reads_them() {
        let liveness = Arc::new(Liveness::new(Duration::from_secs(60)));
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0",
            liveness.clone(),
            vec![Arc::new(MemoryQueue::new(false))],
            Arc::default(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        probe(&format!("http://{addr}/healthz")).await.unwrap();
        probe(&format!("http://{addr}/readyz")).await.unwrap();
        probe(&format!("http://{addr}/metrics")).await.unwrap();
        let missing = probe(&format!("http://{addr}/nope")).await.unwrap_err();
        assert!(missing.contains("404"), "{missing}");
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_ages_on_the_monotonic_clock() {
        let liveness = Liveness::new(Duration::from_secs(200));
        tokio::time::advance(Duration::from_secs(150)).await;
        assert_eq!(liveness.stuck_for(), None);
        liveness.tick();
        tokio::time::advance(Duration::from_secs(199)).await;
        assert_eq!(liveness.stuck_for(), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(liveness.stuck_for(), Some(Duration::from_secs(201)));
    }

    #[tokio::test]
    async fn a_deployment_problem_fails_readiness_with_its_reason() {
        let deployment = Arc::new(DeploymentHealth::new());
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0",
            Arc::new(Liveness::new(Duration::from_secs(60))),
            vec![Arc::new(MemoryQueue::new(false))],
            deployment.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        deployment.report("sink:events", "401", "check its Authorization header");
        let err = probe(&format!("http://{addr}/readyz")).await.unwrap_err();
        assert!(
            err.contains("503") && err.contains("sink:events answers 401"),
            "{err}"
        );
        probe(&format!("http://{addr}/healthz")).await.unwrap();
        deployment.succeeded(["sink:events"]);
        probe(&format!("http://{addr}/readyz")).await.unwrap();
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_stuck_receive_loop_fails_the_health_check() {
        let liveness = Arc::new(Liveness::new(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(20));
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0",
            liveness,
            vec![Arc::new(MemoryQueue::new(false))],
            Arc::default(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let err = probe(&format!("http://{addr}/healthz")).await.unwrap_err();
        assert!(err.contains("503") && err.contains("receive loop"), "{err}");
        shutdown.cancel();
    }
}
