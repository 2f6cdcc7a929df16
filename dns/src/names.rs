//! The names of the zone: a hash table split into shards that are copied
//! on write, so a snapshot is an O(1) clone and lookups are one probe.
//!
//! ```text
//!  NameTable ── Arc<[group]> ── group: Arc<[Arc<shard>]> (64 shards)
//!                                shard: HashSet<Entry>
//!                                Entry: Arc<[u8]> = [key length][key][node]
//! ```
//!
//! Each name is one allocation holding its key and its encoded node, so a
//! lookup touches the table's control bytes, its slot and that allocation
//! (a persistent trie follows five or six pointers, each a cache miss; on
//! the benchmark zone that was a sixth of the server's CPU).
//!
//! A change after a snapshot was taken copies the shard it lands in
//! (about 32 names), its group's 64 shard pointers and, once per snapshot,
//! the group pointers (one per 2,048 names); shards double when they
//! average more than 64 names.

use crate::node::{Node, NodeRef};
use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

type Hasher = foldhash::fast::RandomState;
type Shard = HashSet<Entry, Hasher>;

/// Names per shard when a table is resharded.
const SHARD_TARGET: usize = 32;
/// Shards per group.
const GROUP: usize = 64;

/// A name and its node in one allocation. Hashed and compared by name, so
/// a shard is looked up with the name's bytes.
#[derive(Clone, Debug)]
pub(crate) struct Entry(Arc<[u8]>);

impl Entry {
    pub(crate) fn new(key: &[u8], node: &Node) -> Entry {
        let key = &key[..key.len().min(255)];
        let mut v = Vec::with_capacity(1 + key.len() + node.blob().len());
        v.push(key.len() as u8);
        v.extend_from_slice(key);
        v.extend_from_slice(node.blob());
        Entry(v.into())
    }

    /// The name (lowercase wire form).
    pub(crate) fn key(&self) -> &[u8] {
        &self.0[1..1 + self.0[0] as usize]
    }

    /// The node.
    pub(crate) fn node(&self) -> NodeRef<'_> {
        NodeRef(&self.0[1 + self.0[0] as usize..])
    }
}

impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

/// The table. Cloning it is O(1); see the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct NameTable {
    groups: Arc<[Arc<[Arc<Shard>]>]>,
    shards: usize,
    len: usize,
    hasher: Hasher,
}

impl Default for NameTable {
    fn default() -> Self {
        NameTable::with_shards(1, Hasher::default())
    }
}

impl NameTable {
    fn with_shards(n: usize, hasher: Hasher) -> Self {
        let shards = (0..n).map(|_| Shard::with_hasher(hasher.clone())).collect();
        NameTable::from_shards(shards, 0, hasher)
    }

    fn from_shards(shards: Vec<Shard>, len: usize, hasher: Hasher) -> Self {
        let n = shards.len();
        let mut groups: Vec<Arc<[Arc<Shard>]>> = Vec::new();
        let mut it = shards.into_iter().map(Arc::new);
        loop {
            let group: Vec<Arc<Shard>> = it.by_ref().take(GROUP).collect();
            if group.is_empty() {
                break;
            }
            groups.push(group.into());
        }
        NameTable {
            groups: groups.into(),
            shards: n,
            len,
            hasher,
        }
    }

    fn shard(&self, i: usize) -> &Shard {
        &self.groups[i / GROUP][i % GROUP]
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        // The shard takes high bits; the shard's own table uses low ones.
        (self.hasher.hash_one(key) >> 40) as usize & (self.shards - 1)
    }

    /// The entry of a name.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.shard(self.shard_of(key)).get(key)
    }

    #[cfg(test)]
    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Names in the table.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.groups
            .iter()
            .flat_map(|g| g.iter())
            .flat_map(|s| s.iter())
    }

    fn shard_mut(&mut self, i: usize) -> &mut Shard {
        let groups = Arc::make_mut(&mut self.groups);
        let group = Arc::make_mut(&mut groups[i / GROUP]);
        Arc::make_mut(&mut group[i % GROUP])
    }

    /// Inserts or replaces an entry.
    pub(crate) fn insert(&mut self, entry: Entry) {
        let i = self.shard_of(entry.key());
        if self.shard_mut(i).replace(entry).is_none() {
            self.len += 1;
            if self.len > self.shards * SHARD_TARGET * 2 {
                self.reshard(self.shards * 2);
            }
        }
    }

    /// Removes a name.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let i = self.shard_of(key);
        if !self.shard(i).contains(key) {
            return None;
        }
        let old = self.shard_mut(i).take(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    fn reshard(&mut self, n: usize) {
        let index = NameTable::with_shards(n, self.hasher.clone());
        let mut shards: Vec<Shard> = (0..n)
            .map(|_| Shard::with_hasher(self.hasher.clone()))
            .collect();
        for e in self.iter() {
            shards[index.shard_of(e.key())].insert(e.clone());
        }
        *self = NameTable::from_shards(shards, self.len, self.hasher.clone());
    }

    /// The shards, for tests.
    #[cfg(test)]
    fn all_shards(&self) -> Vec<&Arc<Shard>> {
        self.groups.iter().flat_map(|g| g.iter()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Vec<u8> {
        crate::wire::name_from_text(&format!("svc-{i}.ns.svc.cluster.local")).unwrap()
    }

    #[test]
    fn a_table_grows_and_snapshots_do_not_change() {
        let mut t = NameTable::default();
        for i in 0..5000 {
            t.insert(Entry::new(&key(i), &Node::default()));
        }
        assert_eq!(t.len(), 5000);
        assert!(t.shards >= 5000 / (SHARD_TARGET * 2));
        let snapshot = t.clone();
        t.remove(&key(7));
        t.insert(Entry::new(&key(5000), &Node::default()));
        assert!(snapshot.contains_key(&key(7)) && !t.contains_key(&key(7)));
        assert!(!snapshot.contains_key(&key(5000)) && t.contains_key(&key(5000)));
        assert_eq!(t.len(), 5000);
        // Only the shards that changed were copied.
        let shared = snapshot
            .all_shards()
            .iter()
            .zip(t.all_shards().iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= snapshot.shards - 2);
        assert_eq!(t.get(&key(1)).unwrap().key(), &key(1)[..]);
        assert!(t.remove(&key(99_999)).is_none());
    }
}
