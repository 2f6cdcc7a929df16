//! Portico's reconcilers.
//!
//! Each reconciler is an in-memory index fed with the objects it watches
//! (`reset` on a relist, `apply` on a change, `delete` on a removal). It
//! decides in memory and returns [`Write`]s; it never talks to the API
//! itself. A thin writer carries the writes out: [`ApiWriter`] with
//! server-side apply in a cluster, the local store writer in `portico local`.
//! The same reconciler code therefore runs in both places.
//!
//! ```text
//!  watch events / manifests ──> reconciler index ──> Vec<Write> ──> ApiWriter  (cluster, leader only)
//!     (reset/apply/delete)      (pure, in memory)               └─> local stores (portico local)
//! ```
//!
//! Reconcilers:
//! - [`clusterip`]: ClusterIP allocation from `--service-cluster-ip-range`
//!   (allocates in `portico local`, audits in a cluster).
//! - [`endpointslices`]: EndpointSlices that follow the pods each Service
//!   selects, with kube-controller-manager's semantics.
//! - [`lbipam`]: addresses for `type: LoadBalancer` Services from `IPPool`s.

#![forbid(unsafe_code)]

pub mod admission;
pub mod clusterip;
pub mod conditions;
pub mod driver;
pub mod endpointslices;
pub mod error;
pub mod k8s;
pub mod lbipam;
pub mod metrics;
pub mod network;
pub mod nodeport;
pub mod reconcilers;
pub mod watch;
pub mod write;

pub use error::{Error, Result};
pub use network::NetworkConfig;
pub use reconcilers::{Change, Reconcilers, Role};
pub use write::{
    ApiWriter, Apply, EventRecord, Object, Target, TargetKind, Write, Writer, Written,
    write_in_order,
};
