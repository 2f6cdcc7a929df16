//! Portico's identity in the Kubernetes API.
//!
//! Every string by which Portico is known to the API server lives here: the
//! API group of its custom resources, the field manager it writes with, the
//! condition types, annotations and labels it reads and writes, and the Lease
//! its controllers elect a leader on. Other crates import these constants
//! instead of spelling the strings again.
//!
//! The custom resource types themselves (IP pools and friends) are added to
//! this crate with the features that need them; `portico crds` prints every
//! CRD this crate defines.
//!
//! ```text
//!   crds (names, CRD types) <── controllers, dns, dataplane, portico binary
//! ```

#![forbid(unsafe_code)]

pub mod names;

/// Every CustomResourceDefinition that Portico installs, as YAML documents in
/// a stable order (what `portico crds` prints and `make crds` writes to
/// `crds/`).
///
/// Empty until the first custom resource type lands; the generation and drift
/// check run over whatever this returns.
pub fn all() -> Vec<(&'static str, String)> {
    Vec::new()
}
