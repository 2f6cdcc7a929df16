//! A sparse set of offsets for blocks too large for a bitmap (an IPv6 /64):
//! memory grows with the number of allocated addresses, not the block size.
//!
//! Offsets are kept in a [`BTreeSet`], as `u64` when the block has at most
//! 2^64 addresses (a /64 or smaller) and as `u128` otherwise, so that a /64
//! costs about half as much per address.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::mem::size_of;

/// An integer type that can hold the offsets of a block.
pub(crate) trait Offset: Copy + Ord + Debug + Into<u128> + TryFrom<u128> {}

impl Offset for u64 {}
impl Offset for u128 {}

/// An ordered set of allocated offsets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SparseSet<K> {
    set: BTreeSet<K>,
}

impl<K: Offset> SparseSet<K> {
    /// An empty set.
    pub(crate) fn new() -> SparseSet<K> {
        SparseSet {
            set: BTreeSet::new(),
        }
    }

    fn key(off: u128) -> Option<K> {
        K::try_from(off).ok()
    }

    /// Whether the offset is in the set.
    pub(crate) fn contains(&self, off: u128) -> bool {
        Self::key(off).is_some_and(|k| self.set.contains(&k))
    }

    /// Adds the offset; false when it was there already (or does not fit).
    pub(crate) fn insert(&mut self, off: u128) -> bool {
        Self::key(off).is_some_and(|k| self.set.insert(k))
    }

    /// Removes the offset; false when it was not there.
    pub(crate) fn remove(&mut self, off: u128) -> bool {
        Self::key(off).is_some_and(|k| self.set.remove(&k))
    }

    /// Removes every offset.
    pub(crate) fn clear(&mut self) {
        self.set.clear();
    }

    /// The number of offsets.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    /// The offsets, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.set.iter().map(|&k| k.into())
    }

    /// The smallest offset in `from..=to` that is neither in the set nor
    /// `skip`ped. Costs O(log n + length of the run of taken offsets after
    /// `from`).
    pub(crate) fn first_gap(
        &self,
        from: u128,
        to: u128,
        skip: impl Fn(u128) -> bool,
    ) -> Option<u128> {
        let (Some(lo), Some(hi)) = (Self::key(from), Self::key(to)) else {
            return None;
        };
        if from > to {
            return None;
        }
        let mut taken = self.set.range(lo..=hi).map(|&k| -> u128 { k.into() });
        let mut next_taken = taken.next();
        let mut c = from;
        loop {
            if skip(c) || next_taken == Some(c) {
                if next_taken == Some(c) {
                    next_taken = taken.next();
                }
                if c == to {
                    return None;
                }
                c += 1;
            } else {
                return Some(c);
            }
        }
    }

    /// An estimate of the heap memory held, in bytes.
    ///
    /// `BTreeSet` does not expose its node count. Its leaves hold up to 11
    /// keys behind a parent pointer and two `u16`s, internal nodes add 12
    /// child pointers; random insertions leave nodes about 70 % full
    /// (8 keys per leaf), and there is about one internal node per 6
    /// leaves. The memory benchmark compares this estimate with the
    /// process's resident memory.
    pub(crate) fn heap_bytes(&self) -> usize {
        const CAPACITY: usize = 11;
        let n = self.set.len();
        if n == 0 {
            return 0;
        }
        let align = |x: usize| x.div_ceil(size_of::<K>().max(8)) * size_of::<K>().max(8);
        let leaf = align(8 + 4 + CAPACITY * size_of::<K>());
        let internal = leaf + (CAPACITY + 1) * size_of::<usize>();
        let leaves = n.div_ceil(8);
        let internals = leaves.div_ceil(6);
        leaves * leaf + internals * internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_contains() {
        let mut s = SparseSet::<u64>::new();
        assert!(s.insert(5));
        assert!(!s.insert(5));
        assert!(s.contains(5));
        assert!(!s.contains(u128::MAX));
        assert!(!s.insert(u128::MAX), "does not fit a u64");
        assert!(s.remove(5));
        assert!(!s.remove(5));
        assert_eq!(s.len(), 0);
        assert_eq!(s.heap_bytes(), 0);
        s.insert(1);
        assert!(s.heap_bytes() > 0);
        s.clear();
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn first_gap_skips_runs() {
        let mut s = SparseSet::<u128>::new();
        for i in 10..20 {
            s.insert(i);
        }
        assert_eq!(s.first_gap(0, 100, |_| false), Some(0));
        assert_eq!(s.first_gap(10, 100, |_| false), Some(20));
        assert_eq!(s.first_gap(10, 19, |_| false), None);
        assert_eq!(s.first_gap(10, 100, |c| c == 20 || c == 21), Some(22));
        assert_eq!(s.first_gap(15, 15, |_| false), None);
        assert_eq!(s.first_gap(20, 15, |_| false), None);
        s.insert(u128::MAX);
        assert_eq!(
            s.first_gap(u128::MAX - 1, u128::MAX, |_| false),
            Some(u128::MAX - 1)
        );
        assert_eq!(s.first_gap(u128::MAX, u128::MAX, |_| false), None);
        let v: Vec<u128> = s.iter().take(2).collect();
        assert_eq!(v, vec![10, 11]);
    }
}
