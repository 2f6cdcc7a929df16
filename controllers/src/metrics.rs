//! Prometheus metrics of the reconcilers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
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
    /// Addresses freed by deleted Services and not yet handed out again.
    pub quarantined: Gauge,
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
        registry.register(
            "portico_clusterip_quarantined_addresses",
            "Addresses freed by deleted Services that are kept from reuse for --clusterip-reuse-delay",
            self.quarantined.clone(),
        );
    }
}

/// Labels `result` of `portico_endpointslice_syncs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncResult {
    /// `success` or `error`.
    pub result: &'static str,
}

/// Labels `operation` of `portico_endpointslice_changes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeOperation {
    /// `create`, `update` or `delete`.
    pub operation: &'static str,
}

/// Metrics of the EndpointSlice controller. Cheap to clone; clones share values.
#[derive(Clone, Debug)]
pub struct EndpointSliceMetrics {
    /// Service syncs by result.
    pub syncs: Family<SyncResult, Counter>,
    /// Slice writes by operation.
    pub changes: Family<ChangeOperation, Counter>,
    /// Endpoints in the slices Portico manages.
    pub endpoints: Gauge,
    /// Time to compute one Service's sync.
    pub duration: Histogram,
}

impl Default for EndpointSliceMetrics {
    fn default() -> Self {
        EndpointSliceMetrics {
            syncs: Family::default(),
            changes: Family::default(),
            endpoints: Gauge::default(),
            duration: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
        }
    }
}

impl EndpointSliceMetrics {
    /// Registers the metrics under `portico_endpointslice_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portico_endpointslice_syncs",
            "Service syncs by result",
            self.syncs.clone(),
        );
        registry.register(
            "portico_endpointslice_changes",
            "EndpointSlice writes by operation",
            self.changes.clone(),
        );
        registry.register(
            "portico_endpointslice_endpoints",
            "Endpoints in the EndpointSlices Portico manages",
            self.endpoints.clone(),
        );
        registry.register_with_unit(
            "portico_endpointslice_sync_duration",
            "Time to compute one Service's EndpointSlice sync",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    pub(crate) fn sync(&self, result: &'static str) {
        self.syncs.get_or_create(&SyncResult { result }).inc();
    }

    pub(crate) fn change(&self, operation: &'static str) {
        self.changes
            .get_or_create(&ChangeOperation { operation })
            .inc();
    }
}

/// Labels of `portico_lbipam_addresses`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolAddresses {
    /// The IPPool.
    pub pool: String,
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// `used` or `free`.
    pub state: &'static str,
}

/// Labels of `portico_lbipam_pending_services`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PendingReason {
    /// Why the Services have no address (e.g. `PoolExhausted`).
    pub reason: &'static str,
}

/// Metrics of LoadBalancer IPAM. Cheap to clone; clones share values.
#[derive(Clone, Debug, Default)]
pub struct LbIpamMetrics {
    /// Addresses of each pool and family by state.
    pub addresses: Family<PoolAddresses, Gauge<f64, AtomicU64>>,
    /// LoadBalancer Services without (all) their addresses, by reason.
    pub pending: Family<PendingReason, Gauge>,
}

impl LbIpamMetrics {
    /// Registers the metrics under `portico_lbipam_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portico_lbipam_addresses",
            "Addresses of each IPPool and family, used and free",
            self.addresses.clone(),
        );
        registry.register(
            "portico_lbipam_pending_services",
            "LoadBalancer Services without the addresses they need, by reason",
            self.pending.clone(),
        );
    }
}
