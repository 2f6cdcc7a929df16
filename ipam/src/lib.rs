//! The address allocation engine of Portico: ClusterIP service ranges and
//! LoadBalancer IP pools, IPv4 and IPv6, and NodePort ranges ([`PortPool`]),
//! with no Kubernetes types.
//!
//! A [`Pool`] is made of disjoint [`Block`]s, each a CIDR
//! (`10.96.0.0/12`, `fd00::/64`), an inclusive range
//! (`192.168.56.60-192.168.56.70`) or a single address, of either family.
//! It hands out random free addresses ([`Pool::allocate`]), takes requested
//! ones ([`Pool::allocate_ip`]), frees them ([`Pool::release`]) and counts
//! them ([`Pool::usage`]). It records addresses, not owners: after a
//! restart, [`Pool::rebuild`] marks what existing objects hold and reports
//! conflicts (duplicates, addresses outside the pool) instead of failing.
//!
//! ```text
//!  Pool ── options: reserve network/broadcast, static band, reserve first, avoid .0/.255
//!   │
//!   ├─ Block 10.96.0.0/12 (2^20 addresses <= 2^24) ─────────── dense
//!   │     summary level 2:  [4 words]        bit = "word below is full"
//!   │     summary level 1:  [256 words]      bit = "word below is full"
//!   │     level 0 bits:     [16384 words]    bit = "address allocated"   (128 KiB)
//!   │
//!   │     offsets: 0    1    2 ...... 256  257 .................. 2^20-2  2^20-1
//!   │             net  k8s  |-static band-|  |------- dynamic band -------|  bcast
//!   │             excl resv  allocate_ip      allocate() takes these first;
//!   │                        only, unless     falls back to the static band
//!   │                        the dynamic      when every dynamic band of the
//!   │                        bands are full   family is full
//!   │
//!   └─ Block fd00::/64 (2^64 addresses > 2^24) ─────────────── sparse
//!         BTreeSet<u64> of allocated offsets: memory follows allocations
//! ```
//!
//! # Choices
//!
//! * **Randomness.** As in kube-apiserver: a random start offset, then the
//!   next free address, wrapping around within the band. With several
//!   blocks of a family, a block is chosen at random weighted by its free
//!   addresses. Seed the generator with [`Pool::with_seed`] in tests.
//!   LoadBalancer pools ([`PoolOptions::lb_pool`]) instead hand out the
//!   lowest free address, blocks in order, as MetalLB and Cilium do
//!   ([`PoolOptions::lowest_first`]).
//! * **Dense or sparse.** Blocks of at most [`DENSE_MAX_ADDRESSES`] (2^24)
//!   addresses keep a bitmap with summary levels, so searching from a random
//!   start skips full regions 64 words at a time and never degrades into a
//!   linear scan when the block is nearly full; a full /12 takes about
//!   130 KiB. Larger blocks keep an ordered set of offsets (`u64` when the
//!   block fits, `u128` otherwise): a few random probes, then the first gap
//!   after a random start.
//! * **Reserved addresses** ([`PoolOptions`]). Network and broadcast of IPv4
//!   CIDRs and the network address of IPv6 CIDRs (service ranges, like
//!   kube-apiserver), and `.0`/`.255` with
//!   [`avoid_buggy_ips`](PoolOptions::avoid_buggy_ips) (MetalLB), are never
//!   handed out, not even on request, and are not in [`Usage::size`]. The
//!   first address of a service-range CIDR (`kubernetes.default`) is in
//!   `size`, is never returned by [`Pool::allocate`], is refused by
//!   [`Pool::allocate_ip`] and taken by [`Pool::allocate_reserved_ip`] and
//!   [`Pool::rebuild`]. `size == used + free + reserved`.
//! * **Static band** (KEP-3070): the lowest
//!   [`static_band_size`]`(cidr size)` allocatable addresses of each CIDR.
//!   Ranges have neither a band nor reserved addresses, except `.0`/`.255`.
//! * **Memory estimate.** [`Pool::heap_bytes`] counts bitmaps exactly and
//!   estimates `BTreeSet`s at about 8 keys per 11-key node.
//!
//! # Example
//!
//! ```
//! use portico_ipam::{Family, Pool, PoolOptions};
//!
//! let mut pool = Pool::parse(&["10.96.0.0/12", "fd00:10:96::/108"], PoolOptions::service_range())?
//!     .with_seed(1);
//! let ip = pool.allocate(Family::V4)?;
//! assert!(pool.is_allocated(ip));
//! pool.allocate_reserved_ip("10.96.0.1".parse()?)?; // kubernetes.default
//! assert_eq!(pool.usage(Family::V4).used, 2);
//! assert!(pool.release(ip));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod bitmap;
mod block;
mod error;
mod options;
mod pool;
mod ports;
mod segment;
mod sparse;

pub use block::{Block, BlockError, Family, blocks_overlap};
pub use error::{AllocError, PoolError};
pub use options::PoolOptions;
pub use pool::{Duplicate, Pool, RebuildReport, Usage};
pub use ports::{PortError, PortPool, PortRange, PortRangeError};
pub use segment::{DENSE_MAX_ADDRESSES, static_band_size};
