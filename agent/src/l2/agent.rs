//! This node's announcing side: the responders it runs for the addresses
//! the plan gives it, and the metrics of what they send.

use super::{Plan, per_interface};
use portico_catalog::Key;
use portico_dataplane::l2::{Link, Responder, links};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// A change of owner seen by this node: it took `address` over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    /// The address.
    pub address: IpAddr,
    /// Its Service.
    pub service: Key,
    /// The owner before, as this node saw it.
    pub from: Option<String>,
}

/// This node's announcing side: the responders it runs and what it
/// announced last.
pub struct L2Agent {
    node: String,
    garp_interval: Duration,
    responders: BTreeMap<String, Responder>,
    last: Plan,
    /// Frames sent by responders since closed.
    retired: (u64, u64, u64),
    /// The node's links (the system's; tests give their own).
    links: fn() -> Vec<Link>,
    /// Opens a responder on a link (raw sockets; tests give their own).
    open: fn(&Link, Duration) -> std::io::Result<Responder>,
}

impl L2Agent {
    /// Announces nothing yet.
    pub fn new(node: &str, garp_interval: Duration) -> Self {
        L2Agent {
            node: node.to_owned(),
            garp_interval,
            responders: BTreeMap::new(),
            last: Plan::default(),
            retired: (0, 0, 0),
            links,
            open: Responder::open,
        }
    }

    /// The same agent over other links and responders (tests).
    pub fn with_io(
        mut self,
        links: fn() -> Vec<Link>,
        open: fn(&Link, Duration) -> std::io::Result<Responder>,
    ) -> Self {
        self.links = links;
        self.open = open;
        self
    }

    /// The addresses announced now.
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.responders
            .values()
            .flat_map(|r| r.addresses())
            .collect()
    }

    /// Frames sent: (ARP replies, neighbour advertisements, gratuitous).
    pub fn counters(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.responders.values().fold(self.retired, |(a, n, g), r| {
            let c = r.counters();
            (
                a + c.arp_replies.load(Relaxed),
                n + c.neighbor_advertisements.load(Relaxed),
                g + c.gratuitous.load(Relaxed),
            )
        })
    }

    /// Brings the responders to the plan; returns the addresses this node
    /// took over.
    pub fn apply(&mut self, plan: Plan) -> Vec<Takeover> {
        let links = (self.links)();
        let announced_before = self.announced();
        let wanted = per_interface(&plan, &self.node, &links);
        let gone: Vec<String> = self
            .responders
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = self.responders.remove(&name) {
                use std::sync::atomic::Ordering::Relaxed;
                let c = r.counters();
                self.retired.0 += c.arp_replies.load(Relaxed);
                self.retired.1 += c.neighbor_advertisements.load(Relaxed);
                self.retired.2 += c.gratuitous.load(Relaxed);
                tracing::info!(interface = %name, "no longer announcing on this interface");
            }
        }
        for (name, addresses) in &wanted {
            let Some(link) = links.iter().find(|l| &l.name == name) else {
                continue;
            };
            if !self.responders.contains_key(name) {
                match (self.open)(link, self.garp_interval) {
                    Ok(r) => {
                        tracing::info!(interface = %name, "announcing on layer 2");
                        self.responders.insert(name.clone(), r);
                    }
                    Err(e) => {
                        tracing::warn!(interface = %name, error = %e, "cannot open a raw socket (CAP_NET_RAW is needed)");
                        continue;
                    }
                }
            }
            if let Some(r) = self.responders.get_mut(name) {
                r.set(addresses, index_of(name));
            }
        }
        // A takeover is an address this node answers for now and did not
        // before: one planned here whose responder could not be opened is
        // not answered, so it is no takeover (and nobody is told it is).
        let announced = self.announced();
        let mut takeovers = Vec::new();
        for p in plan.owned_by(&self.node) {
            let before = self
                .last
                .addresses
                .get(&p.address)
                .and_then(|b| b.owner.clone());
            if announced.contains(&p.address) && !announced_before.contains(&p.address) {
                tracing::info!(address = %p.address, service = %p.service, from = ?before, "taking over the announcement");
                takeovers.push(Takeover {
                    address: p.address,
                    service: p.service.clone(),
                    from: before,
                });
            }
        }
        for (a, p) in &self.last.addresses {
            let now = plan.addresses.get(a).and_then(|p| p.owner.as_deref());
            if p.owner.as_deref() == Some(self.node.as_str()) && now != Some(self.node.as_str()) {
                tracing::info!(address = %a, to = ?now, "no longer announcing");
            }
        }
        self.last = plan;
        takeovers
    }

    /// The plan last applied.
    pub fn plan(&self) -> &Plan {
        &self.last
    }
}

/// The interface index of `name` (0 when it is gone: the kernel then
/// picks, and the membership is only an optimisation).
fn index_of(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Prometheus metrics of L2 announcement on one node.
#[derive(Clone, Debug, Default)]
pub struct L2Metrics {
    /// Addresses this node announces.
    pub announced: prometheus_client::metrics::gauge::Gauge,
    /// Addresses this node took over.
    pub takeovers: prometheus_client::metrics::counter::Counter,
    /// Agents alive in the gossip (this one included).
    pub live_agents: prometheus_client::metrics::gauge::Gauge,
    /// ARP replies sent.
    pub arp_replies: prometheus_client::metrics::counter::Counter,
    /// Solicited neighbour advertisements sent.
    pub neighbor_advertisements: prometheus_client::metrics::counter::Counter,
    /// Gratuitous ARP / unsolicited advertisement frames sent.
    pub gratuitous: prometheus_client::metrics::counter::Counter,
    /// Gossip datagrams dropped, by reason.
    pub gossip_dropped: crate::gossip::DropCounts,
}

impl L2Metrics {
    /// Registers under `portico_l2_`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("portico_l2");
        r.register(
            "announced_addresses",
            "LoadBalancer addresses this node announces (ARP/NDP)",
            self.announced.clone(),
        );
        r.register(
            "takeovers",
            "Addresses this node took over from another (or from none)",
            self.takeovers.clone(),
        );
        r.register(
            "live_agents",
            "Node agents alive in the gossip, this one included",
            self.live_agents.clone(),
        );
        r.register("arp_replies", "ARP replies sent", self.arp_replies.clone());
        r.register(
            "neighbor_advertisements",
            "Solicited neighbour advertisements sent",
            self.neighbor_advertisements.clone(),
        );
        r.register(
            "gratuitous_frames",
            "Gratuitous ARP and unsolicited neighbour advertisement frames sent",
            self.gratuitous.clone(),
        );
        r.register(
            "gossip_dropped_datagrams",
            "Gossip datagrams dropped: oversized, bad_tag (no valid HMAC), stale, replayed, malformed",
            self.gossip_dropped.clone(),
        );
    }

    /// Brings the frame counters up to the agent's totals.
    pub fn observe(&self, agent: &L2Agent) {
        let (arp, na, garp) = agent.counters();
        let catch_up = |c: &prometheus_client::metrics::counter::Counter, total: u64| {
            c.inc_by(total.saturating_sub(c.get()));
        };
        catch_up(&self.arp_replies, arp);
        catch_up(&self.neighbor_advertisements, na);
        catch_up(&self.gratuitous, garp);
        self.announced
            .set(i64::try_from(agent.announced().len()).unwrap_or(i64::MAX));
    }
}
