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
use crate::records::{self, Built};
use crate::wire::{self, Owner, rtype};
use portico_catalog::{Catalog, Changes, ServiceKey};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

type Hasher = foldhash::fast::RandomState;
type Ptr = imbl::shared_ptr::DefaultSharedPtr;
/// A name in lowercase wire form, shared by the maps that hold it.
pub(crate) type Name = Arc<[u8]>;
/// Persistent hash tries (compact: branch arrays sized to their
/// population), cloned in O(1) for each snapshot.
pub(crate) type NameMap = rpds::HashTrieMap<Name, Arc<Node>, archery::ArcTK, Hasher>;
pub(crate) type PtrMap = rpds::HashTrieMap<IpAddr, Arc<Node>, archery::ArcTK, Hasher>;
pub(crate) type PodSet = imbl::GenericHashSet<IpAddr, Hasher, Ptr>;
pub(crate) type PodMap = imbl::GenericHashMap<Arc<str>, PodSet, Hasher, Ptr>;

/// The records of one type at one name, encoded in one buffer: the
/// records (each owned by [`Owner::Question`]), then the records for the
/// additional section (SRV targets' addresses, with full owner names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rrset {
    /// Record type.
    pub(crate) rtype: u16,
    /// Number of records.
    pub(crate) count: u16,
    /// Number of additional records.
    pub(crate) extra_count: u16,
    split: u32,
    bytes: Box<[u8]>,
}

impl Rrset {
    pub(crate) fn new(rtype: u16, count: u16, records: &[u8], extra_count: u16, extra: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(records.len() + extra.len());
        bytes.extend_from_slice(records);
        bytes.extend_from_slice(extra);
        Rrset {
            rtype,
            count,
            extra_count,
            split: records.len() as u32,
            bytes: bytes.into(),
        }
    }

    /// The records.
    pub(crate) fn records(&self) -> &[u8] {
        &self.bytes[..self.split as usize]
    }

    /// The additional records.
    pub(crate) fn extra(&self) -> &[u8] {
        &self.bytes[self.split as usize..]
    }
}

/// A name in the zone and its record sets (none: an empty non-terminal,
/// or a name that exists without data of any type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) rrsets: Box<[Rrset]>,
}

impl Node {
    pub(crate) fn rrset(&self, rtype: u16) -> Option<&Rrset> {
        self.rrsets.iter().find(|r| r.rtype == rtype)
    }

    /// The target of this name's CNAME (lowercase wire), to chase.
    pub(crate) fn cname(&self) -> Option<&[u8]> {
        // Owner pointer, type, class, TTL, length: 12 bytes, then the target.
        self.rrset(rtype::CNAME).and_then(|s| s.records().get(12..))
    }

    fn is_empty(&self) -> bool {
        self.rrsets.is_empty()
    }
}

static EMPTY: LazyLock<Arc<Node>> = LazyLock::new(|| Arc::new(Node::default()));

/// What every snapshot of one server shares: the zone and its SOA.
#[derive(Debug)]
pub(crate) struct Zone {
    /// The apex in wire form.
    pub(crate) apex: Vec<u8>,
    /// Labels of the apex.
    pub(crate) apex_labels: usize,
    /// TTL of every record.
    pub(crate) ttl: u32,
    /// Pod records.
    pub(crate) pods: PodsMode,
    /// The SOA record owned by the apex (authority section of negative
    /// answers).
    pub(crate) soa_authority: Vec<u8>,
    /// The SOA record owned by the question (an SOA query at the apex).
    pub(crate) soa_answer: Vec<u8>,
}

impl Zone {
    /// The zone `apex` (text) with `ttl` and pod mode.
    pub(crate) fn new(apex: &str, ttl: u32, pods: PodsMode) -> Option<Zone> {
        let apex = wire::name_from_text(apex)?;
        let mname = wire::name_under(&["ns", "dns"], &apex)?;
        let rname = wire::name_under(&["hostmaster"], &apex)?;
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let rdata = wire::soa_rdata(&mname, &rname, serial, ttl);
        let mut soa_authority = Vec::new();
        wire::push_rr(
            &mut soa_authority,
            Owner::Name(&apex),
            rtype::SOA,
            ttl,
            &rdata,
        );
        let mut soa_answer = Vec::new();
        wire::push_rr(&mut soa_answer, Owner::Question, rtype::SOA, ttl, &rdata);
        Some(Zone {
            apex_labels: wire::count_labels(&apex),
            apex,
            ttl,
            pods,
            soa_authority,
            soa_answer,
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
    pub(crate) names: NameMap,
    pub(crate) ptrs: PtrMap,
    pub(crate) pods: PodMap,
}

impl Snapshot {
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
    names: Vec<Name>,
    ptrs: Vec<(IpAddr, Name)>,
}

/// The writer side of the index. See the module documentation.
pub(crate) struct IndexWriter {
    zone: Arc<Zone>,
    synced: bool,
    names: NameMap,
    ptrs: PtrMap,
    pods: PodMap,
    /// Names below each name (for empty non-terminals).
    refs: HashMap<Name, u32>,
    /// What each Service put in the index.
    owned: HashMap<ServiceKey, Owned>,
    /// PTR targets of each address, counted.
    ptr_targets: HashMap<IpAddr, Vec<(Name, u32)>>,
}

impl IndexWriter {
    pub(crate) fn new(zone: Arc<Zone>) -> Self {
        let mut w = IndexWriter {
            zone,
            synced: false,
            names: NameMap::new_with_hasher_and_ptr_kind(Hasher::default()),
            ptrs: PtrMap::new_with_hasher_and_ptr_kind(Hasher::default()),
            pods: PodMap::default(),
            refs: HashMap::new(),
            owned: HashMap::new(),
            ptr_targets: HashMap::new(),
        };
        w.insert_static();
        w
    }

    fn insert_static(&mut self) {
        let apex = self.zone.apex.clone();
        // dns-version.<zone> TXT "1.1.0" (schema version of the specification).
        if let Some(name) = wire::name_under(&["dns-version"], &apex) {
            let mut records = Vec::new();
            wire::push_rr(
                &mut records,
                Owner::Question,
                rtype::TXT,
                self.zone.ttl,
                &wire::txt_rdata("1.1.0"),
            );
            let node = Node {
                rrsets: Box::new([Rrset::new(rtype::TXT, 1, &records, 0, &[])]),
            };
            self.insert_name(name.into(), Arc::new(node));
        }
        // svc.<zone> always exists.
        if let Some(svc) = wire::name_under(&["svc"], &apex) {
            let svc: Name = svc.into();
            *self.refs.entry(svc.clone()).or_default() += 1;
            self.names.insert_mut(svc, EMPTY.clone());
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
        }
    }

    /// Applies the changes the catalog reported, reading the current state
    /// of each changed Service and pod address from it.
    pub(crate) fn apply(&mut self, catalog: &Catalog, changes: &Changes) {
        for key in &changes.services {
            self.update_service(catalog, key);
        }
        if self.zone.pods == PodsMode::Verified {
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
        let keys: Vec<ServiceKey> = catalog.services().map(|s| s.key()).collect();
        for key in keys {
            self.update_service(catalog, &key);
        }
        if self.zone.pods == PodsMode::Verified {
            for pa in catalog.pod_addresses() {
                self.set_pod(&pa.namespace, pa.address, true);
            }
        }
    }

    fn update_service(&mut self, catalog: &Catalog, key: &ServiceKey) {
        if let Some(old) = self.owned.remove(key) {
            for name in old.names {
                self.remove_name(&name);
            }
            for (ip, target) in old.ptrs {
                self.remove_ptr(ip, &target);
            }
        }
        let Some(info) = catalog.service(key) else {
            return;
        };
        let Built { nodes, ptrs } =
            records::service_records(&self.zone, info, catalog.endpoints(key));
        let mut owned = Owned::default();
        for (name, node) in nodes {
            let name: Name = name.into();
            self.insert_name(name.clone(), Arc::new(node));
            owned.names.push(name);
        }
        for (ip, target) in ptrs {
            // Share the name with the node it points at, when it has one.
            let target: Name = owned
                .names
                .iter()
                .find(|n| ***n == *target)
                .cloned()
                .unwrap_or_else(|| target.into());
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

    fn insert_name(&mut self, name: Name, node: Arc<Node>) {
        for i in self.ancestors(&name) {
            let a = &name[i..];
            if let Some(r) = self.refs.get_mut(a) {
                *r += 1;
                continue;
            }
            let key: Name = match self.names.get_key_value(a) {
                Some((k, _)) => k.clone(),
                None => {
                    let k: Name = a.into();
                    self.names.insert_mut(k.clone(), EMPTY.clone());
                    k
                }
            };
            self.refs.insert(key, 1);
        }
        self.names.insert_mut(name, node);
    }

    fn remove_name(&mut self, name: &Name) {
        if self.refs.get(&name[..]).copied().unwrap_or(0) > 0 {
            self.names.insert_mut(name.clone(), EMPTY.clone());
        } else {
            self.names.remove_mut(&name[..]);
        }
        for i in self.ancestors(name) {
            let a = &name[i..];
            let Some(r) = self.refs.get_mut(a) else {
                continue;
            };
            *r -= 1;
            if *r == 0 {
                self.refs.remove(a);
                if self.names.get(a).is_some_and(|n| n.is_empty()) {
                    self.names.remove_mut(a);
                }
            }
        }
    }

    fn add_ptr(&mut self, ip: IpAddr, target: Name) {
        let targets = self.ptr_targets.entry(ip).or_default();
        match targets.iter_mut().find(|(t, _)| *t == target) {
            Some((_, c)) => *c += 1,
            None => {
                targets.push((target, 1));
                targets.sort();
            }
        }
        self.rebuild_ptr(ip);
    }

    fn remove_ptr(&mut self, ip: IpAddr, target: &[u8]) {
        if let Some(targets) = self.ptr_targets.get_mut(&ip) {
            if let Some(i) = targets.iter().position(|(t, _)| **t == *target) {
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
                    wire::push_rr(&mut records, Owner::Question, rtype::PTR, self.zone.ttl, t);
                }
                let count = targets.len().min(u16::MAX as usize) as u16;
                let node = Node {
                    rrsets: Box::new([Rrset::new(rtype::PTR, count, &records, 0, &[])]),
                };
                self.ptrs.insert_mut(ip, Arc::new(node));
            }
        }
    }

    fn set_pod(&mut self, namespace: &Arc<str>, ip: IpAddr, present: bool) {
        let mut set = self.pods.get(&**namespace).cloned().unwrap_or_default();
        if present {
            set.insert(ip);
        } else {
            set.remove(&ip);
        }
        if set.is_empty() {
            self.pods.remove(&**namespace);
        } else {
            self.pods.insert(namespace.clone(), set);
        }
    }

    /// Number of names in the zone (for tests and logs).
    pub(crate) fn name_count(&self) -> usize {
        self.names.size()
    }
}

#[cfg(test)]
mod tests;
