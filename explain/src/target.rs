//! What the user names: the target (a Service, a DNS name, an address and
//! port) and the source of the packet.

use crate::dns::Zone;
use crate::{Cluster, Error, Resolved, node_addresses};
use k8s_openapi::api::core::v1::Service;
use portico_catalog::{Key, Protocol};
use portico_dataplane::trace::Origin;
use portico_local::World;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

/// What to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `NAMESPACE/NAME`.
    Service(Key),
    /// A DNS name: `web.shop`, `web.shop.svc`, `web.shop.svc.cluster.local`,
    /// or a pod's name under a headless Service (`db-0.db.shop`).
    Name(String),
    /// `ADDRESS:PORT[/tcp|udp|sctp]`: a ClusterIP, an external IP, a
    /// LoadBalancer address, or a node's address with a NodePort.
    Address(SocketAddr, Option<Protocol>),
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn protocol(s: &str) -> Option<Protocol> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadTarget(s.to_owned());
        let (address, proto) = match s.rsplit_once('/') {
            Some((a, p)) if protocol(p).is_some() => (a, protocol(p)),
            _ => (s, None),
        };
        if let Ok(sa) = address.parse::<SocketAddr>() {
            return Ok(Target::Address(sa, proto));
        }
        if proto.is_some() || address.parse::<IpAddr>().is_ok() {
            return Err(bad());
        }
        if let Some((ns, name)) = s.split_once('/') {
            return if is_label(ns) && is_label(name) {
                Ok(Target::Service(Key::new(ns, name)))
            } else {
                Err(bad())
            };
        }
        let name = s.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() >= 2 && labels.iter().all(|l| is_label(l)) {
            return Ok(Target::Name(name));
        }
        Err(bad())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Service(k) => write!(f, "{}/{}", k.namespace, k.name),
            Target::Name(n) => f.write_str(n),
            Target::Address(sa, Some(p)) => write!(f, "{sa}/{}", protocol_name(*p).to_lowercase()),
            Target::Address(sa, None) => write!(f, "{sa}"),
        }
    }
}

/// Where the packet comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// A client outside the cluster (the default).
    #[default]
    Outside,
    /// A pod, `NAMESPACE/POD`.
    Pod(Key),
    /// An address.
    Address(IpAddr),
    /// The node itself (`node`).
    Node,
}

impl FromStr for Source {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s == "node" {
            return Ok(Source::Node);
        }
        if s == "outside" {
            return Ok(Source::Outside);
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Source::Address(ip));
        }
        match s.split_once('/') {
            Some((ns, name)) if is_label(ns) && !name.is_empty() => {
                Ok(Source::Pod(Key::new(ns, name)))
            }
            _ => Err(Error::BadSource(s.to_owned())),
        }
    }
}

/// The source, made concrete.
pub(crate) struct From {
    pub ip: IpAddr,
    pub origin: Origin,
    /// The node the source is on (a pod's).
    pub node: Option<String>,
    pub label: String,
}

impl From {
    pub fn describe(&self) -> String {
        self.label.clone()
    }
}

/// A client outside the cluster: an address of the documentation ranges
/// (RFC 5737, RFC 3849) of the destination's family.
fn outside(family_of: Option<IpAddr>) -> IpAddr {
    match family_of {
        Some(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
        _ => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
    }
}

/// The source, with an address of the destination's family.
pub(crate) fn source(world: &World, from: &Source, dst: Option<IpAddr>) -> Result<From, Error> {
    let same_family = |ip: &IpAddr| dst.is_none_or(|d| d.is_ipv4() == ip.is_ipv4());
    Ok(match from {
        Source::Outside => {
            let ip = outside(dst);
            From {
                ip,
                origin: Origin::Remote,
                node: None,
                label: format!("a client outside the cluster ({ip})"),
            }
        }
        Source::Address(ip) => From {
            ip: *ip,
            origin: Origin::Remote,
            node: None,
            label: ip.to_string(),
        },
        // The node's address is filled in with the node's (path.rs).
        Source::Node => From {
            ip: outside(dst),
            origin: Origin::Node,
            node: None,
            label: "the node itself".into(),
        },
        Source::Pod(key) => {
            let pod = world
                .pods
                .iter()
                .find(|p| {
                    p.metadata.namespace.as_deref().unwrap_or("default") == key.namespace
                        && p.metadata.name.as_deref() == Some(key.name.as_str())
                })
                .ok_or_else(|| Error::Unknown(format!("no Pod {}/{}", key.namespace, key.name)))?;
            let info = portico_controllers::endpointslices::PodInfo::of(&pod);
            let ip = info.ips.iter().copied().find(same_family).ok_or_else(|| {
                Error::Unknown(format!(
                    "Pod {}/{} has no address of the destination's family",
                    key.namespace, key.name
                ))
            })?;
            From {
                ip,
                origin: Origin::Remote,
                node: info.node.clone(),
                label: format!("Pod {}/{} ({ip})", key.namespace, key.name),
            }
        }
    })
}

fn find_service(world: &World, key: &Key) -> Option<Arc<Service>> {
    world.services.sorted().into_iter().find(|s| {
        s.metadata.namespace.as_deref().unwrap_or("default") == key.namespace
            && s.metadata.name.as_deref() == Some(key.name.as_str())
    })
}

fn key_of(svc: &Service) -> Key {
    Key::new(
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The Service a target names, and where its first packet goes.
pub(crate) fn resolve(
    cluster: &Cluster<'_>,
    zone: &Zone,
    target: &Target,
) -> Result<Resolved, Error> {
    let world = cluster.world;
    match target {
        Target::Service(key) => {
            let svc = find_service(world, key).ok_or_else(|| {
                Error::Unknown(format!("no Service {}/{}", key.namespace, key.name))
            })?;
            Ok(to_cluster_ip(svc, key.clone(), Vec::new()))
        }
        Target::Name(name) => {
            let fqdn = zone.expand(name);
            let Some((key, pod_name)) = zone.service_of(&fqdn) else {
                return Err(Error::Unknown(format!(
                    "{name} is not a Service's name in the cluster zone {}",
                    zone.apex()
                )));
            };
            let answers = zone.ask_addresses(&fqdn);
            let found = answers
                .iter()
                .any(|a| a.answers.first().is_some_and(|x| x != "NXDOMAIN"));
            let svc = find_service(world, &key)
                .filter(|_| found)
                .ok_or_else(|| Error::Unknown(format!("no Service answers {fqdn} (NXDOMAIN)")))?;
            let answers = if crate::is_external_name(&svc) {
                vec![zone.ask(&fqdn, hickory_proto::rr::RecordType::CNAME)]
            } else {
                answers
            };
            let mut r = to_cluster_ip(svc, key, answers);
            if pod_name {
                // A pod's own record: the client connects to the pod.
                r.dst = None;
            }
            Ok(r)
        }
        Target::Address(sa, proto) => by_address(world, *sa, *proto),
    }
}

/// The first ClusterIP and port of a Service (none when headless or
/// ExternalName).
fn to_cluster_ip(svc: Arc<Service>, key: Key, dns: Vec<crate::DnsAnswer>) -> Resolved {
    let spec = svc.spec.clone().unwrap_or_default();
    let port = spec.ports.iter().flatten().next();
    let protocol = Protocol::parse(port.and_then(|p| p.protocol.as_deref())).unwrap_or_default();
    let ip = portico_controllers::k8s::stated_cluster_ips(&svc)
        .first()
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let dst = match (ip, port) {
        (Some(ip), Some(p)) if !crate::is_external_name(&svc) => u16::try_from(p.port)
            .ok()
            .map(|port| SocketAddr::new(ip, port)),
        _ => None,
    };
    Resolved {
        svc,
        key,
        dst,
        protocol,
        node: None,
        dns,
    }
}

fn by_address(world: &World, sa: SocketAddr, proto: Option<Protocol>) -> Result<Resolved, Error> {
    let ip = sa.ip().to_string();
    let port_matches = |p: &k8s_openapi::api::core::v1::ServicePort, number: Option<i32>| {
        number == Some(i32::from(sa.port()))
            && proto.is_none_or(|want| Protocol::parse(p.protocol.as_deref()) == Some(want))
    };
    let services = world.services.sorted();
    for svc in &services {
        let spec = svc.spec.clone().unwrap_or_default();
        let ingress = crate::ingress(svc);
        let holds = portico_controllers::k8s::stated_cluster_ips(svc).contains(&ip)
            || spec.external_ips.iter().flatten().any(|e| *e == ip)
            || ingress.contains(&ip);
        if !holds {
            continue;
        }
        if let Some(p) = spec
            .ports
            .iter()
            .flatten()
            .find(|p| port_matches(p, Some(p.port)))
        {
            return Ok(Resolved {
                svc: svc.clone(),
                key: key_of(svc),
                dst: Some(sa),
                protocol: Protocol::parse(p.protocol.as_deref()).unwrap_or_default(),
                node: None,
                dns: Vec::new(),
            });
        }
    }
    // A node's address and a NodePort.
    let node = world
        .nodes
        .sorted()
        .into_iter()
        .find(|n| node_addresses(n).contains(&sa.ip()));
    if let Some(node) = node {
        for svc in &services {
            let spec = svc.spec.clone().unwrap_or_default();
            if let Some(p) = spec
                .ports
                .iter()
                .flatten()
                .find(|p| port_matches(p, p.node_port))
            {
                return Ok(Resolved {
                    svc: svc.clone(),
                    key: key_of(svc),
                    dst: Some(sa),
                    protocol: Protocol::parse(p.protocol.as_deref()).unwrap_or_default(),
                    node: node.metadata.name.clone(),
                    dns: Vec::new(),
                });
            }
        }
    }
    let proto = proto
        .map(|p| format!("/{}", protocol_name(p)))
        .unwrap_or_default();
    Err(Error::Unknown(format!(
        "no Service holds {sa}{proto} (as a ClusterIP, an external IP, a LoadBalancer address or a node's NodePort)"
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_parse_in_their_three_forms_and_anything_else_is_refused() {
        assert_eq!(
            "shop/web".parse::<Target>().unwrap(),
            Target::Service(Key::new("shop", "web"))
        );
        assert_eq!(
            "web.shop.svc.cluster.local.".parse::<Target>().unwrap(),
            Target::Name("web.shop.svc.cluster.local".into())
        );
        assert_eq!(
            "10.96.0.10:80/udp".parse::<Target>().unwrap(),
            Target::Address("10.96.0.10:80".parse().unwrap(), Some(Protocol::Udp))
        );
        assert_eq!(
            "[fd00::10]:443".parse::<Target>().unwrap(),
            Target::Address("[fd00::10]:443".parse().unwrap(), None)
        );
        for bad in [
            "web",
            "",
            "shop/",
            "/web",
            "Shop/web",
            "10.96.0.10",
            "10.96.0.10:80/icmp",
            "a b.c",
            "shop/web/x",
        ] {
            let e = bad.parse::<Target>().unwrap_err();
            assert!(e.to_string().contains("is not a target"), "{bad}: {e}");
        }
    }

    #[test]
    fn sources_parse() {
        assert_eq!("node".parse::<Source>().unwrap(), Source::Node);
        assert_eq!(
            "shop/web-1".parse::<Source>().unwrap(),
            Source::Pod(Key::new("shop", "web-1"))
        );
        assert_eq!(
            "10.0.0.1".parse::<Source>().unwrap(),
            Source::Address("10.0.0.1".parse().unwrap())
        );
        assert!("nowhere".parse::<Source>().is_err());
    }
}
