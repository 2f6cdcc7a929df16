//! The Kubernetes well-known labels Portico reads and writes.

/// Names the Service an EndpointSlice belongs to.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Names the controller that manages an EndpointSlice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Set (empty) on the EndpointSlices of headless Services. On a
/// Service, it keeps service proxies away, as kube-proxy does.
pub const HEADLESS: &str = "service.kubernetes.io/headless";
/// On a Service: the service proxy that programs it. kube-proxy (and
/// Portico, unless `--service-proxy-name` names this value) leaves
/// Services with this label, whatever its value, to that proxy.
pub const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// A Node's zone.
pub const ZONE: &str = "topology.kubernetes.io/zone";
