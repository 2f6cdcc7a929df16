//! Pools: the blocks of a service range or LoadBalancer pool, and the
//! allocation state over them.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::block::{Block, Family, from_num, to_num};
use crate::error::{AllocError, PoolError};
use crate::options::PoolOptions;
use crate::segment::{LOWER, MarkError, Segment, Slot, UPPER};

/// Address counts of one family of a pool.
///
/// `size == used + free + reserved` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Usage {
    /// Addresses the pool can hold: every address of its blocks except the
    /// network/broadcast addresses (with
    /// [`PoolOptions::reserve_network_broadcast`]) and `.0`/`.255` (with
    /// [`PoolOptions::avoid_buggy_ips`]). The `kubernetes.default` address
    /// counts. Saturates for `::/0`.
    pub size: u128,
    /// Allocated addresses, the held `kubernetes.default` address included.
    pub used: u128,
    /// Addresses that [`Pool::allocate`] can still return.
    pub free: u128,
    /// Reserved addresses that are not held (the `kubernetes.default`
    /// address until it is taken): neither used nor free.
    pub reserved: u128,
}

/// An address claimed by two owners during [`Pool::rebuild`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate<O> {
    /// The address.
    pub ip: IpAddr,
    /// The owner seen first, which keeps the address.
    pub holder: O,
    /// A later owner, which must get another address.
    pub claimant: O,
}

/// What [`Pool::rebuild`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport<O> {
    /// Addresses marked as allocated.
    pub adopted: usize,
    /// Addresses claimed by more than one owner, one entry per extra owner.
    /// A repeated `(owner, ip)` pair is not a duplicate.
    pub duplicates: Vec<Duplicate<O>>,
    /// Addresses in none of the pool's blocks.
    pub out_of_range: Vec<(O, IpAddr)>,
    /// Addresses inside a block that the pool never hands out: network,
    /// broadcast, or `.0`/`.255` with [`PoolOptions::avoid_buggy_ips`]. They
    /// are not marked. (The reserved first address is adopted silently.)
    pub unusable: Vec<(O, IpAddr)>,
}

impl<O> Default for RebuildReport<O> {
    fn default() -> Self {
        RebuildReport {
            adopted: 0,
            duplicates: Vec::new(),
            out_of_range: Vec::new(),
            unusable: Vec::new(),
        }
    }
}

impl<O> RebuildReport<O> {
    /// Whether every observed address was adopted without conflict.
    pub fn is_clean(&self) -> bool {
        self.duplicates.is_empty() && self.out_of_range.is_empty() && self.unusable.is_empty()
    }
}

/// An address pool: a set of disjoint blocks of one or both families, and
/// which of their addresses are allocated.
///
/// The pool records addresses only, not who holds them; callers keep owners
/// (Kubernetes objects) themselves and can rebuild the pool from them with
/// [`Pool::rebuild`].
///
/// Dynamic allocation ([`Pool::allocate`]) picks a block at random, weighted
/// by its free addresses, then a random offset in it, and takes the next
/// free address from there, as kube-apiserver does. The generator is seeded
/// from the OS unless [`Pool::with_seed`] or [`Pool::set_seed`] is used.
///
/// `PartialEq` compares blocks, options and allocation state, not the
/// random generator.
#[derive(Clone)]
pub struct Pool {
    /// As given to [`Pool::new`].
    blocks: Vec<Block>,
    opts: PoolOptions,
    /// Sorted by family (IPv4 first) and first address.
    segments: Vec<Segment>,
    rng: SmallRng,
}

impl PartialEq for Pool {
    fn eq(&self, other: &Pool) -> bool {
        self.blocks == other.blocks && self.opts == other.opts && self.segments == other.segments
    }
}

impl Eq for Pool {}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let blocks: Vec<String> = self.blocks.iter().map(Block::to_string).collect();
        let usage: Vec<(Family, Usage)> = self.families().map(|f| (f, self.usage(f))).collect();
        f.debug_struct("Pool")
            .field("blocks", &blocks)
            .field("options", &self.opts)
            .field("usage", &usage)
            .finish_non_exhaustive()
    }
}

fn entropy_rng() -> SmallRng {
    SmallRng::try_from_os_rng().unwrap_or_else(|_| {
        // No OS generator: fall back to the clock, which is enough to
        // spread allocations.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        SmallRng::seed_from_u64(nanos as u64 ^ u64::from(std::process::id()))
    })
}

impl Pool {
    /// A pool over the blocks, all addresses free.
    ///
    /// Fails with [`PoolError::NoBlocks`] when `blocks` is empty and with
    /// [`PoolError::Overlap`] when two blocks share an address.
    pub fn new(blocks: Vec<Block>, opts: PoolOptions) -> Result<Pool, PoolError> {
        if blocks.is_empty() {
            return Err(PoolError::NoBlocks);
        }
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        order.sort_by_key(|&i| (blocks[i].first(), i));
        for pair in order.windows(2) {
            let (i, j) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
            if blocks[i].overlaps(&blocks[j]) {
                return Err(PoolError::Overlap {
                    a: blocks[i],
                    b: blocks[j],
                });
            }
        }
        let segments = order
            .iter()
            .map(|&i| Segment::new(blocks[i], &opts))
            .collect();
        Ok(Pool {
            blocks,
            opts,
            segments,
            rng: entropy_rng(),
        })
    }

    /// A pool over blocks given in text (`10.96.0.0/12`, `fd00::/64`,
    /// `192.168.56.60-192.168.56.70`, `192.168.56.80`).
    pub fn parse<S: AsRef<str>>(specs: &[S], opts: PoolOptions) -> Result<Pool, PoolError> {
        let blocks = specs
            .iter()
            .map(|s| s.as_ref().parse::<Block>())
            .collect::<Result<Vec<_>, _>>()?;
        Pool::new(blocks, opts)
    }

    /// The same pool with its generator seeded, for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Pool {
        self.set_seed(seed);
        self
    }

    /// Seeds the generator, for reproducible tests.
    pub fn set_seed(&mut self, seed: u64) {
        self.rng = SmallRng::seed_from_u64(seed);
    }

    /// The blocks, in the order given.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The options the pool was built with.
    pub fn options(&self) -> PoolOptions {
        self.opts
    }

    /// The families the pool has blocks of, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        Family::ALL
            .into_iter()
            .filter(|&f| !self.family_range(f).is_empty())
    }

    /// The first block of the pool (in the order given) that shares an
    /// address with a block of `other`, with that block.
    pub fn overlaps(&self, other: &Pool) -> Option<(Block, Block)> {
        self.blocks.iter().find_map(|a| {
            other
                .blocks
                .iter()
                .find(|b| a.overlaps(b))
                .map(|b| (*a, *b))
        })
    }

    /// Indices of the segments of a family.
    fn family_range(&self, family: Family) -> Range<usize> {
        let start = self.segments.partition_point(|s| s.family < family);
        let end = self.segments.partition_point(|s| s.family <= family);
        start..end
    }

    /// The segment holding the address, and the address's offset in it.
    fn locate(&self, ip: IpAddr) -> Option<(usize, u128)> {
        let (family, n) = to_num(ip);
        let idx = self
            .segments
            .partition_point(|s| (s.family, s.base) <= (family, n))
            .checked_sub(1)?;
        let s = &self.segments[idx];
        (s.family == family && n - s.base <= s.span).then_some((idx, n - s.base))
    }

    /// Allocates a free address of the family, chosen at random (or the
    /// lowest, with [`PoolOptions::lowest_first`]): from the upper (dynamic)
    /// band first, from the static band when the upper band of every block
    /// is full.
    ///
    /// Fails with [`AllocError::NoSuchFamily`] when the pool has no block of
    /// the family and [`AllocError::Full`] when no address is free.
    pub fn allocate(&mut self, family: Family) -> Result<IpAddr, AllocError> {
        let range = self.family_range(family);
        if range.is_empty() {
            return Err(AllocError::NoSuchFamily { family });
        }
        for band in [UPPER, LOWER] {
            let segments = &mut self.segments[range.clone()];
            let idx = if self.opts.lowest_first {
                match segments.iter().position(|s| s.free(band) > 0) {
                    Some(i) => i,
                    None => continue,
                }
            } else if let [only] = segments {
                if only.free(band) == 0 {
                    continue;
                }
                0
            } else {
                let total: u128 = segments.iter().map(|s| s.free(band)).sum();
                if total == 0 {
                    continue;
                }
                // Weighted by free addresses, so every free address is about
                // as likely.
                let mut pick = self.rng.random_range(0..total);
                let mut idx = 0;
                for (i, s) in segments.iter().enumerate() {
                    if pick < s.free(band) {
                        idx = i;
                        break;
                    }
                    pick -= s.free(band);
                }
                idx
            };
            let seg = &mut segments[idx];
            let lowest = self.opts.lowest_first;
            if let Some(off) = seg.allocate(band, lowest, &mut self.rng) {
                return Ok(from_num(family, seg.base + off));
            }
        }
        Err(AllocError::Full { family })
    }

    /// Allocates the given address (a static request).
    ///
    /// Fails with [`AllocError::OutOfRange`] when no block holds it,
    /// [`AllocError::InUse`] when it is allocated, and
    /// [`AllocError::Reserved`] for a network, broadcast or `.0`/`.255`
    /// address, and for the `kubernetes.default` address (see
    /// [`Pool::allocate_reserved_ip`]).
    pub fn allocate_ip(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        self.mark(ip, false)
    }

    /// Like [`Pool::allocate_ip`], but also takes the reserved first address
    /// of a service range (for the `kubernetes.default` Service). Network,
    /// broadcast and `.0`/`.255` addresses are still refused.
    pub fn allocate_reserved_ip(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        self.mark(ip, true)
    }

    fn mark(&mut self, ip: IpAddr, allow_reserved: bool) -> Result<(), AllocError> {
        let (idx, off) = self.locate(ip).ok_or(AllocError::OutOfRange { ip })?;
        self.segments[idx]
            .mark(off, allow_reserved)
            .map_err(|e| match e {
                MarkError::InUse => AllocError::InUse { ip },
                MarkError::Reserved | MarkError::Excluded => AllocError::Reserved { ip },
            })
    }

    /// Frees an address; true when it was allocated.
    pub fn release(&mut self, ip: IpAddr) -> bool {
        match self.locate(ip) {
            Some((idx, off)) => self.segments[idx].unmark(off),
            None => false,
        }
    }

    /// Whether the address is allocated.
    pub fn is_allocated(&self, ip: IpAddr) -> bool {
        self.locate(ip)
            .is_some_and(|(idx, off)| self.segments[idx].is_marked(off))
    }

    /// Whether the address is inside one of the pool's blocks (allocatable
    /// or not).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.locate(ip).is_some()
    }

    /// Whether the address is inside the pool but never returned by
    /// [`Pool::allocate`]: network, broadcast, `.0`/`.255` or the reserved
    /// first address, whether held or not.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        self.locate(ip)
            .is_some_and(|(idx, off)| !matches!(self.segments[idx].slot(off), Slot::Normal(_)))
    }

    /// Address counts of a family (all zero when the pool has none).
    pub fn usage(&self, family: Family) -> Usage {
        let mut u = Usage::default();
        for s in &self.segments[self.family_range(family)] {
            let (size, used, reserved) = s.usage();
            u.size = u.size.saturating_add(size);
            u.used += used;
            u.reserved += reserved;
        }
        u.free = u.size - u.used - u.reserved;
        u
    }

    /// Forgets every allocation, then marks the addresses that existing
    /// objects hold (`(owner, address)` pairs, e.g. from Services).
    ///
    /// Never fails: conflicts are reported. When two owners claim one
    /// address, the first keeps it and the pair is reported in
    /// [`RebuildReport::duplicates`]. Addresses outside the pool go to
    /// [`RebuildReport::out_of_range`], network/broadcast/`.0`/`.255` ones to
    /// [`RebuildReport::unusable`]. The reserved first address is adopted
    /// like any other. Owners are only kept for the duration of the call.
    pub fn rebuild<O>(
        &mut self,
        observed: impl IntoIterator<Item = (O, IpAddr)>,
    ) -> RebuildReport<O>
    where
        O: Clone + Eq + fmt::Debug,
    {
        for s in &mut self.segments {
            s.clear();
        }
        let mut report = RebuildReport::default();
        let mut holders: HashMap<IpAddr, O> = HashMap::new();
        for (owner, ip) in observed {
            let Some((idx, off)) = self.locate(ip) else {
                report.out_of_range.push((owner, ip));
                continue;
            };
            match self.segments[idx].mark(off, true) {
                Ok(()) => {
                    holders.insert(ip, owner);
                    report.adopted += 1;
                }
                Err(MarkError::Excluded | MarkError::Reserved) => report.unusable.push((owner, ip)),
                Err(MarkError::InUse) => match holders.entry(ip) {
                    Entry::Occupied(e) if *e.get() == owner => {}
                    Entry::Occupied(e) => report.duplicates.push(Duplicate {
                        ip,
                        holder: e.get().clone(),
                        claimant: owner,
                    }),
                    // Marked but not by this rebuild: cannot happen after the
                    // clear above; adopt it.
                    Entry::Vacant(e) => {
                        e.insert(owner);
                    }
                },
            }
        }
        report
    }

    /// The allocated addresses, ascending (IPv4 first).
    pub fn allocated(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.segments.iter().flat_map(|s| {
            let (family, base) = (s.family, s.base);
            s.allocated().map(move |off| from_num(family, base + off))
        })
    }

    /// An estimate of the heap memory the pool holds, in bytes: bitmaps
    /// exactly, sparse sets estimated from their length (see the crate
    /// docs), plus the block lists.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.segments.capacity() * std::mem::size_of::<Segment>()
            + self.segments.iter().map(Segment::heap_bytes).sum::<usize>()
    }

    /// Whether the segment holding the address keeps a bitmap.
    #[cfg(test)]
    pub(crate) fn is_dense_at(&self, ip: IpAddr) -> Option<bool> {
        self.locate(ip)
            .map(|(idx, _)| self.segments[idx].is_dense())
    }
}

#[cfg(test)]
mod tests;
