//! LoadBalancer IPAM: addresses for `type: LoadBalancer` Services from
//! bare-metal pools (`IPPool`), as MetalLB and Cilium LB-IPAM users expect,
//! with feedback on every Service and pool.
//!
//! ```text
//!  IPPools ──> pools (ipam::Pool each, lowest free address first)
//!               │  conflicts: overlap with an older pool, the service range
//!               │  or the pod network -> no new assignments
//!  Services ──> per Service, in creation order:
//!  Namespaces    keep what it holds while a pool it may use contains it,
//!               else its request (annotation / spec.loadBalancerIP),
//!               else an address shared under its sharing key,
//!               else the lowest free address of the best pool (selecting
//!               pools first, then priority with 0 last, then name)
//!               │
//!               v
//!   status.loadBalancer.ingress + condition portico.dev/IPAllocated + Event
//!   IPPool status: Ready, Conflict, used/free per family
//! ```
//!
//! Files: this one (the index and its inputs), `assign.rs` (how a Service
//! gets its addresses), `status.rs` (Service and pool statuses, metrics),
//! `claims.rs` (external addresses two Services claim).
//!
//! State comes from the API: on a relist or any pool change the index is
//! rebuilt and the addresses in Services' statuses are re-adopted, oldest
//! Service first, before anything new is assigned; an address that cannot be
//! kept (in no pool, held twice, in a pool the Service may no longer use) is
//! reported and replaced.

use crate::k8s::KeyOf;
use crate::k8s::{Key, Namespace, Service, condition_summaries, service_condition, service_type};
use crate::metrics::LbIpamMetrics;
use crate::network::NetworkConfig;
use crate::write::{Apply, Target, TargetKind, Write};
use claims::Claims;
use kube::core::{Selector, SelectorExt};
use portico_crds::names::{CONDITION_IP_ALLOCATED, LOAD_BALANCER_CLASS, annotations, lb_reasons};
use portico_crds::{FamilyUsage, IPPool, IPPoolSpec, IPPoolStatus};
use portico_ipam::{Block, Family, Pool, PoolOptions};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// How LoadBalancer IPAM behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Serve Services without `spec.loadBalancerClass` (Portico is the
    /// cluster's default LoadBalancer implementation).
    pub default_class: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_class: true,
        }
    }
}

/// Why a Service has no (or not every) address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Condition and Event reason (see `portico_crds::names::lb_reasons`).
    pub reason: &'static str,
    /// What happened, for people.
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One pool as the controller sees it.
struct PoolState {
    obj: Arc<IPPool>,
    /// The addresses, when they all parse.
    pool: Option<Pool>,
    /// Why the spec cannot be used.
    invalid: Option<String>,
    /// What its addresses overlap.
    conflict: Option<String>,
    service_selector: Option<Selector>,
    namespace_selector: Option<Selector>,
    /// The conflict last reported in an Event.
    reported_conflict: Option<String>,
}

impl PoolState {
    fn spec(&self) -> &IPPoolSpec {
        &self.obj.spec
    }

    fn name(&self) -> String {
        self.obj.metadata.name.clone().unwrap_or_default()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.pool.as_ref().is_some_and(|p| p.contains(ip))
    }

    /// Whether it contains `ip` and may hand it out: not a `.0`/`.255`
    /// address when the pool avoids them (a Service that holds one when
    /// `avoidBuggyIPs` is turned on loses it, as with MetalLB).
    fn assignable(&self, ip: IpAddr) -> bool {
        self.pool
            .as_ref()
            .is_some_and(|p| p.contains(ip) && !p.is_reserved(ip))
    }

    /// Whether it may make new assignments at all.
    fn assigns(&self) -> bool {
        self.pool.is_some() && self.conflict.is_none() && !self.spec().disabled
    }
}

/// Addresses a Service holds, with the pool of each.
type Held = Vec<(IpAddr, String)>;

/// The LoadBalancer IPAM index. See the module documentation.
pub struct LbIpamController {
    cfg: Config,
    networks: Vec<(String, Block)>,
    pools: BTreeMap<String, PoolState>,
    services: BTreeMap<Key, Arc<Service>>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    held: HashMap<Key, Held>,
    holders: HashMap<IpAddr, Vec<Key>>,
    problems: HashMap<Key, Problem>,
    dirty: BTreeSet<Key>,
    rebuild: bool,
    metrics: LbIpamMetrics,
    /// External addresses and ports two Services claim.
    claims: Claims,
}

impl LbIpamController {
    /// An empty index; pools may not overlap the networks of `net`.
    pub fn new(cfg: Config, net: &NetworkConfig, metrics: LbIpamMetrics) -> Self {
        let mut networks = Vec::new();
        for (what, nets) in [
            ("the service range", &net.service_ranges),
            ("the pod network", &net.cluster_cidrs),
        ] {
            for n in nets {
                if let Ok(b) = Block::from_cidr(*n) {
                    networks.push((format!("{what} {n}"), b));
                }
            }
        }
        LbIpamController {
            cfg,
            networks,
            pools: BTreeMap::new(),
            services: BTreeMap::new(),
            namespaces: HashMap::new(),
            held: HashMap::new(),
            holders: HashMap::new(),
            problems: HashMap::new(),
            dirty: BTreeSet::new(),
            rebuild: true,
            metrics,
            claims: Claims::default(),
        }
    }

    // ---- inputs --------------------------------------------------------

    /// Replaces every pool (a relist).
    pub fn reset_pools<'a>(&mut self, pools: impl IntoIterator<Item = &'a IPPool>) {
        self.pools.clear();
        for p in pools {
            self.insert_pool(p);
        }
        self.rebuild = true;
    }

    /// A pool was added or changed. A change of its spec rebuilds the index;
    /// a change of its status alone (Portico's own write) does not.
    pub fn apply_pool(&mut self, pool: &IPPool) {
        let name = pool.metadata.name.clone().unwrap_or_default();
        match self.pools.get_mut(&name) {
            Some(p) if p.obj.spec == pool.spec => p.obj = Arc::new(pool.clone()),
            _ => {
                self.insert_pool(pool);
                self.rebuild = true;
            }
        }
    }

    /// A pool was deleted: its Services get addresses elsewhere.
    pub fn delete_pool(&mut self, pool: &IPPool) {
        if let Some(name) = &pool.metadata.name {
            self.pools.remove(name);
            self.rebuild = true;
        }
    }

    fn insert_pool(&mut self, pool: &IPPool) {
        let name = pool.metadata.name.clone().unwrap_or_default();
        let mut state = PoolState {
            obj: Arc::new(pool.clone()),
            pool: None,
            invalid: None,
            conflict: None,
            service_selector: None,
            namespace_selector: None,
            reported_conflict: None,
        };
        let parse_selector =
            |sel: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
             what: &str| {
                sel.clone()
                    .map(|s| Selector::try_from(s).map_err(|e| format!("spec.{what}: {e}")))
                    .transpose()
            };
        let opts = PoolOptions {
            avoid_buggy_ips: pool.spec.avoid_buggy_ips,
            ..PoolOptions::lb_pool()
        };
        let parsed = (|| -> Result<(Pool, Option<Selector>, Option<Selector>), String> {
            let p = Pool::parse(&pool.spec.addresses, opts)
                .map_err(|e| format!("spec.addresses: {e}"))?;
            Ok((
                p,
                parse_selector(&pool.spec.service_selector, "serviceSelector")?,
                parse_selector(&pool.spec.namespace_selector, "namespaceSelector")?,
            ))
        })();
        match parsed {
            Ok((p, s, n)) => {
                state.pool = Some(p);
                state.service_selector = s;
                state.namespace_selector = n;
            }
            Err(e) => state.invalid = Some(e),
        }
        self.pools.insert(name, state);
    }

    /// Replaces every Namespace (a relist).
    pub fn reset_namespaces<'a>(&mut self, namespaces: impl IntoIterator<Item = &'a Namespace>) {
        self.namespaces = namespaces
            .into_iter()
            .filter_map(|n| {
                Some((
                    n.metadata.name.clone()?,
                    n.metadata.labels.clone().unwrap_or_default(),
                ))
            })
            .collect();
        self.rebuild = true;
    }

    /// A Namespace was added or changed: its labels may select other pools.
    pub fn apply_namespace(&mut self, ns: &Namespace) {
        let Some(name) = ns.metadata.name.clone() else {
            return;
        };
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        if self.namespaces.get(&name) != Some(&labels) {
            self.namespaces.insert(name.clone(), labels);
            let keys: Vec<Key> = self
                .services
                .keys()
                .filter(|k| k.namespace == name)
                .cloned()
                .collect();
            self.dirty.extend(keys);
        }
    }

    /// Replaces every Service (a relist): addresses are re-adopted from
    /// their statuses.
    pub fn reset_services<'a>(&mut self, services: impl IntoIterator<Item = &'a Service>) {
        let services: Vec<&Service> = services.into_iter().collect();
        self.claims.reset(services.iter().copied());
        self.services = services
            .into_iter()
            .filter(|s| self.concerns(s))
            .map(|s| (Key::of(s), Arc::new(s.clone())))
            .collect();
        self.rebuild = true;
    }

    /// A Service was added or changed.
    pub fn apply_service(&mut self, svc: &Service) {
        self.claims.apply(svc);
        let key = Key::of(svc);
        if !self.concerns(svc) && !self.services.contains_key(&key) {
            return;
        }
        self.services.insert(key.clone(), Arc::new(svc.clone()));
        self.dirty.insert(key);
    }

    /// Whether LoadBalancer IPAM has anything to do with a Service: it is
    /// of type LoadBalancer, or shows what Portico wrote (to be cleared).
    /// The others are not kept: a cluster has many more of them.
    fn concerns(&self, svc: &Service) -> bool {
        service_type(svc) == "LoadBalancer"
            || !status_ips(svc).is_empty()
            || service_condition(svc, CONDITION_IP_ALLOCATED).is_some()
            || self.held.contains_key(&Key::of(svc))
    }

    /// A Service was deleted: its addresses are free (or one fewer holder
    /// shares them), and Services waiting for addresses are served.
    pub fn delete_service(&mut self, svc: &Service) {
        self.claims.delete(svc);
        let key = Key::of(svc);
        self.services.remove(&key);
        self.problems.remove(&key);
        self.dirty.remove(&key);
        if let Some(held) = self.held.remove(&key)
            && !held.is_empty()
        {
            for (ip, _) in held {
                self.release(ip, &key);
            }
            self.retry_waiting();
        }
    }

    /// Marks the Services without addresses for another try.
    fn retry_waiting(&mut self) {
        let waiting: Vec<Key> = self.problems.keys().cloned().collect();
        self.dirty.extend(waiting);
    }

    // ---- queries -------------------------------------------------------

    /// The addresses a Service holds, with their pools.
    pub fn assigned(&self, key: &Key) -> &[(IpAddr, String)] {
        self.held.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// The Services that hold an address.
    pub fn holders(&self, ip: IpAddr) -> &[Key] {
        self.holders.get(&ip).map(Vec::as_slice).unwrap_or_default()
    }

    /// The problem of a Service, if it has one.
    pub fn problem(&self, key: &Key) -> Option<&Problem> {
        self.problems.get(key)
    }

    /// External addresses and ports that more than one Service claims,
    /// each with its claimants, the one that keeps it first.
    pub fn conflicts(&self) -> BTreeMap<(IpAddr, portico_catalog::Protocol, u16), Vec<Key>> {
        self.claims.conflicts()
    }

    /// Every assignment: `(service, address, pool)`.
    pub fn assignments(&self) -> impl Iterator<Item = (&Key, IpAddr, &str)> {
        self.held
            .iter()
            .flat_map(|(k, h)| h.iter().map(move |(ip, pool)| (k, *ip, pool.as_str())))
    }

    // ---- the work --------------------------------------------------------

    /// Everything that changed since the last flush, as writes: Service
    /// statuses and Events first, then pool statuses.
    pub fn flush(&mut self) -> Vec<Write> {
        let mut writes = Vec::new();
        if self.rebuild {
            self.rebuild_all(&mut writes);
        }
        let mut due: Vec<Key> = std::mem::take(&mut self.dirty).into_iter().collect();
        due.sort_by_cached_key(|k| {
            (
                self.services
                    .get(k)
                    .and_then(|s| s.metadata.creation_timestamp.clone())
                    .map(|t| t.0),
                k.clone(),
            )
        });
        for key in due {
            writes.extend(self.sync_service(&key));
        }
        writes.extend(self.claims.flush());
        writes.extend(self.pool_writes());
        self.publish_metrics();
        writes
    }

    /// Re-reads every pool, finds conflicts, and re-adopts the addresses in
    /// Service statuses, oldest Service first.
    fn rebuild_all(&mut self, writes: &mut Vec<Write>) {
        self.rebuild = false;
        // Fresh pools (a spec may have changed) and conflicts, oldest pool first.
        let objs: Vec<Arc<IPPool>> = self.pools.values().map(|p| p.obj.clone()).collect();
        let reported: HashMap<String, Option<String>> = self
            .pools
            .iter()
            .map(|(n, p)| (n.clone(), p.reported_conflict.clone()))
            .collect();
        self.pools.clear();
        for o in &objs {
            self.insert_pool(o);
        }
        let mut order: Vec<String> = self.pools.keys().cloned().collect();
        order.sort_by_cached_key(|n| {
            (
                self.pools[n]
                    .obj
                    .metadata
                    .creation_timestamp
                    .clone()
                    .map(|t| t.0),
                n.clone(),
            )
        });
        for (i, name) in order.iter().enumerate() {
            let conflict = self.conflict_of(name, &order[..i]);
            if let Some(p) = self.pools.get_mut(name) {
                p.conflict = conflict;
                p.reported_conflict = reported.get(name).cloned().flatten();
            }
        }
        for p in self.pools.values_mut() {
            if p.conflict != p.reported_conflict {
                if let Some(c) = &p.conflict {
                    writes.push(Write::event(
                        p.obj.as_ref(),
                        true,
                        lb_reasons::POOL_CONFLICT,
                        "Validate",
                        format!("{c}; the pool makes no new assignments until the overlap is gone"),
                    ));
                }
                p.reported_conflict = p.conflict.clone();
            }
        }

        // Re-adopt what the Services' statuses say, oldest first.
        self.held.clear();
        self.holders.clear();
        let mut order: Vec<Arc<Service>> = self.services.values().cloned().collect();
        order.sort_by_cached_key(|s| {
            (
                s.metadata.creation_timestamp.clone().map(|t| t.0),
                Key::of(s.as_ref()),
            )
        });
        for svc in order {
            let key = Key::of(svc.as_ref());
            if !self.eligible(&svc) {
                continue;
            }
            let mut held = Vec::new();
            for ip in status_ips(&svc) {
                match self.adoptable(&svc, &key, ip, &held) {
                    Ok(pool) => {
                        self.hold(ip, &key, &pool);
                        held.push((ip, pool));
                    }
                    Err(why) => writes.push(Write::event(
                        svc.as_ref(),
                        true,
                        lb_reasons::ADDRESS_NOT_KEPT,
                        "Adopt",
                        format!("{ip} in the Service's status is not kept: {why}"),
                    )),
                }
            }
            if !held.is_empty() {
                self.held.insert(key, held);
            }
        }
        self.dirty.extend(self.services.keys().cloned());
    }

    /// What a pool's addresses overlap: the cluster's networks, or a pool
    /// older than it (`earlier`).
    fn conflict_of(&self, name: &str, earlier: &[String]) -> Option<String> {
        let pool = self.pools.get(name)?.pool.as_ref()?;
        for (what, net) in &self.networks {
            if let Some(b) = pool.blocks().iter().find(|b| b.overlaps(net)) {
                return Some(format!("its addresses {b} overlap {what}"));
            }
        }
        for other in earlier {
            if let Some(op) = self.pools.get(other).and_then(|p| p.pool.as_ref())
                && let Some((mine, theirs)) = pool.overlaps(op)
            {
                return Some(format!(
                    "its addresses {mine} overlap pool {other} ({theirs})"
                ));
            }
        }
        None
    }

    /// Whether `ip` from a status can be kept by the Service.
    fn adoptable(
        &self,
        svc: &Service,
        key: &Key,
        ip: IpAddr,
        held: &Held,
    ) -> Result<String, String> {
        if held.iter().any(|(h, _)| Family::of(*h) == Family::of(ip)) {
            return Err(format!(
                "the Service already holds an {} address",
                Family::of(ip)
            ));
        }
        let Some(pool) = self.pools.values().find(|p| p.contains(ip)) else {
            return Err("it is in no pool".to_owned());
        };
        if !self.may_use(svc, pool, Some(ip)) {
            return Err(format!("pool {} does not serve this Service", pool.name()));
        }
        if !pool.assignable(ip) {
            return Err(format!("pool {} avoids .0 and .255 addresses", pool.name()));
        }
        self.compatible(svc, key, ip)
            .map_err(|(holder, why)| format!("Service {holder} holds it and {why}"))?;
        Ok(pool.name())
    }

    fn sync_service(&mut self, key: &Key) -> Vec<Write> {
        let Some(svc) = self.services.get(key).cloned() else {
            return Vec::new();
        };
        if !self.eligible(&svc) {
            // Not (or no longer) Portico's: release, and clear what Portico wrote.
            self.services.remove(key);
            self.problems.remove(key);
            let held = self.held.remove(key).unwrap_or_default();
            for (ip, _) in &held {
                self.release(*ip, key);
            }
            let mut writes = Vec::new();
            if !held.is_empty() {
                self.retry_waiting();
                writes.push(Write::event(
                    svc.as_ref(),
                    false,
                    lb_reasons::RELEASED,
                    "Release",
                    format!("released {}: {}", list(&held), self.not_eligible_why(&svc)),
                ));
            }
            let released = Problem::new(lb_reasons::RELEASED, self.not_eligible_why(&svc));
            let shows_ours = service_condition(&svc, CONDITION_IP_ALLOCATED).is_some()
                || !status_ips(&svc).is_empty();
            if shows_ours
                && !(status_ips(&svc).is_empty() && condition_is(&svc, &[], Some(&released)))
            {
                writes.push(status_write(&svc, &[], Some(&released)));
            }
            return writes;
        }

        let before = self.held.remove(key).unwrap_or_default();
        let (got, problem) = self.assign(&svc, key, before.clone());
        let mut writes = Vec::new();
        if !same_ips(&got, &status_ips(&svc)) || !condition_is(&svc, &got, problem.as_ref()) {
            writes.push(status_write(&svc, &got, problem.as_ref()));
        }
        if !same_ips(&got, &before.iter().map(|(ip, _)| *ip).collect::<Vec<_>>()) && !got.is_empty()
        {
            let note = if before.is_empty() {
                format!("assigned {}", list(&got))
            } else {
                format!("assigned {} (was {})", list(&got), list(&before))
            };
            writes.push(Write::event(
                svc.as_ref(),
                false,
                lb_reasons::ALLOCATED,
                "Assign",
                note,
            ));
        }
        match problem {
            Some(p) => {
                if self.problems.get(key) != Some(&p) {
                    writes.push(Write::event(
                        svc.as_ref(),
                        true,
                        p.reason,
                        "Assign",
                        p.message.clone(),
                    ));
                }
                self.problems.insert(key.clone(), p);
            }
            None => {
                self.problems.remove(key);
            }
        }
        let ips: Vec<IpAddr> = got.iter().map(|(ip, _)| *ip).collect();
        self.claims.assigned(&svc, &ips);
        if !got.is_empty() {
            self.held.insert(key.clone(), got);
        }
        writes
    }

    /// Why no pool matched, when a pool was asked for by name.
    fn why_no_pool(&self, svc: &Service) -> String {
        match annotation(svc, annotations::IP_POOL) {
            Some(name) if !self.pools.contains_key(name) => {
                format!(" (the requested pool {name} does not exist)")
            }
            Some(name) => {
                format!(" (the requested pool {name} does not select it or has no such addresses)")
            }
            None => String::new(),
        }
    }

    /// Whether the Service may get addresses from the pool: selectors, the
    /// pool it asks for, and `autoAssign` (a pool that does not auto-assign
    /// serves Services that ask for it or for one of its addresses).
    fn may_use(&self, svc: &Service, pool: &PoolState, requested: Option<IpAddr>) -> bool {
        if pool.pool.is_none() {
            return false;
        }
        let name = pool.name();
        let asked_pool = annotation(svc, annotations::IP_POOL);
        if asked_pool.is_some_and(|a| a != name) {
            return false;
        }
        let asked_ip = requested.is_some_and(|ip| pool.contains(ip))
            || requested_ips(svc)
                .unwrap_or_default()
                .iter()
                .any(|ip| pool.contains(*ip));
        if !pool.spec().auto_assign && asked_pool.is_none() && !asked_ip {
            return false;
        }
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        if pool
            .service_selector
            .as_ref()
            .is_some_and(|s| !s.matches(&labels))
        {
            return false;
        }
        let ns = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let ns_labels = self.namespaces.get(&ns).cloned().unwrap_or_default();
        pool.namespace_selector
            .as_ref()
            .is_none_or(|s| s.matches(&ns_labels))
    }

    /// Whether the Service keeps an address it holds: it is still inside a
    /// pool the Service may use (disabled or conflicting pools keep theirs).
    /// (The caller also checks that it may still share it with the others
    /// who hold it: a Service that drops its sharing key moves.)
    fn may_keep(&self, svc: &Service, ip: IpAddr, pool: &str) -> bool {
        self.pools
            .get(pool)
            .is_some_and(|p| p.assignable(ip) && self.may_use(svc, p, Some(ip)))
    }

    /// Whether the Service may share `ip` with everyone who holds it.
    fn compatible(&self, svc: &Service, key: &Key, ip: IpAddr) -> Result<(), (Key, String)> {
        for holder in self.holders.get(&ip).into_iter().flatten() {
            if holder == key {
                continue;
            }
            let Some(other) = self.services.get(holder) else {
                continue;
            };
            can_share(svc, other).map_err(|why| (holder.clone(), why))?;
        }
        Ok(())
    }

    fn hold(&mut self, ip: IpAddr, key: &Key, pool: &str) {
        let first = self.holders.get(&ip).is_none_or(|h| h.is_empty());
        if first && let Some(p) = self.pools.get_mut(pool).and_then(|p| p.pool.as_mut()) {
            // Adoption: the address was checked to be in this pool and free.
            let _ = p.allocate_ip(ip);
        }
        self.add_holder(ip, key);
    }

    fn add_holder(&mut self, ip: IpAddr, key: &Key) {
        let h = self.holders.entry(ip).or_default();
        if !h.contains(key) {
            h.push(key.clone());
        }
    }

    fn release(&mut self, ip: IpAddr, key: &Key) {
        let Some(h) = self.holders.get_mut(&ip) else {
            return;
        };
        h.retain(|k| k != key);
        if h.is_empty() {
            self.holders.remove(&ip);
            for p in self.pools.values_mut() {
                if let Some(pool) = p.pool.as_mut()
                    && pool.contains(ip)
                {
                    pool.release(ip);
                }
            }
        }
    }

    /// Whether Portico serves the Service: `type: LoadBalancer` and the
    /// class `portico.dev/lb` (or none, when Portico is the default).
    fn eligible(&self, svc: &Service) -> bool {
        if service_type(svc) != "LoadBalancer" || svc.metadata.deletion_timestamp.is_some() {
            return false;
        }
        match svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_deref())
        {
            Some(class) => class == LOAD_BALANCER_CLASS,
            None => self.cfg.default_class,
        }
    }

    fn not_eligible_why(&self, svc: &Service) -> String {
        if service_type(svc) != "LoadBalancer" {
            format!("the Service is of type {}", service_type(svc))
        } else {
            match svc
                .spec
                .as_ref()
                .and_then(|s| s.load_balancer_class.as_deref())
            {
                Some(class) => {
                    format!("the Service's loadBalancerClass is {class}, not {LOAD_BALANCER_CLASS}")
                }
                None => "Portico is not the default LoadBalancer class".to_owned(),
            }
        }
    }
}

/// Whether two Services may share an address: same namespace, same sharing
/// key, no port and protocol in common, the same `externalTrafficPolicy`,
/// and under `Local` the same selector (traffic must reach the same pods'
/// nodes).
pub fn can_share(a: &Service, b: &Service) -> Result<(), String> {
    if a.metadata.namespace != b.metadata.namespace {
        return Err("it is in another namespace".to_owned());
    }
    let (ka, kb) = (
        annotation(a, annotations::SHARING_KEY),
        annotation(b, annotations::SHARING_KEY),
    );
    if ka.is_none() || ka != kb {
        return Err(format!(
            "they do not have the same {} annotation",
            annotations::SHARING_KEY
        ));
    }
    let ports = |s: &Service| -> BTreeSet<(i32, String)> {
        s.spec
            .iter()
            .flat_map(|sp| sp.ports.iter().flatten())
            .map(|p| {
                (
                    p.port,
                    p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                )
            })
            .collect()
    };
    if let Some((port, proto)) = ports(a).intersection(&ports(b)).next() {
        return Err(format!("both use port {port}/{proto}"));
    }
    let local = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|sp| sp.external_traffic_policy.as_deref())
            == Some("Local")
    };
    // MetalLB's backend key: the selector under `Local`, nothing under
    // `Cluster`; both must be equal.
    let selector = |s: &Service| s.spec.as_ref().and_then(|sp| sp.selector.clone());
    if local(a) != local(b) {
        return Err("one has externalTrafficPolicy Local and the other Cluster".to_owned());
    }
    if local(a) && selector(a) != selector(b) {
        return Err("externalTrafficPolicy Local needs the same selector".to_owned());
    }
    Ok(())
}

fn annotation<'a>(svc: &'a Service, key: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The addresses a Service asks for: the annotation or the deprecated
/// `spec.loadBalancerIP` (not both, as MetalLB); at most one per family.
pub fn requested_ips(svc: &Service) -> Result<Vec<IpAddr>, Problem> {
    let legacy = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|s| !s.is_empty());
    if legacy.is_some() && annotation(svc, annotations::LOAD_BALANCER_IPS).is_some() {
        return Err(Problem::new(
            lb_reasons::INVALID_REQUEST,
            format!(
                "the Service sets both {} and spec.loadBalancerIP; keep one",
                annotations::LOAD_BALANCER_IPS
            ),
        ));
    }
    let raw: Vec<String> = match annotation(svc, annotations::LOAD_BALANCER_IPS) {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        None => svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.clone())
            .filter(|s| !s.is_empty())
            .into_iter()
            .collect(),
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for s in raw {
        let ip: IpAddr = s.parse().map_err(|_| {
            Problem::new(
                lb_reasons::INVALID_REQUEST,
                format!("requested address {s:?} is not an IP address"),
            )
        })?;
        if out.iter().any(|o| Family::of(*o) == Family::of(ip)) {
            return Err(Problem::new(
                lb_reasons::INVALID_REQUEST,
                format!(
                    "{} asks for two {} addresses; give at most one per family",
                    annotations::LOAD_BALANCER_IPS,
                    Family::of(ip)
                ),
            ));
        }
        out.push(ip);
    }
    Ok(out)
}

/// The addresses in a Service's `status.loadBalancer.ingress`.
fn status_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn same_ips(held: &[(IpAddr, String)], ips: &[IpAddr]) -> bool {
    held.len() == ips.len() && held.iter().zip(ips).all(|((a, _), b)| a == b)
}

fn list(held: &[(IpAddr, String)]) -> String {
    held.iter()
        .map(|(ip, pool)| format!("{ip} from pool {pool}"))
        .collect::<Vec<_>>()
        .join(", ")
}

mod assign;
mod claims;
mod status;
#[cfg(test)]
mod tests;

use status::{condition_is, status_write};
