//! Admission: the ClusterIP index answers kube-apiserver's
//! AdmissionReviews for new Services (the mutating webhook of
//! `portico controller` serves them over HTTPS).
//!
//! ```text
//!  AdmissionReview (JSON) ──review()──> leader and synced? ──> ClusterIpController::admit
//!                         <── JSON patch: spec.clusterIP(s), ipFamilies, policy (or a denial)
//! ```
//!
//! Only the leader answers with a patch; a replica that is not the leader
//! (or not synced yet) allows the Service unchanged, so the API server
//! allocates and the reconciler adopts the address with an Event.

use crate::clusterip::Admission;
use crate::k8s::{Service, service_type, stated_cluster_ips};
use crate::reconcilers::{SharedIndex, lock};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Why an AdmissionReview got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not an AdmissionReview of a Service.
    #[error("reading the AdmissionReview: {0}")]
    Read(serde_json::Error),
    /// The AdmissionReview has no request.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// The answer could not be written.
    #[error("writing the AdmissionReview: {0}")]
    Write(serde_json::Error),
    /// The patch could not be attached.
    #[error("attaching the patch: {0}")]
    Patch(String),
}

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

    /// Counts one admission of `result`.
    pub fn count(&self, result: &'static str) {
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
pub fn review(state: &WebhookState, body: &[u8]) -> Result<Value, ReviewError> {
    let review: AdmissionReview<Service> =
        serde_json::from_slice(body).map_err(ReviewError::Read)?;
    let request: AdmissionRequest<Service> =
        review.try_into().map_err(|_| ReviewError::NoRequest)?;
    let response = AdmissionResponse::from(&request);
    let Some(svc) = service_to_admit(&request) else {
        return serde_json::to_value(response.into_review()).map_err(ReviewError::Write);
    };
    if !state.serving() {
        // Not the leader (or not synced): the API server allocates, the
        // leader's reconciler adopts.
        state.metrics.count("not-leader");
        return serde_json::to_value(response.into_review()).map_err(ReviewError::Write);
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
            let patch: json_patch::Patch =
                serde_json::from_value(patch_ops(&ips, &policy)).map_err(ReviewError::Write)?;
            response
                .with_patch(patch)
                .map_err(|e| ReviewError::Patch(e.to_string()))?
        }
    };
    let mut out = serde_json::to_value(response.into_review()).map_err(ReviewError::Write)?;
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
