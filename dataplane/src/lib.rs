//! The node dataplane: programs nftables NAT so that ClusterIP, NodePort and
//! LoadBalancer traffic reaches endpoints (the job of kube-proxy), and
//! announces LoadBalancer addresses on the LAN (ARP/NDP).
//!
//! ```text
//!  catalog ──> rule renderer (pure) ──> one nft transaction per sync ──> kernel
//!              service-ips vmap ──> per-service chain ──> per-endpoint DNAT
//! ```
//!
//! `portico node` runs it on every node. This crate is filled by the node
//! dataplane and L2 announcement issues.

#![forbid(unsafe_code)]
