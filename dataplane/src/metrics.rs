//! Prometheus metrics of the dataplane.

use crate::proxier::{SyncKind, SyncReport};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// Label `kind` (`full` or `partial`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `full` or `partial`.
    pub kind: &'static str,
}

/// Labels of `portico_dataplane_sync_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `full` or `partial`.
    pub kind: &'static str,
    /// What failed (`nft`, `spawn`, …).
    pub reason: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Metrics of `portico node`. Cheap to clone; clones share values.
#[derive(Clone, Debug)]
pub struct DataplaneMetrics {
    /// Sync duration by kind.
    pub sync_duration: Family<Kind, Histogram>,
    /// Syncs by kind.
    pub syncs: Family<Kind, Counter>,
    /// Failed syncs by kind and reason.
    pub sync_errors: Family<ErrorLabels, Counter>,
    /// Operations in the last transaction of each kind.
    pub last_operations: Family<Kind, Gauge>,
    /// Chains installed.
    pub chains: Gauge,
    /// Set and map elements installed.
    pub elements: Gauge,
    /// Services with rules.
    pub services: Gauge,
    /// UDP conntrack entries deleted.
    pub conntrack_deleted: Counter,
    /// Unix time of the last successful sync.
    pub last_sync: Gauge<f64, AtomicU64>,
}

impl Default for DataplaneMetrics {
    fn default() -> Self {
        DataplaneMetrics {
            sync_duration: Family::new_with_constructor(duration_histogram),
            syncs: Family::default(),
            sync_errors: Family::default(),
            last_operations: Family::default(),
            chains: Gauge::default(),
            elements: Gauge::default(),
            services: Gauge::default(),
            conntrack_deleted: Counter::default(),
            last_sync: Gauge::default(),
        }
    }
}

impl DataplaneMetrics {
    /// Registers the metrics under `portico_dataplane_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "portico_dataplane_sync_duration",
            "Time to render and apply a sync, by kind (full or partial)",
            Unit::Seconds,
            self.sync_duration.clone(),
        );
        registry.register(
            "portico_dataplane_syncs",
            "Successful syncs by kind",
            self.syncs.clone(),
        );
        registry.register(
            "portico_dataplane_sync_errors",
            "Failed syncs by kind and reason (the next sync is full)",
            self.sync_errors.clone(),
        );
        registry.register(
            "portico_dataplane_last_sync_operations",
            "Operations in the last transaction of each kind",
            self.last_operations.clone(),
        );
        registry.register(
            "portico_dataplane_chains",
            "Chains in Portico's tables",
            self.chains.clone(),
        );
        registry.register(
            "portico_dataplane_map_elements",
            "Elements of Portico's sets and maps (clients in affinity sets not counted)",
            self.elements.clone(),
        );
        registry.register(
            "portico_dataplane_services",
            "Services with rules on this node",
            self.services.clone(),
        );
        registry.register(
            "portico_dataplane_conntrack_deletions",
            "UDP conntrack entries deleted because their endpoint went away",
            self.conntrack_deleted.clone(),
        );
        registry.register(
            "portico_dataplane_last_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            self.last_sync.clone(),
        );
    }

    /// Records a successful sync.
    pub fn observe(&self, report: &SyncReport, services: usize) {
        let kind = Kind {
            kind: report.kind.label(),
        };
        self.sync_duration
            .get_or_create(&kind)
            .observe(report.duration.as_secs_f64());
        self.syncs.get_or_create(&kind).inc();
        self.last_operations
            .get_or_create(&kind)
            .set(i64::try_from(report.operations).unwrap_or(i64::MAX));
        self.chains
            .set(i64::try_from(report.chains).unwrap_or(i64::MAX));
        self.elements
            .set(i64::try_from(report.elements).unwrap_or(i64::MAX));
        self.services
            .set(i64::try_from(services).unwrap_or(i64::MAX));
        self.conntrack_deleted
            .inc_by(u64::try_from(report.conntrack_deleted).unwrap_or(u64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_sync.set(now);
    }

    /// Records a failed sync.
    pub fn error(&self, kind: SyncKind, error: &crate::Error) {
        self.sync_errors
            .get_or_create(&ErrorLabels {
                kind: kind.label(),
                reason: error.metric_label(),
            })
            .inc();
    }
}
