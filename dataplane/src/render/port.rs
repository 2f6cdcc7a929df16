//! What one Service port adds, one emitter per kind of entry: its
//! ClusterIP, its external addresses (externalIPs and LoadBalancer
//! ingress) and its NodePort, with the hairpin elements of its endpoints.

use super::*;

/// Renders one port of one family into `r`.
pub(super) fn render_port(cfg: &Config, svc: &ServiceInfo, c: &PortCtx<'_>, r: &mut Rendered) {
    hairpins(c, r);
    udp_flows(c, r);
    let port = PortRender::new(cfg, svc, c, r);
    port.cluster_ip(r);
    port.external(r);
    port.node_port(r);
}

/// The UDP flows of the port's entry points that may live on: those to a
/// serving endpoint, whatever the traffic policies pick (kube-proxy clears
/// the flows whose endpoint no longer serves, and only those; a draining
/// endpoint keeps its flows).
fn udp_flows(c: &PortCtx<'_>, r: &mut Rendered) {
    if c.port.protocol != Protocol::Udp {
        return;
    }
    let targets = std::iter::once(ConntrackTarget::Address(c.cluster_ip))
        .chain(c.external.iter().map(|a| ConntrackTarget::Address(*a)))
        .chain(
            c.node_port
                .map(|np| ConntrackTarget::NodePort(c.family, np)),
        );
    for target in targets {
        r.udp.extend(c.serving.iter().map(|a| (target, *a)));
    }
}

/// Endpoints that reach themselves through the Service are masqueraded:
/// every endpoint a connection may be sent to, node-local ones included
/// (a terminating one that only a `Local` policy still picks, too; every
/// endpoint chain of kube-proxy masquerades its own address).
fn hairpins(c: &PortCtx<'_>, r: &mut Rendered) {
    for b in c.all.iter().chain(&c.local) {
        if b.hairpin {
            r.shared.push(Element {
                family: c.family,
                set: HAIRPIN,
                key: concat([Part::Addr(b.addr), Part::Addr(b.addr)]),
                value: None,
            });
        }
    }
}

/// What every entry of one port shares.
struct PortRender<'a> {
    cfg: &'a Config,
    svc: &'a ServiceInfo,
    c: &'a PortCtx<'a>,
    itp_local: bool,
    etp_local: bool,
    /// The port every endpoint listens on, if one.
    target_port: Option<u16>,
    /// Chains of the port's own (session affinity, or endpoints on
    /// different ports).
    service_chains: Option<ServiceChains>,
}

impl<'a> PortRender<'a> {
    fn new(cfg: &'a Config, svc: &'a ServiceInfo, c: &'a PortCtx<'a>, r: &mut Rendered) -> Self {
        let itp_local = svc.internal_traffic_policy == TrafficPolicy::Local;
        let etp_local = svc.external_traffic_policy == TrafficPolicy::Local;
        let affinity = match svc.session_affinity {
            SessionAffinity::ClientIp { timeout } => Some(timeout),
            SessionAffinity::None => None,
        };
        // Session affinity, or endpoints on different ports: kube-proxy's
        // shape, per-Service chains. Otherwise the shared pick chains take
        // the port from the entry's element in a ports map.
        let target_port = c.target_port();
        let service_chains = (!c.all.is_empty() && (affinity.is_some() || target_port.is_none()))
            .then(|| render_chains(cfg, c, affinity, itp_local || etp_local, etp_local, r));
        PortRender {
            cfg,
            svc,
            c,
            itp_local,
            etp_local,
            target_port,
            service_chains,
        }
    }

    /// `addr . port : target port`, or `nodeport : target port`.
    fn port_of(&self, addr: Option<IpAddr>, port: u16) -> Element {
        let c = self.c;
        Element {
            family: c.family,
            set: match addr {
                Some(_) => service_ports(c.port.protocol),
                None => nodeport_ports(c.port.protocol),
            },
            key: match addr {
                Some(a) => concat([Part::Addr(a), Part::Num(port.into())]),
                None => concat([Part::Num(port.into())]),
            },
            value: Some(concat([Part::Num(
                self.target_port.unwrap_or_default().into(),
            )])),
        }
    }

    /// The ClusterIP: its endpoints (the local ones with
    /// `internalTrafficPolicy: Local`), or a reject or drop without any.
    fn cluster_ip(&self, r: &mut Rendered) {
        let c = self.c;
        let (family, port) = (c.family, c.port.port);
        let internal = if self.itp_local { &c.local } else { &c.all };
        let entry = Entry::Address {
            addr: c.cluster_ip,
            protocol: c.port.protocol,
            port,
        };
        let key = concat([
            Part::Addr(c.cluster_ip),
            Part::Word(proto(c.port.protocol)),
            Part::Num(port.into()),
        ]);
        let mut els = Vec::new();
        if internal.is_empty() {
            let verdict = if c.all.is_empty() {
                format!("goto {REJECT_CHAIN}")
            } else {
                "drop".to_owned()
            };
            els.push(element(family, NO_ENDPOINT_SERVICES, key, verdict));
        } else {
            let verdict = match &self.service_chains {
                Some(a) if self.itp_local => a.local.clone().unwrap_or_default(),
                Some(a) => a.service.clone(),
                None => {
                    els.extend(slots(c, c.cluster_ip, internal, 0));
                    els.push(self.port_of(Some(c.cluster_ip), port));
                    r.pick(
                        family,
                        Pick {
                            entry: PickEntry::Address,
                            slots: PickSlots::Cluster,
                            n: internal.len(),
                        },
                    )
                }
            };
            els.push(element(family, SERVICE_IPS, key, verdict));
        }
        r.entries.push((entry, els));
    }

    /// externalIPs and LoadBalancer addresses (with
    /// `loadBalancerSourceRanges`).
    fn external(&self, r: &mut Rendered) {
        let (cfg, svc, c) = (self.cfg, self.svc, self.c);
        let (family, port, p) = (c.family, c.port.port, proto(c.port.protocol));
        let external_chain = if c.all.is_empty() || c.external.is_empty() {
            None
        } else if let Some(a) = &self.service_chains {
            a.external.clone()
        } else if self.etp_local {
            let name = service_chain(ServiceChain::External, &c.spn());
            let rules = external_rules(cfg, c, PickEntry::Address, r);
            r.chains.push(Chain {
                family,
                name: name.clone(),
                base: None,
                rules,
            });
            Some(format!("goto {name}"))
        } else {
            None
        };
        for &addr in &c.external {
            let entry = Entry::Address {
                addr,
                protocol: c.port.protocol,
                port,
            };
            let key = concat([Part::Addr(addr), Part::Word(p), Part::Num(port.into())]);
            let mut els = Vec::new();
            // Ranges of the address's own family: an address of a family
            // without any is open to all, as in kube-proxy.
            let ranges = Config::cidrs(&svc.load_balancer_source_ranges, family);
            if svc.load_balancer_ips.contains(&addr) && !ranges.is_empty() {
                els.push(Element {
                    family,
                    set: FIREWALL_IPS,
                    key: key.clone(),
                    value: None,
                });
                // (A range holds no address of the other family.)
                let from_node = ranges
                    .iter()
                    .any(|r| cfg.node_ips.iter().any(|ip| r.contains(ip)));
                // The node's own traffic to the address may come back with
                // the address as its source (kube-proxy's allowFromNode).
                let sources = ranges
                    .into_iter()
                    .chain(from_node.then(|| IpNet::from(addr)));
                for range in sources {
                    els.push(Element {
                        family,
                        set: FIREWALL_ALLOW,
                        key: format!("{key} . {}", net(&range)).into(),
                        value: None,
                    });
                }
            }
            if c.all.is_empty() {
                els.push(element(
                    family,
                    NO_ENDPOINT_SERVICES,
                    key,
                    format!("goto {REJECT_CHAIN}"),
                ));
            } else {
                let verdict = match &external_chain {
                    Some(v) => {
                        if self.service_chains.is_none() {
                            els.extend(slots(c, addr, &c.all, 0));
                            els.extend(slots(c, addr, &c.local, LOCAL_SLOT_OFFSET));
                            els.push(self.port_of(Some(addr), port));
                        }
                        v.clone()
                    }
                    None => {
                        els.extend(slots(c, addr, &c.all, 0));
                        els.push(self.port_of(Some(addr), port));
                        r.pick(
                            family,
                            Pick {
                                entry: PickEntry::Address,
                                slots: PickSlots::Masquerade,
                                n: c.all.len(),
                            },
                        )
                    }
                };
                els.push(element(family, SERVICE_IPS, key, verdict));
            }
            r.entries.push((entry, els));
        }
    }

    /// The NodePort.
    fn node_port(&self, r: &mut Rendered) {
        let (cfg, c) = (self.cfg, self.c);
        let (family, p) = (c.family, proto(c.port.protocol));
        if let Some(np) = c.node_port {
            let entry = Entry::NodePort {
                family,
                protocol: c.port.protocol,
                port: np,
            };
            let key = concat([Part::Word(p), Part::Num(np.into())]);
            let mut els = Vec::new();
            if c.all.is_empty() {
                els.push(element(
                    family,
                    NO_ENDPOINT_NODEPORTS,
                    key,
                    format!("goto {REJECT_CHAIN}"),
                ));
            } else {
                let verdict = if let Some(a) = &self.service_chains {
                    a.external.clone().unwrap_or_default()
                } else if self.etp_local {
                    let name = service_chain(ServiceChain::NodePort, &c.spn());
                    let rules = external_rules(cfg, c, PickEntry::NodePort, r);
                    r.chains.push(Chain {
                        family,
                        name: name.clone(),
                        base: None,
                        rules,
                    });
                    els.extend(nodeport_slots(c, np, &c.all, 0));
                    els.extend(nodeport_slots(c, np, &c.local, LOCAL_SLOT_OFFSET));
                    els.push(self.port_of(None, np));
                    format!("goto {name}")
                } else {
                    els.extend(nodeport_slots(c, np, &c.all, 0));
                    els.push(self.port_of(None, np));
                    r.pick(
                        family,
                        Pick {
                            entry: PickEntry::NodePort,
                            slots: PickSlots::Masquerade,
                            n: c.all.len(),
                        },
                    )
                };
                els.push(element(family, SERVICE_NODEPORTS, key, verdict));
            }
            r.entries.push((entry, els));
        }
    }
}
