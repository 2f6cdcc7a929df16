//! Cluster DNS: a Hickory-based server that answers `cluster.local` from the
//! service catalog (A/AAAA, SRV, PTR, headless Services, ExternalName CNAMEs,
//! pod records) and forwards every other name upstream.
//!
//! ```text
//!  catalog ──> record index ──(immutable snapshot)──> UDP/TCP handler ──> answers
//!                                                          │
//!                                                          └──> upstream / stub domains
//! ```
//!
//! `portico dns` and `portico local` serve it. This crate is filled by the
//! cluster DNS issue.

#![forbid(unsafe_code)]
