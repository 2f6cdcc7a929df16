//! Where transactions go: the real `nft` binary, or an in-memory nft
//! that follows nft's rules closely enough to catch ordering mistakes,
//! dumps its state as sorted text for golden tests, and holds the rules
//! `portico explain` traces a packet through.
//!
//! ```text
//!  Transaction ──> Nft ── Script (memfd, complete) ──> nft -f -   (full syncs)
//!             │                                 └──> nft -i     (small ones, `include`)
//!             └──> MemoryNft (tests, `portico explain`)
//! ```

mod memory;
pub mod netlink;
mod nft;
mod script;
mod session;

pub use memory::{ChainView, MemoryNft, RulesView, SetView, TableView};
pub use nft::{Nft, parse_listing};

use crate::Result;
use crate::model::Existing;
use crate::names::Family;
use crate::tx::Transaction;

/// Something that applies transactions atomically.
pub trait Backend {
    /// Applies a transaction: all of it, or nothing.
    fn apply(&mut self, tx: &Transaction) -> Result<()>;
    /// The chains and sets of Portico's table in a family (nothing when
    /// the table does not exist).
    fn list(&mut self, family: Family) -> Result<Existing>;
}
