//! What a Service's EndpointSlices should hold: one endpoint per selected pod
//! and address type, grouped by the ports the pod resolves.
//!
//! Follows kube-controller-manager (`k8s.io/endpointslice` `podToEndpoint`,
//! `getEndpointPorts`, `ShouldPodBeInEndpoints`).

use crate::k8s::{
    Endpoint, EndpointConditions, EndpointPort, ObjectReference, Pod, Service, is_headless,
};
use k8s_openapi::api::discovery::v1::{EndpointHints, ForZone};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// `addressType` of a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    /// `IPv4`.
    V4,
    /// `IPv6`.
    V6,
}

impl AddressType {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::V4 => "IPv4",
            AddressType::V6 => "IPv6",
        }
    }

    /// Parses the API string (`FQDN` and unknown types are not Portico's).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(AddressType::V4),
            "IPv6" => Some(AddressType::V6),
            _ => None,
        }
    }

    fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (AddressType::V4, IpAddr::V4(_)) | (AddressType::V6, IpAddr::V6(_))
        )
    }
}

/// The ports of a slice, in Service order; compared as a set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortsKey(Vec<(String, i32, String, Option<String>)>);

impl PortsKey {
    /// The key of a list of endpoint ports.
    pub fn of(ports: &[EndpointPort]) -> Self {
        let mut key: Vec<_> = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or_default(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                    p.app_protocol.clone(),
                )
            })
            .collect();
        key.sort();
        PortsKey(key)
    }
}

/// An endpoint's identity across updates: its addresses, hostname and pod
/// (as upstream's endpoint hash).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointKey {
    addresses: Vec<String>,
    hostname: Option<String>,
    target: Option<(String, String)>,
}

impl EndpointKey {
    /// The key of an endpoint.
    pub fn of(ep: &Endpoint) -> Self {
        let mut addresses = ep.addresses.clone();
        addresses.sort();
        EndpointKey {
            addresses,
            hostname: ep.hostname.clone(),
            target: ep.target_ref.as_ref().map(|r| {
                (
                    r.namespace.clone().unwrap_or_default(),
                    r.name.clone().unwrap_or_default(),
                )
            }),
        }
    }
}

/// The ports and endpoints of one group of slices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    /// Endpoint ports, in Service order.
    pub ports: Vec<EndpointPort>,
    /// Endpoints by identity.
    pub endpoints: BTreeMap<EndpointKey, Endpoint>,
}

/// Desired endpoints of a Service: per address type, per ports.
pub type Desired = BTreeMap<AddressType, BTreeMap<PortsKey, Group>>;

/// The address types of a Service's slices: its `ipFamilies`, else the
/// families of its ClusterIPs, else both for a headless Service, else IPv4
/// (as upstream).
pub fn address_types(svc: &Service) -> Vec<AddressType> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut types: Vec<AddressType> = spec
        .ip_families
        .unwrap_or_default()
        .iter()
        .filter_map(|f| AddressType::parse(f))
        .collect();
    if types.is_empty() && !is_headless(svc) {
        types = crate::k8s::stated_cluster_ips(svc)
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| {
                if ip.is_ipv4() {
                    AddressType::V4
                } else {
                    AddressType::V6
                }
            })
            .collect();
    }
    if types.is_empty() && is_headless(svc) {
        // A headless Service without families: both, as upstream's
        // getAddressTypesForService assumes.
        types = vec![AddressType::V4, AddressType::V6];
    }
    if types.is_empty() {
        types.push(AddressType::V4);
    }
    types.dedup();
    types
}

/// What the controller keeps of a Pod: the fields endpoints are made of.
/// Much smaller than a `Pod`, so a cluster's pods fit in little memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, for the endpoint's `targetRef`.
    pub uid: Option<String>,
    /// Labels, matched against Service selectors.
    pub labels: BTreeMap<String, String>,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// The Ready condition is True.
    pub ready: bool,
    /// It has a deletion timestamp.
    pub terminating: bool,
    /// It has finished (phase Succeeded or Failed).
    pub finished: bool,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `spec.hostname`.
    pub hostname: Option<String>,
    /// `spec.subdomain`.
    pub subdomain: Option<String>,
    /// Named container ports (regular containers, then sidecars):
    /// `(name, protocol, port)`.
    pub named_ports: Vec<(String, String, i32)>,
}

impl PodInfo {
    /// The projection of a Pod.
    pub fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let spec = pod.spec.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
                .into_iter()
                .collect();
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        // Regular containers, then sidecars (init containers that keep running).
        let named_ports = spec
            .map(|s| {
                let sidecars = s
                    .init_containers
                    .iter()
                    .flatten()
                    .filter(|c| c.restart_policy.as_deref() == Some("Always"));
                s.containers
                    .iter()
                    .chain(sidecars)
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter_map(|p| {
                        let name = p.name.clone()?;
                        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
                        Some((name, protocol, p.container_port))
                    })
                    .collect()
            })
            .unwrap_or_default();
        PodInfo {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            finished,
            node: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            hostname: spec
                .and_then(|s| s.hostname.clone())
                .filter(|h| !h.is_empty()),
            subdomain: spec.and_then(|s| s.subdomain.clone()),
            named_ports,
        }
    }

    /// Whether the pod belongs in endpoints at all: it has an address and
    /// has not finished.
    pub fn is_candidate(&self) -> bool {
        !self.finished && !self.ips.is_empty()
    }
}

/// The endpoint of a pod for `svc` in one address type, if the pod has an
/// address of that type.
pub fn endpoint(
    pod: &PodInfo,
    svc: &Service,
    address_type: AddressType,
    zone: Option<&str>,
) -> Option<Endpoint> {
    let ip = pod.ips.iter().find(|ip| address_type.matches(ip))?;
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let ready = publish_not_ready || (pod.ready && !pod.terminating);
    let hostname = pod.hostname.clone().filter(|_| {
        pod.subdomain.as_deref() == svc.metadata.name.as_deref()
            && Some(pod.namespace.as_str()) == svc.metadata.namespace.as_deref()
    });
    Some(Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(pod.ready),
            terminating: Some(pod.terminating),
        }),
        hostname,
        node_name: pod.node.clone(),
        zone: zone.map(str::to_owned),
        hints: zone.filter(|_| prefers_close(svc)).map(|z| EndpointHints {
            for_zones: Some(vec![ForZone { name: z.to_owned() }]),
            ..Default::default()
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: pod.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `trafficDistribution: PreferClose` (or its newer name `PreferSameZone`):
/// each endpoint is hinted for its own zone, as upstream's
/// `preferCloseHeuristic`; otherwise endpoints carry no hints.
fn prefers_close(svc: &Service) -> bool {
    matches!(
        svc.spec
            .as_ref()
            .and_then(|s| s.traffic_distribution.as_deref()),
        Some("PreferClose" | "PreferSameZone")
    )
}

/// The Service's ports as this pod resolves them. A named `targetPort` is
/// looked up in the pod's container ports (name and protocol); a port the
/// pod does not have is left out for that pod, as upstream does.
pub fn ports(pod: &PodInfo, svc: &Service) -> Vec<EndpointPort> {
    let service_ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    service_ports
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
            let port = match &sp.target_port {
                None => sp.port,
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => match name.parse::<i32>() {
                    Ok(n) => n,
                    Err(_) => pod
                        .named_ports
                        .iter()
                        .find(|(n, p, _)| n == name && *p == protocol)
                        .map(|(_, _, port)| *port)?,
                },
            };
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// Desired endpoints of `svc` over the pods its selector matches.
pub fn desired<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a PodInfo>,
    zone_of: impl Fn(&str) -> Option<String>,
) -> Desired {
    let types = address_types(svc);
    let mut out: Desired = types.iter().map(|t| (*t, BTreeMap::new())).collect();
    for pod in pods {
        if !pod.is_candidate() {
            continue;
        }
        let ports = ports(pod, svc);
        let key = PortsKey::of(&ports);
        let zone = pod.node.as_deref().and_then(&zone_of);
        for t in &types {
            if let Some(ep) = endpoint(pod, svc, *t, zone.as_deref()) {
                let group = out
                    .entry(*t)
                    .or_default()
                    .entry(key.clone())
                    .or_insert_with(|| Group {
                        ports: ports.clone(),
                        endpoints: BTreeMap::new(),
                    });
                group.endpoints.insert(EndpointKey::of(&ep), ep);
            }
        }
    }
    out
}
