//! The mutating admission webhook that makes Portico the ClusterIP
//! allocator in a cluster.
//!
//! ```text
//!  kube-apiserver ──HTTPS POST /mutate-services (AdmissionReview)──> review()
//!        ^                                                             │ leader and synced?
//!        │                                                             v
//!        └──── JSON patch: spec.clusterIP(s), ipFamilies, policy ── ClusterIpController::admit
//!                                                                   (quarantine, stable
//!                                                                    addresses, ranges,
//!                                                                    reservations)
//! ```
//!
//! Only the leader answers with a patch; a replica that is not the leader
//! (or not synced yet) allows the Service unchanged, so the API server
//! allocates and the reconciler adopts the address with an Event. The
//! webhook is registered with `failurePolicy: Ignore`, so an outage of
//! Portico never blocks Service creation. The serving certificate is read
//! again whenever its files change.

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

pub use portico_controllers::reconcilers::{SharedIndex, lock};

pub use portico_controllers::admission::{
    AdmissionResult, ReviewError, WebhookMetrics, WebhookState, patch_ops, review,
};

/// The largest AdmissionReview read: a Service and its old version, with
/// room to spare (etcd keeps objects up to 1.5 MiB).
pub const MAX_BODY: usize = 4 << 20;

async fn mutate(
    State(state): State<WebhookState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        state.metrics.count("invalid");
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::CONTENT_TYPE, "text/plain")],
            "an AdmissionReview is application/json\n".to_owned(),
        );
    }
    match review(&state, &body) {
        Ok(v) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        ),
        Err(e) => {
            state.metrics.count("invalid");
            tracing::warn!(error = %format!("{e:#}"), "bad AdmissionReview");
            (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("{e:#}\n"),
            )
        }
    }
}

/// The HTTPS endpoints: `POST /mutate-services` (JSON only, at most
/// [`MAX_BODY`]; anything else is refused with 4xx and counted as
/// `invalid`).
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate-services", post(mutate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A TLS configuration read from PEM files, read again when they change.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<ServerConfig>, Option<SystemTime>)>,
}

impl Tls {
    /// Reads the certificate chain and key.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let config = server_config(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new((Arc::new(config), modified(cert, key))),
        })
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .map(|c| c.0.clone())
            .unwrap_or_else(|e| e.into_inner().0.clone())
    }

    /// Reads the files again if they changed; keeps the old configuration
    /// (and says why) when the new files are unusable.
    pub fn reload_if_changed(&self) {
        let now = modified(&self.cert, &self.key);
        let seen = self.current.read().map(|c| c.1).unwrap_or(None);
        if now == seen {
            return;
        }
        match server_config(&self.cert, &self.key) {
            Ok(config) => {
                if let Ok(mut c) = self.current.write() {
                    *c = (Arc::new(config), now);
                }
                tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "webhook certificate changed but cannot be used; keeping the old one")
            }
        }
    }
}

fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

fn server_config(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the webhook certificate and key do not go together")
}

/// Serves HTTPS on `listener` until `shutdown` resolves, reading the
/// certificate again every `reload_every` if its files changed.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<Tls>,
    app: Router,
    reload_every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let reloader = tls.clone();
    let reload = tokio::spawn(async move {
        let mut tick = tokio::time::interval(reload_every);
        loop {
            tick.tick().await;
            reloader.reload_if_changed();
        }
    });
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept");
                    continue;
                }
            },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
            };
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection");
            }
        });
    }
    reload.abort();
    Ok(())
}

/// The merge patch that puts the leader label on this replica's pod (or
/// takes it off).
fn leader_label_patch(leader: bool) -> Value {
    let value = if leader {
        Value::String("true".to_owned())
    } else {
        Value::Null
    };
    json!({ "metadata": { "labels": { portico_crds::names::labels::WEBHOOK_LEADER: value } } })
}

/// Labels this replica's pod while it leads, so the webhook Service (which
/// selects the label) sends admissions to the leader only. Runs until the
/// leadership channel closes; a failed patch is retried every `retry`.
pub async fn follow_leadership(
    pods: kube::Api<k8s_openapi::api::core::v1::Pod>,
    pod_name: String,
    mut leader: tokio::sync::watch::Receiver<bool>,
    retry: Duration,
) {
    let params = kube::api::PatchParams {
        field_manager: Some(portico_crds::names::FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    loop {
        let want = *leader.borrow_and_update();
        let patch = leader_label_patch(want);
        match pods
            .patch(&pod_name, &params, &kube::api::Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(pod = %pod_name, leader = want, "webhook leader label updated");
                if leader.changed().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(pod = %pod_name, error = %e, "labelling the pod for the webhook Service");
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    changed = leader.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}
