//! The record index: the cluster zone as pre-encoded record sets, updated
//! incrementally from catalog changes and published as immutable
//! snapshots.
//!
//! ```text
//!  Catalog + Changes ──> IndexWriter ── per changed Service: remove its old
//!        (writer side)       │          names, build its records (records.rs),
//!                            │          insert them (O(its records · log n))
//!                            └── snapshot() ──> Snapshot (O(1) clone of
//!                                persistent hash maps) ──> ArcSwap ──> readers
//! ```
//!
//! Names are keys in lowercase wire form. A node holds its record sets
//! already encoded, each record owned by a compression pointer to the
//! question (`0xC00C`), so an answer is a copy of bytes. Empty non-terminals
//! (`<ns>.svc.<zone>`, `_tcp.<svc>…`) exist while something lives below
//! them, so they answer NODATA instead of NXDOMAIN.

use crate::config::PodsMode;
use crate::names::{Entry, NameTable};
pub(crate) use crate::node::{Node, NodeRef, Rrset};
use crate::records::{self, Built};
use crate::wire::{self, Owner, rtype};
pub(crate) use crate::zone::Zone;
use portico_catalog::{Catalog, Changes, Key};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

type Hasher = foldhash::fast::RandomState;
/// Persistent hash tries, cloned in O(1) for each snapshot.
pub(crate) type PtrMap = rpds::HashTrieMap<IpAddr, Node, archery::ArcTK, Hasher>;
pub(crate) type PodMap = rpds::HashTrieMap<Arc<str>, NsPods, archery::ArcTK, Hasher>;

/// The pod addresses of one namespace: a persistent hash set made of
/// sorted shards. A change copies one shard (about 16 addresses) and the
/// shard pointers (one per 16 addresses); the shard count doubles as the
/// set grows, so a change costs O(namespace size / 16) at worst and the
/// set takes about 20 bytes per address (a persistent trie takes 140).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NsPods {
    shards: Arc<[Arc<[IpAddr]>]>,
    len: usize,
}

/// Addresses per shard aimed at when a set is (re)built.
const SHARD_TARGET: usize = 16;

fn shard_hasher() -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(0x5EED)
}

impl NsPods {
    fn build(mut ips: Vec<IpAddr>) -> NsPods {
        ips.sort_unstable();
        ips.dedup();
        let n = (ips.len() / SHARD_TARGET)
            .next_power_of_two()
            .clamp(1, 1 << 16);
        let h = shard_hasher();
        let mut shards: Vec<Vec<IpAddr>> = vec![Vec::new(); n];
        for ip in &ips {
            shards[h.hash_one(ip) as usize & (n - 1)].push(*ip);
        }
        NsPods {
            len: ips.len(),
            shards: shards.into_iter().map(Arc::from).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> usize {
        shard_hasher().hash_one(ip) as usize & (self.shards.len() - 1)
    }

    pub(crate) fn contains(&self, ip: &IpAddr) -> bool {
        self.shards[self.shard(ip)].binary_search(ip).is_ok()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &IpAddr> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// This set with `ip` added or removed; `None` when it is unchanged.
    fn with(&self, ip: IpAddr, present: bool) -> Option<NsPods> {
        let i = self.shard(&ip);
        let shard = &self.shards[i];
        let at = shard.binary_search(&ip);
        let mut v: Vec<IpAddr> = shard.to_vec();
        let len = match (at, present) {
            (Ok(_), true) | (Err(_), false) => return None,
            (Err(pos), true) => {
                v.insert(pos, ip);
                self.len + 1
            }
            (Ok(pos), false) => {
                v.remove(pos);
                self.len - 1
            }
        };
        if len > self.shards.len() * SHARD_TARGET * 4 {
            let mut all: Vec<IpAddr> = self.iter().copied().collect();
            all.push(ip);
            return Some(NsPods::build(all));
        }
        let mut shards: Vec<Arc<[IpAddr]>> = self.shards.to_vec();
        shards[i] = v.into();
        Some(NsPods {
            shards: shards.into(),
            len,
        })
    }
}

/// An immutable view of the index, as readers see it.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub(crate) zone: Arc<Zone>,
    /// The catalog has been fully synced once; until then the zone answers
    /// SERVFAIL.
    pub(crate) synced: bool,
    pub(crate) names: NameTable,
    pub(crate) ptrs: PtrMap,
    pub(crate) pods: PodMap,
    /// The Namespace objects (empty: none known, as with manifests that
    /// declare none).
    pub(crate) namespaces: Arc<HashSet<Box<[u8]>>>,
}

impl Snapshot {
    /// Whether a namespace is there for DNS: a Namespace object of that
    /// name, or pods in it; any name when no Namespace is known at all.
    pub(crate) fn namespace_exposed(&self, namespace: &[u8]) -> bool {
        self.namespaces.is_empty()
            || self.namespaces.contains(namespace)
            || self.has_pod_namespace(namespace)
    }

    pub(crate) fn has_pod(&self, namespace: &[u8], ip: IpAddr) -> bool {
        std::str::from_utf8(namespace)
            .ok()
            .and_then(|ns| self.pods.get(ns))
            .is_some_and(|set| set.contains(&ip))
    }

    pub(crate) fn has_pod_namespace(&self, namespace: &[u8]) -> bool {
        std::str::from_utf8(namespace)
            .ok()
            .is_some_and(|ns| self.pods.contains_key(ns))
    }
}

#[derive(Debug, Default)]
struct Owned {
    names: Vec<Entry>,
    ptrs: Vec<(IpAddr, Entry)>,
}

/// The writer side of the index. See the module documentation.
pub(crate) struct IndexWriter {
    zone: Arc<Zone>,
    synced: bool,
    names: NameTable,
    ptrs: PtrMap,
    pods: PodMap,
    /// Names below each name (for empty non-terminals).
    refs: HashMap<Entry, u32>,
    /// What each Service put in the index.
    owned: HashMap<Key, Owned>,
    /// PTR targets of each address, counted.
    ptr_targets: HashMap<IpAddr, Vec<(Entry, u32)>>,
    /// The Namespace objects, and the `<ns>.svc.<zone>` name each holds.
    namespaces: Arc<HashSet<Box<[u8]>>>,
    namespace_names: HashMap<String, Entry>,
}

impl IndexWriter {
    pub(crate) fn new(zone: Arc<Zone>) -> Self {
        let mut w = IndexWriter {
            zone,
            synced: false,
            names: NameTable::default(),
            ptrs: PtrMap::new_with_hasher_and_ptr_kind(Hasher::default()),
            pods: PodMap::new_with_hasher_and_ptr_kind(Hasher::default()),
            refs: HashMap::new(),
            owned: HashMap::new(),
            ptr_targets: HashMap::new(),
            namespaces: Arc::default(),
            namespace_names: HashMap::new(),
        };
        w.insert_static();
        w
    }

    /// The names every zone has: the apex (SOA, NS), its name server,
    /// `dns-version` and `svc`.
    fn insert_static(&mut self) {
        let zone = self.zone.clone();
        let ttl = zone.ttl;
        // ns.dns.<zone>: the DNS Service's addresses (NODATA for a family
        // without one, so the NS target always exists).
        let (a, a_count) = zone.ns_addresses(rtype::A);
        let (aaaa, aaaa_count) = zone.ns_addresses(rtype::AAAA);
        let mut ns_sets = Vec::new();
        if a_count > 0 {
            ns_sets.push(Rrset::new(rtype::A, a_count, &a, 0, &[]));
        }
        if aaaa_count > 0 {
            ns_sets.push(Rrset::new(rtype::AAAA, aaaa_count, &aaaa, 0, &[]));
        }
        self.insert_name(Entry::new(&zone.ns_name, &Node::new(&ns_sets)));
        // The apex: SOA, and NS -> ns.dns.<zone> with its addresses as glue
        // (RFC 1034 4.2.1: a zone's apex has NS records).
        let mut ns = Vec::new();
        wire::push_rr(&mut ns, Owner::Question, rtype::NS, ttl, &zone.ns_name);
        let mut glue = Vec::new();
        wire::reown(&a, &zone.ns_name, &mut glue);
        wire::reown(&aaaa, &zone.ns_name, &mut glue);
        let glue_count = a_count.saturating_add(aaaa_count);
        let apex = Node::new(&[
            Rrset::new(rtype::SOA, 1, &zone.soa_answer, 0, &[]),
            Rrset::new(rtype::NS, 1, &ns, glue_count, &glue),
        ]);
        self.insert_name(Entry::new(&zone.apex, &apex));
        // dns-version.<zone> TXT "1.1.0" (schema version of the
        // specification), with the TTL of the specification's example and
        // CoreDNS.
        if let Some(name) = wire::name_under(&["dns-version"], &zone.apex) {
            let mut records = Vec::new();
            wire::push_rr(
                &mut records,
                Owner::Question,
                rtype::TXT,
                DNS_VERSION_TTL,
                &wire::txt_rdata("1.1.0"),
            );
            let node = Node::new(&[Rrset::new(rtype::TXT, 1, &records, 0, &[])]);
            self.insert_name(Entry::new(&name, &node));
        }
        // svc.<zone> always exists.
        if let Some(svc) = wire::name_under(&["svc"], &zone.apex) {
            let svc = Entry::new(&svc, &Node::default());
            self.refs.insert(svc.clone(), 1);
            self.names.insert(svc);
        }
    }

    pub(crate) fn set_synced(&mut self, synced: bool) {
        self.synced = synced;
    }

    /// The current state as an immutable snapshot (O(1)).
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            zone: self.zone.clone(),
            synced: self.synced,
            names: self.names.clone(),
            ptrs: self.ptrs.clone(),
            pods: self.pods.clone(),
            namespaces: self.namespaces.clone(),
        }
    }

    /// Applies the changes the catalog reported, reading the current state
    /// of each changed Service and pod address from it.
    pub(crate) fn apply(&mut self, catalog: &Catalog, changes: &Changes) {
        for key in &changes.services {
            self.update_service(catalog, key);
        }
        for ns in &changes.namespaces {
            self.set_namespace(ns, catalog.has_namespace(ns));
        }
        if self.zone.pods == PodsMode::Verified {
            if changes.pods_relisted {
                self.rebuild_pods(catalog);
            }
            for pa in &changes.pod_addresses {
                let present = catalog.has_pod_address(&pa.namespace, pa.address);
                self.set_pod(&pa.namespace, pa.address, present);
            }
        }
    }

    /// Rebuilds everything from the catalog (a relist of every kind).
    pub(crate) fn reset(&mut self, catalog: &Catalog) {
        let synced = self.synced;
        *self = IndexWriter::new(self.zone.clone());
        self.synced = synced;
        let keys: Vec<Key> = catalog.services().map(|s| s.key()).collect();
        for key in keys {
            self.update_service(catalog, &key);
        }
        for ns in catalog.namespaces() {
            self.set_namespace(ns, true);
        }
        if self.zone.pods == PodsMode::Verified {
            self.rebuild_pods(catalog);
        }
    }

    /// A namespace that exists answers `<ns>.svc.<zone>` (NODATA) even
    /// without Services, as CoreDNS; one that goes stops doing so once it
    /// has none. The name holds a reference of its own, so Services coming
    /// and going below it do not remove it.
    fn set_namespace(&mut self, ns: &str, present: bool) {
        if present == self.namespace_names.contains_key(ns) {
            return;
        }
        let Some(name) = wire::name_under(&[ns, "svc"], &self.zone.apex) else {
            return;
        };
        // The set is cloned at most once per published snapshot (a reset
        // adds every namespace into one copy).
        if present {
            let entry = self
                .names
                .get(&name)
                .cloned()
                .unwrap_or_else(|| Entry::new(&name, &Node::default()));
            self.insert_name(entry.clone());
            *self.refs.entry(entry.clone()).or_insert(0) += 1;
            self.namespace_names.insert(ns.to_owned(), entry);
            Arc::make_mut(&mut self.namespaces).insert(ns.as_bytes().into());
        } else if let Some(entry) = self.namespace_names.remove(ns) {
            if let Some(r) = self.refs.get_mut(entry.key()) {
                *r -= 1;
                if *r == 0 {
                    self.refs.remove(entry.key());
                }
            }
            Arc::make_mut(&mut self.namespaces).remove(ns.as_bytes());
            self.remove_name(&entry);
        }
    }

    fn update_service(&mut self, catalog: &Catalog, key: &Key) {
        if let Some(old) = self.owned.remove(key) {
            for name in old.names {
                self.remove_name(&name);
            }
            for (ip, target) in old.ptrs {
                self.remove_ptr(ip, target.key());
            }
        }
        let Some(info) = catalog.service(key) else {
            return;
        };
        let Built { nodes, ptrs } =
            records::service_records(&self.zone, info, catalog.endpoints(key));
        let mut owned = Owned::default();
        for (name, node) in nodes {
            let entry = Entry::new(&name, &node);
            self.insert_name(entry.clone());
            owned.names.push(entry);
        }
        for (ip, target) in ptrs {
            // The name of the node it points at (it always has one).
            let target = owned
                .names
                .iter()
                .find(|n| n.key() == &target[..])
                .cloned()
                .unwrap_or_else(|| Entry::new(&target, &Node::default()));
            self.add_ptr(ip, target.clone());
            owned.ptrs.push((ip, target));
        }
        owned.names.shrink_to_fit();
        owned.ptrs.shrink_to_fit();
        self.owned.insert(key.clone(), owned);
    }

    /// The proper ancestors of `name` below the apex (start offsets).
    fn ancestors(&self, name: &[u8]) -> Vec<usize> {
        let apex_len = self.zone.apex.len();
        let mut out = Vec::new();
        let mut i = 0;
        while i < name.len() && name[i] != 0 {
            i += 1 + name[i] as usize;
            if name.len().saturating_sub(i) <= apex_len {
                break;
            }
            out.push(i);
        }
        out
    }

    fn insert_name(&mut self, entry: Entry) {
        for i in self.ancestors(entry.key()) {
            let a = &entry.key()[i..];
            if let Some(r) = self.refs.get_mut(a) {
                *r += 1;
                continue;
            }
            let parent = match self.names.get(a) {
                Some(e) => e.clone(),
                None => {
                    let e = Entry::new(a, &Node::default());
                    self.names.insert(e.clone());
                    e
                }
            };
            self.refs.insert(parent, 1);
        }
        self.names.insert(entry);
    }

    fn remove_name(&mut self, entry: &Entry) {
        let key = entry.key();
        if self.refs.get(key).copied().unwrap_or(0) > 0 {
            self.names.insert(Entry::new(key, &Node::default()));
        } else {
            self.names.remove(key);
        }
        for i in self.ancestors(key) {
            let a = &key[i..];
            let Some(r) = self.refs.get_mut(a) else {
                continue;
            };
            *r -= 1;
            if *r == 0 {
                self.refs.remove(a);
                if self.names.get(a).is_some_and(|n| n.node().is_empty()) {
                    self.names.remove(a);
                }
            }
        }
    }

    fn add_ptr(&mut self, ip: IpAddr, target: Entry) {
        let targets = self.ptr_targets.entry(ip).or_default();
        match targets.iter_mut().find(|(t, _)| *t == target) {
            Some((_, c)) => *c += 1,
            None => {
                targets.push((target, 1));
                targets.sort_by(|a, b| a.0.key().cmp(b.0.key()));
            }
        }
        self.rebuild_ptr(ip);
    }

    fn remove_ptr(&mut self, ip: IpAddr, target: &[u8]) {
        if let Some(targets) = self.ptr_targets.get_mut(&ip) {
            if let Some(i) = targets.iter().position(|(t, _)| t.key() == target) {
                targets[i].1 -= 1;
                if targets[i].1 == 0 {
                    targets.remove(i);
                }
            }
            if targets.is_empty() {
                self.ptr_targets.remove(&ip);
            }
        }
        self.rebuild_ptr(ip);
    }

    fn rebuild_ptr(&mut self, ip: IpAddr) {
        match self.ptr_targets.get(&ip) {
            None => {
                self.ptrs.remove_mut(&ip);
            }
            Some(targets) => {
                let mut records = Vec::new();
                for (t, _) in targets {
                    wire::push_rr(
                        &mut records,
                        Owner::Question,
                        rtype::PTR,
                        self.zone.ttl,
                        t.key(),
                    );
                }
                let count = targets.len().min(u16::MAX as usize) as u16;
                let node = Node::new(&[Rrset::new(rtype::PTR, count, &records, 0, &[])]);
                self.ptrs.insert_mut(ip, node);
            }
        }
    }

    fn set_pod(&mut self, namespace: &Arc<str>, ip: IpAddr, present: bool) {
        let next = match self.pods.get(&**namespace) {
            Some(set) => set.with(ip, present),
            None if present => Some(NsPods::build(vec![ip])),
            None => None,
        };
        match next {
            Some(set) if set.len == 0 => {
                self.pods.remove_mut(&**namespace);
            }
            Some(set) => self.pods.insert_mut(namespace.clone(), set),
            None => {}
        }
    }

    /// Builds every namespace's set from the catalog at once.
    fn rebuild_pods(&mut self, catalog: &Catalog) {
        let mut by_ns: HashMap<Arc<str>, Vec<IpAddr>> = HashMap::new();
        for pa in catalog.pod_addresses() {
            by_ns.entry(pa.namespace).or_default().push(pa.address);
        }
        self.pods = PodMap::new_with_hasher_and_ptr_kind(Hasher::default());
        for (ns, ips) in by_ns {
            self.pods.insert_mut(ns, NsPods::build(ips));
        }
    }

    /// Number of names in the zone (for tests and logs).
    pub(crate) fn name_count(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests;

/// The TTL of `dns-version.<zone>`.
const DNS_VERSION_TTL: u32 = 28_800;
