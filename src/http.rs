//! The HTTP endpoints every component serves: `/metrics` (Prometheus text),
//! `/healthz` (the process runs, or a component's own liveness check) and
//! `/readyz` (the first full sync is done); and a component's own read-only
//! ones (the node agent's `/rules`).

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

/// A liveness check: `Ok(message)` for 200, `Err(message)` for 503.
type Liveness = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

struct Inner {
    registry: Registry,
    ready: AtomicBool,
    /// Extra readiness endpoints (`/readyz/<name>`).
    checks: Vec<(&'static str, Check)>,
    /// A component's own read-only endpoints.
    endpoints: Vec<(&'static str, Endpoint)>,
    liveness: Option<Liveness>,
}

/// A readiness check of one part of a component.
pub type Check = Arc<dyn Fn() -> bool + Send + Sync>;

/// The answer of a read-only endpoint: status, content type, body.
pub type Answer = (StatusCode, &'static str, String);

/// A read-only endpoint of a component.
pub type Endpoint = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Answer> + Send + Sync>;

impl Health {
    /// Health over a registry that holds every metric of the component.
    pub fn new(registry: Registry) -> Self {
        Health {
            inner: Arc::new(Inner {
                registry,
                ready: AtomicBool::new(false),
                checks: Vec::new(),
                endpoints: Vec::new(),
                liveness: None,
            }),
        }
    }

    /// Health whose `/healthz` runs `check` (200 on `Ok`, 503 on `Err`).
    pub fn with_liveness(
        registry: Registry,
        check: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        Health {
            inner: Arc::new(Inner {
                registry,
                ready: AtomicBool::new(false),
                checks: Vec::new(),
                endpoints: Vec::new(),
                liveness: Some(Box::new(check)),
            }),
        }
    }

    /// Adds `/readyz/<name>`, 200 when `check` says ready, 503 otherwise
    /// (e.g. `/readyz/webhook`: only the leader serves the webhook).
    pub fn with_check(mut self, name: &'static str, check: Check) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.checks.push((name, check)),
            None => tracing::error!(
                name,
                "readiness checks are added before the health state is shared; /readyz/{name} is missing"
            ),
        }
        self
    }

    /// Adds a read-only `GET path` answered by `endpoint`.
    pub fn with_endpoint(mut self, path: &'static str, endpoint: Endpoint) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.endpoints.push((path, endpoint)),
            None => tracing::error!(
                path,
                "endpoints are added before the health state is shared; this one is missing"
            ),
        }
        self
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
            .route("/healthz", get(healthz))
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
        for (path, endpoint) in &self.inner.endpoints {
            let endpoint = endpoint.clone();
            app = app.route(
                path,
                get(move || {
                    let answer = endpoint();
                    async move {
                        let (code, content_type, body) = answer.await;
                        (code, [(header::CONTENT_TYPE, content_type)], body)
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

async fn healthz(State(health): State<Health>) -> (StatusCode, String) {
    match &health.inner.liveness {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(check) => match check() {
            Ok(m) => (StatusCode::OK, m),
            Err(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        },
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
