//! Error types of pools: building them, allocating addresses (a block's
//! own is `BlockError`, beside the parser).

use std::net::IpAddr;

use crate::block::{Block, BlockError, Family};

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
