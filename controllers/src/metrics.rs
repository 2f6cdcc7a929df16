//! Prometheus metrics of the reconcilers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of `portico_clusterip_addresses`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RangeState {
    /// The service range (CIDR).
    pub range: String,
    /// `used` or `free`.
    pub state: &'static str,
}

/// Labels of `portico_clusterip_problems`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemReason {
    /// The Event reason of the problem (e.g. `DuplicateClusterIP`).
    pub reason: &'static str,
}

/// Metrics of the ClusterIP reconciler. Cheap to clone; clones share values.
#[derive(Clone, Debug, Default)]
pub struct ClusterIpMetrics {
    /// Addresses of each service range by state.
    pub addresses: Family<RangeState, Gauge<f64, AtomicU64>>,
    /// Services with a ClusterIP problem, by reason.
    pub problems: Family<ProblemReason, Gauge>,
}

impl ClusterIpMetrics {
    /// Registers the metrics under `portico_clusterip_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portico_clusterip_addresses",
            "Addresses of each service range, used and free",
            self.addresses.clone(),
        );
        registry.register(
            "portico_clusterip_problems",
            "Services whose ClusterIPs are in trouble (duplicate, out of range, not allocated), by reason",
            self.problems.clone(),
        );
    }
}
