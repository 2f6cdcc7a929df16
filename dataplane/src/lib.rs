//! The node dataplane: programs nftables NAT so that ClusterIP, NodePort
//! and LoadBalancer traffic reaches endpoints (the job of kube-proxy).
//! `README.md` in this crate is the design document.
//!
//! ```text
//!  catalog (Services + endpoints) ── Changes ──┐
//!                                              v
//!   render (pure) ──> Model (installed state) ──> Transaction ──> Backend: nft -f - | MemoryNft
//!                                  └─ stale UDP flows ──> Conntrack
//!
//!  packet: services ──vmap @service-ips──> pick-N ──dnat to @service-backends-* : @service-ports-*──> endpoint
//! ```
//!
//! `portico node` runs it on every node; `portico local --dataplane` runs
//! it for one node of a set of manifests; `portico explain` renders the same
//! rules into the in-memory nftables (`MemoryNft`) and traces a packet
//! through them (`trace`). The feature `testing` adds failure injection to
//! the in-memory nftables.

#![forbid(unsafe_code)]

pub mod backend;
pub mod conntrack;
mod error;
pub mod l2;
pub mod metrics;
pub mod model;
pub mod names;
pub mod proxier;
pub mod render;
pub mod schedule;
pub mod trace;
pub mod tx;

pub use backend::{Backend, BackendKind, Kernel, MemoryNft, Nft, RulesView};
pub use conntrack::{Conntrack, ConntrackTool, RecordingConntrack};
pub use error::{Error, Result};
pub use metrics::DataplaneMetrics;
pub use proxier::{Proxier, SyncKind, SyncReport, can_program_nftables};
pub use render::{Config, local_endpoint_count};
pub use schedule::SyncSchedule;
pub use tx::Transaction;
