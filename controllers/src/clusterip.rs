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
//! Files: this one (the index, its inputs and audit mode), `allocate.rs`
//! (allocate mode and its writes), `recorded.rs` (kube-apiserver's
//! IPAddress objects), `ranges.rs` (ClusterIPRanges per namespace).
//!
//! State is rebuilt from the Services on every relist (`reset`): Services
//! that already hold addresses are adopted first, oldest first, so the older
//! of two Services holding the same address keeps it, and nothing new is
//! handed out before every existing address is known.

use crate::conditions::{Wanted, service_condition_writes};
use crate::k8s::KeyOf;
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

    /// Forgets which problems were reported, so that the next
    /// [`reset`](Self::reset) reports every current one again (a replica
    /// that becomes the writer says what it sees).
    pub fn report_afresh(&mut self) {
        self.blocked.clear();
        self.sub.forget_reports();
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

mod allocate;
mod ranges;
mod recorded;

use allocate::{parse_ip, requested_cluster_ips};
#[cfg(test)]
mod tests;

pub use ranges::RANGE_CONFLICT;
