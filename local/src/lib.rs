//! `portico local`'s world: manifests loaded into in-memory stores that
//! play the API server, and the reconcilers run over them to a fixpoint.
//!
//! ```text
//!  manifests ──load──> World (reflector stores) ──Reconcilers──> writes ──┐
//!                          ^                                             │
//!                          └──────────── World (a Writer) <──────────────┘
//!                 repeated until no reconciler writes (a fixpoint)
//! ```
//!
//! The reconcilers are the very ones `portico controller` drives
//! (`portico_controllers::Reconcilers`); here Portico is the allocator, so
//! ClusterIPs and node ports are assigned rather than audited.

#![forbid(unsafe_code)]

pub mod load;
pub mod print;
mod reconcile;
pub mod stored;
pub mod world;

pub use reconcile::{MAX_ROUNDS, catalog, l2_statuses, reconcile, reconcile_once};
pub use world::World;
