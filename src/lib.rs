//! `portico`: Kubernetes service networking in one binary.
//!
//! ```text
//!  portico controller   reconcilers against the Kubernetes API (leader-elected)
//!  portico dns          cluster DNS (cluster.local), forwarding the rest
//!  portico node         the node dataplane: nftables NAT for Services (kube-proxy's job)
//!  portico local        the whole suite on one machine, from manifest files
//!  portico crds         prints Portico's CustomResourceDefinitions
//! ```
//!
//! Every subcommand's flags have an environment variable (`PORTICO_*`);
//! `portico <command> --help` documents them.

#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod dns;
pub mod explain;
pub mod http;
pub mod local;
pub mod node;
pub mod telemetry;
pub mod webhook;
