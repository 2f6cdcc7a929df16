//! The renderer: pure functions from the catalog's model to nft objects.
//!
//! - [`render_static`]: the chains, sets and maps every node has, per
//!   family (they depend on the [`Config`] only).
//! - [`render_service`]: what one Service adds: map elements keyed by its
//!   entry points (addresses and NodePorts), shared set elements, pick
//!   chains it needs, and, for `externalTrafficPolicy: Local`, session
//!   affinity or endpoints that serve one port on different numbers,
//!   chains and sets of its own.
//!
//! Nothing here runs nft or reads the clock, so the whole ruleset is
//! tested without root.

use crate::names::{self, *};
use crate::tx::SetDecl;
use ipnet::IpNet;
use portico_catalog::{
    Endpoint, Protocol, Seniority, ServiceInfo, ServicePort, ServiceType, SessionAffinity,
    TrafficPolicy,
};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// What the renderer needs to know about the node and the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// This node's name (endpoints with this `nodeName` are local).
    pub node_name: String,
    /// The pod network (`--cluster-cidr`), any family. Traffic from
    /// elsewhere to a ClusterIP is masqueraded; without a CIDR for a
    /// family, all of it is.
    pub cluster_cidrs: Vec<IpNet>,
    /// The service network (`--service-cluster-ip-range`): traffic to its
    /// addresses that no Service holds is dropped.
    pub service_cidrs: Vec<IpNet>,
    /// Where NodePorts answer (`--nodeport-addresses`, or the node's
    /// primary addresses as host routes). Loopback addresses are left out:
    /// NodePorts never answer on localhost, as in kube-proxy's nftables
    /// mode.
    pub nodeport_addresses: Vec<IpNet>,
    /// The node's primary addresses (its first InternalIP of each family).
    /// When a LoadBalancer's `loadBalancerSourceRanges` include one, the
    /// load balancer's own address is let through too: traffic the node
    /// sends to the address comes back with it as the source (kube-proxy's
    /// `allowFromNode`).
    pub node_ips: Vec<IpAddr>,
    /// The node's zone (`topology.kubernetes.io/zone`): when every ready
    /// endpoint of a Service port has zone hints and some are hinted for
    /// this zone, only those take the node's traffic (kube-proxy's
    /// topology-aware routing, `trafficDistribution: PreferClose`).
    pub zone: Option<String>,
    /// `--service-proxy-name`: program only the Services labelled
    /// `service.kubernetes.io/service-proxy-name: <this>`. Unset, Portico
    /// programs the Services without that label, as kube-proxy does.
    /// Services labelled `service.kubernetes.io/headless` are never
    /// programmed.
    pub service_proxy_name: Option<String>,
    /// `--masquerade-all`: masquerade every connection to a ClusterIP, not
    /// only those from outside the pod network (kube-proxy's flag).
    pub masquerade_all: bool,
}

impl Config {
    fn cidrs(nets: &[IpNet], family: Family) -> Vec<IpNet> {
        nets.iter()
            .filter(|n| family.contains(&n.addr()))
            .map(IpNet::trunc)
            .collect()
    }

    /// The cluster CIDRs of a family.
    pub fn cluster_cidrs(&self, family: Family) -> Vec<IpNet> {
        Config::cidrs(&self.cluster_cidrs, family)
    }

    /// The service CIDRs of a family.
    pub fn service_cidrs(&self, family: Family) -> Vec<IpNet> {
        Config::cidrs(&self.service_cidrs, family)
    }

    /// The NodePort addresses of a family, loopback left out.
    pub fn nodeport_addresses(&self, family: Family) -> Vec<IpNet> {
        let loopback: IpNet = match family {
            Family::Ipv4 => IpNet::from(ipnet::Ipv4Net::new_assert(
                std::net::Ipv4Addr::new(127, 0, 0, 0),
                8,
            )),
            Family::Ipv6 => IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        };
        Config::cidrs(&self.nodeport_addresses, family)
            .iter()
            .flat_map(|n| without(*n, loopback))
            .collect()
    }
}

/// `net` without the addresses of `hole`, as the fewest prefixes (`net`
/// itself when they do not overlap, nothing when `hole` covers it).
fn without(net: IpNet, hole: IpNet) -> Vec<IpNet> {
    if !net.contains(&hole) {
        return if hole.contains(&net) {
            Vec::new()
        } else {
            vec![net]
        };
    }
    let mut out = Vec::new();
    let mut rest = net;
    while rest != hole {
        let Ok(halves) = rest.subnets(rest.prefix_len() + 1) else {
            break;
        };
        for half in halves {
            if half.contains(&hole) {
                rest = half;
            } else {
                out.push(half);
            }
        }
    }
    out
}

/// One element of a static set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    /// Family of the table.
    pub family: Family,
    /// The set or map (always a static one).
    pub set: &'static str,
    /// Key, in nft syntax (shared with the transactions that write it).
    pub key: Arc<str>,
    /// Value of a map element.
    pub value: Option<Arc<str>>,
}

/// A chain with its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Family of the table.
    pub family: Family,
    /// Name.
    pub name: String,
    /// Hook declaration of a base chain.
    pub base: Option<String>,
    /// Rules, in order.
    pub rules: Vec<String>,
}

/// A set or map of a Service (session-affinity sets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// Family of the table.
    pub family: Family,
    /// Name.
    pub name: String,
    /// Declaration.
    pub decl: SetDecl,
}

/// Where traffic enters a Service port. Two Services may claim one entry
/// (a shared external address by mistake): the first in key order wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// A ClusterIP, externalIP or LoadBalancer address and port.
    Address {
        /// The address.
        addr: IpAddr,
        /// Protocol.
        protocol: Protocol,
        /// Port.
        port: u16,
    },
    /// A NodePort.
    NodePort {
        /// Family (NodePorts exist in each family's table).
        family: Family,
        /// Protocol.
        protocol: Protocol,
        /// The node port.
        port: u16,
    },
}

/// Where UDP conntrack entries of a Service point from: deleting them
/// when an endpoint goes keeps clients from sending into the void.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConntrackTarget {
    /// Original destination address.
    Address(IpAddr),
    /// Original destination port on a node address.
    NodePort(Family, u16),
}

/// What one Service contributes to the ruleset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Whose rules these are, and how it ranks when another Service claims
    /// one of its entry points.
    pub seniority: Seniority,
    /// Map elements per entry point (dispatch, endpoint slots, firewall).
    pub entries: Vec<(Entry, Vec<Element>)>,
    /// Set elements other Services may add too (ClusterIPs, hairpin).
    pub shared: Vec<Element>,
    /// Chains of this Service alone.
    pub chains: Vec<Chain>,
    /// Sets of this Service alone.
    pub sets: Vec<Set>,
    /// Pick chains it jumps to.
    pub picks: Vec<(Family, Pick)>,
    /// UDP flows it NATs: (original destination, endpoint address and
    /// port).
    pub udp: Vec<(ConntrackTarget, SocketAddr)>,
}

impl Rendered {
    /// The elements of an entry.
    pub fn entry(&self, entry: &Entry) -> Option<&[Element]> {
        self.entries
            .iter()
            .find(|(e, _)| e == entry)
            .map(|(_, els)| els.as_slice())
    }

    fn pick(&mut self, family: Family, pick: Pick) -> String {
        if pick.slots == PickSlots::Masquerade {
            self.pick(
                family,
                Pick {
                    slots: PickSlots::Cluster,
                    ..pick
                },
            );
        }
        if !self.picks.contains(&(family, pick)) {
            self.picks.push((family, pick));
        }
        format!("goto {}", pick.name())
    }
}

/// An endpoint of one Service port in one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Backend {
    addr: IpAddr,
    port: u16,
    /// Its pod may be on this node (hairpin possible).
    hairpin: bool,
}

/// The endpoints traffic may go to: the ready ones, else the serving and
/// terminating ones; only those on this node when `node` is given.
fn usable(
    endpoints: &[Endpoint],
    port: &ServicePort,
    family: Family,
    node: Option<&str>,
    me: &str,
    zone: Option<&str>,
) -> Vec<Backend> {
    let candidates: Vec<(&Endpoint, Backend)> = endpoints
        .iter()
        .filter(|e| family.contains(&e.address))
        .filter(|e| node.is_none_or(|n| e.node_name.as_deref() == Some(n)))
        .filter_map(|e| {
            let p = e
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)?;
            Some((
                e,
                Backend {
                    addr: e.address,
                    port: p.port,
                    hairpin: e.node_name.as_deref().is_none_or(|n| n == me),
                },
            ))
        })
        .collect();
    let pick = |f: &dyn Fn(&Endpoint) -> bool| -> Vec<Backend> {
        let mut v: Vec<Backend> = candidates
            .iter()
            .filter(|(e, _)| f(e))
            .map(|(_, b)| *b)
            .collect();
        v.sort();
        v.dedup_by_key(|b| (b.addr, b.port));
        v
    };
    let ready = pick(&|e| e.ready);
    if ready.is_empty() {
        return pick(&|e| e.serving && e.terminating);
    }
    // Zone hints narrow the cluster-wide set (never the node-local one,
    // nor the terminating fallback), as kube-proxy's CategorizeEndpoints:
    // only when every ready endpoint has hints and one is for this zone.
    if node.is_none()
        && let Some(zone) = zone
    {
        let ready_eps = || candidates.iter().filter(|(e, _)| e.ready);
        let for_zone = |e: &Endpoint| zone_hints(e).iter().any(|z| z == zone);
        if ready_eps().all(|(e, _)| !zone_hints(e).is_empty())
            && ready_eps().any(|(e, _)| for_zone(e))
        {
            return pick(&|e| e.ready && for_zone(e));
        }
    }
    ready
}

fn zone_hints(e: &Endpoint) -> &[String] {
    e.zone_hints.as_deref().unwrap_or_default()
}

/// The addresses and ports of the serving endpoints of a port (ready ones,
/// and terminating ones that still serve), on any node.
fn serving(endpoints: &[Endpoint], port: &ServicePort, family: Family) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|e| family.contains(&e.address) && (e.ready || e.serving))
        .filter_map(|e| {
            let p = e
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)?;
            Some(SocketAddr::new(e.address, p.port))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The number of ready node-local endpoints of a Service (distinct
/// addresses), as its `healthCheckNodePort` reports it. As in kube-proxy,
/// terminating endpoints do not count, even while they still serve (the
/// rules use them as a last resort): a load balancer then drains the node.
pub fn local_endpoint_count(svc: &ServiceInfo, endpoints: &[Endpoint], node: &str) -> usize {
    let mut addrs: Vec<IpAddr> = Vec::new();
    for port in &svc.ports {
        for family in Family::ALL {
            for b in usable(endpoints, port, family, Some(node), node, None) {
                let ready = endpoints
                    .iter()
                    .any(|e| e.address == b.addr && e.ready && !e.terminating);
                if ready && !addrs.contains(&b.addr) {
                    addrs.push(b.addr);
                }
            }
        }
    }
    addrs.len()
}

/// Appends a number. Element text is written without the formatting
/// machinery: a full sync makes hundreds of thousands of keys and values.
fn push_num(s: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        s.push(char::from(d));
    }
}

/// Appends an address as `Display` writes it.
fn push_addr(s: &mut String, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                push_num(s, u32::from(octet));
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(s, "{a}");
        }
    }
}

/// Concatenates the parts of an element's key or value: addresses, numbers
/// and words, joined with ` . `.
fn concat<'a>(parts: impl IntoIterator<Item = Part<'a>>) -> Arc<str> {
    thread_local! {
        /// Text is written here, then copied once into its `Arc`.
        static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
    }
    SCRATCH.with_borrow_mut(|s| {
        s.clear();
        for (i, p) in parts.into_iter().enumerate() {
            if i > 0 {
                s.push_str(" . ");
            }
            match p {
                Part::Addr(a) => push_addr(s, a),
                Part::Num(n) => push_num(s, n),
                Part::Word(w) => s.push_str(w),
            }
        }
        Arc::from(s.as_str())
    })
}

/// A part of an element's key or value.
#[derive(Clone, Copy)]
enum Part<'a> {
    Addr(IpAddr),
    Num(u32),
    Word(&'a str),
}

fn addr_port(family: Family, addr: IpAddr, port: u16) -> String {
    match family {
        Family::Ipv4 => format!("{addr}:{port}"),
        Family::Ipv6 => format!("[{addr}]:{port}"),
    }
}

fn net(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

fn net_list(nets: &[IpNet]) -> String {
    match nets {
        [one] => net(one),
        many => format!(
            "{{ {} }}",
            many.iter().map(net).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// What one Service port needs, for one family.
struct PortCtx<'a> {
    family: Family,
    svc: &'a ServiceInfo,
    port: &'a ServicePort,
    cluster_ip: IpAddr,
    external: Vec<IpAddr>,
    node_port: Option<u16>,
    all: Vec<Backend>,
    local: Vec<Backend>,
    /// Addresses of every serving endpoint of the port (ready, or
    /// terminating and still serving; any node); UDP ports only.
    serving: Vec<SocketAddr>,
}

impl PortCtx<'_> {
    /// The Service port as generated names spell it (only Service ports
    /// with chains of their own need it).
    fn spn(&self) -> ServicePortName {
        ServicePortName {
            namespace: self.svc.namespace.clone(),
            name: self.svc.name.clone(),
            protocol: self.port.protocol,
            port: self.port.port,
        }
    }

    /// The port every usable endpoint listens on (local ones included);
    /// `None` when they differ (a named port with different numbers in
    /// different pods) or there is no endpoint.
    fn target_port(&self) -> Option<u16> {
        let mut ports = self.all.iter().chain(&self.local).map(|b| b.port);
        let first = ports.next()?;
        ports.all(|p| p == first).then_some(first)
    }
}

/// What a Service adds to the ruleset. Headless and ExternalName Services
/// add nothing.
pub fn render_service(cfg: &Config, svc: &ServiceInfo, endpoints: &[Endpoint]) -> Rendered {
    let mut r = Rendered {
        seniority: svc.seniority(),
        ..Rendered::default()
    };
    if svc.type_ == ServiceType::ExternalName
        || svc.headless
        || !svc.proxy.programmed_by(cfg.service_proxy_name.as_deref())
    {
        return r;
    }
    for family in Family::ALL {
        let Some(&cluster_ip) = svc.cluster_ips.iter().find(|a| family.contains(a)) else {
            continue;
        };
        r.shared.push(Element {
            family,
            set: CLUSTER_IPS,
            key: concat([Part::Addr(cluster_ip)]),
            value: None,
        });
        let mut external: Vec<IpAddr> = Vec::new();
        for a in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
            if family.contains(a) && *a != cluster_ip && !external.contains(a) {
                external.push(*a);
            }
        }
        for port in &svc.ports {
            let ctx = PortCtx {
                family,
                svc,
                port,
                cluster_ip,
                external: external.clone(),
                node_port: port.node_port.filter(|_| {
                    matches!(svc.type_, ServiceType::NodePort | ServiceType::LoadBalancer)
                }),
                all: usable(
                    endpoints,
                    port,
                    family,
                    None,
                    &cfg.node_name,
                    cfg.zone.as_deref(),
                ),
                local: usable(
                    endpoints,
                    port,
                    family,
                    Some(&cfg.node_name),
                    &cfg.node_name,
                    None,
                ),
                // Only UDP flows are cleared; the others need no list.
                serving: if port.protocol == Protocol::Udp {
                    serving(endpoints, port, family)
                } else {
                    Vec::new()
                },
            };
            render_port(cfg, svc, &ctx, &mut r);
        }
    }
    r.shared.sort();
    r.shared.dedup();
    r.udp.sort();
    r.udp.dedup();
    r
}

fn element(family: Family, set: &'static str, key: Arc<str>, value: String) -> Element {
    Element {
        family,
        set,
        key,
        value: Some(value.into()),
    }
}

/// `addr . port . slot : endpoint` elements (the port is the entry's
/// element in `service-ports-*`).
fn slots(c: &PortCtx<'_>, addr: IpAddr, backends: &[Backend], offset: u32) -> Vec<Element> {
    let prefix = concat([Part::Addr(addr), Part::Num(c.port.port.into())]);
    (0u32..)
        .zip(backends)
        .map(|(i, b)| Element {
            family: c.family,
            set: service_backends(c.port.protocol),
            key: slot_key(&prefix, offset + i),
            value: Some(concat([Part::Addr(b.addr)])),
        })
        .collect()
}

/// `<prefix> . <slot>`, without formatting the prefix again for every slot.
fn slot_key(prefix: &str, slot: u32) -> Arc<str> {
    concat([Part::Word(prefix), Part::Num(slot)])
}

/// `nodeport . slot : endpoint` elements (the port is in
/// `nodeport-ports-*`).
fn nodeport_slots(c: &PortCtx<'_>, np: u16, backends: &[Backend], offset: u32) -> Vec<Element> {
    let prefix = concat([Part::Num(np.into())]);
    (0u32..)
        .zip(backends)
        .map(|(i, b)| Element {
            family: c.family,
            set: nodeport_backends(c.port.protocol),
            key: slot_key(&prefix, offset + i),
            value: Some(concat([Part::Addr(b.addr)])),
        })
        .collect()
}

/// The rules of an external chain under `externalTrafficPolicy: Local`:
/// pods and the node itself reach every endpoint (the node masqueraded),
/// others only the local ones, and are dropped when there are none.
fn external_rules(
    cfg: &Config,
    c: &PortCtx<'_>,
    entry: PickEntry,
    r: &mut Rendered,
) -> Vec<String> {
    let f = c.family.nft();
    let all = r.pick(
        c.family,
        Pick {
            entry,
            slots: PickSlots::Cluster,
            n: c.all.len(),
        },
    );
    let local = if c.local.is_empty() {
        "drop".to_owned()
    } else {
        r.pick(
            c.family,
            Pick {
                entry,
                slots: PickSlots::Local,
                n: c.local.len(),
            },
        )
    };
    short_circuit(cfg, c.family, f, &all, local)
}

fn short_circuit(cfg: &Config, family: Family, f: &str, all: &str, local: String) -> Vec<String> {
    let mut rules = Vec::new();
    let cluster = cfg.cluster_cidrs(family);
    if !cluster.is_empty() {
        rules.push(format!("{f} saddr {} {all}", net_list(&cluster)));
    }
    rules.push(format!("fib saddr type local jump {MARK_FOR_MASQUERADE}"));
    rules.push(format!("fib saddr type local {all}"));
    rules.push(local);
    rules
}

/// The per-Service verdicts of a Service port with session affinity or
/// with endpoints on different ports.
struct ServiceChains {
    /// `goto service-…`.
    service: String,
    /// `goto local-…`, when there are local endpoints and a Local policy.
    local: Option<String>,
    /// `goto external-…`, when it has external addresses or a NodePort.
    external: Option<String>,
}

/// kube-proxy's shape: per endpoint a chain that DNATs (and with session
/// affinity first records the client in the endpoint's affinity set); the
/// Service chain sends clients found in a set to that endpoint, others to
/// one chosen at random.
fn render_chains(
    cfg: &Config,
    c: &PortCtx<'_>,
    timeout: Option<Duration>,
    want_local: bool,
    etp_local: bool,
    r: &mut Rendered,
) -> ServiceChains {
    let family = c.family;
    let f = family.nft();
    let p = proto(c.port.protocol);
    let spn = c.spn();
    // Local endpoints are not always among all of them: when no local
    // one is ready, serving and terminating local ones stand in.
    let mut backends: Vec<Backend> = c.all.iter().chain(&c.local).copied().collect();
    backends.sort();
    backends.dedup_by_key(|b| (b.addr, b.port));
    for b in &backends {
        let mut rules = Vec::new();
        if let Some(timeout) = timeout {
            let set = names::affinity_set(&spn, b.addr, b.port, timeout);
            r.sets.push(Set {
                family,
                name: set.clone(),
                decl: SetDecl::set(format!("type {}", family.addr_type()))
                    .flags(&["dynamic", "timeout"])
                    .timeout(timeout),
            });
            rules.push(format!("update @{set} {{ {f} saddr }}"));
        }
        rules.push(format!(
            "meta l4proto {p} dnat {f} to {}",
            addr_port(family, b.addr, b.port)
        ));
        r.chains.push(Chain {
            family,
            name: endpoint_chain(&spn, b.addr, b.port),
            base: None,
            rules,
        });
    }
    let pick_chain = |backends: &[Backend]| -> Vec<String> {
        let mut rules: Vec<String> = match timeout {
            Some(timeout) => backends
                .iter()
                .map(|b| {
                    format!(
                        "{f} saddr @{} goto {}",
                        names::affinity_set(&spn, b.addr, b.port, timeout),
                        endpoint_chain(&spn, b.addr, b.port)
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        let arms: Vec<String> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i} : goto {}", endpoint_chain(&spn, b.addr, b.port)))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            backends.len(),
            arms.join(", ")
        ));
        rules
    };
    let service = service_chain(ServiceChain::Service, &spn);
    r.chains.push(Chain {
        family,
        name: service.clone(),
        base: None,
        rules: pick_chain(&c.all),
    });
    let local = if want_local && !c.local.is_empty() {
        let name = service_chain(ServiceChain::Local, &spn);
        r.chains.push(Chain {
            family,
            name: name.clone(),
            base: None,
            rules: pick_chain(&c.local),
        });
        Some(format!("goto {name}"))
    } else {
        None
    };
    let external = if c.external.is_empty() && c.node_port.is_none() {
        None
    } else {
        let name = service_chain(ServiceChain::External, &spn);
        let to_service = format!("goto {service}");
        let rules = if etp_local {
            short_circuit(
                cfg,
                family,
                f,
                &to_service,
                local.clone().unwrap_or_else(|| "drop".to_owned()),
            )
        } else {
            vec![format!("jump {MARK_FOR_MASQUERADE}"), to_service.clone()]
        };
        r.chains.push(Chain {
            family,
            name: name.clone(),
            base: None,
            rules,
        });
        Some(format!("goto {name}"))
    };
    ServiceChains {
        service: format!("goto {service}"),
        local,
        external,
    }
}

mod port;
mod statics;

use port::render_port;
pub use statics::{StaticRules, render_static};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_text_is_what_display_writes() {
        for addr in ["0.0.0.0", "10.96.0.1", "255.255.255.255", "fd00::1", "::"] {
            let a: IpAddr = addr.parse().unwrap();
            assert_eq!(&*concat([Part::Addr(a)]), a.to_string());
        }
        for n in [0, 9, 10, 80, 65_535, 1_000_000, u32::MAX] {
            assert_eq!(&*concat([Part::Num(n)]), n.to_string());
        }
        let key = concat([
            Part::Addr("10.96.0.1".parse().unwrap()),
            Part::Word("tcp"),
            Part::Num(80),
        ]);
        assert_eq!(&*key, "10.96.0.1 . tcp . 80");
        assert_eq!(&*slot_key("10.96.0.1 . 80", 3), "10.96.0.1 . 80 . 3");
    }
}
