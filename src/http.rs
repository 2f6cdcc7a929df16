//! The HTTP endpoints every component serves: `/metrics` (Prometheus text),
//! `/healthz` (the process runs) and `/readyz` (the first full sync is done).

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared health state and metrics registry.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    ready: AtomicBool,
    /// Extra readiness endpoints (`/readyz/<name>`).
    checks: Vec<(&'static str, Check)>,
}

/// A readiness check of one part of a component.
pub type Check = Arc<dyn Fn() -> bool + Send + Sync>;

impl Health {
    /// Health over a registry that holds every metric of the component.
    pub fn new(registry: Registry) -> Self {
        Health {
            inner: Arc::new(Inner {
                registry,
                ready: AtomicBool::new(false),
                checks: Vec::new(),
            }),
        }
    }

    /// Adds `/readyz/<name>`, 200 when `check` says ready, 503 otherwise
    /// (e.g. `/readyz/webhook`: only the leader serves the webhook).
    pub fn with_check(self, name: &'static str, check: Check) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            registry: Registry::default(),
            ready: AtomicBool::new(shared.ready.load(Ordering::Relaxed)),
            checks: shared.checks.clone(),
        });
        inner.checks.push((name, check));
        Health {
            inner: Arc::new(inner),
        }
    }

    /// Whether the component is ready.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Marks the component ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Serves the endpoints on `addr` until the task is dropped.
    pub async fn serve(self, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics and health server to {addr}"))?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let mut app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz));
        for (name, check) in &self.inner.checks {
            let check = check.clone();
            app = app.route(
                &format!("/readyz/{name}"),
                get(move || async move {
                    if check() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }),
            );
        }
        let app = app.with_state(self);
        axum::serve(listener, app)
            .await
            .context("metrics and health server")
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &health.inner.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.inner.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first full sync is not done\n",
        )
    }
}
