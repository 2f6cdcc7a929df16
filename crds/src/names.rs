//! Names Portico uses in the Kubernetes API.

/// API group of Portico's custom resources.
pub const API_GROUP: &str = "portico.dev";

/// Field manager for every server-side apply Portico sends.
pub const FIELD_MANAGER: &str = "portico";

/// Name under which Portico's controllers report Events (`reportingController`).
pub const EVENT_REPORTER: &str = "portico.dev/controller";

/// Name of the Lease the `portico controller` replicas elect a leader on.
pub const CONTROLLER_LEASE: &str = "portico-controller";

/// Service condition written where Portico allocates ClusterIPs (`portico local`):
/// `False` with a reason when a Service could not get the addresses it asked for.
pub const CONDITION_CLUSTER_IP_ALLOCATED: &str = "portico.dev/ClusterIPAllocated";

/// Namespace and name of the Service that owns the first address of the
/// service range, as in every Kubernetes cluster.
pub const KUBERNETES_SERVICE: (&str, &str) = ("default", "kubernetes");

/// Event reasons of the ClusterIP reconciler.
pub mod reasons {
    /// Two Services hold the same ClusterIP.
    pub const DUPLICATE_CLUSTER_IP: &str = "DuplicateClusterIP";
    /// A Service holds a ClusterIP outside every configured service range.
    pub const CLUSTER_IP_OUT_OF_RANGE: &str = "ClusterIPOutOfRange";
    /// A Service was given ClusterIPs (Portico is the allocator).
    pub const CLUSTER_IP_ALLOCATED: &str = "ClusterIPAllocated";
    /// A Service could not be given the ClusterIPs it needs.
    pub const CLUSTER_IP_NOT_ALLOCATED: &str = "ClusterIPNotAllocated";
}

/// `endpointslice.kubernetes.io/managed-by` value of the slices Portico manages.
pub const ENDPOINTSLICE_MANAGER: &str = "endpointslice.portico.dev";

/// Well-known labels Portico reads and writes.
pub mod labels {
    /// Names the Service an EndpointSlice belongs to.
    pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
    /// Names the controller that manages an EndpointSlice.
    pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
    /// Set (empty) on the EndpointSlices of headless Services.
    pub const HEADLESS: &str = "service.kubernetes.io/headless";
    /// A Node's zone.
    pub const ZONE: &str = "topology.kubernetes.io/zone";
}
