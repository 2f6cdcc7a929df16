//! The service catalog: Services, EndpointSlices and pod addresses turned
//! into one normalised model that the DNS server and the node dataplane
//! share.
//!
//! ```text
//!  Services ─────────┐   apply_* / delete_* / reset_*     ┌─> dns (records)
//!  EndpointSlices ───┼──> Catalog ── take_changes() ──────┤
//!  Pods (addresses) ─┘    per Service: ServiceInfo +      └─> dataplane (NAT rules)
//!                         endpoints merged over its slices
//! ```
//!
//! Both consumers read the same model, so what DNS answers and what the
//! dataplane forwards to can never disagree.
//!
//! - Each call costs work proportional to the objects it changes: a slice
//!   change re-merges the endpoints of that slice's Service only.
//! - The catalog records which Services (and which pod addresses) changed;
//!   a consumer calls [`Catalog::take_changes`] after a batch of calls and
//!   updates just those, reading their current state with
//!   [`Catalog::service`] and [`Catalog::endpoints`].
//! - `reset_*` replaces every object of a kind (a relist after a watch
//!   restart) and reports only what differs from before.
//!
//! Endpoints are merged over all slices labelled
//! `kubernetes.io/service-name: <service>` (whoever manages them), in slice
//! name order, and deduplicated by address: when two slices hold the same
//! address (an endpoint moving between slices), the ready one wins, then
//! the serving one, then the first.

#![forbid(unsafe_code)]

pub mod labels;
mod model;

pub use model::{
    DEFAULT_AFFINITY_TIMEOUT, Endpoint, EndpointPort, Key, Protocol, ProxyLabel, Seniority,
    ServiceInfo, ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use model::{SliceInfo, namespace_of, pod_ips};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A pod address in a namespace, as reported in [`Changes`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodAddress {
    /// Namespace of the pod(s) holding the address.
    pub namespace: Arc<str>,
    /// The address.
    pub address: IpAddr,
}

/// What changed since the last [`Catalog::take_changes`]. Consumers read
/// the current state of each entry from the catalog (a Service that is
/// gone has no [`Catalog::service`]; an address that is gone fails
/// [`Catalog::has_pod_address`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services whose info or endpoints changed (added, updated, deleted).
    pub services: BTreeSet<Key>,
    /// Pod addresses that appeared in or disappeared from a namespace.
    pub pod_addresses: BTreeSet<PodAddress>,
    /// The Pods were relisted: any pod address may have changed (read them
    /// all with [`Catalog::pod_addresses`]); `pod_addresses` lists only the
    /// changes after the relist.
    pub pods_relisted: bool,
    /// Namespaces that came or went (ask [`Catalog::has_namespace`]).
    pub namespaces: BTreeSet<String>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.pod_addresses.is_empty()
            && !self.pods_relisted
            && self.namespaces.is_empty()
    }
}

type SliceKey = (String, String);

/// The catalog. See the crate documentation.
#[derive(Debug, Default)]
pub struct Catalog {
    services: HashMap<Key, Arc<ServiceInfo>>,
    slices: HashMap<SliceKey, SliceInfo>,
    slices_by_service: HashMap<Key, BTreeSet<String>>,
    endpoints: HashMap<Key, Arc<[Endpoint]>>,
    /// Pods by `namespace/name` (one allocation per pod).
    pods: HashMap<Box<str>, PodEntry>,
    /// A pod relist is under way.
    pod_relist: bool,
    pod_addresses: HashMap<Arc<str>, HashMap<IpAddr, u32>>,
    namespaces: HashSet<Arc<str>>,
    /// The Namespace objects (DNS answers for a namespace that exists).
    namespace_objects: BTreeSet<String>,
    changes: Changes,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Catalog::default()
    }

    /// Takes the changes recorded since the last call.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    // ---- reading -------------------------------------------------------

    /// A Service, by key.
    pub fn service(&self, key: &Key) -> Option<&Arc<ServiceInfo>> {
        self.services.get(key)
    }

    /// Every Service, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceInfo>> {
        self.services.values()
    }

    /// The number of Services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The endpoints of a Service, merged over its slices (empty when it
    /// has none). Slices may exist before their Service does.
    pub fn endpoints(&self, key: &Key) -> &[Endpoint] {
        self.endpoints.get(key).map_or(&[], |e| e)
    }

    /// The same endpoints, shared: an unchanged Service keeps the same
    /// allocation, so a consumer can tell "unchanged" by pointer.
    pub fn endpoints_shared(&self, key: &Key) -> Option<&Arc<[Endpoint]>> {
        self.endpoints.get(key)
    }

    /// Whether a pod in `namespace` holds `address`.
    pub fn has_pod_address(&self, namespace: &str, address: IpAddr) -> bool {
        self.pod_addresses
            .get(namespace)
            .is_some_and(|m| m.contains_key(&address))
    }

    /// Every pod address, by namespace, in no particular order.
    pub fn pod_addresses(&self) -> impl Iterator<Item = PodAddress> + '_ {
        self.pod_addresses.iter().flat_map(|(ns, m)| {
            m.keys().map(|a| PodAddress {
                namespace: ns.clone(),
                address: *a,
            })
        })
    }

    /// The number of pods that hold at least one address.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    // ---- Services ------------------------------------------------------

    /// A Service was added or changed.
    pub fn apply_service(&mut self, svc: &Service) {
        let info = ServiceInfo::from_service(svc);
        let key = info.key();
        if self.services.get(&key).is_some_and(|old| **old == info) {
            return;
        }
        self.services.insert(key.clone(), Arc::new(info));
        self.changes.services.insert(key);
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, svc: &Service) {
        let key = Key::new(
            namespace_of(svc.metadata.namespace.as_deref()),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        if self.services.remove(&key).is_some() {
            self.changes.services.insert(key);
        }
    }

    /// Replaces every Service (a relist); reports those that differ.
    pub fn reset_services<'a>(&mut self, services: impl IntoIterator<Item = &'a Service>) {
        let mut old = std::mem::take(&mut self.services);
        for svc in services {
            let info = ServiceInfo::from_service(svc);
            let key = info.key();
            match old.remove(&key) {
                Some(prev) if *prev == info => {
                    self.services.insert(key, prev);
                }
                _ => {
                    self.services.insert(key.clone(), Arc::new(info));
                    self.changes.services.insert(key);
                }
            }
        }
        self.changes.services.extend(old.into_keys());
    }

    // ---- EndpointSlices ------------------------------------------------

    /// An EndpointSlice was added or changed. Slices without a
    /// `kubernetes.io/service-name` label are ignored.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let key = slice_key(slice);
        let info = SliceInfo::from_slice(slice);
        let old = self.slices.get(&key);
        if old == info.as_ref() {
            return;
        }
        let mut touched = BTreeSet::new();
        if let Some(old) = self.remove_slice(&key) {
            touched.insert(old.service);
        }
        if let Some(info) = info {
            touched.insert(info.service.clone());
            self.insert_slice(key, info);
        }
        for svc in touched {
            self.merge(svc);
        }
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        if let Some(old) = self.remove_slice(&slice_key(slice)) {
            self.merge(old.service);
        }
    }

    /// Replaces every EndpointSlice (a relist); reports the Services whose
    /// endpoints differ.
    pub fn reset_slices<'a>(&mut self, slices: impl IntoIterator<Item = &'a EndpointSlice>) {
        let mut old = std::mem::take(&mut self.slices);
        self.slices_by_service.clear();
        let mut touched = BTreeSet::new();
        for slice in slices {
            let key = slice_key(slice);
            let Some(info) = SliceInfo::from_slice(slice) else {
                continue;
            };
            match old.remove(&key) {
                Some(prev) if prev == info => {}
                Some(prev) => {
                    touched.insert(prev.service);
                    touched.insert(info.service.clone());
                }
                None => {
                    touched.insert(info.service.clone());
                }
            }
            self.insert_slice(key, info);
        }
        touched.extend(old.into_values().map(|s| s.service));
        for svc in touched {
            self.merge(svc);
        }
    }

    fn insert_slice(&mut self, key: SliceKey, info: SliceInfo) {
        self.slices_by_service
            .entry(info.service.clone())
            .or_default()
            .insert(key.1.clone());
        self.slices.insert(key, info);
    }

    fn remove_slice(&mut self, key: &SliceKey) -> Option<SliceInfo> {
        let old = self.slices.remove(key)?;
        if let Some(names) = self.slices_by_service.get_mut(&old.service) {
            names.remove(&key.1);
            if names.is_empty() {
                self.slices_by_service.remove(&old.service);
            }
        }
        Some(old)
    }

    /// Recomputes the merged endpoints of one Service from its slices.
    fn merge(&mut self, svc: Key) {
        let mut merged: Vec<Endpoint> = Vec::new();
        let mut at: HashMap<IpAddr, usize> = HashMap::new();
        for name in self.slices_by_service.get(&svc).into_iter().flatten() {
            let key = (svc.namespace.clone(), name.clone());
            let Some(slice) = self.slices.get(&key) else {
                continue;
            };
            for ep in &slice.endpoints {
                match at.get(&ep.address) {
                    Some(&i) => {
                        if rank(ep) > rank(&merged[i]) {
                            merged[i] = ep.clone();
                        }
                    }
                    None => {
                        at.insert(ep.address, merged.len());
                        merged.push(ep.clone());
                    }
                }
            }
        }
        let old = self.endpoints.get(&svc);
        if old.map_or(&[][..], |e| e) == merged.as_slice() {
            return;
        }
        if merged.is_empty() {
            self.endpoints.remove(&svc);
        } else {
            self.endpoints.insert(svc.clone(), merged.into());
        }
        self.changes.services.insert(svc);
    }

    // ---- Pods ----------------------------------------------------------

    /// A Pod was added or changed: only its addresses matter.
    pub fn apply_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        let ips = PodIps::of(&pod_ips(pod));
        if let Some(e) = self.pods.get_mut(&key)
            && Some(e.ips) == ips
        {
            e.seen = true;
            return;
        }
        let ns = self.intern(namespace_part(&key));
        self.remove_pod(&key, &ns);
        if let Some(ips) = ips {
            for ip in ips.iter() {
                self.add_pod_address(&ns, ip);
            }
            self.pods.insert(key, PodEntry { ips, seen: true });
        }
    }

    /// A Pod was deleted.
    pub fn delete_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        let ns = self.intern(namespace_part(&key));
        self.remove_pod(&key, &ns);
    }

    /// Starts a relist of the Pods: apply each listed Pod with
    /// [`Catalog::apply_pod`], then call [`Catalog::finish_pod_relist`],
    /// which removes the Pods that were not listed. Nothing is buffered, so
    /// a large cluster's Pods never need to be held at once; in between,
    /// pod address changes are not recorded one by one (the finish reports
    /// [`Changes::pods_relisted`] instead).
    pub fn begin_pod_relist(&mut self) {
        self.pod_relist = true;
        for e in self.pods.values_mut() {
            e.seen = false;
        }
    }

    /// Ends a relist started with [`Catalog::begin_pod_relist`].
    pub fn finish_pod_relist(&mut self) {
        let gone: Vec<Box<str>> = self
            .pods
            .iter()
            .filter(|(_, e)| !e.seen)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let ns = self.intern(namespace_part(&key));
            self.remove_pod(&key, &ns);
        }
        self.pod_relist = false;
        self.changes.pods_relisted = true;
    }

    // ---- Namespaces ----------------------------------------------------

    /// Whether a Namespace object of this name exists.
    pub fn has_namespace(&self, name: &str) -> bool {
        self.namespace_objects.contains(name)
    }

    /// The names of the Namespace objects.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.namespace_objects.iter().map(String::as_str)
    }

    /// A Namespace was added (or changed).
    pub fn apply_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = ns.metadata.name.as_ref()
            && self.namespace_objects.insert(name.clone())
        {
            self.changes.namespaces.insert(name.clone());
        }
    }

    /// A Namespace was deleted.
    pub fn delete_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = ns.metadata.name.as_ref()
            && self.namespace_objects.remove(name)
        {
            self.changes.namespaces.insert(name.clone());
        }
    }

    /// Replaces every Namespace (a relist).
    pub fn reset_namespaces<'a>(&mut self, all: impl IntoIterator<Item = &'a Namespace>) {
        let now: BTreeSet<String> = all
            .into_iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let changed = now.symmetric_difference(&self.namespace_objects).cloned();
        self.changes.namespaces.extend(changed);
        self.namespace_objects = now;
    }

    /// Replaces every Pod (a relist of an in-memory list).
    pub fn reset_pods<'a>(&mut self, pods: impl IntoIterator<Item = &'a Pod>) {
        self.begin_pod_relist();
        for pod in pods {
            self.apply_pod(pod);
        }
        self.finish_pod_relist();
    }

    fn remove_pod(&mut self, key: &str, ns: &Arc<str>) {
        if let Some(e) = self.pods.remove(key) {
            for ip in e.ips.iter() {
                self.remove_pod_address(ns, ip);
            }
        }
    }

    fn add_pod_address(&mut self, ns: &Arc<str>, ip: IpAddr) {
        let count = self
            .pod_addresses
            .entry(ns.clone())
            .or_default()
            .entry(ip)
            .or_default();
        *count += 1;
        if *count == 1 && !self.pod_relist {
            self.changes.pod_addresses.insert(PodAddress {
                namespace: ns.clone(),
                address: ip,
            });
        }
    }

    fn remove_pod_address(&mut self, ns: &Arc<str>, ip: IpAddr) {
        let Some(m) = self.pod_addresses.get_mut(ns) else {
            return;
        };
        let Some(count) = m.get_mut(&ip) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            m.remove(&ip);
            if m.is_empty() {
                self.pod_addresses.remove(ns);
            }
            if !self.pod_relist {
                self.changes.pod_addresses.insert(PodAddress {
                    namespace: ns.clone(),
                    address: ip,
                });
            }
        }
    }

    fn intern(&mut self, ns: &str) -> Arc<str> {
        if let Some(a) = self.namespaces.get(ns) {
            return a.clone();
        }
        let a: Arc<str> = ns.into();
        self.namespaces.insert(a.clone());
        a
    }
}

/// A pod's addresses, inline: a pod has at most one per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodIps {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Dual(Ipv4Addr, Ipv6Addr),
}

impl PodIps {
    /// The first address of each family; `None` when there is none.
    fn of(ips: &[IpAddr]) -> Option<Self> {
        let v4 = ips.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
        let v6 = ips.iter().find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        match (v4, v6) {
            (Some(a), Some(b)) => Some(PodIps::Dual(a, b)),
            (Some(a), None) => Some(PodIps::V4(a)),
            (None, Some(b)) => Some(PodIps::V6(b)),
            (None, None) => None,
        }
    }

    fn iter(self) -> impl Iterator<Item = IpAddr> {
        let (a, b): (Option<IpAddr>, Option<IpAddr>) = match self {
            PodIps::V4(a) => (Some(a.into()), None),
            PodIps::V6(b) => (Some(b.into()), None),
            PodIps::Dual(a, b) => (Some(a.into()), Some(b.into())),
        };
        a.into_iter().chain(b)
    }
}

#[derive(Debug)]
struct PodEntry {
    ips: PodIps,
    /// Listed since the relist began.
    seen: bool,
}

/// `namespace/name` of a pod (neither may contain a slash).
fn pod_key(pod: &Pod) -> Box<str> {
    format!(
        "{}/{}",
        namespace_of(pod.metadata.namespace.as_deref()),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
    .into()
}

fn namespace_part(key: &str) -> &str {
    key.split_once('/').map_or(key, |(ns, _)| ns)
}

fn slice_key(slice: &EndpointSlice) -> SliceKey {
    (
        namespace_of(slice.metadata.namespace.as_deref()),
        slice.metadata.name.clone().unwrap_or_default(),
    )
}

/// Which of two endpoints with one address wins: ready, then serving.
fn rank(ep: &Endpoint) -> (bool, bool) {
    (ep.ready, ep.serving)
}

#[cfg(test)]
mod tests;
