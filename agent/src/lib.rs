//! Portico's node agent: what runs on every node, in `portico node` and in
//! `portico local --dataplane`.
//!
//! ```text
//!  changes (watch events or manifests) ──> NodeAgent ──sync──> nftables (dataplane crate)
//!                                             │ └──announce──> ARP/NDP responders (l2)
//!  gossip (SWIM over UDP) ──live agents──────>┘        └──> writes (statuses, Events, annotations)
//!  health: /healthz liveness, healthCheckNodePort servers
//! ```
//!
//! [`NodeAgent`] does no network IO of its own beyond the dataplane backend
//! and the responders it is given; the drivers in the binary feed it,
//! carry its writes out and serve its health checks.

#![forbid(unsafe_code)]

mod agent;
pub mod config;
pub mod gossip;
pub mod health;
pub mod l2;

pub use agent::{Announced, Change, Metrics, NodeAgent, NodeRules, Pacing};
pub use config::{Settings, dataplane_config, primary_addresses};
