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
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use portico_controllers::clusterip::Admission;
use portico_controllers::k8s::{Service, service_type, stated_cluster_ips};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

pub use portico_controllers::reconcilers::{SharedIndex, lock};

/// Labels `result` of `portico_webhook_admissions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct AdmissionResult {
    /// `assigned`, `left`, `refused`, `not-leader` or `invalid`.
    pub result: &'static str,
}

/// Metrics of the webhook. Cheap to clone; clones share values.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    /// Admissions by result.
    pub admissions: prometheus_client::metrics::family::Family<
        AdmissionResult,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Time to choose a Service's addresses.
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics {
            admissions: Default::default(),
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_01, 4.0, 10),
            ),
        }
    }
}

impl WebhookMetrics {
    /// Registers `portico_webhook_*`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "portico_webhook_admissions",
            "Service admissions by result",
            self.admissions.clone(),
        );
        registry.register_with_unit(
            "portico_webhook_allocation_duration",
            "Time to choose a new Service's ClusterIPs",
            prometheus_client::registry::Unit::Seconds,
            self.latency.clone(),
        );
    }

    fn count(&self, result: &'static str) {
        self.admissions
            .get_or_create(&AdmissionResult { result })
            .inc();
    }
}

/// What the webhook needs.
#[derive(Clone)]
pub struct WebhookState {
    /// The ClusterIP index.
    pub index: SharedIndex,
    /// This replica holds the Lease.
    pub leader: Arc<AtomicBool>,
    /// The index has seen every Service (and range) once.
    pub synced: Arc<AtomicBool>,
    /// How long an answered address stays reserved for a Service that does
    /// not show up.
    pub reserve_for: Duration,
    /// Its metrics.
    pub metrics: WebhookMetrics,
}

impl WebhookState {
    /// Whether this replica answers with patches (`/readyz/webhook`).
    pub fn serving(&self) -> bool {
        self.leader.load(Ordering::Relaxed) && self.synced.load(Ordering::Relaxed)
    }
}

/// Answers one AdmissionReview (JSON in, JSON out).
pub fn review(state: &WebhookState, body: &[u8]) -> anyhow::Result<Value> {
    let review: AdmissionReview<Service> =
        serde_json::from_slice(body).context("reading the AdmissionReview")?;
    let request: AdmissionRequest<Service> = review
        .try_into()
        .context("the AdmissionReview has no request")?;
    let response = AdmissionResponse::from(&request);
    let Some(svc) = service_to_admit(&request) else {
        return Ok(serde_json::to_value(response.into_review())?);
    };
    if !state.serving() {
        // Not the leader (or not synced): the API server allocates, the
        // leader's reconciler adopts.
        state.metrics.count("not-leader");
        return Ok(serde_json::to_value(response.into_review())?);
    }
    let started = std::time::Instant::now();
    let admission = lock(&state.index).admit(svc, state.reserve_for);
    state
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    state.metrics.count(match &admission {
        Admission::Leave => "left",
        Admission::Refuse(_) => "refused",
        Admission::Assign { .. } => "assigned",
    });
    let response = match admission {
        Admission::Leave => response,
        Admission::Refuse(problem) => response.deny(problem.to_string()),
        Admission::Assign { ips, policy } => {
            let patch: json_patch::Patch = serde_json::from_value(patch_ops(&ips, &policy))?;
            response.with_patch(patch)?
        }
    };
    let mut out = serde_json::to_value(response.into_review())?;
    base64_patch(&mut out);
    Ok(out)
}

/// The API server reads `response.patch` as Go's `[]byte`: a base64
/// string. kube-core serializes it as an array of numbers (kube-rs issue
/// 1781), which the API server cannot read, so it is re-encoded here.
fn base64_patch(review: &mut Value) {
    use base64::Engine as _;
    let Some(patch) = review.pointer_mut("/response/patch") else {
        return;
    };
    if let Some(bytes) = patch.as_array() {
        let raw: Vec<u8> = bytes
            .iter()
            .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect();
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(raw));
    }
}

/// The Service to choose addresses for: a creation, or an update from
/// `ExternalName` to a type that needs a ClusterIP.
fn service_to_admit(request: &AdmissionRequest<Service>) -> Option<&Service> {
    let svc = request.object.as_ref()?;
    match request.operation {
        Operation::Create => Some(svc),
        Operation::Update => {
            let was_external = request
                .old_object
                .as_ref()
                .is_some_and(|o| service_type(o) == "ExternalName");
            (was_external
                && service_type(svc) != "ExternalName"
                && stated_cluster_ips(svc).is_empty())
            .then_some(svc)
        }
        _ => None,
    }
}

/// The JSON patch that fills in a Service's ClusterIPs.
pub fn patch_ops(ips: &[IpAddr], policy: &str) -> Value {
    let families: Vec<&str> = ips
        .iter()
        .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    json!([
        { "op": "add", "path": "/spec/clusterIP", "value": ips.first() },
        { "op": "add", "path": "/spec/clusterIPs", "value": ips },
        { "op": "add", "path": "/spec/ipFamilies", "value": families },
        { "op": "add", "path": "/spec/ipFamilyPolicy", "value": policy },
    ])
}

async fn mutate(State(state): State<WebhookState>, body: Bytes) -> impl IntoResponse {
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

/// The HTTPS endpoints: `POST /mutate-services`.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate-services", post(mutate))
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
