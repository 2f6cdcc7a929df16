//! The normalised model: what consumers read of a Service, its endpoints and
//! pods, parsed once from the API objects.

use crate::labels;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{self as discovery, EndpointSlice};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// `namespace/name` of a namespaced object (a Service, a Pod, an
/// EndpointSlice...): the one identity every part of Portico uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Namespace (`default` when the object has none).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object's metadata; objects without a namespace count
    /// as `default`.
    pub fn of_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Key {
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The order in which Services win a contested address and port: older
/// first (without a creation time: last), then by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seniority {
    /// `creationTimestamp` in nanoseconds since the epoch.
    created: i128,
    /// The Service.
    pub key: Key,
}

/// `spec.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ServiceType {
    /// `ClusterIP` (the default).
    #[default]
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
    /// `ExternalName`.
    ExternalName,
}

impl ServiceType {
    /// Parses the API string; unknown values count as `ClusterIP`, as the
    /// API server would have refused them.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            _ => ServiceType::ClusterIp,
        }
    }
}

/// A port's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Protocol {
    /// `TCP` (the default).
    #[default]
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// Parses the API string (`TCP` when unset); `None` for an unknown one.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The DNS SRV label without its underscore: `tcp`, `udp`, `sctp`.
    pub fn srv_label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// `name` (empty when unnamed).
    pub name: String,
    /// `protocol`.
    pub protocol: Protocol,
    /// `port`.
    pub port: u16,
    /// `nodePort`, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TrafficPolicy {
    /// `Cluster` (the default): every endpoint.
    #[default]
    Cluster,
    /// `Local`: endpoints on the receiving node only.
    Local,
}

impl TrafficPolicy {
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        }
    }
}

/// `sessionAffinity` with its timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SessionAffinity {
    /// `None` (the default).
    #[default]
    None,
    /// `ClientIP`, sticky for `timeout` (default 10800 s).
    ClientIp {
        /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
        timeout: Duration,
    },
}

/// The default `ClientIP` affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// What consumers read of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.type`.
    pub type_: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP`) that parse, primary first.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// `spec.externalName` of an ExternalName Service.
    pub external_name: Option<String>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs` that parse.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` that parse.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` that parse (a bare address counts
    /// as a host range); empty means every source may connect.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `spec.sessionAffinity` (+ config).
    pub session_affinity: SessionAffinity,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// `spec.publishNotReadyAddresses`.
    pub publish_not_ready_addresses: bool,
    /// `metadata.creationTimestamp`: of two Services that claim one
    /// address and port, the older keeps it.
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    /// Which service proxy may program the Service: kube-proxy's labels
    /// `service.kubernetes.io/service-proxy-name` and
    /// `service.kubernetes.io/headless`.
    pub proxy: ProxyLabel,
}

/// What a Service's labels say about which service proxy programs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum ProxyLabel {
    /// Neither label: the default proxy (kube-proxy, Portico) programs it.
    #[default]
    Default,
    /// `service.kubernetes.io/service-proxy-name: <name>`.
    Named(String),
    /// `service.kubernetes.io/headless`: no proxy programs it.
    Headless,
}

impl ProxyLabel {
    fn of(service_labels: Option<&std::collections::BTreeMap<String, String>>) -> Self {
        let Some(l) = service_labels else {
            return ProxyLabel::Default;
        };
        if l.contains_key(labels::HEADLESS) {
            ProxyLabel::Headless
        } else if let Some(name) = l.get(labels::SERVICE_PROXY_NAME) {
            ProxyLabel::Named(name.clone())
        } else {
            ProxyLabel::Default
        }
    }

    /// Whether a proxy that answers to `name` (`None`: the default proxy,
    /// as kube-proxy) programs the Service. kube-proxy's watch selector is
    /// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`.
    pub fn programmed_by(&self, name: Option<&str>) -> bool {
        match (self, name) {
            (ProxyLabel::Headless, _) => false,
            (ProxyLabel::Default, None) => true,
            (ProxyLabel::Named(label), Some(name)) => label == name,
            _ => false,
        }
    }
}

impl ServiceInfo {
    /// The key of this Service.
    pub fn key(&self) -> Key {
        Key::new(self.namespace.clone(), self.name.clone())
    }

    /// Where the Service stands among Services that claim the same
    /// address and port: the oldest first, then by namespace and name
    /// (what the API server's allocators and kube-proxy users expect: a
    /// newcomer never takes traffic from a Service that had it).
    pub fn seniority(&self) -> Seniority {
        Seniority {
            created: self.created.map_or(i128::MAX, |t| t.as_nanosecond()),
            key: self.key(),
        }
    }

    /// The projection of a Service. Values that do not parse (an address
    /// that is not one, a port out of range) are left out, never fatal.
    pub fn from_service(svc: &Service) -> Self {
        let spec = svc.spec.clone().unwrap_or_default();
        let headless = spec
            .cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.eq_ignore_ascii_case("none"));
        let cluster_ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.clone(),
            (_, Some(ip)) => vec![ip.clone()],
            _ => Vec::new(),
        };
        let type_ = ServiceType::parse(spec.type_.as_deref());
        let session_affinity = match spec.session_affinity.as_deref() {
            Some("ClientIP") => SessionAffinity::ClientIp {
                timeout: spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(DEFAULT_AFFINITY_TIMEOUT, Duration::from_secs),
            },
            _ => SessionAffinity::None,
        };
        ServiceInfo {
            namespace: namespace_of(svc.metadata.namespace.as_deref()),
            name: svc.metadata.name.clone().unwrap_or_default(),
            type_,
            cluster_ips: parse_ips(cluster_ips.iter()),
            headless,
            external_name: spec
                .external_name
                .filter(|n| type_ == ServiceType::ExternalName && !n.is_empty()),
            ports: spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(ServicePort {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: Protocol::parse(p.protocol.as_deref())?,
                        port: u16::try_from(p.port).ok()?,
                        // 0 is "none" in the API.
                        node_port: p
                            .node_port
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|n| *n != 0),
                    })
                })
                .collect(),
            external_ips: parse_ips(spec.external_ips.iter().flatten()),
            load_balancer_ips: parse_ips(
                svc.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    // `ipMode: Proxy`: the load balancer proxies, so
                    // traffic must go to it, not be short-cut to the
                    // endpoints (kube-proxy leaves these out too).
                    .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                    .filter_map(|i| i.ip.as_ref()),
            ),
            load_balancer_source_ranges: parse_ranges(
                spec.load_balancer_source_ranges.iter().flatten(),
            ),
            session_affinity,
            external_traffic_policy: TrafficPolicy::parse(spec.external_traffic_policy.as_deref()),
            internal_traffic_policy: TrafficPolicy::parse(spec.internal_traffic_policy.as_deref()),
            health_check_node_port: spec
                .health_check_node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0),
            publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
            created: svc.metadata.creation_timestamp.as_ref().map(|t| t.0),
            proxy: ProxyLabel::of(svc.metadata.labels.as_ref()),
        }
    }
}

/// A port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointPort {
    /// `name` (the Service port's name; empty when unnamed).
    pub name: String,
    /// `protocol`.
    pub protocol: Protocol,
    /// `port` (the port on the endpoint).
    pub port: u16,
    /// `appProtocol`.
    pub app_protocol: Option<String>,
}

/// One endpoint of a Service, from one of its slices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's address (the first of `addresses`, as every consumer
    /// of EndpointSlices uses).
    pub address: IpAddr,
    /// `conditions.ready` (unset counts as ready, as the API says).
    pub ready: bool,
    /// `conditions.serving` (unset: same as ready).
    pub serving: bool,
    /// `conditions.terminating` (unset: false).
    pub terminating: bool,
    /// `hostname` (StatefulSet pods).
    pub hostname: Option<String>,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones`: the zones whose nodes should send this endpoint
    /// their traffic (`trafficDistribution: PreferClose`); `None` without
    /// hints.
    pub zone_hints: Option<Box<[String]>>,
    /// The name of the Pod in `targetRef`, when it is a Pod.
    pub pod: Option<String>,
    /// The slice's ports (shared by every endpoint of the slice).
    pub ports: Arc<[EndpointPort]>,
}

/// What the catalog keeps of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceInfo {
    pub(crate) service: Key,
    pub(crate) endpoints: Vec<Endpoint>,
}

impl SliceInfo {
    /// The projection of a slice; `None` when it names no Service.
    /// Slices of address type `FQDN` (or unknown) contribute no endpoints.
    pub(crate) fn from_slice(slice: &EndpointSlice) -> Option<Self> {
        let service = slice
            .metadata
            .labels
            .as_ref()?
            .get(labels::SERVICE_NAME)?
            .clone();
        let namespace = namespace_of(slice.metadata.namespace.as_deref());
        let ip_slice = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
        let ports: Arc<[EndpointPort]> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                    port: u16::try_from(p.port?).ok()?,
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        let endpoints = if ip_slice {
            slice
                .endpoints
                .iter()
                .filter_map(|ep| endpoint(ep, &ports))
                .collect()
        } else {
            Vec::new()
        };
        Some(SliceInfo {
            service: Key::new(namespace, service),
            endpoints,
        })
    }
}

fn endpoint(ep: &discovery::Endpoint, ports: &Arc<[EndpointPort]>) -> Option<Endpoint> {
    let address: IpAddr = ep.addresses.first()?.parse().ok()?;
    let conditions = ep.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    Some(Endpoint {
        address,
        ready,
        serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        hostname: ep.hostname.clone().filter(|h| !h.is_empty()),
        node_name: ep.node_name.clone().filter(|n| !n.is_empty()),
        zone: ep.zone.clone().filter(|z| !z.is_empty()),
        zone_hints: ep
            .hints
            .as_ref()
            .and_then(|h| h.for_zones.as_ref())
            .map(|zones| {
                zones
                    .iter()
                    .map(|z| z.name.clone())
                    .collect::<Box<[String]>>()
            })
            .filter(|zones| !zones.is_empty()),
        pod: ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone()),
        ports: ports.clone(),
    })
}

/// The addresses of a Pod that DNS may answer for: `status.podIPs` (or
/// `status.podIP`); none once it has finished (its address is released).
pub(crate) fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let mut ips = parse_ips(status.pod_ips.iter().flatten().map(|p| &p.ip));
    if ips.is_empty() {
        ips = parse_ips(status.pod_ip.iter());
    }
    ips
}

pub(crate) fn namespace_of(ns: Option<&str>) -> String {
    ns.filter(|n| !n.is_empty()).unwrap_or("default").to_owned()
}

fn parse_ranges<'a>(ranges: impl IntoIterator<Item = &'a String>) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for r in ranges {
        let r = r.trim();
        let net = r
            .parse::<IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| r.parse::<IpAddr>().map(IpNet::from));
        if let Ok(net) = net
            && !out.contains(&net)
        {
            out.push(net);
        }
    }
    out
}

fn parse_ips<'a>(ips: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips {
        if let Ok(ip) = ip.trim().parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}
