//! The allocation state of one block: which offsets are reserved, the
//! static/dynamic band split, per-band counters and the dense or sparse
//! store of allocated offsets.

use rand::Rng;

use crate::bitmap::Bitmap;
use crate::block::{Block, Family, to_num};
use crate::options::PoolOptions;
use crate::sparse::{Offset, SparseSet};

/// Blocks with at most this many addresses get a bitmap (2 MiB at most);
/// larger ones get a sparse set.
pub const DENSE_MAX_ADDRESSES: u128 = 1 << 24;

/// Random offsets tried in a sparse block before searching for a gap.
const SPARSE_PROBES: usize = 8;

/// Index of the lower (static) band in per-band arrays.
pub(crate) const LOWER: usize = 0;
/// Index of the upper (dynamic) band in per-band arrays.
pub(crate) const UPPER: usize = 1;

/// The size of the static band of a CIDR of `cidr_size` addresses
/// (network and broadcast included), as KEP-3070 and kube-apiserver compute
/// it: `min(max(16, size / 16), 256)`, and 0 when `size <= 16`.
///
/// The band is made of the lowest allocatable addresses of the CIDR
/// (starting right after the network address when that is reserved).
pub fn static_band_size(cidr_size: u128) -> u128 {
    if cidr_size <= 16 {
        0
    } else {
        (cidr_size / 16).clamp(16, 256)
    }
}

/// What an offset of a block is to the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Never allocatable: network, broadcast, `.0`/`.255` with `avoid_buggy_ips`.
    Excluded,
    /// The first address of a service range: only taken when asked for
    /// explicitly.
    Reserved,
    /// An ordinary address, in band `LOWER` or `UPPER`.
    Normal(usize),
}

/// Why an offset could not be marked as allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkError {
    Excluded,
    Reserved,
    InUse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Store {
    Dense(Bitmap),
    Sparse64(SparseSet<u64>),
    Sparse128(SparseSet<u128>),
}

/// The allocation state of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) block: Block,
    pub(crate) family: Family,
    /// The first address of the block as a number; offsets are relative to it.
    pub(crate) base: u128,
    /// The highest offset.
    pub(crate) span: u128,
    /// Offsets `lo..=hi` left after network and broadcast are taken out.
    usable: Option<(u128, u128)>,
    avoid_buggy: bool,
    reserved: Option<u128>,
    reserved_held: bool,
    /// First offset of the upper band (`lo` when there is no static band).
    split: u128,
    /// Dynamically allocatable addresses per band (reserved excluded).
    cap: [u128; 2],
    /// Allocated addresses per band (the reserved address is not counted).
    used: [u128; 2],
    store: Store,
}

/// Whether `addr` ends in `.0` or `.255`.
fn is_buggy(addr: u128) -> bool {
    matches!(addr & 0xff, 0 | 0xff)
}

/// How many numbers in `0..=n` are `r` modulo 256.
fn count_mod(n: u128, r: u128) -> u128 {
    if n < r { 0 } else { (n - r) / 256 + 1 }
}

/// Whether a dynamic allocation must pass over this offset (besides the
/// offsets already in the store).
fn skipped(avoid_buggy: bool, base: u128, reserved: Option<u128>, off: u128) -> bool {
    reserved == Some(off) || (avoid_buggy && is_buggy(base + off))
}

impl Segment {
    /// The empty state of a block under the pool's options.
    pub(crate) fn new(block: Block, opts: &PoolOptions) -> Segment {
        let (family, base) = to_num(block.first());
        let span = block.span();
        let is_cidr = block.cidr().is_some();
        let usable = if is_cidr && opts.reserve_network_broadcast {
            match family {
                // Network and broadcast; a /31 or /32 has nothing left, as in
                // kube-apiserver.
                Family::V4 => (span >= 2).then(|| (1, span - 1)),
                // The subnet-router anycast address.
                Family::V6 => (span >= 1).then_some((1, span)),
            }
        } else {
            Some((0, span))
        };
        let mut seg = Segment {
            block,
            family,
            base,
            span,
            usable,
            avoid_buggy: opts.avoid_buggy_ips && family == Family::V4,
            reserved: None,
            reserved_held: false,
            split: 0,
            cap: [0, 0],
            used: [0, 0],
            store: Store::Sparse128(SparseSet::new()),
        };
        if is_cidr && opts.reserve_first && span >= 1 && matches!(seg.slot(1), Slot::Normal(_)) {
            seg.reserved = Some(1);
        }
        if let Some((lo, hi)) = usable {
            let band = if is_cidr && opts.static_band {
                static_band_size(block.len())
            } else {
                0
            };
            seg.split = lo.saturating_add(band);
            if seg.split > lo {
                seg.cap[LOWER] = seg.count_normal(lo, (seg.split - 1).min(hi));
            }
            if seg.split <= hi {
                seg.cap[UPPER] = seg.count_normal(seg.split, hi);
            }
        }
        seg.store = if span < DENSE_MAX_ADDRESSES {
            Store::Dense(seg.fresh_bitmap())
        } else if span <= u128::from(u64::MAX) {
            Store::Sparse64(SparseSet::new())
        } else {
            Store::Sparse128(SparseSet::new())
        };
        seg
    }

    /// A bitmap with every non-`Normal` offset set, so that searches pass
    /// over them.
    fn fresh_bitmap(&self) -> Bitmap {
        let len = self.span as usize + 1;
        let mut bm = Bitmap::new(len);
        match self.usable {
            None => (0..len).for_each(|i| {
                bm.set(i);
            }),
            Some((lo, hi)) => {
                (0..lo as usize).for_each(|i| {
                    bm.set(i);
                });
                (hi as usize + 1..len).for_each(|i| {
                    bm.set(i);
                });
            }
        }
        if let Some(r) = self.reserved {
            bm.set(r as usize);
        }
        if self.avoid_buggy {
            for r in [0u128, 255] {
                let first = (r + 256 - (self.base & 0xff)) % 256;
                (first as usize..len).step_by(256).for_each(|i| {
                    bm.set(i);
                });
            }
        }
        bm
    }

    /// The number of `Normal` offsets in `x..=y` (`lo <= x <= y <= hi`).
    fn count_normal(&self, x: u128, y: u128) -> u128 {
        let mut n = (y - x).saturating_add(1);
        if self.avoid_buggy {
            let (ax, ay) = (self.base + x, self.base + y);
            for r in [0, 255] {
                let below = if ax == 0 { 0 } else { count_mod(ax - 1, r) };
                n -= count_mod(ay, r) - below;
            }
        }
        if self.reserved.is_some_and(|r| x <= r && r <= y) {
            n -= 1;
        }
        n
    }

    /// What the offset is to the allocator.
    pub(crate) fn slot(&self, off: u128) -> Slot {
        match self.usable {
            Some((lo, hi)) if lo <= off && off <= hi => {}
            _ => return Slot::Excluded,
        }
        if self.avoid_buggy && is_buggy(self.base + off) {
            Slot::Excluded
        } else if self.reserved == Some(off) {
            Slot::Reserved
        } else if off < self.split {
            Slot::Normal(LOWER)
        } else {
            Slot::Normal(UPPER)
        }
    }

    fn store_insert(&mut self, off: u128) -> bool {
        match &mut self.store {
            Store::Dense(bm) => bm.set(off as usize),
            Store::Sparse64(s) => s.insert(off),
            Store::Sparse128(s) => s.insert(off),
        }
    }

    fn store_remove(&mut self, off: u128) -> bool {
        match &mut self.store {
            Store::Dense(bm) => bm.clear(off as usize),
            Store::Sparse64(s) => s.remove(off),
            Store::Sparse128(s) => s.remove(off),
        }
    }

    fn store_contains(&self, off: u128) -> bool {
        match &self.store {
            Store::Dense(bm) => bm.get(off as usize),
            Store::Sparse64(s) => s.contains(off),
            Store::Sparse128(s) => s.contains(off),
        }
    }

    /// Marks the offset as allocated.
    pub(crate) fn mark(&mut self, off: u128, allow_reserved: bool) -> Result<(), MarkError> {
        match self.slot(off) {
            Slot::Excluded => Err(MarkError::Excluded),
            Slot::Reserved if self.reserved_held => Err(MarkError::InUse),
            Slot::Reserved if !allow_reserved => Err(MarkError::Reserved),
            Slot::Reserved => {
                self.reserved_held = true;
                // Dense stores have the bit set already; sparse ones keep it
                // so that iteration is a plain walk of the set.
                if !matches!(self.store, Store::Dense(_)) {
                    self.store_insert(off);
                }
                Ok(())
            }
            Slot::Normal(band) => {
                if self.store_insert(off) {
                    self.used[band] += 1;
                    Ok(())
                } else {
                    Err(MarkError::InUse)
                }
            }
        }
    }

    /// Marks the offset as free; false when it was not allocated.
    pub(crate) fn unmark(&mut self, off: u128) -> bool {
        match self.slot(off) {
            Slot::Excluded => false,
            Slot::Reserved => {
                let held = std::mem::replace(&mut self.reserved_held, false);
                if held && !matches!(self.store, Store::Dense(_)) {
                    self.store_remove(off);
                }
                held
            }
            Slot::Normal(band) => {
                let removed = self.store_remove(off);
                if removed {
                    self.used[band] -= 1;
                }
                removed
            }
        }
    }

    /// Whether the offset is allocated.
    pub(crate) fn is_marked(&self, off: u128) -> bool {
        match self.slot(off) {
            Slot::Excluded => false,
            Slot::Reserved => self.reserved_held,
            Slot::Normal(_) => self.store_contains(off),
        }
    }

    /// Free addresses left for dynamic allocation in a band.
    pub(crate) fn free(&self, band: usize) -> u128 {
        self.cap[band] - self.used[band]
    }

    /// Allocates a free offset of a band: the lowest, or a random one (random
    /// start, then the next free offset, wrapping around within the band).
    pub(crate) fn allocate<R: Rng + ?Sized>(
        &mut self,
        band: usize,
        lowest: bool,
        rng: &mut R,
    ) -> Option<u128> {
        if self.free(band) == 0 {
            return None;
        }
        let (lo, hi) = self.usable?;
        let (a, b) = if band == LOWER {
            (lo, self.split.checked_sub(1)?.min(hi))
        } else {
            (self.split, hi)
        };
        let (avoid_buggy, base, reserved) = (self.avoid_buggy, self.base, self.reserved);
        let skip = move |off| skipped(avoid_buggy, base, reserved, off);
        let off = match &mut self.store {
            Store::Dense(bm) => {
                let (a, b) = (a as usize, b as usize);
                let start = if lowest { a } else { rng.random_range(a..=b) };
                let i = bm
                    .next_clear(start)
                    .filter(|&i| i <= b)
                    .or_else(|| bm.next_clear(a).filter(|&i| i < start))?;
                if !bm.set(i) {
                    return None;
                }
                i as u128
            }
            Store::Sparse64(s) if lowest => sparse_lowest(s, a, b, skip)?,
            Store::Sparse128(s) if lowest => sparse_lowest(s, a, b, skip)?,
            Store::Sparse64(s) => sparse_take(s, a, b, rng, skip)?,
            Store::Sparse128(s) => sparse_take(s, a, b, rng, skip)?,
        };
        debug_assert!(matches!(self.slot(off), Slot::Normal(x) if x == band));
        self.used[band] += 1;
        Some(off)
    }

    /// Forgets every allocation.
    pub(crate) fn clear(&mut self) {
        self.used = [0, 0];
        self.reserved_held = false;
        if matches!(self.store, Store::Dense(_)) {
            self.store = Store::Dense(self.fresh_bitmap());
        }
        match &mut self.store {
            Store::Dense(_) => {}
            Store::Sparse64(s) => s.clear(),
            Store::Sparse128(s) => s.clear(),
        }
    }

    /// The allocated offsets, ascending.
    pub(crate) fn allocated(&self) -> Box<dyn Iterator<Item = u128> + '_> {
        match &self.store {
            Store::Dense(bm) => {
                Box::new(
                    bm.ones()
                        .map(|i| i as u128)
                        .filter(|&off| match self.slot(off) {
                            Slot::Normal(_) => true,
                            Slot::Reserved => self.reserved_held,
                            Slot::Excluded => false,
                        }),
                )
            }
            Store::Sparse64(s) => Box::new(s.iter()),
            Store::Sparse128(s) => Box::new(s.iter()),
        }
    }

    /// `(size, used, reserved and not held)` of the block.
    pub(crate) fn usage(&self) -> (u128, u128, u128) {
        let has_reserved = u128::from(self.reserved.is_some());
        let held = u128::from(self.reserved_held);
        (
            self.cap[LOWER] + self.cap[UPPER] + has_reserved,
            self.used[LOWER] + self.used[UPPER] + held,
            has_reserved - held,
        )
    }

    /// Whether the block keeps a bitmap (rather than a sparse set).
    #[cfg(test)]
    pub(crate) fn is_dense(&self) -> bool {
        matches!(self.store, Store::Dense(_))
    }

    /// Heap memory held by the store, in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.store {
            Store::Dense(bm) => bm.heap_bytes(),
            Store::Sparse64(s) => s.heap_bytes(),
            Store::Sparse128(s) => s.heap_bytes(),
        }
    }
}

/// Takes (inserts and returns) the lowest free offset of `a..=b` in a sparse set.
fn sparse_lowest<K: Offset>(
    set: &mut SparseSet<K>,
    a: u128,
    b: u128,
    skip: impl Fn(u128) -> bool,
) -> Option<u128> {
    let c = set.first_gap(a, b, &skip)?;
    set.insert(c).then_some(c)
}

/// Takes (inserts and returns) a random free offset of `a..=b` in a sparse
/// set: a few random probes (almost always enough in a huge block; the
/// insertion is the probe), then the first gap after a random start,
/// wrapping around.
fn sparse_take<K: Offset, R: Rng + ?Sized>(
    set: &mut SparseSet<K>,
    a: u128,
    b: u128,
    rng: &mut R,
    skip: impl Fn(u128) -> bool,
) -> Option<u128> {
    for _ in 0..SPARSE_PROBES {
        let c = rng.random_range(a..=b);
        if !skip(c) && set.insert(c) {
            return Some(c);
        }
    }
    let start = rng.random_range(a..=b);
    let c = set.first_gap(start, b, &skip).or_else(|| {
        start
            .checked_sub(1)
            .filter(|_| start > a)
            .and_then(|end| set.first_gap(a, end, &skip))
    })?;
    set.insert(c).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_size_formula() {
        assert_eq!(static_band_size(8), 0);
        assert_eq!(static_band_size(16), 0);
        assert_eq!(static_band_size(17), 16);
        assert_eq!(static_band_size(256), 16);
        assert_eq!(static_band_size(4096), 256);
        assert_eq!(static_band_size(1 << 20), 256);
        // fd00:10:96::/108 has 2^20 addresses too.
        assert_eq!(static_band_size(1 << (128 - 108)), 256);
        assert_eq!(static_band_size(1 << 64), 256);
        assert_eq!(static_band_size(512), 32);
    }

    #[test]
    fn sparse_take_finds_the_last_gaps() {
        use rand::SeedableRng;
        // Many seeds, so that random starts fall before, between and after
        // the gaps (exercising the wrap-around).
        for seed in 0..64 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut set = SparseSet::<u64>::new();
            for i in 100..=1099 {
                if i != 150 && i != 1000 && i != 1001 {
                    set.insert(i);
                }
            }
            // 1001 is skipped (e.g. reserved): only 150 and 1000 can come out.
            let skip = |c| c == 1001;
            let mut got = [
                sparse_take(&mut set, 100, 1099, &mut rng, skip),
                sparse_take(&mut set, 100, 1099, &mut rng, skip),
            ];
            got.sort();
            assert_eq!(got, [Some(150), Some(1000)]);
            assert_eq!(sparse_take(&mut set, 100, 1099, &mut rng, skip), None);
            assert!(!set.contains(1001));
        }
    }

    #[test]
    fn count_mod_works() {
        assert_eq!(count_mod(0, 0), 1);
        assert_eq!(count_mod(255, 255), 1);
        assert_eq!(count_mod(254, 255), 0);
        assert_eq!(count_mod(511, 0), 2);
        assert_eq!(count_mod(511, 255), 2);
    }
}
