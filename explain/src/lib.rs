//! `portico explain`: one view of a Service, from its name to the packet.
//!
//! ```text
//!  TARGET ─> the Service (by NAMESPACE/NAME, a DNS name, or ADDRESS:PORT)
//!   World (manifests reconciled as `portico local` does them, or a cluster's objects)
//!    ├─ dns:       the zone `portico dns` serves (portico_dns::Dns), asked in process
//!    ├─ path:      the node agent of --node renders its rules (NodeAgent, the render
//!    │             `portico node` programs) into MemoryNft; the tracer follows the
//!    │             first packet through them, once per random draw it meets
//!    ├─ announcer: the L2 plan every agent computes alike
//!    └─ problems:  plain sentences
//!  ─> Explanation ─> text | json | svg
//! ```
//!
//! The verdict comes from the same render and tracer that the dataplane
//! tests hold against the kernel: what `explain` says is what the rules do.

#![forbid(unsafe_code)]

mod dns;
mod path;
mod problems;
pub mod svg;
mod target;
pub mod text;

pub use target::{Source, Target};

use k8s_openapi::api::core::v1::{Node, Service};
use portico_catalog::{Key, Protocol};
use portico_controllers::NetworkConfig;
use portico_local::World;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What `explain` could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target is not one of the three forms.
    #[error(
        "{0:?} is not a target: give NAMESPACE/NAME, a DNS name (web.shop or web.shop.svc.cluster.local) or ADDRESS:PORT[/tcp|udp|sctp]"
    )]
    BadTarget(String),
    /// The source is not one of its forms.
    #[error("--from {0:?}: give NAMESPACE/POD, an address, or `node`")]
    BadSource(String),
    /// Nothing matches the target.
    #[error("{0}")]
    Unknown(String),
    /// The node's rules could not be rendered or traced.
    #[error("the rules of node {node}: {message}")]
    Rules {
        /// The node.
        node: String,
        /// What failed.
        message: String,
    },
}

/// What to explain, from where, on which node.
#[derive(Clone, Debug)]
pub struct Request {
    /// The Service, name or address.
    pub target: Target,
    /// The node whose rules the packet meets (default: the node the target
    /// names, else the source pod's, else the first by name).
    pub node: Option<String>,
    /// Where the packet comes from.
    pub from: Source,
}

/// Looks a name outside the cluster zone up (an ExternalName's target):
/// its addresses, or why not.
pub type Resolve<'a> = &'a dyn Fn(&str) -> Result<Vec<IpAddr>, String>;

/// Asks a node's agent for the rules it has installed (`GET /rules`).
pub type LiveRules<'a> = &'a dyn Fn(&str) -> Result<portico_agent::NodeRules, String>;

/// Everything `explain` knows of the cluster.
pub struct Cluster<'a> {
    /// Where the node's installed rules come from; without it (manifests),
    /// they are rendered from the objects as the node's agent would.
    pub live: Option<LiveRules<'a>>,
    /// The objects.
    pub world: &'a World,
    /// `--service-cluster-ip-range` and `--cluster-cidr`.
    pub net: &'a NetworkConfig,
    /// The node agent's flags.
    pub settings: portico_agent::Settings,
    /// The DNS zone (`--cluster-domain`).
    pub zone: String,
}

/// One view of a Service, from name to packet (`-o json` prints it).
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The target as given.
    pub target: String,
    /// The node whose rules the packet meets.
    pub node: String,
    /// The source of the packet.
    pub from: String,
    /// Where the first packet is sent (`ADDRESS:PORT/PROTOCOL`); none for
    /// a Service without a virtual address (headless, ExternalName).
    pub destination: Option<String>,
    /// The Service.
    pub service: ServiceView,
    /// What cluster DNS answers for it.
    pub dns: Vec<DnsAnswer>,
    /// Its endpoints, from its EndpointSlices.
    pub endpoints: Vec<EndpointView>,
    /// From the DNS answer through the chains to the verdict.
    pub path: Vec<Step>,
    /// What becomes of the first packet.
    pub verdict: Verdict,
    /// The node answering ARP/NDP for its LoadBalancer address.
    pub announcer: Option<String>,
    /// What is wrong, in plain sentences.
    pub problems: Vec<String>,
    /// The service and pod networks, for the picture.
    pub networks: Networks,
}

/// The cluster's networks.
#[derive(Clone, Debug, Serialize)]
pub struct Networks {
    /// `--service-cluster-ip-range`.
    pub service: Vec<String>,
    /// `--cluster-cidr`.
    pub pods: Vec<String>,
}

/// The Service, as `kubectl get svc -o wide` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `spec.clusterIPs` (`None` for a headless Service).
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    /// `spec.externalIPs`.
    #[serde(rename = "externalIPs")]
    pub external_ips: Vec<String>,
    /// `status.loadBalancer.ingress[].ip`.
    #[serde(rename = "loadBalancerIPs")]
    pub load_balancer_ips: Vec<String>,
    /// `spec.externalName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// The ports.
    pub ports: Vec<PortView>,
}

/// One port of the Service.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    /// Its name.
    pub name: String,
    /// The Service port.
    pub port: i32,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The target port (a number or a container port's name).
    pub target_port: String,
    /// The node port, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
}

/// What cluster DNS answers for one question.
#[derive(Clone, Debug, Serialize)]
pub struct DnsAnswer {
    /// The name asked.
    pub name: String,
    /// The record type asked.
    #[serde(rename = "type")]
    pub type_: String,
    /// The answers (`NXDOMAIN` alone for a name that does not exist).
    pub answers: Vec<String>,
}

/// One endpoint of the Service.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointView {
    /// Its address.
    pub address: String,
    /// The pod behind it, `NAMESPACE/NAME`.
    pub pod: Option<String>,
    /// Its node.
    pub node: Option<String>,
    /// Its zone.
    pub zone: Option<String>,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

/// One step of the path.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// What the step is: `dns`, `packet`, `nft CHAIN`, `verdict`.
    pub step: String,
    /// What happened there (the rule, for a chain).
    pub detail: String,
}

/// What becomes of the first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `dnat`, `reject`, `drop` or `accept` (untouched).
    pub action: Action,
    /// Where it may go (`ip:port`), one per random draw's outcome.
    pub endpoints: Vec<String>,
    /// It leaves with the node's address as its source.
    pub masquerade: bool,
}

/// The verdict's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Sent to an endpoint.
    Dnat,
    /// Refused (TCP reset or ICMP unreachable).
    Reject,
    /// Dropped silently.
    Drop,
    /// Not changed: it goes where it was sent.
    Accept,
}

impl Action {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Dnat => "dnat",
            Action::Reject => "reject",
            Action::Drop => "drop",
            Action::Accept => "accept",
        }
    }
}

/// The Service a target names, and the first packet's destination.
pub(crate) struct Resolved {
    pub svc: Arc<Service>,
    pub key: Key,
    /// The packet's destination (none for a headless or ExternalName
    /// Service: there are no rules to meet).
    pub dst: Option<SocketAddr>,
    pub protocol: Protocol,
    /// The node a NodePort target names.
    pub node: Option<String>,
    /// What cluster DNS answered on the way.
    pub dns: Vec<DnsAnswer>,
}

/// Explains `request` over `cluster`. `resolve` looks up names outside the
/// cluster zone (an ExternalName's target).
pub fn explain(
    cluster: &Cluster<'_>,
    request: &Request,
    resolve: Resolve<'_>,
) -> Result<Explanation, Error> {
    let zone = dns::Zone::new(cluster)?;
    let mut resolved = target::resolve(cluster, &zone, &request.target)?;
    resolved.dns.extend(zone.service_answers(&resolved));
    resolved
        .dns
        .dedup_by(|a, b| a.name == b.name && a.type_ == b.type_);
    let source = target::source(cluster.world, &request.from, resolved.dst.map(|d| d.ip()))?;
    let node = choose_node(cluster.world, request, &resolved, &source)?;
    if request.from == Source::Outside && !matches!(request.target, Target::Address(..)) {
        outside_address(&mut resolved, &node);
    }
    let svc = &resolved.svc;
    let endpoints = endpoints(cluster.world, &resolved.key);
    let traced = path::trace(cluster, &node, &resolved, &source)?;
    let announcer = path::announcer(cluster, &resolved);
    let external = zone.external_name(svc, resolve);
    let mut problems = problems::find(&problems::Facts {
        cluster,
        resolved: &resolved,
        node: &node.name,
        source: &source,
        endpoints: &endpoints,
        verdict: &traced.verdict,
        external: &external,
    });
    problems.extend(traced.problems);
    if cluster.live.is_some() && traced.verdict.action == Action::Dnat {
        let stale: Vec<&String> = traced
            .verdict
            .endpoints
            .iter()
            .filter(|to| {
                let ip = to.rsplit_once(':').map_or(to.as_str(), |(ip, _)| ip);
                let ip = ip.trim_matches(['[', ']']);
                !endpoints.iter().any(|e| e.ready && e.address == ip)
            })
            .collect();
        if !stale.is_empty() {
            problems.push(format!(
                "node {}'s installed rules send connections to {}, which is no ready endpoint of the Service: its agent is behind the cluster's objects (changes not synced yet, failed syncs, or a watch it lost)",
                node.name,
                stale.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let mut steps: Vec<Step> = resolved
        .dns
        .iter()
        .map(|a| Step {
            step: "dns".into(),
            detail: format!("{} {} → {}", a.name, a.type_, a.answers.join(", ")),
        })
        .collect();
    steps.extend(traced.steps);
    Ok(Explanation {
        target: request.target.to_string(),
        node: node.name.clone(),
        from: source.describe(),
        destination: resolved
            .dst
            .map(|d| format!("{d}/{}", portico_dataplane::names::proto(resolved.protocol))),
        service: service_view(svc, &resolved.key),
        dns: resolved.dns.clone(),
        endpoints,
        path: steps,
        verdict: match &external {
            Some(Ok(ips)) if resolved.dst.is_none() && traced.verdict.endpoints.is_empty() => {
                Verdict {
                    action: Action::Accept,
                    endpoints: ips.iter().map(ToString::to_string).collect(),
                    masquerade: false,
                }
            }
            _ => traced.verdict,
        },
        announcer,
        problems,
        networks: Networks {
            service: cluster
                .net
                .service_ranges
                .iter()
                .map(ToString::to_string)
                .collect(),
            pods: cluster
                .net
                .cluster_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
        },
    })
}

/// A client outside the cluster reaches a Service named by name through
/// its LoadBalancer address, else its NodePort on the node; a ClusterIP
/// is for clients inside.
fn outside_address(r: &mut Resolved, node: &ChosenNode) {
    let Some(dst) = r.dst else {
        return;
    };
    let spec = r.svc.spec.clone().unwrap_or_default();
    let Some(port) = spec.ports.iter().flatten().next() else {
        return;
    };
    let ingress = ingress(&r.svc)
        .into_iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv4() == dst.is_ipv4());
    if let Some(ip) = ingress {
        r.dst = Some(SocketAddr::new(ip, dst.port()));
        return;
    }
    let node_ip = node
        .addresses
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4());
    if let (Some(ip), Some(np)) = (node_ip, port.node_port.and_then(|n| u16::try_from(n).ok())) {
        r.dst = Some(SocketAddr::new(*ip, np));
    }
}

/// The node the packet meets, with its addresses.
pub(crate) struct ChosenNode {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

fn choose_node(
    world: &World,
    request: &Request,
    resolved: &Resolved,
    source: &target::From,
) -> Result<ChosenNode, Error> {
    let nodes = world.nodes.sorted();
    let named = request
        .node
        .clone()
        .or_else(|| resolved.node.clone())
        .or_else(|| source.node.clone());
    let node: Option<&Arc<Node>> = match &named {
        Some(name) => Some(
            nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(name.as_str()))
                .ok_or_else(|| Error::Unknown(format!("no Node {name}")))?,
        ),
        None => nodes.first(),
    };
    Ok(match node {
        Some(n) => ChosenNode {
            name: n.metadata.name.clone().unwrap_or_default(),
            addresses: node_addresses(n),
        },
        // No Node at all: a node of no name, whose endpoints are all remote.
        None => ChosenNode {
            name: named.unwrap_or_else(|| "node".into()),
            addresses: Vec::new(),
        },
    })
}

/// The Service's LoadBalancer addresses (`status.loadBalancer.ingress[].ip`).
pub(crate) fn ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// An ExternalName Service (a CNAME, no address, no rules).
pub(crate) fn is_external_name(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .is_some_and(|s| s.type_.as_deref() == Some("ExternalName"))
}

/// A Node's addresses (InternalIP and ExternalIP).
pub(crate) fn node_addresses(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

fn service_view(svc: &Service, key: &Key) -> ServiceView {
    let spec = svc.spec.clone().unwrap_or_default();
    ServiceView {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        type_: spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
        cluster_ips: portico_controllers::k8s::stated_cluster_ips(svc),
        external_ips: spec.external_ips.clone().unwrap_or_default(),
        load_balancer_ips: ingress(svc),
        external_name: spec.external_name.clone(),
        ports: spec
            .ports
            .iter()
            .flatten()
            .map(|p| PortView {
                name: p.name.clone().unwrap_or_default(),
                port: p.port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                target_port: match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        n.to_string()
                    }
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                        s.clone()
                    }
                    None => p.port.to_string(),
                },
                node_port: p.node_port,
            })
            .collect(),
    }
}

/// The endpoints of the Service's EndpointSlices, sorted by address.
fn endpoints(world: &World, key: &Key) -> Vec<EndpointView> {
    let mut out: Vec<EndpointView> = world
        .endpoint_slices
        .sorted()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == key.namespace)
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(portico_catalog::labels::SERVICE_NAME))
                == Some(&key.name)
        })
        .flat_map(|s| s.endpoints.clone())
        .flat_map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            // Upstream: an unknown readiness is ready; serving follows ready.
            let ready = c.ready.unwrap_or(true);
            let pod = e.target_ref.as_ref().and_then(|r| {
                Some(format!(
                    "{}/{}",
                    r.namespace.as_deref().unwrap_or(&key.namespace),
                    r.name.as_deref()?
                ))
            });
            e.addresses
                .iter()
                .map(|a| EndpointView {
                    address: a.clone(),
                    pod: pod.clone(),
                    node: e.node_name.clone(),
                    zone: e.zone.clone(),
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out.dedup_by(|a, b| a.address == b.address);
    out
}
