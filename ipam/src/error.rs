//! Error types: parsing blocks, building pools, allocating addresses.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::block::{Block, Family};

/// Why a block specification such as `10.96.0.0/12` or
/// `192.168.56.60-192.168.56.70` was rejected.
///
/// Every variant carries the offending input, and the message says what is
/// wrong with it, e.g.
/// `invalid address range "192.168.56.70-192.168.56.60": start is after end`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The input was empty (or only whitespace).
    #[error("invalid address block {input:?}: it is empty")]
    Empty {
        /// The input as given.
        input: String,
    },
    /// The input is neither a CIDR, a range nor an address.
    #[error(
        "invalid address block {input:?}: expected a CIDR (10.96.0.0/12), \
         a range (192.168.56.60-192.168.56.70) or a single address"
    )]
    Unrecognized {
        /// The input as given.
        input: String,
    },
    /// The address part of a CIDR is not an IP address.
    #[error("invalid CIDR {input:?}: {part:?} is not an IP address")]
    CidrAddress {
        /// The input as given.
        input: String,
        /// The part before the `/`.
        part: String,
    },
    /// The prefix length of a CIDR is not a number or is too long for the
    /// address family.
    #[error("invalid CIDR {input:?}: prefix length {part:?} is not a number from 0 to {max}")]
    CidrPrefix {
        /// The input as given.
        input: String,
        /// The part after the `/`.
        part: String,
        /// The longest prefix of the address family (32 or 128).
        max: u8,
    },
    /// A CIDR has bits set beyond its prefix, e.g. `10.96.0.1/12`.
    #[error("invalid CIDR {input:?}: host bits are set, did you mean \"{suggestion}\"?")]
    HostBitsSet {
        /// The input as given.
        input: String,
        /// The same prefix with the host bits cleared.
        suggestion: IpNet,
    },
    /// One end of a range is not an IP address.
    #[error("invalid address range {input:?}: {part:?} is not an IP address")]
    RangeAddress {
        /// The input as given.
        input: String,
        /// The end that did not parse.
        part: String,
    },
    /// The ends of a range are of different families.
    #[error(
        "invalid address range {input:?}: start {start} is {} but end {end} is {}",
        Family::of(*start),
        Family::of(*end)
    )]
    MixedFamilies {
        /// The input as given.
        input: String,
        /// The first address.
        start: IpAddr,
        /// The last address.
        end: IpAddr,
    },
    /// The start of a range is after its end.
    #[error("invalid address range {input:?}: start is after end")]
    StartAfterEnd {
        /// The input as given.
        input: String,
    },
}

/// Why a [`Pool`](crate::Pool) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// A block specification did not parse.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// Two blocks of the pool share at least one address.
    #[error("address blocks {a} and {b} overlap")]
    Overlap {
        /// The block listed first.
        a: Block,
        /// The block listed later.
        b: Block,
    },
    /// The pool has no block at all.
    #[error("an address pool needs at least one address block")]
    NoBlocks,
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AllocError {
    /// Every allocatable address of the family is in use.
    #[error("no free {family} address left in the pool")]
    Full {
        /// The family asked for.
        family: Family,
    },
    /// The pool has no block of the family.
    #[error("the pool has no {family} addresses")]
    NoSuchFamily {
        /// The family asked for.
        family: Family,
    },
    /// The address is in none of the pool's blocks.
    #[error("{ip} is not in the pool")]
    OutOfRange {
        /// The address asked for.
        ip: IpAddr,
    },
    /// The address is already allocated.
    #[error("{ip} is already allocated")]
    InUse {
        /// The address asked for.
        ip: IpAddr,
    },
    /// The address is reserved: a network, broadcast or `.0`/`.255` address
    /// that the pool never hands out, or the first address of a service
    /// range, which only [`Pool::allocate_reserved_ip`](crate::Pool::allocate_reserved_ip) takes.
    #[error("{ip} is reserved")]
    Reserved {
        /// The address asked for.
        ip: IpAddr,
    },
}
