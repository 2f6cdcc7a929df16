//! Prometheus metrics of the DNS server.
//!
//! The hot path pays one relaxed atomic add per query for the query
//! counter (counter handles are looked up once per (type, rcode) and kept)
//! and a few per batch for the latency histogram, which counts in atomic
//! buckets so a batch of answers is observed at once.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::wire::{rcode, rtype};

/// Labels of `portico_dns_queries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// Query type (`A`, `AAAA`, `SRV`, …, `other`).
    pub r#type: &'static str,
    /// Response code (`NOERROR`, `NXDOMAIN`, …).
    pub rcode: &'static str,
}

/// Labels of `portico_dns_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `timeout`, `network`, `servfail`, `malformed`, `no_upstream`.
    pub reason: &'static str,
}

const QTYPES: [(u16, &str); 10] = [
    (rtype::A, "A"),
    (rtype::AAAA, "AAAA"),
    (rtype::SRV, "SRV"),
    (rtype::PTR, "PTR"),
    (rtype::CNAME, "CNAME"),
    (rtype::TXT, "TXT"),
    (15, "MX"),
    (rtype::NS, "NS"),
    (rtype::SOA, "SOA"),
    (rtype::ANY, "ANY"),
];
const RCODES: [(u16, &str); 7] = [
    (rcode::NOERROR, "NOERROR"),
    (rcode::FORMERR, "FORMERR"),
    (rcode::SERVFAIL, "SERVFAIL"),
    (rcode::NXDOMAIN, "NXDOMAIN"),
    (rcode::NOTIMP, "NOTIMP"),
    (rcode::REFUSED, "REFUSED"),
    (rcode::BADVERS, "BADVERS"),
];
const NQ: usize = QTYPES.len() + 1;
const NR: usize = RCODES.len() + 1;

fn qtype_index(t: u16) -> usize {
    QTYPES
        .iter()
        .position(|(v, _)| *v == t)
        .unwrap_or(QTYPES.len())
}

fn rcode_index(r: u16) -> usize {
    RCODES
        .iter()
        .position(|(v, _)| *v == r)
        .unwrap_or(RCODES.len())
}

/// Upper bounds of the latency buckets, in seconds.
const BOUNDS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1, 0.5, 2.5,
];

/// A histogram that takes many observations of one value at once, in
/// atomic buckets (prometheus-client's takes a lock per observation).
#[derive(Debug, Default)]
struct Latency {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct LatencyMetric(Arc<Latency>);

impl TypedMetric for LatencyMetric {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyMetric {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let l = &self.0;
        let mut buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .zip(&l.buckets)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        buckets.push((f64::MAX, l.buckets[BOUNDS.len()].load(Ordering::Relaxed)));
        encoder.encode_histogram::<NoLabelSet>(
            l.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            l.count.load(Ordering::Relaxed),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Debug)]
struct Inner {
    queries: Family<QueryLabels, Counter>,
    cells: [[OnceLock<Counter>; NR]; NQ],
    latency: LatencyMetric,
    cache_hits: Counter,
    cache_misses: Counter,
    upstream_errors: Family<UpstreamLabels, Counter>,
    forwards_rejected: Counter,
    zone_names: Gauge,
}

/// Metrics of the DNS server. Cheap to clone; clones share values.
#[derive(Debug, Clone)]
pub struct DnsMetrics(Arc<Inner>);

impl Default for DnsMetrics {
    fn default() -> Self {
        DnsMetrics(Arc::new(Inner {
            queries: Family::default(),
            cells: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            latency: LatencyMetric::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            upstream_errors: Family::default(),
            forwards_rejected: Counter::default(),
            zone_names: Gauge::default(),
        }))
    }
}

impl DnsMetrics {
    /// Registers the metrics under `portico_dns_*`.
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.0;
        registry.register(
            "portico_dns_queries",
            "DNS queries answered, by query type and response code",
            m.queries.clone(),
        );
        registry.register_with_unit(
            "portico_dns_request_duration",
            "Time from receiving a query to sending its answer",
            Unit::Seconds,
            m.latency.clone(),
        );
        registry.register(
            "portico_dns_cache_hits",
            "Forwarded names answered from the cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "portico_dns_cache_misses",
            "Forwarded names not in the cache",
            m.cache_misses.clone(),
        );
        registry.register(
            "portico_dns_upstream_errors",
            "Upstream exchanges that gave no usable answer, by reason",
            m.upstream_errors.clone(),
        );
        registry.register(
            "portico_dns_forwards_rejected",
            "Queries answered SERVFAIL because too many were being forwarded",
            m.forwards_rejected.clone(),
        );
        registry.register(
            "portico_dns_zone_names",
            "Names in the cluster zone index",
            m.zone_names.clone(),
        );
    }

    /// Counts one answered query.
    pub(crate) fn query(&self, qtype: u16, rc: u16) {
        let (qi, ri) = (qtype_index(qtype), rcode_index(rc));
        self.0.cells[qi][ri]
            .get_or_init(|| {
                self.0
                    .queries
                    .get_or_create(&QueryLabels {
                        r#type: QTYPES.get(qi).map_or("other", |q| q.1),
                        rcode: RCODES.get(ri).map_or("other", |r| r.1),
                    })
                    .clone()
            })
            .inc();
    }

    /// Observes `n` queries that each took `d`.
    pub(crate) fn observe_latency(&self, d: Duration, n: u64) {
        let l = &self.0.latency.0;
        let secs = d.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        l.buckets[i].fetch_add(n, Ordering::Relaxed);
        l.count.fetch_add(n, Ordering::Relaxed);
        l.sum_nanos
            .fetch_add(d.as_nanos() as u64 * n, Ordering::Relaxed);
    }

    pub(crate) fn cache_hit(&self) {
        self.0.cache_hits.inc();
    }

    pub(crate) fn cache_miss(&self) {
        self.0.cache_misses.inc();
    }

    pub(crate) fn upstream_error(&self, reason: &'static str) {
        self.0
            .upstream_errors
            .get_or_create(&UpstreamLabels { reason })
            .inc();
    }

    pub(crate) fn forward_rejected(&self) {
        self.0.forwards_rejected.inc();
    }

    pub(crate) fn set_zone_names(&self, n: usize) {
        self.0.zone_names.set(n as i64);
    }

    /// Queries counted with this type and rcode (for tests).
    pub fn queries(&self, qtype: &str, rcode: &str) -> u64 {
        let qtype = QTYPES
            .iter()
            .find(|q| q.1 == qtype)
            .map_or("other", |q| q.1);
        let rcode = RCODES
            .iter()
            .find(|r| r.1 == rcode)
            .map_or("other", |r| r.1);
        self.0
            .queries
            .get_or_create(&QueryLabels {
                r#type: qtype,
                rcode,
            })
            .get()
    }

    /// Upstream errors counted with this reason (for tests).
    pub fn upstream_errors(&self, reason: &'static str) -> u64 {
        self.0
            .upstream_errors
            .get_or_create(&UpstreamLabels { reason })
            .get()
    }

    /// Cache hits and misses so far (for tests).
    pub fn cache_counts(&self) -> (u64, u64) {
        (self.0.cache_hits.get(), self.0.cache_misses.get())
    }
}
