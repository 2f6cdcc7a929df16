//! ClusterIP allocation from `--service-cluster-ip-range`.
//!
//! One index over all Services, backed by one [`Pool`] per service range.
//! It runs in one of two modes:
//!
//! - [`Mode::Allocate`] (`portico local`, where Portico is the allocator): a
//!   Service without ClusterIPs gets them according to `ipFamilyPolicy` and
//!   `ipFamilies`; a requested `clusterIP` is honoured when it is in range and
//!   free; otherwise the Service gets no address, a Warning Event and the
//!   condition `portico.dev/ClusterIPAllocated=False` that says why.
//! - [`Mode::Audit`] (a cluster, where kube-apiserver allocates): the index
//!   mirrors what the Services hold and reports duplicates and addresses
//!   outside every range with an Event, and in `portico_clusterip_*` metrics.
//!
//! ```text
//!   reset(all) / apply(svc) / delete(svc)
//!            │
//!            v
//!   ┌──────────────── ClusterIpController ────────────────┐
//!   │ held:    ns/name -> [10.96.0.10, fd00::a]           │
//!   │ holders: 10.96.0.10 -> ns/name                      │──> Vec<Write>
//!   │ ranges:  10.96.0.0/12 -> Pool,  fd00::/108 -> Pool  │   (spec/status apply, Events)
//!   │ blocked: services with problems, retried on release │
//!   └─────────────────────────────────────────────────────┘
//! ```
//!
//! State is rebuilt from the Services on every relist (`reset`): Services
//! that already hold addresses are adopted first, oldest first, so the older
//! of two Services holding the same address keeps it, and nothing new is
//! handed out before every existing address is known.

use crate::conditions::{Wanted, service_condition_writes};
use crate::k8s::{Key, Namespace, Service, is_headless, service_type, stated_cluster_ips};
use crate::metrics::{ClusterIpMetrics, ProblemReason, RangeState};
use crate::network::{NetworkConfig, family_of_net};
use crate::write::Write;
use crate::{Error, Result};
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::IPAddress;
use portico_crds::ClusterIPRange;
use portico_crds::names::{
    CONDITION_CLUSTER_IP_ALLOCATED, KUBERNETES_SERVICE, annotations, reasons,
};
use portico_ipam::{AllocError, Family, Pool, PoolOptions, Usage};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether Portico allocates ClusterIPs or only audits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Portico is the allocator (`portico local`).
    Allocate,
    /// kube-apiserver allocates; Portico mirrors and reports (a cluster).
    Audit,
}

/// Why a Service does not (fully) hold the ClusterIPs it should.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Another Service holds the address.
    Duplicate {
        /// The address.
        ip: IpAddr,
        /// The Service that holds it.
        holder: Key,
    },
    /// The address is in no service range.
    OutOfRange {
        /// The address.
        ip: IpAddr,
    },
    /// The address is reserved (network, broadcast, or the `kubernetes` Service's).
    Reserved {
        /// The address.
        ip: IpAddr,
    },
    /// No free address is left in the range.
    RangeFull {
        /// The range.
        range: IpNet,
    },
    /// The Service needs a family that has no service range.
    FamilyNotConfigured {
        /// The family.
        family: Family,
    },
    /// The Service's spec is inconsistent (bad address, policy, families).
    InvalidSpec {
        /// What is wrong.
        message: String,
    },
}

impl Problem {
    /// The Event reason and metric label of this problem.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Duplicate { .. } => reasons::DUPLICATE_CLUSTER_IP,
            Problem::OutOfRange { .. } => reasons::CLUSTER_IP_OUT_OF_RANGE,
            _ => reasons::CLUSTER_IP_NOT_ALLOCATED,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Duplicate { ip, holder } => {
                write!(f, "clusterIP {ip} is already held by Service {holder}")
            }
            Problem::OutOfRange { ip } => {
                write!(f, "clusterIP {ip} is outside every service range")
            }
            Problem::Reserved { ip } => write!(
                f,
                "clusterIP {ip} is reserved (network, broadcast, or the kubernetes Service's address)"
            ),
            Problem::RangeFull { range } => {
                write!(f, "service range {range} has no free address left")
            }
            Problem::FamilyNotConfigured { family } => write!(
                f,
                "the Service needs an {family} address but no {family} service range is configured"
            ),
            Problem::InvalidSpec { message } => f.write_str(message),
        }
    }
}

struct Range {
    cidr: IpNet,
    family: Family,
    pool: Pool,
}

/// A Service whose ClusterIPs are in trouble, kept to retry it when
/// addresses are released.
struct Blocked {
    svc: Service,
    problems: Vec<Problem>,
}

/// An address freed by a deleted Service: no dynamic allocation hands it
/// out before `until`, and the Service of the same name may have it back.
struct Quarantined {
    until: Instant,
    owner: Key,
}

/// How many deleted Services' addresses are remembered for "stable
/// addresses" (a re-created Service gets its address back while free).
const REMEMBERED_MAX: usize = 65_536;

/// The time source (a fake one in tests).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The ClusterIP index. See the module documentation.
pub struct ClusterIpController {
    mode: Mode,
    ranges: Vec<Range>,
    held: HashMap<Key, Vec<IpAddr>>,
    holders: HashMap<IpAddr, Key>,
    blocked: BTreeMap<Key, Blocked>,
    metrics: ClusterIpMetrics,
    seed: Option<u64>,
    reuse_delay: Duration,
    clock: Clock,
    quarantine: HashMap<IpAddr, Quarantined>,
    remembered: HashMap<Key, Vec<IpAddr>>,
    remembered_order: VecDeque<Key>,
    sub: ranges::SubRanges,
    /// Addresses handed out by the admission webhook for Services not seen
    /// yet, until when they stay reserved.
    pending: HashMap<Key, (Instant, Vec<IpAddr>)>,
    /// Report Services whose addresses Portico did not hand out (the
    /// webhook is on, so those come from kube-apiserver or a request).
    report_adoptions: bool,
    /// kube-apiserver's IPAddress objects (KEP-1880): each allocated
    /// ClusterIP and the Service it is for, which may not be in the watch
    /// yet. Those addresses are never handed out to anyone else.
    recorded: HashMap<IpAddr, Key>,
}

/// What the admission webhook answers for a Service being created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Leave the Service as it is (it needs no ClusterIP, asks for its own,
    /// or has a problem the API server reports better).
    Leave,
    /// Fill in these addresses, families and policy.
    Assign {
        /// `spec.clusterIPs`, primary first.
        ips: Vec<IpAddr>,
        /// `spec.ipFamilyPolicy`.
        policy: String,
    },
    /// Refuse the Service: it would get an address it must not have.
    Refuse(Problem),
}

impl ClusterIpController {
    /// An empty index over the service ranges of `net`.
    pub fn new(net: &NetworkConfig, mode: Mode, metrics: ClusterIpMetrics) -> Result<Self> {
        let mut ctrl = ClusterIpController {
            mode,
            ranges: Vec::new(),
            held: HashMap::new(),
            holders: HashMap::new(),
            blocked: BTreeMap::new(),
            metrics,
            seed: None,
            reuse_delay: Duration::ZERO,
            clock: Arc::new(Instant::now),
            quarantine: HashMap::new(),
            remembered: HashMap::new(),
            remembered_order: VecDeque::new(),
            sub: ranges::SubRanges::default(),
            pending: HashMap::new(),
            report_adoptions: false,
            recorded: HashMap::new(),
        };
        for cidr in &net.service_ranges {
            let pool =
                Pool::parse(&[cidr.to_string()], PoolOptions::service_range()).map_err(|e| {
                    Error::Config {
                        flag: "--service-cluster-ip-range",
                        message: e.to_string(),
                    }
                })?;
            ctrl.ranges.push(Range {
                cidr: *cidr,
                family: family_of_net(cidr),
                pool,
            });
        }
        ctrl.publish_metrics();
        Ok(ctrl)
    }

    /// Keeps addresses freed by deleted Services out of dynamic allocation
    /// for `delay` (`--clusterip-reuse-delay`; zero turns it off), so clients
    /// with cached DNS answers or conntrack entries do not reach another
    /// Service by surprise.
    pub fn with_reuse_delay(mut self, delay: Duration) -> Self {
        self.reuse_delay = delay;
        self
    }

    /// Reports, with an Event, Services whose addresses Portico did not
    /// hand out (set when the admission webhook is on).
    pub fn with_adoption_events(mut self, on: bool) -> Self {
        self.report_adoptions = on;
        self
    }

    /// Uses another time source (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Makes dynamic allocation deterministic (tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self.ranges = std::mem::take(&mut self.ranges)
            .into_iter()
            .enumerate()
            .map(|(i, r)| Range {
                pool: r.pool.with_seed(seed.wrapping_add(i as u64)),
                ..r
            })
            .collect();
        self
    }

    /// Rebuilds the index from every Service (a relist). Services that hold
    /// addresses are adopted first, oldest first; then the others are served.
    /// Problems already reported before the reset are not reported again.
    pub fn reset<'a>(&mut self, services: impl IntoIterator<Item = &'a Service>) -> Vec<Write> {
        self.expire();
        for range in &mut self.ranges {
            for ip in range.pool.allocated().collect::<Vec<_>>() {
                range.pool.release(ip);
            }
        }
        self.held.clear();
        self.holders.clear();
        let reported: BTreeMap<Key, Vec<Problem>> = std::mem::take(&mut self.blocked)
            .into_iter()
            .map(|(k, b)| (k, b.problems))
            .collect();

        let mut ordered: Vec<&Service> = services.into_iter().collect();
        // Addresses the specs show first (what Services held before a
        // restart), then requests refused before, then the rest.
        ordered.sort_by_cached_key(|s| {
            (
                stated_cluster_ips(s).is_empty(),
                requested_cluster_ips(s).is_empty(),
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                Key::of(*s),
            )
        });
        let adopting = ordered.partition_point(|s| !requested_cluster_ips(s).is_empty());
        let mut writes = Vec::new();
        for (i, svc) in ordered.into_iter().enumerate() {
            if i == adopting {
                self.remark_quarantine();
                self.reclaim_pending();
                self.remark_recorded();
            }
            let previous = reported.get(&Key::of(svc)).cloned().unwrap_or_default();
            writes.extend(self.evaluate(svc, Vec::new(), &previous));
        }
        self.remark_quarantine();
        self.reclaim_pending();
        self.remark_recorded();
        writes.extend(self.sub.writes());
        self.publish_metrics();
        writes
    }

    /// A Service was added or changed.
    pub fn apply(&mut self, svc: &Service) -> Vec<Write> {
        self.expire();
        let key = Key::of(svc);
        let old = self.held.remove(&key).unwrap_or_default();
        let reported = self
            .blocked
            .remove(&key)
            .map(|b| b.problems)
            .unwrap_or_default();
        let admitted = self.pending.remove(&key).is_some();
        let adopted =
            self.report_adoptions && self.mode == Mode::Audit && old.is_empty() && !admitted;
        let released = self.release_all(&old);
        let mut writes = self.evaluate(svc, old, &reported);
        if adopted && let Some(ips) = self.held.get(&key).filter(|h| !h.is_empty()) {
            let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
            writes.push(Write::event(
                svc,
                false,
                reasons::CLUSTER_IP_ADOPTED,
                "Adopt",
                format!(
                    "ClusterIPs {} were not handed out by Portico (asked for, or allocated by kube-apiserver while the webhook did not answer); Portico adopted them",
                    list.join(", ")
                ),
            ));
        }
        if released {
            writes.extend(self.retry_blocked(&key));
        }
        self.publish_metrics();
        writes
    }

    /// A Service was deleted: its addresses are released, and Services that
    /// were waiting for them are served.
    pub fn delete(&mut self, svc: &Service) -> Vec<Write> {
        self.expire();
        let key = Key::of(svc);
        self.blocked.remove(&key);
        let old = self.held.remove(&key).unwrap_or_default();
        let writes = if old.is_empty() {
            Vec::new()
        } else {
            self.remember(&key, &old);
            if self.reuse_delay.is_zero() {
                self.release_all(&old);
            } else {
                let until = (self.clock)() + self.reuse_delay;
                for ip in &old {
                    self.holders.remove(ip);
                    self.quarantine.insert(
                        *ip,
                        Quarantined {
                            until,
                            owner: key.clone(),
                        },
                    );
                }
            }
            // Services waiting for these addresses asked for them by name,
            // which quarantine does not refuse.
            self.retry_blocked(&key)
        };
        self.publish_metrics();
        writes
    }

    /// Chooses the ClusterIPs of a Service being created (the admission
    /// webhook): quarantine, stable addresses and ranges apply, and the
    /// addresses stay reserved for it until it shows up in the watch or
    /// `reserve_for` passes, so two creations in flight never get the same
    /// address.
    pub fn admit(&mut self, svc: &Service, reserve_for: Duration) -> Admission {
        self.expire();
        if service_type(svc) == "ExternalName"
            || is_headless(svc)
            || !stated_cluster_ips(svc).is_empty()
        {
            return Admission::Leave;
        }
        let key = Key::of(svc);
        let policy = svc
            .spec
            .as_ref()
            .and_then(|s| s.ip_family_policy.clone())
            .unwrap_or_else(|| "SingleStack".to_owned());
        if let Some((_, ips)) = self.pending.get(&key) {
            // The same creation, asked again (the API server retries).
            return Admission::Assign {
                ips: ips.clone(),
                policy,
            };
        }
        if self.held.get(&key).is_some_and(|h| !h.is_empty()) {
            // A Service of that name exists: the creation will fail anyway.
            return Admission::Leave;
        }
        let plan = match self.plan(svc, &[]) {
            Ok(plan) => plan,
            Err(_) => return Admission::Leave,
        };
        let mut got = Vec::new();
        for (family, _) in plan {
            match self.allocate_dynamic(family, &key) {
                Ok(ip) => got.push(ip),
                Err(p) => {
                    self.release_all(&got);
                    return Admission::Refuse(p);
                }
            }
        }
        self.held.insert(key.clone(), got.clone());
        self.pending
            .insert(key, ((self.clock)() + reserve_for, got.clone()));
        self.publish_metrics();
        Admission::Assign { ips: got, policy }
    }

    /// Replaces every `networking.k8s.io/v1` IPAddress (a relist).
    pub fn reset_ip_addresses<'a>(&mut self, objects: impl IntoIterator<Item = &'a IPAddress>) {
        let old: Vec<IpAddr> = self.recorded.keys().copied().collect();
        self.recorded = objects.into_iter().filter_map(recorded_service).collect();
        for ip in old {
            if !self.recorded.contains_key(&ip) {
                self.free_if_unused(ip);
            }
        }
        self.remark_recorded();
    }

    /// An IPAddress was added or changed.
    pub fn apply_ip_address(&mut self, object: &IPAddress) {
        if let Some((ip, key)) = recorded_service(object) {
            self.recorded.insert(ip, key);
            self.remark_recorded();
        }
    }

    /// An IPAddress was deleted.
    pub fn delete_ip_address(&mut self, object: &IPAddress) {
        if let Some((ip, _)) = recorded_service(object)
            && self.recorded.remove(&ip).is_some()
        {
            self.free_if_unused(ip);
        }
    }

    /// Whether the address is marked taken in its range.
    fn pool_has(&self, ip: IpAddr) -> bool {
        self.ranges
            .iter()
            .any(|r| r.cidr.contains(&ip) && r.pool.is_allocated(ip))
    }

    /// Frees an address no Service holds and nothing keeps taken.
    fn free_if_unused(&mut self, ip: IpAddr) {
        let kept = self.holders.contains_key(&ip)
            || self.quarantine.contains_key(&ip)
            || self.sub.parked.contains(&ip)
            || self.pending.values().any(|(_, ips)| ips.contains(&ip));
        if !kept {
            self.sub.release(ip);
            if let Some(r) = self.ranges.iter_mut().find(|r| r.cidr.contains(&ip)) {
                r.pool.release(ip);
            }
        }
    }

    /// Marks the recorded addresses no Service holds yet as taken.
    fn remark_recorded(&mut self) {
        for ip in self.recorded.keys() {
            if !self.holders.contains_key(ip)
                && let Some(r) = self.ranges.iter_mut().find(|r| r.cidr.contains(ip))
            {
                let _ = r.pool.allocate_ip(*ip);
                self.sub.mark(*ip);
            }
        }
    }

    /// Services admitted and not seen yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Replaces every `ClusterIPRange` (a relist).
    pub fn reset_ranges<'a>(
        &mut self,
        ranges: impl IntoIterator<Item = &'a ClusterIPRange>,
    ) -> Vec<Write> {
        let changed = self
            .sub
            .reset(ranges.into_iter().map(|r| Arc::new(r.clone())));
        self.after_range_change(changed)
    }

    /// A `ClusterIPRange` was added or changed.
    pub fn apply_range(&mut self, range: &ClusterIPRange) -> Vec<Write> {
        let changed = self.sub.apply(range);
        self.after_range_change(changed)
    }

    /// A `ClusterIPRange` was deleted.
    pub fn delete_range(&mut self, range: &ClusterIPRange) -> Vec<Write> {
        let changed = self.sub.delete(range);
        self.after_range_change(changed)
    }

    /// Replaces every Namespace's labels (for `ClusterIPRange` selectors).
    pub fn reset_namespaces<'a>(&mut self, namespaces: impl IntoIterator<Item = &'a Namespace>) {
        self.sub.set_namespaces(
            namespaces
                .into_iter()
                .filter_map(|n| {
                    Some((
                        n.metadata.name.clone()?,
                        n.metadata.labels.clone().unwrap_or_default(),
                    ))
                })
                .collect(),
        );
    }

    /// A Namespace was added or changed: later allocations follow its labels.
    pub fn apply_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = ns.metadata.name.clone() {
            self.sub
                .set_namespace(name, ns.metadata.labels.clone().unwrap_or_default());
        }
    }

    /// Rebuilds the sub-ranges when a range's spec changed; returns the
    /// ranges' status writes either way.
    fn after_range_change(&mut self, changed: bool) -> Vec<Write> {
        if changed {
            self.unpark();
            let service_ranges: Vec<IpNet> = self.ranges.iter().map(|r| r.cidr).collect();
            let taken: Vec<IpAddr> = self
                .holders
                .keys()
                .chain(self.quarantine.keys())
                .copied()
                .collect();
            self.sub.rebuild(&service_ranges, taken);
        }
        let writes = self.sub.writes();
        self.publish_metrics();
        writes
    }

    /// Gives the parked addresses back to the main ranges.
    fn unpark(&mut self) {
        for ip in std::mem::take(&mut self.sub.parked) {
            if let Some(r) = self.ranges.iter_mut().find(|r| r.cidr.contains(&ip)) {
                r.pool.release(ip);
            }
        }
    }

    /// Addresses in quarantine.
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Ends the quarantines that are over and serves the Services waiting
    /// for addresses. Drivers call it now and then (every few seconds).
    pub fn tick(&mut self) -> Vec<Write> {
        let before = self.quarantine.len();
        let now = (self.clock)();
        let stale: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            // Admitted but never created: the reservation ends.
            self.pending.remove(&key);
            if let Some(ips) = self.held.remove(&key) {
                self.release_all(&ips);
            }
        }
        self.expire();
        let writes = if self.quarantine.len() < before {
            self.retry_blocked(&Key::new("", ""))
        } else {
            Vec::new()
        };
        self.publish_metrics();
        writes
    }

    /// Frees the addresses whose quarantine is over.
    fn expire(&mut self) {
        let now = (self.clock)();
        let over: Vec<IpAddr> = self
            .quarantine
            .iter()
            .filter(|(_, q)| q.until <= now)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in over {
            self.quarantine.remove(&ip);
            if !self.holders.contains_key(&ip) {
                self.sub.release(ip);
                if let Some(r) = self.ranges.iter_mut().find(|r| r.cidr.contains(&ip)) {
                    r.pool.release(ip);
                }
            }
        }
    }

    /// After a rebuild: marks the quarantined addresses no Service holds as
    /// taken again, so that no dynamic allocation hands them out.
    fn remark_quarantine(&mut self) {
        let ips: Vec<IpAddr> = self.quarantine.keys().copied().collect();
        for ip in ips {
            if self.holders.contains_key(&ip) {
                self.quarantine.remove(&ip);
                continue;
            }
            if let Some(r) = self.ranges.iter_mut().find(|r| r.cidr.contains(&ip)) {
                let _ = r.pool.allocate_ip(ip);
            }
        }
    }

    /// After a rebuild: the webhook's reservations for Services not seen
    /// yet are held again.
    fn reclaim_pending(&mut self) {
        let pending: Vec<(Key, Vec<IpAddr>)> = self
            .pending
            .iter()
            .filter(|(k, _)| !self.held.contains_key(*k))
            .map(|(k, (_, ips))| (k.clone(), ips.clone()))
            .collect();
        for (key, ips) in pending {
            let mut got = Vec::new();
            for ip in ips {
                if self.claim(ip, &key, false).is_ok() {
                    got.push(ip);
                }
            }
            self.held.insert(key, got);
        }
    }

    /// Remembers a deleted Service's addresses for when it comes back.
    fn remember(&mut self, key: &Key, ips: &[IpAddr]) {
        if self.remembered.insert(key.clone(), ips.to_vec()).is_none() {
            self.remembered_order.push_back(key.clone());
        }
        while self.remembered_order.len() > REMEMBERED_MAX {
            if let Some(old) = self.remembered_order.pop_front() {
                self.remembered.remove(&old);
            }
        }
    }

    /// The Service that holds `ip`.
    pub fn holder(&self, ip: IpAddr) -> Option<&Key> {
        self.holders.get(&ip)
    }

    /// The addresses a Service holds.
    pub fn held(&self, key: &Key) -> &[IpAddr] {
        self.held.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// The problems of a Service, if it has any.
    pub fn problems(&self, key: &Key) -> &[Problem] {
        self.blocked
            .get(key)
            .map(|b| b.problems.as_slice())
            .unwrap_or_default()
    }

    /// Usage of every service range.
    pub fn usage(&self) -> Vec<(IpNet, Usage)> {
        self.ranges
            .iter()
            .map(|r| (r.cidr, r.pool.usage(r.family)))
            .collect()
    }

    fn release_all(&mut self, ips: &[IpAddr]) -> bool {
        for ip in ips {
            self.holders.remove(ip);
            if self.recorded.contains_key(ip) {
                // kube-apiserver still records it: it stays taken.
                continue;
            }
            self.sub.release(*ip);
            if let Some(r) = self.ranges.iter_mut().find(|r| r.cidr.contains(ip)) {
                r.pool.release(*ip);
            }
        }
        !ips.is_empty()
    }

    /// Serves again the blocked Services (except `skip`), since addresses
    /// they wanted may be free now.
    fn retry_blocked(&mut self, skip: &Key) -> Vec<Write> {
        let keys: Vec<Key> = self
            .blocked
            .keys()
            .filter(|k| *k != skip)
            .cloned()
            .collect();
        let mut writes = Vec::new();
        for key in keys {
            if let Some(b) = self.blocked.remove(&key) {
                writes.extend(self.evaluate(&b.svc, Vec::new(), &b.problems));
            }
        }
        writes
    }

    /// Works out what `svc` holds, records it, and returns the writes.
    /// `previous` are the addresses it held before (already released), used
    /// when its spec does not show them yet; `reported` the problems already
    /// reported, so they are not reported twice.
    fn evaluate(
        &mut self,
        svc: &Service,
        previous: Vec<IpAddr>,
        reported: &[Problem],
    ) -> Vec<Write> {
        let key = Key::of(svc);
        if service_type(svc) == "ExternalName" || (is_headless(svc) && self.mode == Mode::Audit) {
            return Vec::new();
        }
        if is_headless(svc) {
            return self.headless_families(svc, key, reported);
        }
        let (held, problems) = match self.mode {
            Mode::Audit => self.audit(svc, &key),
            Mode::Allocate => match self.allocate(svc, &key, &previous) {
                Ok(ips) => (ips, Vec::new()),
                Err(p) => (Vec::new(), vec![p]),
            },
        };
        let mut writes = Vec::new();
        if self.mode == Mode::Allocate {
            let was_blocked = !reported.is_empty();
            writes.extend(self.allocation_writes(svc, &held, problems.first(), was_blocked));
        }
        for p in problems.iter().filter(|p| !reported.contains(p)) {
            let action = match self.mode {
                Mode::Audit => "Audit",
                Mode::Allocate => "Allocate",
            };
            writes.push(Write::event(svc, true, p.reason(), action, p.to_string()));
        }
        if !held.is_empty() {
            self.held.insert(key.clone(), held);
        }
        if !problems.is_empty() {
            self.blocked.insert(
                key,
                Blocked {
                    svc: svc.clone(),
                    problems,
                },
            );
        }
        writes
    }

    /// Audit: hold every stated address that is free and in range; report the rest.
    fn audit(&mut self, svc: &Service, key: &Key) -> (Vec<IpAddr>, Vec<Problem>) {
        let mut held = Vec::new();
        let mut problems = Vec::new();
        for stated in stated_cluster_ips(svc) {
            let result = parse_ip(&stated).and_then(|ip| self.claim(ip, key, true).map(|()| ip));
            match result {
                Ok(ip) => held.push(ip),
                Err(p) => problems.push(p),
            }
        }
        (held, problems)
    }

    /// Allocate: all the addresses the Service needs, or none.
    fn allocate(
        &mut self,
        svc: &Service,
        key: &Key,
        previous: &[IpAddr],
    ) -> Result<Vec<IpAddr>, Problem> {
        let mut stated = requested_cluster_ips(svc)
            .iter()
            .map(|s| parse_ip(s))
            .collect::<Result<Vec<_>, _>>()?;
        if stated.is_empty() {
            stated = previous.to_vec();
        }
        let plan = self.plan(svc, &stated)?;
        let allow_reserved = (key.namespace.as_str(), key.name.as_str()) == KUBERNETES_SERVICE;
        let mut got: Vec<IpAddr> = Vec::new();
        for (family, wanted) in plan {
            let result = match wanted {
                // A range created later does not take addresses away from
                // Services that hold them already.
                Some(ip) => match self.sub.allows(&key.namespace, ip).or_else(|e| {
                    if previous.contains(&ip) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                }) {
                    Ok(()) => self.claim(ip, key, allow_reserved).map(|()| ip),
                    Err(message) => Err(Problem::InvalidSpec { message }),
                },
                None => self.allocate_dynamic(family, key),
            };
            match result {
                Ok(ip) => got.push(ip),
                Err(p) => {
                    self.release_all(&got);
                    return Err(p);
                }
            }
        }
        Ok(got)
    }

    /// The families a Service needs, in order, each with the address it asks for.
    fn plan(
        &self,
        svc: &Service,
        stated: &[IpAddr],
    ) -> Result<Vec<(Family, Option<IpAddr>)>, Problem> {
        let invalid = |message: String| Problem::InvalidSpec { message };
        let spec = svc.spec.clone().unwrap_or_default();
        let policy = spec.ip_family_policy.as_deref().unwrap_or("SingleStack");
        let families = spec
            .ip_families
            .unwrap_or_default()
            .iter()
            .map(|f| match f.as_str() {
                "IPv4" => Ok(Family::V4),
                "IPv6" => Ok(Family::V6),
                other => Err(invalid(format!(
                    "ipFamilies: {other:?} is not a family (IPv4 or IPv6)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
            return Err(invalid(format!(
                "ipFamilies {families:?}: give each family at most once"
            )));
        }
        if stated.len() > 2 || (stated.len() == 2 && Family::of(stated[0]) == Family::of(stated[1]))
        {
            return Err(invalid(format!(
                "clusterIPs {stated:?}: give at most one address per family"
            )));
        }
        for (i, (ip, fam)) in stated.iter().zip(&families).enumerate() {
            if Family::of(*ip) != *fam {
                return Err(invalid(format!(
                    "clusterIPs[{i}] {ip} is {} but ipFamilies[{i}] is {fam}",
                    Family::of(*ip)
                )));
            }
        }
        let configured: Vec<Family> = self.ranges.iter().map(|r| r.family).collect();
        let Some(primary) = families
            .first()
            .copied()
            .or_else(|| stated.first().map(|ip| Family::of(*ip)))
            .or_else(|| configured.first().copied())
        else {
            return Err(invalid("no service range is configured".to_owned()));
        };
        let secondary = match primary {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        };
        let asks_two = families.len() > 1 || stated.len() > 1;
        let wanted = match policy {
            "SingleStack" if asks_two => {
                return Err(invalid(
                    "ipFamilyPolicy SingleStack allows one family, but the Service names two"
                        .to_owned(),
                ));
            }
            "SingleStack" => vec![primary],
            "PreferDualStack" if asks_two || configured.contains(&secondary) => {
                vec![primary, secondary]
            }
            "PreferDualStack" => vec![primary],
            "RequireDualStack" => vec![primary, secondary],
            other => {
                return Err(invalid(format!(
                    "ipFamilyPolicy {other:?} is not SingleStack, PreferDualStack or RequireDualStack"
                )));
            }
        };
        wanted
            .into_iter()
            .map(|family| {
                if !configured.contains(&family) {
                    return Err(Problem::FamilyNotConfigured { family });
                }
                Ok((
                    family,
                    stated.iter().copied().find(|ip| Family::of(*ip) == family),
                ))
            })
            .collect()
    }

    /// Marks `ip` as held by `key`.
    fn claim(&mut self, ip: IpAddr, key: &Key, allow_reserved: bool) -> Result<(), Problem> {
        // Quarantine keeps addresses from dynamic allocation only: asking
        // for one by name (or the API server handing it out) takes it.
        if !self.holders.contains_key(&ip)
            && let Some(owner) = self.recorded.get(&ip)
        {
            if owner != key {
                return Err(Problem::Duplicate {
                    ip,
                    holder: owner.clone(),
                });
            }
            if self.pool_has(ip) {
                self.holders.insert(ip, key.clone());
                self.sub.mark(ip);
                return Ok(());
            }
        }
        if !self.holders.contains_key(&ip)
            && (self.quarantine.remove(&ip).is_some() || self.sub.parked.remove(&ip))
        {
            self.holders.insert(ip, key.clone());
            self.sub.mark(ip);
            return Ok(());
        }
        if let Some(holder) = self.holders.get(&ip) {
            let holder = holder.clone();
            return Err(if &holder == key {
                Problem::InvalidSpec {
                    message: format!("clusterIPs lists {ip} twice"),
                }
            } else {
                Problem::Duplicate { ip, holder }
            });
        }
        let Some(range) = self.ranges.iter_mut().find(|r| r.cidr.contains(&ip)) else {
            return Err(Problem::OutOfRange { ip });
        };
        let result = match range.pool.allocate_ip(ip) {
            Err(AllocError::Reserved { .. }) if allow_reserved => {
                range.pool.allocate_reserved_ip(ip)
            }
            other => other,
        };
        match result {
            Ok(()) => {
                self.holders.insert(ip, key.clone());
                self.sub.mark(ip);
                Ok(())
            }
            Err(AllocError::OutOfRange { .. }) | Err(AllocError::Reserved { .. }) => {
                Err(Problem::Reserved { ip })
            }
            Err(e) => Err(Problem::InvalidSpec {
                message: format!("clusterIP {ip}: {e}"),
            }),
        }
    }

    fn allocate_dynamic(&mut self, family: Family, key: &Key) -> Result<IpAddr, Problem> {
        // Stable addresses: a re-created Service gets its previous address
        // back while it is free (or quarantined for this very Service), and
        // still allowed to its namespace.
        let previous = self
            .remembered
            .get(key)
            .and_then(|ips| ips.iter().copied().find(|ip| Family::of(*ip) == family))
            .filter(|ip| self.sub.allows(&key.namespace, *ip).is_ok());
        if let Some(ip) = previous
            && !self.holders.contains_key(&ip)
        {
            let ours = self.quarantine.get(&ip).is_some_and(|q| &q.owner == key);
            let parked = self.sub.parked.contains(&ip);
            let free = !self.quarantine.contains_key(&ip)
                && !parked
                && self
                    .ranges
                    .iter_mut()
                    .find(|r| r.cidr.contains(&ip))
                    .is_some_and(|r| r.pool.allocate_ip(ip).is_ok());
            if ours || parked || free {
                self.quarantine.remove(&ip);
                self.sub.parked.remove(&ip);
                self.holders.insert(ip, key.clone());
                self.sub.mark(ip);
                if let Some(ips) = self.remembered.get_mut(key) {
                    ips.retain(|i| *i != ip);
                }
                return Ok(ip);
            }
        }
        let Some(range_idx) = self.ranges.iter().position(|r| r.family == family) else {
            return Err(Problem::FamilyNotConfigured { family });
        };

        // The namespace's own ranges, if any select it: only from those.
        let selected = self.sub.selecting(&key.namespace, family);
        if !selected.is_empty() {
            for i in &selected {
                while let Ok(ip) = self.sub.valid[*i].pool.allocate(family) {
                    let main = &mut self.ranges[range_idx].pool;
                    if main.allocate_ip(ip).is_ok() || self.sub.parked.remove(&ip) {
                        self.holders.insert(ip, key.clone());
                        return Ok(ip);
                    }
                    // Taken in the main range already (kept marked here too).
                }
            }
            return Err(Problem::RangeFull {
                range: self.sub.valid[selected[0]].cidr,
            });
        }

        // Other namespaces: anywhere but inside a range.
        loop {
            let range = &mut self.ranges[range_idx];
            let ip = range
                .pool
                .allocate(family)
                .map_err(|_| Problem::RangeFull { range: range.cidr })?;
            if self.sub.containing(ip).is_some() {
                self.sub.parked.insert(ip);
                continue;
            }
            self.holders.insert(ip, key.clone());
            return Ok(ip);
        }
    }

    /// In allocate mode: the spec and status writes that make the Service
    /// show what it holds (or why it holds nothing).
    /// `was_blocked`: the Service had problems, so a `False` condition was
    /// written even if `svc` does not show it yet.
    fn allocation_writes(
        &self,
        svc: &Service,
        held: &[IpAddr],
        problem: Option<&Problem>,
        was_blocked: bool,
    ) -> Vec<Write> {
        if problem.is_some() {
            let mut writes = condition_writes(svc, problem, was_blocked);
            let stated = stated_cluster_ips(svc);
            if !stated.is_empty() {
                // The Service holds none of what it asked for: no address
                // is shown (so none is answered in DNS or programmed), and
                // the request is kept aside.
                writes.push(Write::annotate_service(
                    &Key::of(svc).namespace,
                    &Key::of(svc).name,
                    &BTreeMap::from([(
                        annotations::REQUESTED_CLUSTER_IPS.to_owned(),
                        stated.join(","),
                    )]),
                ));
                writes.push(Write::apply_service(
                    svc,
                    json!({ "clusterIP": "", "clusterIPs": [] }),
                ));
            }
            return writes;
        }
        let mut writes = Vec::new();
        let spec = svc.spec.clone().unwrap_or_default();
        let ips: Vec<String> = held.iter().map(ToString::to_string).collect();
        let families: Vec<String> = held.iter().map(|ip| Family::of(*ip).to_string()).collect();
        let policy = spec
            .ip_family_policy
            .clone()
            .unwrap_or_else(|| "SingleStack".to_owned());
        let unchanged = spec.cluster_ip.as_deref() == ips.first().map(String::as_str)
            && spec.cluster_ips.as_deref() == Some(ips.as_slice())
            && spec.ip_families.as_deref() == Some(families.as_slice())
            && spec.ip_family_policy.as_deref() == Some(policy.as_str());
        if !unchanged {
            writes.push(Write::apply_service(
                svc,
                json!({
                    "clusterIP": ips.first(),
                    "clusterIPs": ips,
                    "ipFamilies": families,
                    "ipFamilyPolicy": policy,
                }),
            ));
            let stated = stated_cluster_ips(svc);
            if stated != ips {
                writes.push(Write::event(
                    svc,
                    false,
                    reasons::CLUSTER_IP_ALLOCATED,
                    "Allocate",
                    format!("allocated ClusterIPs {}", ips.join(", ")),
                ));
            }
        }
        writes.extend(condition_writes(svc, None, was_blocked));
        writes
    }

    /// In allocate mode, headless Services get no address but, as from the
    /// API server, their `ipFamilies` and `ipFamilyPolicy` (which decide the
    /// address types of their EndpointSlices). Without a selector and on a
    /// dual-stack cluster the policy defaults to `RequireDualStack`.
    fn headless_families(&mut self, svc: &Service, key: Key, reported: &[Problem]) -> Vec<Write> {
        let spec = svc.spec.clone().unwrap_or_default();
        let selectorless = spec.selector.as_ref().is_none_or(|s| s.is_empty());
        let policy = spec.ip_family_policy.clone().unwrap_or_else(|| {
            if selectorless && self.ranges.len() > 1 {
                "RequireDualStack".to_owned()
            } else {
                "SingleStack".to_owned()
            }
        });
        let mut probe = svc.clone();
        probe
            .spec
            .get_or_insert_with(Default::default)
            .ip_family_policy = Some(policy.clone());
        let was_blocked = !reported.is_empty();
        let mut writes = Vec::new();
        match self.plan(&probe, &[]) {
            Ok(plan) => {
                let families: Vec<String> = plan.iter().map(|(f, _)| f.to_string()).collect();
                if spec.ip_families.as_deref() != Some(families.as_slice())
                    || spec.ip_family_policy.as_deref() != Some(policy.as_str())
                {
                    writes.push(Write::apply_service(
                        svc,
                        json!({ "ipFamilies": families, "ipFamilyPolicy": policy }),
                    ));
                }
                writes.extend(condition_writes(svc, None, was_blocked));
            }
            Err(p) => {
                writes.extend(condition_writes(svc, Some(&p), was_blocked));
                if !reported.contains(&p) {
                    writes.push(Write::event(
                        svc,
                        true,
                        p.reason(),
                        "Allocate",
                        p.to_string(),
                    ));
                }
                self.blocked.insert(
                    key,
                    Blocked {
                        svc: svc.clone(),
                        problems: vec![p],
                    },
                );
            }
        }
        writes
    }

    fn publish_metrics(&self) {
        self.metrics.quarantined.set(self.quarantine.len() as i64);
        for (range, usage) in self.sub.usage() {
            for (state, value) in [("used", usage.used), ("free", usage.free)] {
                self.metrics
                    .addresses
                    .get_or_create(&RangeState {
                        range: range.clone(),
                        state,
                    })
                    .set(value as f64);
            }
        }
        for r in &self.ranges {
            let usage = r.pool.usage(r.family);
            for (state, value) in [("used", usage.used), ("free", usage.free)] {
                self.metrics
                    .addresses
                    .get_or_create(&RangeState {
                        range: r.cidr.to_string(),
                        state,
                    })
                    .set(value as f64);
            }
        }
        let mut counts: BTreeMap<&'static str, i64> = [
            reasons::DUPLICATE_CLUSTER_IP,
            reasons::CLUSTER_IP_OUT_OF_RANGE,
            reasons::CLUSTER_IP_NOT_ALLOCATED,
        ]
        .into_iter()
        .map(|r| (r, 0))
        .collect();
        for b in self.blocked.values() {
            if let Some(p) = b.problems.first() {
                *counts.entry(p.reason()).or_default() += 1;
            }
        }
        for (reason, n) in counts {
            self.metrics
                .problems
                .get_or_create(&ProblemReason { reason })
                .set(n);
        }
    }
}

/// The condition that says whether a Service got its ClusterIPs: `False`
/// with the problem, or back to `True` once a problem is gone. Nothing is
/// written for Services that never had a problem.
fn condition_writes(svc: &Service, problem: Option<&Problem>, was_blocked: bool) -> Vec<Write> {
    service_condition_writes(
        svc,
        Wanted {
            type_: CONDITION_CLUSTER_IP_ALLOCATED,
            problem: problem.map(|p| (p.reason(), p.to_string())),
            ok: ("Allocated", "the Service holds its ClusterIPs"),
            was_blocked,
        },
    )
}

/// The address and Service an IPAddress object records (its name is the
/// address; its parent the Service).
fn recorded_service(object: &IPAddress) -> Option<(IpAddr, Key)> {
    let ip: IpAddr = object.metadata.name.as_deref()?.parse().ok()?;
    let parent = &object.spec.as_ref()?.parent_ref;
    (parent.resource == "services").then(|| {
        (
            ip,
            Key::new(
                parent.namespace.clone().unwrap_or_default(),
                parent.name.clone(),
            ),
        )
    })
}

/// The ClusterIPs a Service asks for: those it states, else those it was
/// refused before (kept in `portico.dev/requested-cluster-ips`).
fn requested_cluster_ips(svc: &Service) -> Vec<String> {
    let stated = stated_cluster_ips(svc);
    if !stated.is_empty() {
        return stated;
    }
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::REQUESTED_CLUSTER_IPS))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn parse_ip(s: &str) -> Result<IpAddr, Problem> {
    s.parse().map_err(|_| Problem::InvalidSpec {
        message: format!("clusterIP {s:?} is not an IP address"),
    })
}

mod ranges;
#[cfg(test)]
mod tests;

pub use ranges::RANGE_CONFLICT;
