//! Where transactions go: the real `nft` binary, or an in-memory fake
//! that follows nft's rules closely enough to catch ordering mistakes and
//! dumps its state as sorted text for golden tests.
//!
//! ```text
//!  Transaction ──> Nft ── Script (memfd, complete) ──> nft -f -   (full syncs)
//!             │                                 └──> nft -i     (small ones, `include`)
//!             └──> FakeNft (tests)
//! ```

#[cfg(feature = "testing")]
mod fake;
mod nft;
mod script;
mod session;

#[cfg(feature = "testing")]
pub use fake::FakeNft;
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
