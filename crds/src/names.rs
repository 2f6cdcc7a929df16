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

/// Service condition written where Portico allocates NodePorts (`portico
/// local`): `False` with a reason when a Service could not get the node
/// ports it asked for (or needs).
pub const CONDITION_NODE_PORT_ALLOCATED: &str = "portico.dev/NodePortAllocated";

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
    /// A Service holds ClusterIPs Portico did not hand out, now adopted.
    pub const CLUSTER_IP_ADOPTED: &str = "ClusterIPAdopted";
    /// A Service was given node ports (Portico is the allocator).
    pub const NODE_PORT_ALLOCATED: &str = "NodePortAllocated";
    /// A Service asked for a node port another Service holds.
    pub const DUPLICATE_NODE_PORT: &str = "DuplicateNodePort";
    /// A Service asked for a node port outside `--service-node-port-range`.
    pub const NODE_PORT_OUT_OF_RANGE: &str = "NodePortOutOfRange";
    /// A Service could not be given the node ports it needs.
    pub const NODE_PORT_NOT_ALLOCATED: &str = "NodePortNotAllocated";
}

/// `endpointslice.kubernetes.io/managed-by` value of the slices Portico manages.
pub const ENDPOINTSLICE_MANAGER: &str = "endpointslice.portico.dev";

/// Labels of Portico's own (the Kubernetes well-known labels Portico
/// reads and writes are `portico_catalog::labels`).
pub mod labels {
    /// `"true"` on the controller pod that leads and answers the ClusterIP
    /// webhook; the webhook Service selects it, so admissions reach the
    /// leader only.
    pub const WEBHOOK_LEADER: &str = "portico.dev/webhook-leader";
}

/// `spec.loadBalancerClass` of the Services Portico's LoadBalancer IPAM
/// serves (and Services without a class, when Portico is the default).
pub const LOAD_BALANCER_CLASS: &str = "portico.dev/lb";

/// Service condition written by LoadBalancer IPAM: `True` with the pool's
/// name, or `False` with why the Service has no address.
pub const CONDITION_IP_ALLOCATED: &str = "portico.dev/IPAllocated";

/// Annotations Portico reads and writes.
pub mod annotations {
    /// Requested LoadBalancer addresses, comma-separated, at most one per family.
    pub const LOAD_BALANCER_IPS: &str = "portico.dev/load-balancer-ips";
    /// The IPPool a Service wants its address from.
    pub const IP_POOL: &str = "portico.dev/ip-pool";
    /// Services of one namespace with the same key may share an address.
    pub const SHARING_KEY: &str = "portico.dev/sharing-key";
    /// Written by the node agent that announces a Service's LoadBalancer
    /// addresses on layer 2: `<node>` (or `<address>=<node>,…` when the
    /// Service's addresses are announced by different nodes).
    pub const ANNOUNCED_BY: &str = "portico.dev/announced-by";
    /// Where Portico is the allocator (`portico local`): the ClusterIPs a
    /// Service asked for and was refused, comma-separated. The refused
    /// addresses leave `spec.clusterIPs` (the Service holds none), and this
    /// keeps the request, so that it is asked again after a restart and
    /// granted once the address is free.
    pub const REQUESTED_CLUSTER_IPS: &str = "portico.dev/requested-cluster-ips";
    /// The same for node ports: `80/TCP=30080,healthCheckNodePort=32000`.
    pub const REQUESTED_NODE_PORTS: &str = "portico.dev/requested-node-ports";
}

/// Node label that keeps a node from announcing LoadBalancer addresses
/// (the Kubernetes well-known label cloud load balancers honour too).
pub const EXCLUDE_FROM_LOAD_BALANCERS: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// Field manager of the node agents' server-side applies (the
/// `portico.dev/announced-by` annotation), apart from the controllers'.
pub const NODE_FIELD_MANAGER: &str = "portico-node";

/// Name under which the node agents report Events (`reportingController`).
pub const NODE_EVENT_REPORTER: &str = "portico.dev/node";

/// Event and condition reasons of L2 announcement.
pub mod l2_reasons {
    /// A node took over the announcement of a Service's address.
    pub const ANNOUNCING: &str = "L2Announcing";
    /// No eligible, live node is left to announce an address.
    pub const NOT_ANNOUNCED: &str = "L2NotAnnounced";
    /// The announcement's spec is valid.
    pub const VALID: &str = "Valid";
    /// A selector of the announcement does not parse.
    pub const INVALID_SELECTOR: &str = "InvalidSelector";
    /// An interface pattern of the announcement is not a valid name.
    pub const INVALID_INTERFACE: &str = "InvalidInterface";
    /// The announcement names an IPPool that does not exist.
    pub const UNKNOWN_POOL: &str = "UnknownPool";
}

/// Event reasons and condition reasons of LoadBalancer IPAM.
pub mod lb_reasons {
    /// An address was assigned (or kept after a restart).
    pub const ALLOCATED: &str = "IPAllocated";
    /// The Service's addresses were released.
    pub const RELEASED: &str = "IPReleased";
    /// No pool may serve the Service.
    pub const NO_MATCHING_POOL: &str = "NoMatchingPool";
    /// Every pool that may serve the Service is full.
    pub const POOL_EXHAUSTED: &str = "PoolExhausted";
    /// The requested address is held by a Service it may not share with.
    pub const REQUESTED_IP_IN_USE: &str = "RequestedIPInUse";
    /// The requested address is in no pool the Service may use.
    pub const REQUESTED_IP_NOT_IN_POOL: &str = "RequestedIPNotInPool";
    /// The only pools that could serve the Service are in conflict.
    pub const POOL_IN_CONFLICT: &str = "PoolInConflict";
    /// The request itself is malformed.
    pub const INVALID_REQUEST: &str = "InvalidRequest";
    /// An address in the Service's status could not be kept.
    pub const ADDRESS_NOT_KEPT: &str = "AddressNotKept";
    /// A pool's addresses overlap something.
    pub const POOL_CONFLICT: &str = "PoolConflict";
    /// An external IP or LoadBalancer address and port the Service claims
    /// is an older Service's: the older one gets the traffic.
    pub const ADDRESS_CLAIMED: &str = "ExternalAddressConflict";
}
