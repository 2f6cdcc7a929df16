//! [`Reconcilers`]: the one fan-out of changes to every reconciler, driven
//! by `portico controller` (watch events, the API writer) and by
//! `portico local` (manifests, the local world) alike.
//!
//! ```text
//!   Change ──on──> clusterip ─┐
//!                  nodeport  ─┼──> Vec<Write> ──> Writer ──> Written ──written──┐
//!                  slices    ─┤      ^                                          │
//!                  lbipam    ─┘      └──── follow-up writes <───────────────────┘
//!   flush(now): the slices and LoadBalancer statuses that are due
//! ```
//!
//! Nothing here does IO or reads the clock: the driver passes `now`, sends
//! the writes, and hands every result back through [`Reconcilers::written`],
//! so a reconciler never acts on a state that has not seen its own last
//! write. A write that failed for a passing reason is kept and sent again
//! after [`RETRY_DELAY`] (unless a newer write to the same object went
//! first); EndpointSlices are recomputed instead, since their stored
//! version moves.

use crate::clusterip::{ClusterIpController, Mode};
use crate::endpointslices::{self, EndpointSliceController};
use crate::k8s::{EndpointSlice, Namespace, Node, Pod, Service};
use crate::lbipam::{self, LbIpamController};
use crate::metrics::{ClusterIpMetrics, EndpointSliceMetrics, LbIpamMetrics};
use crate::nodeport::NodePortAllocator;
use crate::watch::Event;
use crate::{Error, NetworkConfig, Object, Result, Target, TargetKind, Write, Writer, Written};
use k8s_openapi::api::networking::v1::IPAddress;
use portico_crds::{ClusterIPRange, IPPool};
use portico_ipam::PortRange;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A write that failed for a passing reason is sent again after this pause.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The ClusterIP index, shared with the admission webhook.
pub type SharedIndex = Arc<Mutex<ClusterIpController>>;

/// Locks the shared ClusterIP index (a panic elsewhere does not poison it
/// for good: the index holds no invariant across a panic).
pub fn lock(index: &SharedIndex) -> MutexGuard<'_, ClusterIpController> {
    index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One change of one kind of object the reconcilers read. It lives for one
/// call, so its size does not matter: boxing would cost an allocation per
/// event.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Change {
    /// `v1` Services.
    Services(Event<Arc<Service>>),
    /// `v1` Pods.
    Pods(Event<Pod>),
    /// `v1` Nodes (their labels: zones).
    Nodes(Event<Node>),
    /// Portico's EndpointSlices.
    Slices(Event<Arc<EndpointSlice>>),
    /// `IPPool`s.
    Pools(Event<IPPool>),
    /// `ClusterIPRange`s.
    Ranges(Event<ClusterIPRange>),
    /// kube-apiserver's `IPAddress` records (KEP-1880).
    IpAddresses(Event<IPAddress>),
    /// Namespaces (their labels: pool and range selectors).
    Namespaces(Event<Namespace>),
}

/// Who hands out ClusterIPs and node ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// kube-apiserver allocates; Portico audits ClusterIPs, and the garbage
    /// collector deletes the slices of deleted Services (`portico controller`).
    Cluster,
    /// Portico plays the API server: it allocates ClusterIPs and node ports
    /// and deletes orphaned slices itself (`portico local`).
    ApiServer {
        /// `--service-node-port-range`.
        node_ports: PortRange,
    },
}

/// The reconcilers' settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The service and pod networks.
    pub net: NetworkConfig,
    /// Who allocates.
    pub role: Role,
    /// `--clusterip-reuse-delay`.
    pub clusterip_reuse_delay: Duration,
    /// Report Services whose ClusterIPs Portico did not hand out (the
    /// admission webhook is on).
    pub adoption_events: bool,
    /// `--max-endpoints-per-slice`.
    pub max_endpoints_per_slice: usize,
    /// `--endpoint-updates-batch-period`.
    pub batch_period: Duration,
    /// Serve LoadBalancer Services without a class.
    pub default_load_balancer_class: bool,
}

impl Config {
    /// The defaults of a role over `net`.
    pub fn new(net: NetworkConfig, role: Role) -> Self {
        Config {
            net,
            role,
            clusterip_reuse_delay: Duration::from_secs(300),
            adoption_events: false,
            max_endpoints_per_slice: endpointslices::DEFAULT_MAX_ENDPOINTS_PER_SLICE,
            batch_period: Duration::ZERO,
            default_load_balancer_class: true,
        }
    }
}

/// Labels of `portico_controller_write_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct WriteFailure {
    /// See [`Error::write_reason`].
    pub reason: &'static str,
}

/// The reconcilers' metrics, registered once.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// ClusterIP allocation.
    pub clusterip: ClusterIpMetrics,
    /// EndpointSlices.
    pub slices: EndpointSliceMetrics,
    /// LoadBalancer IPAM.
    pub lbipam: LbIpamMetrics,
    /// Writes that failed, by reason.
    pub write_failures: prometheus_client::metrics::family::Family<
        WriteFailure,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Failed writes sent again.
    pub write_retries: prometheus_client::metrics::counter::Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.clusterip.register(registry);
        self.slices.register(registry);
        self.lbipam.register(registry);
        registry.register(
            "portico_controller_write_failures",
            "Writes to the API that failed, by reason",
            self.write_failures.clone(),
        );
        registry.register(
            "portico_controller_write_retries",
            "Failed writes sent again after a pause",
            self.write_retries.clone(),
        );
    }
}

/// Which kinds have been listed once.
#[derive(Clone, Copy, Debug, Default)]
struct Synced {
    services: bool,
    pods: bool,
    nodes: bool,
    slices: bool,
    pools: bool,
    ranges: bool,
    ip_addresses: bool,
    namespaces: bool,
}

/// Every reconciler, fed with one stream of changes. See the module
/// documentation.
pub struct Reconcilers {
    metrics: Metrics,
    clusterip: SharedIndex,
    node_ports: Option<NodePortAllocator>,
    slices: EndpointSliceController,
    lb: LbIpamController,
    synced: Synced,
    /// Whether IPAddress records are listed (clusters that have them).
    ip_addresses: bool,
    /// Writes to send again, by the object (and subresource) they write.
    retries: HashMap<(Target, bool), (Instant, Write)>,
}

impl Reconcilers {
    /// Empty reconcilers.
    pub fn new(cfg: Config, metrics: Metrics) -> Result<Self> {
        let clusterip = Arc::new(Mutex::new(new_clusterip(&cfg, &metrics)?));
        let node_ports = match cfg.role {
            Role::ApiServer { node_ports } => Some(NodePortAllocator::new(node_ports)),
            Role::Cluster => None,
        };
        let slices = EndpointSliceController::new(
            endpointslices::Config {
                max_endpoints_per_slice: cfg.max_endpoints_per_slice,
                batch_period: cfg.batch_period,
                delete_orphans: cfg.role != Role::Cluster,
            },
            metrics.slices.clone(),
        );
        let lb = new_lbipam(&cfg, &metrics);
        Ok(Reconcilers {
            metrics,
            clusterip,
            node_ports,
            slices,
            lb,
            synced: Synced::default(),
            ip_addresses: false,
            retries: HashMap::new(),
        })
    }

    /// IPAddress records are watched too: admissions wait for their list.
    pub fn with_ip_addresses(mut self, on: bool) -> Self {
        self.ip_addresses = on;
        self
    }

    /// The ClusterIP index (the admission webhook asks it).
    pub fn clusterip(&self) -> &SharedIndex {
        &self.clusterip
    }

    /// The node port allocator, when Portico allocates.
    pub fn node_ports(&self) -> Option<&NodePortAllocator> {
        self.node_ports.as_ref()
    }

    /// The EndpointSlice index.
    pub fn slices(&self) -> &EndpointSliceController {
        &self.slices
    }

    /// The LoadBalancer IPAM index.
    pub fn lbipam(&self) -> &LbIpamController {
        &self.lb
    }

    /// Whether every kind the slices and LoadBalancer statuses depend on
    /// has been listed, so that [`flush`](Self::flush) writes.
    pub fn synced(&self) -> bool {
        let s = self.synced;
        s.services && s.pods && s.nodes && s.slices && s.pools && s.namespaces
    }

    /// Whether the ClusterIP index has seen everything an admission
    /// depends on.
    pub fn admission_ready(&self) -> bool {
        let s = self.synced;
        s.services && s.ranges && s.namespaces && (s.ip_addresses || !self.ip_addresses)
    }

    /// Feeds one change to every reconciler that reads it; returns the
    /// writes they want at once (ClusterIPs, node ports, range statuses).
    pub fn on(&mut self, change: Change, now: Instant) -> Vec<Write> {
        let mut writes = Vec::new();
        match change {
            Change::Services(ev) => {
                self.synced.services |= matches!(ev, Event::Reset(_));
                let mut clusterip = lock(&self.clusterip);
                match ev {
                    Event::Reset(all) => {
                        self.lb.reset_services(all.iter().map(AsRef::as_ref));
                        writes = clusterip.reset(all.iter().map(AsRef::as_ref));
                        if let Some(np) = self.node_ports.as_mut() {
                            writes.extend(np.reset(all.iter().map(AsRef::as_ref)));
                        }
                        self.slices.reset_services(all, now);
                    }
                    Event::Apply(svc) => {
                        self.lb.apply_service(&svc);
                        writes = clusterip.apply(&svc);
                        if let Some(np) = self.node_ports.as_mut() {
                            writes.extend(np.apply(&svc));
                        }
                        self.slices.apply_service(svc, now);
                    }
                    Event::Delete(svc) => {
                        self.lb.delete_service(&svc);
                        writes = clusterip.delete(&svc);
                        if let Some(np) = self.node_ports.as_mut() {
                            writes.extend(np.delete(&svc));
                        }
                        self.slices.delete_service(&svc, now);
                    }
                }
            }
            Change::Pods(ev) => {
                self.synced.pods |= matches!(ev, Event::Reset(_));
                match ev {
                    Event::Reset(all) => self.slices.reset_pods(all.iter(), now),
                    Event::Apply(pod) => self.slices.apply_pod(&pod, now),
                    Event::Delete(pod) => self.slices.delete_pod(&pod, now),
                }
            }
            Change::Nodes(ev) => {
                self.synced.nodes |= matches!(ev, Event::Reset(_));
                match ev {
                    Event::Reset(all) => self.slices.reset_nodes(all.iter(), now),
                    Event::Apply(node) => self.slices.apply_node(&node, now),
                    Event::Delete(node) => self.slices.delete_node(&node, now),
                }
            }
            Change::Slices(ev) => {
                self.synced.slices |= matches!(ev, Event::Reset(_));
                match ev {
                    Event::Reset(all) => self.slices.reset_slices(all, now),
                    Event::Apply(s) => self.slices.apply_slice(s, now),
                    Event::Delete(s) => self.slices.delete_slice(&s, now),
                }
            }
            Change::Pools(ev) => {
                self.synced.pools |= matches!(ev, Event::Reset(_));
                match ev {
                    Event::Reset(all) => self.lb.reset_pools(all.iter()),
                    Event::Apply(p) => self.lb.apply_pool(&p),
                    Event::Delete(p) => self.lb.delete_pool(&p),
                }
            }
            Change::Ranges(ev) => {
                self.synced.ranges |= matches!(ev, Event::Reset(_));
                let mut clusterip = lock(&self.clusterip);
                writes = match ev {
                    Event::Reset(all) => clusterip.reset_ranges(all.iter()),
                    Event::Apply(r) => clusterip.apply_range(&r),
                    Event::Delete(r) => clusterip.delete_range(&r),
                };
            }
            Change::IpAddresses(ev) => {
                self.synced.ip_addresses |= matches!(ev, Event::Reset(_));
                let mut clusterip = lock(&self.clusterip);
                match ev {
                    Event::Reset(all) => clusterip.reset_ip_addresses(all.iter()),
                    Event::Apply(o) => clusterip.apply_ip_address(&o),
                    Event::Delete(o) => clusterip.delete_ip_address(&o),
                }
            }
            Change::Namespaces(ev) => {
                self.synced.namespaces |= matches!(ev, Event::Reset(_));
                let mut clusterip = lock(&self.clusterip);
                match ev {
                    Event::Reset(all) => {
                        self.lb.reset_namespaces(all.iter());
                        clusterip.reset_namespaces(all.iter());
                    }
                    Event::Apply(ns) => {
                        self.lb.apply_namespace(&ns);
                        clusterip.apply_namespace(&ns);
                    }
                    // Selectors match labels of namespaces that exist;
                    // a deleted namespace takes its Services with it.
                    Event::Delete(_) => {}
                }
            }
        }
        self.forget_retries_of(&writes);
        writes
    }

    /// Feeds every Pod of a relist one at a time (`portico local` keeps
    /// its pods encoded and decodes them here, one by one).
    pub fn reset_pods<P: std::borrow::Borrow<Pod>>(
        &mut self,
        pods: impl IntoIterator<Item = P>,
        now: Instant,
    ) {
        self.synced.pods = true;
        self.slices.reset_pods(pods, now);
    }

    /// The writes that are due at `now`: EndpointSlices, LoadBalancer
    /// statuses, and failed writes whose pause is over. Nothing before
    /// every kind has been listed.
    pub fn flush(&mut self, now: Instant) -> Vec<Write> {
        if !self.synced() {
            return Vec::new();
        }
        let mut writes = self.slices.flush(now);
        writes.extend(self.lb.flush());
        let due: Vec<(Target, bool)> = self
            .retries
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some((_, w)) = self.retries.remove(&key) {
                self.metrics.write_retries.inc();
                writes.push(w);
            }
        }
        self.forget_retries_of(&writes);
        writes
    }

    /// The quarantine's periodic expiry (addresses become free again).
    pub fn tick(&mut self) -> Vec<Write> {
        lock(&self.clusterip).tick()
    }

    /// When [`flush`](Self::flush) has something to do next, if ever.
    pub fn next_due(&self) -> Option<Instant> {
        if !self.synced() {
            return None;
        }
        let retry = self.retries.values().map(|(at, _)| *at).min();
        match (self.slices.next_due(), retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// This replica became the writer: the ClusterIP index is rebuilt and
    /// its problems are reported afresh, every Service's slices are synced, and
    /// LoadBalancer addresses are adopted from the Services as they are.
    /// Nothing before the Services are listed.
    pub fn lead(&mut self, now: Instant) -> Vec<Write> {
        if !self.synced.services {
            return Vec::new();
        }
        let services: Vec<Arc<Service>> = self.slices.services().cloned().collect();
        self.slices.resync_all(now);
        self.lb.reset_services(services.iter().map(AsRef::as_ref));
        let mut clusterip = lock(&self.clusterip);
        clusterip.report_afresh();
        clusterip.reset(services.iter().map(AsRef::as_ref))
    }

    /// Feeds back what a write did. The object as stored goes to the
    /// reconcilers that read it (their follow-up writes are returned); a
    /// write that failed for a passing reason is sent again later.
    pub fn written(&mut self, write: Write, result: Result<Written>, now: Instant) -> Vec<Write> {
        match result {
            Ok(Written::Object(Object::Service(svc))) => {
                self.on(Change::Services(Event::Apply(svc)), now)
            }
            Ok(Written::Object(Object::EndpointSlice(slice))) => {
                self.slices.apply_slice(slice, now);
                Vec::new()
            }
            Ok(Written::Object(Object::IPPool(pool))) => {
                self.lb.apply_pool(&pool);
                Vec::new()
            }
            Ok(Written::Object(Object::ClusterIPRange(range))) => {
                let writes = lock(&self.clusterip).apply_range(&range);
                self.forget_retries_of(&writes);
                writes
            }
            Ok(Written::Object(Object::L2Announcement(_)) | Written::Nothing) => Vec::new(),
            Ok(Written::Deleted(t)) => {
                if t.kind == TargetKind::EndpointSlice {
                    self.slices.forget_slice(&t.namespace, &t.name, now);
                }
                Vec::new()
            }
            Err(e) => self.failed(write, &e, now).into_iter().collect(),
        }
    }

    /// Sends `writes` through `writer`, one after another, and feeds each
    /// result back; returns the follow-up writes.
    pub async fn send<W: Writer>(&mut self, writer: &mut W, writes: Vec<Write>) -> Vec<Write> {
        self.send_while(writer, writes, || true, Instant::now).await
    }

    /// The same, checking `go` before each write: the writes left when it
    /// says no are dropped (a replica that lost the Lease stops at once;
    /// the next leader recomputes them). `now` is the driver's clock.
    pub async fn send_while<W: Writer>(
        &mut self,
        writer: &mut W,
        writes: Vec<Write>,
        go: impl Fn() -> bool,
        now: impl Fn() -> Instant,
    ) -> Vec<Write> {
        let mut next = Vec::new();
        for w in writes {
            if !go() {
                return Vec::new();
            }
            let result = writer.write(&w).await;
            next.extend(self.written(w, result, now()));
        }
        next
    }

    /// Counts and logs a failed write and plans its retry; returns the
    /// Event it calls for, if any.
    fn failed(&mut self, write: Write, error: &Error, now: Instant) -> Option<Write> {
        let transient = error.is_transient();
        let reason = error.write_reason();
        let pause = error.retry_pause(RETRY_DELAY);
        tracing::warn!(%error, reason, transient, ?pause, ?write, "write failed");
        self.metrics
            .write_failures
            .get_or_create(&WriteFailure { reason })
            .inc();
        match write {
            // A slice is recomputed from the index, against the version the
            // watch brings next.
            Write::Create(Object::EndpointSlice(slice))
            | Write::Replace(Object::EndpointSlice(slice)) => {
                let target = Object::EndpointSlice(slice.clone()).target();
                return self
                    .slices
                    .retry(&target, Some(&slice), now, pause, &error.to_string());
            }
            Write::Delete { target } if target.kind == TargetKind::EndpointSlice => {
                return self
                    .slices
                    .retry(&target, None, now, pause, &error.to_string());
            }
            // Events are best effort, as in every controller.
            Write::Event(_) => {}
            w if transient => {
                if let Some(key) = retry_key(&w) {
                    self.retries.insert(key, (now + pause, w));
                }
            }
            _ => {}
        }
        None
    }

    /// A newer write to an object replaces a pending retry of an older one.
    fn forget_retries_of(&mut self, writes: &[Write]) {
        if self.retries.is_empty() {
            return;
        }
        for w in writes {
            if let Some(key) = retry_key(w) {
                self.retries.remove(&key);
            }
        }
    }
}

/// The object (and whether its status) a write goes to; `None` for Events.
fn retry_key(w: &Write) -> Option<(Target, bool)> {
    match w {
        Write::Apply(a) => Some((a.target.clone(), a.status)),
        Write::Create(o) | Write::Replace(o) => Some((o.target(), false)),
        Write::Delete { target } => Some((target.clone(), false)),
        Write::Event(_) => None,
    }
}

fn new_clusterip(cfg: &Config, metrics: &Metrics) -> Result<ClusterIpController> {
    let mode = match cfg.role {
        Role::Cluster => Mode::Audit,
        Role::ApiServer { .. } => Mode::Allocate,
    };
    Ok(
        ClusterIpController::new(&cfg.net, mode, metrics.clusterip.clone())?
            .with_reuse_delay(cfg.clusterip_reuse_delay)
            .with_adoption_events(cfg.adoption_events),
    )
}

fn new_lbipam(cfg: &Config, metrics: &Metrics) -> LbIpamController {
    LbIpamController::new(
        lbipam::Config {
            default_class: cfg.default_load_balancer_class,
        },
        &cfg.net,
        metrics.lbipam.clone(),
    )
}
