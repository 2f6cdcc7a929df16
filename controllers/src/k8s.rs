//! The Kubernetes types Portico uses, from one import path, and small helpers
//! over them.

pub use k8s_openapi::api::core::v1::{
    Namespace, Node, ObjectReference, Pod, Service, ServicePort, ServiceSpec, ServiceStatus,
};
pub use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, ObjectMeta, OwnerReference, Time,
};
pub use kube::ResourceExt;

pub use portico_catalog::Key;

/// The key of any object: `Key::of(&obj)` (objects without a namespace
/// count as `default`).
pub trait KeyOf {
    /// The key of `obj`.
    fn of<K: kube::Resource>(obj: &K) -> Self;
}

impl KeyOf for Key {
    fn of<K: kube::Resource>(obj: &K) -> Self {
        Key::of_meta(obj.meta())
    }
}

/// Service `spec.type`, defaulting to `ClusterIP` as the API server does.
pub fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

/// Whether a Service is headless (`clusterIP: None`).
pub fn is_headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip.eq_ignore_ascii_case("none"))
}

/// The ClusterIPs a Service states: `spec.clusterIPs`, or `spec.clusterIP`
/// when the list is empty. Empty strings and `None` are left out.
pub fn stated_cluster_ips(svc: &Service) -> Vec<String> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let list: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) => vec![ip.clone()],
        _ => Vec::new(),
    };
    list.into_iter()
        .filter(|ip| !ip.is_empty() && !ip.eq_ignore_ascii_case("none"))
        .collect()
}

/// The condition of `type_` in a Service's status.
pub fn service_condition<'a>(svc: &'a Service, type_: &str) -> Option<&'a Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// A condition without its timestamps and generation: what decides whether a
/// status needs writing again.
pub type ConditionSummary = (String, String, String, String);

/// The summaries (type, status, reason, message) of conditions, in order.
pub fn condition_summaries(conditions: &[Condition]) -> Vec<ConditionSummary> {
    conditions
        .iter()
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            )
        })
        .collect()
}

/// Merges a server-side apply patch into a Service as the API server does:
/// with k8s-openapi's `DeepMerge`, except `spec.ports`, which the API keys
/// by `port` *and* `protocol` (DeepMerge by `port` alone would fold
/// `53/TCP` and `53/UDP` into one entry).
pub fn merge_service(current: &mut Service, mut patch: Service) {
    use k8s_openapi::DeepMerge;
    let ports = patch.spec.as_mut().and_then(|s| s.ports.take());
    current.merge_from(patch);
    let Some(ports) = ports else {
        return;
    };
    let list = current
        .spec
        .get_or_insert_with(Default::default)
        .ports
        .get_or_insert_with(Vec::new);
    let protocol = |p: &ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
    for port in ports {
        match list
            .iter_mut()
            .find(|p| p.port == port.port && protocol(p) == protocol(&port))
        {
            Some(existing) => existing.merge_from(port),
            None => list.push(port),
        }
    }
}

/// An object a reconciler keeps: a borrowed one is copied once, a shared
/// one (`Arc`, as reflector stores hand them out) is kept as it is.
pub trait Shared<T> {
    /// The object, shared.
    fn shared(self) -> std::sync::Arc<T>;
}

impl<T: Clone> Shared<T> for &T {
    fn shared(self) -> std::sync::Arc<T> {
        std::sync::Arc::new(self.clone())
    }
}

impl<T> Shared<T> for std::sync::Arc<T> {
    fn shared(self) -> std::sync::Arc<T> {
        self
    }
}

impl<T> Shared<T> for &std::sync::Arc<T> {
    fn shared(self) -> std::sync::Arc<T> {
        std::sync::Arc::clone(self)
    }
}
