//! Where transactions go: the real `nft` binary, or an in-memory nft
//! that follows nft's rules closely enough to catch ordering mistakes,
//! dumps its state as sorted text for golden tests, and holds the rules
//! `portico explain` traces a packet through.
//!
//! ```text
//!  Transaction ──> Nft ── Script (memfd, complete) ──> nft -f -   (full syncs)
//!             │                                 └──> nft -i     (small ones, `include`)
//!             ├──> Netlink ── one batch of nf_tables messages ──> the kernel (no program)
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

    /// What the kernel holds, read back (every chain's rules, every set's
    /// elements), for the backends that can: `None` for the others.
    fn read(&mut self) -> Option<Result<RulesView>> {
        None
    }
}

/// The kernel's nftables, through the backend `--dataplane-backend`
/// chose: the `nft` program, or netlink.
#[derive(Debug)]
pub enum Kernel {
    /// `nft -f`.
    Nft(Nft),
    /// nf_tables messages on a netlink socket.
    Netlink(netlink::Netlink),
}

/// The name of a backend (`--dataplane-backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// The `nft` program.
    #[default]
    Nft,
    /// Netlink.
    Netlink,
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nft" => Ok(BackendKind::Nft),
            "netlink" => Ok(BackendKind::Netlink),
            other => Err(format!("no dataplane backend {other:?} (nft or netlink)")),
        }
    }
}

impl Kernel {
    /// Removes Portico's tables, if they are there (one transaction: each
    /// table added, then deleted).
    pub fn cleanup(&mut self) -> Result<()> {
        let mut tx = Transaction::new();
        for family in Family::ALL {
            tx.add_table(family);
            tx.delete_table(family);
        }
        self.apply(&tx)
    }

    /// The backend `kind`, in the current network namespace.
    pub fn open(kind: BackendKind) -> Result<Kernel> {
        Ok(match kind {
            BackendKind::Nft => Kernel::Nft(Nft::new()),
            BackendKind::Netlink => Kernel::Netlink(netlink::Netlink::new()?),
        })
    }
}

impl Backend for Kernel {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        match self {
            Kernel::Nft(b) => b.apply(tx),
            Kernel::Netlink(b) => b.apply(tx),
        }
    }

    fn list(&mut self, family: Family) -> Result<Existing> {
        match self {
            Kernel::Nft(b) => b.list(family),
            Kernel::Netlink(b) => b.list(family),
        }
    }

    fn read(&mut self) -> Option<Result<RulesView>> {
        match self {
            // The kernel is the same, whoever wrote to it: read it over
            // netlink when nft runs in this process's namespace.
            Kernel::Nft(b) if b.netns().is_none() => {
                Some(netlink::Netlink::new().and_then(|mut nl| nl.read()))
            }
            Kernel::Nft(_) => None,
            Kernel::Netlink(b) => Some(b.read()),
        }
    }
}
