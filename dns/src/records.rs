//! The records of one Service, per the Kubernetes DNS-Based Service
//! Discovery specification 1.1.0:
//!
//! | Service | name | records |
//! | --- | --- | --- |
//! | ClusterIP (any type with ClusterIPs) | `<svc>.<ns>.svc.<zone>` | A/AAAA: the ClusterIPs |
//! | | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | SRV for each named port → `<svc>.<ns>.svc.<zone>`, the ClusterIPs in additional |
//! | | `<svc>.<ns>.svc.<zone>` | SRV for every port → itself |
//! | | reverse of each ClusterIP | PTR → `<svc>.<ns>.svc.<zone>` |
//! | any with endpoints | `<host>.<svc>.<ns>.svc.<zone>` | A/AAAA of that ready endpoint; `<host>` is its hostname, else its dashed address |
//! | | reverse of each ready endpoint | PTR → `<host>.<svc>.<ns>.svc.<zone>` |
//! | headless | `<svc>.<ns>.svc.<zone>` | A/AAAA: ready endpoints (no name at all when none); SRV for every port of every ready endpoint → `<host>.<svc>…` |
//! | | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | SRV per ready endpoint with that port → `<host>.<svc>…`, addresses in additional |
//! | ExternalName | `<svc>.<ns>.svc.<zone>` | CNAME → the external name (none when it is an IP address) |
//!
//! SRV weights are CoreDNS's: 100 shared by the records of a name, counted
//! before duplicates (one per address of a target) are merged.
//!
//! "Ready" includes not-ready endpoints when the Service sets
//! `publishNotReadyAddresses`.

use crate::node::{Node, Rrset};
use crate::wire::{self, Owner, rtype};
use crate::zone::Zone;
use portico_catalog::{Endpoint, Protocol, ServiceInfo, ServiceType};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The records of a Service: nodes by name, and PTR targets by address.
#[derive(Debug, Default)]
pub(crate) struct Built {
    pub(crate) nodes: Vec<(Vec<u8>, Node)>,
    pub(crate) ptrs: Vec<(IpAddr, Vec<u8>)>,
}

#[derive(Default)]
struct SetBuilder {
    records: Vec<u8>,
    count: u16,
    seen: BTreeSet<Vec<u8>>,
    extra: Vec<u8>,
    extra_count: u16,
    extra_seen: BTreeSet<(Vec<u8>, IpAddr)>,
}

#[derive(Default)]
struct NodeBuilder {
    sets: BTreeMap<u16, SetBuilder>,
}

struct Builder<'z> {
    zone: &'z Zone,
    nodes: BTreeMap<Vec<u8>, NodeBuilder>,
    ptrs: BTreeSet<(IpAddr, Vec<u8>)>,
}

impl Builder<'_> {
    fn node(&mut self, name: &[u8]) -> &mut NodeBuilder {
        self.nodes.entry(name.to_vec()).or_default()
    }

    fn add(&mut self, name: &[u8], rtype: u16, rdata: Vec<u8>) -> Option<&mut SetBuilder> {
        let ttl = self.zone.ttl;
        let set = self.node(name).sets.entry(rtype).or_default();
        if set.count == u16::MAX || set.seen.contains(&rdata) {
            return None;
        }
        wire::push_rr(&mut set.records, Owner::Question, rtype, ttl, &rdata);
        set.count += 1;
        set.seen.insert(rdata);
        Some(set)
    }

    fn add_address(&mut self, name: &[u8], ip: IpAddr) {
        let (t, rdata) = wire::address_rdata(ip);
        self.add(name, t, rdata);
    }

    fn finish(self) -> Built {
        let nodes = self
            .nodes
            .into_iter()
            .map(|(name, nb)| {
                let sets: Vec<Rrset<'_>> = nb
                    .sets
                    .iter()
                    .map(|(t, s)| Rrset::new(*t, s.count, &s.records, s.extra_count, &s.extra))
                    .collect();
                (name, Node::new(&sets))
            })
            .collect();
        Built {
            nodes,
            ptrs: self.ptrs.into_iter().collect(),
        }
    }
}

/// Adds an address record for the SRV set's additional section.
fn add_extra(set: &mut SetBuilder, owner: &[u8], ip: IpAddr, ttl: u32) {
    if set.extra_count == u16::MAX || !set.extra_seen.insert((owner.to_vec(), ip)) {
        return;
    }
    let (t, rdata) = wire::address_rdata(ip);
    wire::push_rr(&mut set.extra, Owner::Name(owner), t, ttl, &rdata);
    set.extra_count += 1;
}

/// SRV weights as CoreDNS gives them: 100 shared by the records.
fn weight(n: usize) -> u16 {
    (100 / n.max(1)).max(1) as u16
}

/// The records of one Service and its endpoints. Names that would be
/// invalid (a label over 63 bytes) are left out.
pub(crate) fn service_records(zone: &Zone, svc: &ServiceInfo, endpoints: &[Endpoint]) -> Built {
    let mut b = Builder {
        zone,
        nodes: BTreeMap::new(),
        ptrs: BTreeSet::new(),
    };
    let Some(svc_name) = wire::name_under(&[&svc.name, &svc.namespace, "svc"], &zone.apex) else {
        return Built::default();
    };

    if svc.type_ == ServiceType::ExternalName {
        // An address is not a name to alias: CoreDNS serves no such
        // Service (NXDOMAIN), and Kubernetes documents it as unresolved.
        if svc
            .external_name
            .as_deref()
            .is_some_and(|n| n.trim_end_matches('.').parse::<IpAddr>().is_ok())
        {
            return Built::default();
        }
        let target = svc
            .external_name
            .as_deref()
            .and_then(wire::name_from_text)
            .filter(|t| t.len() > 1);
        b.node(&svc_name);
        if let Some(target) = target {
            b.add(&svc_name, rtype::CNAME, target);
        }
        return b.finish();
    }

    // The ready endpoints, by name; for any Service with a selector, as
    // CoreDNS answers `<host>.<svc>…` and their PTRs for ClusterIP
    // Services too.
    let ready: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| e.ready || svc.publish_not_ready_addresses)
        .collect();
    let mut hosts: Vec<(&Endpoint, Vec<u8>)> = Vec::new();
    for ep in &ready {
        let host = ep
            .hostname
            .clone()
            .unwrap_or_else(|| wire::dashed(ep.address));
        let Some(host_name) = wire::name_under(&[&host], &svc_name) else {
            continue;
        };
        b.add_address(&host_name, ep.address);
        b.ptrs.insert((ep.address, host_name.clone()));
        hosts.push((ep, host_name));
    }

    if !svc.headless {
        b.node(&svc_name);
        for ip in &svc.cluster_ips {
            b.add_address(&svc_name, *ip);
            b.ptrs.insert((*ip, svc_name.clone()));
        }
        let ttl = zone.ttl;
        // `_<port>._<proto>.<svc>`: one record per ClusterIP, merged, so
        // a dual-stack Service's weight is 50 (CoreDNS counts before it
        // drops duplicates).
        for port in svc.ports.iter().filter(|p| !p.name.is_empty()) {
            let Some(srv) = srv_name(&port.name, port.protocol, &svc_name) else {
                continue;
            };
            let rdata = wire::srv_rdata(0, weight(svc.cluster_ips.len()), port.port, &svc_name);
            if let Some(set) = b.add(&srv, rtype::SRV, rdata) {
                for ip in &svc.cluster_ips {
                    add_extra(set, &svc_name, *ip, ttl);
                }
            }
        }
        // `<svc>` SRV: every port.
        let w = weight(svc.cluster_ips.len() * svc.ports.len());
        for port in &svc.ports {
            let rdata = wire::srv_rdata(0, w, port.port, &svc_name);
            if let Some(set) = b.add(&svc_name, rtype::SRV, rdata) {
                for ip in &svc.cluster_ips {
                    add_extra(set, &svc_name, *ip, ttl);
                }
            }
        }
        return b.finish();
    }

    // Headless: the ready endpoints are the Service's addresses; SRV
    // records point at their names, per named port and (at the Service's
    // own name) for every port.
    let mut srv: BTreeMap<Vec<u8>, Vec<SrvTarget>> = BTreeMap::new();
    for (ep, host_name) in &hosts {
        b.add_address(&svc_name, ep.address);
        for port in ep.ports.iter() {
            let target = (port.port, host_name.clone(), ep.address);
            srv.entry(svc_name.clone())
                .or_default()
                .push(target.clone());
            if port.name.is_empty() {
                continue;
            }
            if let Some(name) = srv_name(&port.name, port.protocol, &svc_name) {
                srv.entry(name).or_default().push(target);
            }
        }
    }
    for (name, targets) in srv {
        // CoreDNS shares 100 among the records before it drops duplicates.
        let w = weight(targets.len());
        for (port, host, ip) in &targets {
            let ttl = zone.ttl;
            if let Some(set) = b.add(&name, rtype::SRV, wire::srv_rdata(0, w, *port, host)) {
                add_extra(set, host, *ip, ttl);
            } else if let Some(set) = b.node(&name).sets.get_mut(&rtype::SRV) {
                // The same host again (dual-stack): its other address.
                add_extra(set, host, *ip, ttl);
            }
        }
    }
    b.finish()
}

/// An SRV target: endpoint port, target name, its address.
type SrvTarget = (u16, Vec<u8>, IpAddr);

fn srv_name(port: &str, protocol: Protocol, svc_name: &[u8]) -> Option<Vec<u8>> {
    let port = format!("_{port}");
    let proto = format!("_{}", protocol.srv_label());
    wire::name_under(&[&port, &proto], svc_name)
}
