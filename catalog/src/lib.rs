//! The service catalog: Services and EndpointSlices turned into one
//! normalised model that the DNS server and the node dataplane share.
//!
//! ```text
//!  Services ────────┐
//!                   ├──> catalog (per Service: addresses, ports, endpoints
//!  EndpointSlices ──┘     with ready/serving/terminating, hostnames, nodes)
//!                              │                    │
//!                              v                    v
//!                         dns (records)      dataplane (NAT rules)
//! ```
//!
//! Both consumers read the same model so that what DNS answers and what the
//! dataplane forwards to can never disagree. The model is filled by the
//! DNS and dataplane issues; this crate depends on nothing of Portico's.

#![forbid(unsafe_code)]
