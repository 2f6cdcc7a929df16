//! L2 announcement in the node agent (`portico node`, `portico local
//! --dataplane`): which LoadBalancer addresses this node answers ARP/NDP
//! for, decided from the same objects on every node.
//!
//! ```text
//!  L2Announcements + IPPools + Services + Nodes + endpoints ──> plan (pure)
//!      live nodes (Node Ready, gossip) ──────────────────────────┘   │ per address: eligible nodes -> Ring -> owner
//!                                                                    v
//!  L2Agent: this node's addresses ──> interfaces ──> dataplane::l2::Responder (one per interface)
//!           takeovers ──> portico.dev/announced-by + Event (cluster mode)
//! ```

use kube::core::{Selector, SelectorExt};
use portico_catalog::{Catalog, Key, TrafficPolicy};
use portico_controllers::k8s::{Node, Service};
use portico_controllers::watch::Event;
use portico_crds::names::{EXCLUDE_FROM_LOAD_BALANCERS, l2_reasons};
use portico_crds::{IPPool, L2Announcement};
use portico_dataplane::l2::{Link, Responder, Ring, interfaces_for, links, responder};
use portico_dataplane::local_endpoint_count;
use portico_ipam::{Pool, PoolOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where an address is announced from the node that owns it: interfaces
/// matching `patterns`, and with `auto`, the interface on the address's
/// network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interfaces {
    /// Name patterns.
    pub patterns: BTreeSet<String>,
    /// The interface on the address's network too.
    pub auto: bool,
}

/// One announced address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The address.
    pub address: IpAddr,
    /// The Service that holds it (the first by name when several share it).
    pub service: Key,
    /// The node that announces it; `None` when no eligible node is live.
    pub owner: Option<String>,
    /// Where the owner announces it.
    pub interfaces: Interfaces,
}

/// What every agent computes alike.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Every address some L2Announcement selects, by address.
    pub addresses: BTreeMap<IpAddr, Planned>,
    /// What each L2Announcement's status should say, by name.
    pub announcements: BTreeMap<String, AnnouncementStatus>,
}

/// What an L2Announcement's status should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnouncementStatus {
    /// `Ready` is `True`.
    pub ready: bool,
    /// The condition's reason.
    pub reason: &'static str,
    /// The condition's message (empty when ready).
    pub message: String,
    /// Its addresses that a live node announces.
    pub announced: i64,
}

impl Plan {
    /// The addresses `node` announces.
    pub fn owned_by<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Planned> + 'a {
        self.addresses
            .values()
            .filter(move |p| p.owner.as_deref() == Some(node))
    }

    /// The `portico.dev/announced-by` value of a Service: its owner, or
    /// `<address>=<owner>,…` when its addresses have different owners.
    pub fn announced_by(&self, service: &Key) -> Option<String> {
        let owned: Vec<(&IpAddr, &str)> = self
            .addresses
            .values()
            .filter(|p| &p.service == service)
            .filter_map(|p| p.owner.as_deref().map(|o| (&p.address, o)))
            .collect();
        let first = owned.first()?.1;
        if owned.iter().all(|(_, o)| *o == first) {
            return Some(first.to_owned());
        }
        Some(
            owned
                .iter()
                .map(|(a, o)| format!("{a}={o}"))
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

/// A parsed announcement, or why it cannot be used.
struct Parsed<'a> {
    name: String,
    spec: &'a portico_crds::L2AnnouncementSpec,
    pool_selector: Option<Selector>,
    service_selector: Option<Selector>,
    node_selector: Option<Selector>,
}

fn selector(
    s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    field: &str,
) -> Result<Option<Selector>, String> {
    s.clone()
        .map(|s| Selector::try_from(s).map_err(|e| format!("spec.{field}: {e}")))
        .transpose()
}

fn parse(a: &L2Announcement) -> Result<Parsed<'_>, (&'static str, String)> {
    let sel = |s, f| selector(s, f).map_err(|e| (l2_reasons::INVALID_SELECTOR, e));
    let parsed = Parsed {
        name: a.metadata.name.clone().unwrap_or_default(),
        spec: &a.spec,
        pool_selector: sel(&a.spec.ip_pool_selector, "ipPoolSelector")?,
        service_selector: sel(&a.spec.service_selector, "serviceSelector")?,
        node_selector: sel(&a.spec.node_selector, "nodeSelector")?,
    };
    if let Some(bad) = a
        .spec
        .interfaces
        .iter()
        .find(|p| !responder::valid_pattern(p))
    {
        return Err((
            l2_reasons::INVALID_INTERFACE,
            format!("spec.interfaces: {bad:?} is not an interface name or pattern"),
        ));
    }
    Ok(parsed)
}

fn labels<K: kube::Resource>(o: &K) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    o.meta().labels.as_ref().unwrap_or(&EMPTY)
}

/// Whether a node takes part in L2 announcement: its Node is Ready and,
/// when the agents gossip (`gossip`: the live agents), its agent is alive
/// (this node's own agent always is). The one definition, for the plan,
/// the statuses and the status writer alike.
pub fn is_live(node: &Node, me: &str, gossip: Option<&BTreeSet<String>>) -> bool {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    node_ready(node) && gossip.is_none_or(|g| name == me || g.contains(name))
}

/// Whether a Node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The plan: for every LoadBalancer address in a pool that an
/// L2Announcement selects, for a Service it selects, the owner among the
/// nodes it allows that are `live` (and, for `externalTrafficPolicy:
/// Local`, have a ready local endpoint). Several announcements that select
/// one address pool their nodes and interfaces.
pub fn plan<'a>(
    announcements: impl IntoIterator<Item = &'a L2Announcement>,
    pools: impl IntoIterator<Item = &'a IPPool>,
    services: impl IntoIterator<Item = &'a Service>,
    nodes: impl IntoIterator<Item = &'a Node>,
    catalog: &Catalog,
    live: &dyn Fn(&Node) -> bool,
) -> Plan {
    plan_with(
        announcements,
        pools,
        services,
        nodes,
        catalog,
        live,
        &mut Rings::default(),
    )
}

/// Rings kept from one plan to the next, by their sorted node set: a ring
/// of 1,000 nodes has a million points, built only when the set changes.
#[derive(Default)]
pub struct Rings(BTreeMap<Vec<String>, Ring>);

/// [`plan`], with the rings of the last plan at hand (those it does not use
/// again are dropped).
pub fn plan_with<'a>(
    announcements: impl IntoIterator<Item = &'a L2Announcement>,
    pools: impl IntoIterator<Item = &'a IPPool>,
    services: impl IntoIterator<Item = &'a Service>,
    nodes: impl IntoIterator<Item = &'a Node>,
    catalog: &Catalog,
    live: &dyn Fn(&Node) -> bool,
    cache: &mut Rings,
) -> Plan {
    let mut out = Plan::default();
    let pools: Vec<(&IPPool, Option<Pool>)> = pools
        .into_iter()
        .map(|p| {
            (
                p,
                Pool::parse(&p.spec.addresses, PoolOptions::lb_pool()).ok(),
            )
        })
        .collect();
    let nodes: Vec<&Node> = nodes
        .into_iter()
        .filter(|n| !labels(*n).contains_key(EXCLUDE_FROM_LOAD_BALANCERS))
        .collect();
    let mut valid: Vec<Parsed<'_>> = Vec::new();
    for a in announcements {
        let name = a.metadata.name.clone().unwrap_or_default();
        match parse(a) {
            Ok(p) => {
                let unknown: Vec<&String> = p
                    .spec
                    .ip_pools
                    .iter()
                    .filter(|n| {
                        !pools
                            .iter()
                            .any(|(pool, _)| pool.metadata.name.as_ref() == Some(n))
                    })
                    .collect();
                let status = if unknown.is_empty() {
                    AnnouncementStatus {
                        ready: true,
                        reason: l2_reasons::VALID,
                        message: String::new(),
                        announced: 0,
                    }
                } else {
                    AnnouncementStatus {
                        ready: false,
                        reason: l2_reasons::UNKNOWN_POOL,
                        message: format!("spec.ipPools: no IPPool named {unknown:?}"),
                        announced: 0,
                    }
                };
                out.announcements.insert(name, status);
                valid.push(p);
            }
            Err((reason, message)) => {
                out.announcements.insert(
                    name,
                    AnnouncementStatus {
                        ready: false,
                        reason,
                        message,
                        announced: 0,
                    },
                );
            }
        }
    }

    let mut services: Vec<&Service> = services.into_iter().collect();
    services.sort_by_key(|s| {
        Key::new(
            s.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            s.metadata.name.clone().unwrap_or_default(),
        )
    });
    let mut rings: BTreeMap<Vec<String>, Ring> = BTreeMap::new();
    let mut previous = std::mem::take(&mut cache.0);
    for svc in services {
        let key = Key::new(
            svc.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let Some(info) = catalog.service(&key) else {
            continue;
        };
        for &address in &info.load_balancer_ips {
            if out.addresses.contains_key(&address) {
                // Shared address: the first Service by name speaks for it.
                continue;
            }
            let Some((pool, _)) = pools.iter().find(|(_, p)| {
                p.as_ref()
                    .is_some_and(|p| p.blocks().iter().any(|b| b.contains(address)))
            }) else {
                continue;
            };
            let mut eligible: BTreeMap<&str, Interfaces> = BTreeMap::new();
            let mut selected_by: Vec<&str> = Vec::new();
            for a in &valid {
                let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
                let by_name = a.spec.ip_pools.iter().any(|n| n == pool_name);
                let by_label = a
                    .pool_selector
                    .as_ref()
                    .is_some_and(|s| s.matches(labels(*pool)));
                let every = a.spec.ip_pools.is_empty() && a.pool_selector.is_none();
                if !(by_name || by_label || every) {
                    continue;
                }
                if a.service_selector
                    .as_ref()
                    .is_some_and(|s| !s.matches(labels(svc)))
                {
                    continue;
                }
                selected_by.push(&a.name);
                for node in &nodes {
                    if a.node_selector
                        .as_ref()
                        .is_some_and(|s| !s.matches(labels(*node)))
                    {
                        continue;
                    }
                    let name = node.metadata.name.as_deref().unwrap_or_default();
                    let i = eligible.entry(name).or_default();
                    if a.spec.interfaces.is_empty() {
                        i.auto = true;
                    }
                    i.patterns.extend(a.spec.interfaces.iter().cloned());
                }
            }
            if selected_by.is_empty() {
                continue;
            }
            let local = info.external_traffic_policy == TrafficPolicy::Local;
            let endpoints = catalog.endpoints(&key);
            let candidates: Vec<String> = nodes
                .iter()
                .filter(|n| live(n))
                .filter_map(|n| n.metadata.name.as_deref())
                .filter(|n| eligible.contains_key(n))
                .filter(|n| !local || local_endpoint_count(info, endpoints, n) > 0)
                .map(str::to_owned)
                .collect();
            let ring = rings.entry(candidates.clone()).or_insert_with(|| {
                previous
                    .remove(&candidates)
                    .unwrap_or_else(|| Ring::new(candidates.iter().map(String::as_str)))
            });
            let owner = ring.choose(address).map(str::to_owned);
            let interfaces = owner
                .as_deref()
                .and_then(|o| eligible.get(o).cloned())
                .unwrap_or_default();
            if owner.is_some() {
                for a in selected_by {
                    if let Some(entry) = out.announcements.get_mut(a) {
                        entry.announced += 1;
                    }
                }
            }
            out.addresses.insert(
                address,
                Planned {
                    address,
                    service: key.clone(),
                    owner,
                    interfaces,
                },
            );
        }
    }
    cache.0 = rings;
    out
}

/// The status writes that bring the L2Announcements to the plan: a
/// `Ready` condition (its transition time kept while its status holds) and
/// `announced`. Nothing for those already so.
pub fn status_writes<'a>(
    plan: &Plan,
    current: impl IntoIterator<Item = &'a L2Announcement>,
) -> Vec<portico_controllers::Write> {
    let mut out = Vec::new();
    for a in current {
        let name = a.metadata.name.clone().unwrap_or_default();
        let Some(AnnouncementStatus {
            ready,
            reason,
            message,
            announced,
        }) = plan.announcements.get(&name)
        else {
            continue;
        };
        let status = if *ready { "True" } else { "False" };
        let old = a.status.as_ref();
        let old_ready = old.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        let same = old_ready.is_some_and(|c| {
            c.status == status
                && c.reason == *reason
                && c.message == *message
                && c.observed_generation == a.metadata.generation
        }) && old.is_some_and(|s| s.announced == *announced);
        if same {
            continue;
        }
        let condition = portico_controllers::conditions::condition(
            old.map(|s| s.conditions.as_slice()).unwrap_or_default(),
            "Ready",
            *ready,
            reason,
            message.clone(),
            a.metadata.generation,
        );
        out.push(portico_controllers::Write::Apply(
            portico_controllers::Apply {
                target: portico_controllers::Target {
                    kind: portico_controllers::TargetKind::L2Announcement,
                    namespace: String::new(),
                    name: name.clone(),
                },
                status: true,
                patch: serde_json::json!({
                    "apiVersion": "portico.dev/v1alpha1",
                    "kind": "L2Announcement",
                    "metadata": { "name": name },
                    "status": {
                        "conditions": [condition],
                        "announced": announced,
                    },
                }),
            },
        ));
    }
    out
}

/// The interfaces to announce each of `node`'s addresses on.
pub fn per_interface(
    plan: &Plan,
    node: &str,
    links: &[Link],
) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for p in plan.owned_by(node) {
        let mut names: Vec<String> = Vec::new();
        if p.interfaces.auto {
            names.extend(interfaces_for(p.address, &[], links));
        }
        let patterns: Vec<String> = p.interfaces.patterns.iter().cloned().collect();
        if !patterns.is_empty() {
            names.extend(interfaces_for(p.address, &patterns, links));
        }
        if names.is_empty() {
            tracing::warn!(address = %p.address, "no interface to announce on (none on its network, none matching the patterns)");
        }
        for n in names {
            out.entry(n).or_default().insert(p.address);
        }
    }
    out
}

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

/// What `portico node` knows for L2 announcement, fed by watch events:
/// the L2Announcements, IPPools, Nodes and Services of the cluster.
#[derive(Default)]
pub struct L2Index {
    rings: Rings,
    announcements: Indexed<L2Announcement>,
    pools: Indexed<IPPool>,
    nodes: Indexed<Node>,
    services: Indexed<Service>,
}

/// Objects of one kind by `namespace/name`, rebuilt on every relist;
/// shared with the caller's stores, not copied.
struct Indexed<K> {
    synced: bool,
    /// By key (cluster-scoped objects: an empty namespace).
    objects: BTreeMap<Key, Arc<K>>,
}

impl<K> Default for Indexed<K> {
    fn default() -> Self {
        Indexed {
            synced: false,
            objects: BTreeMap::new(),
        }
    }
}

impl<K: kube::Resource> Indexed<K> {
    fn key(o: &K) -> Key {
        let meta = o.meta();
        Key::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }

    fn feed(&mut self, ev: Event<Arc<K>>) {
        match ev {
            Event::Reset(all) => {
                self.synced = true;
                self.objects = all.into_iter().map(|o| (Self::key(&o), o)).collect();
            }
            Event::Apply(o) => {
                self.objects.insert(Self::key(&o), o);
            }
            Event::Delete(o) => {
                self.objects.remove(&Self::key(&o));
            }
        }
    }
}

impl L2Index {
    /// L2Announcements.
    pub fn feed_announcements(&mut self, ev: Event<Arc<L2Announcement>>) {
        self.announcements.feed(ev);
    }

    /// IPPools.
    pub fn feed_pools(&mut self, ev: Event<Arc<IPPool>>) {
        self.pools.feed(ev);
    }

    /// Nodes.
    pub fn feed_nodes(&mut self, ev: Event<Arc<Node>>) {
        self.nodes.feed(ev);
    }

    /// Services.
    pub fn feed_services(&mut self, ev: Event<Arc<Service>>) {
        self.services.feed(ev);
    }

    /// Every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.announcements.synced && self.pools.synced && self.nodes.synced && self.services.synced
    }

    /// Nodes have been listed once.
    pub fn nodes_synced(&self) -> bool {
        self.nodes.synced
    }

    /// A Node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes
            .objects
            .get(&Key::new("", name))
            .map(AsRef::as_ref)
    }

    /// Every Node.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.objects.values().map(AsRef::as_ref)
    }

    /// Every L2Announcement.
    pub fn announcements(&self) -> impl Iterator<Item = &L2Announcement> {
        self.announcements.objects.values().map(AsRef::as_ref)
    }

    /// A Service by key.
    pub fn service(&self, key: &Key) -> Option<&Service> {
        self.services.objects.get(key).map(AsRef::as_ref)
    }

    /// The plan over what is known (rings kept for the next one).
    pub fn plan(&mut self, catalog: &Catalog, live: &dyn Fn(&Node) -> bool) -> Plan {
        plan_with(
            self.announcements.objects.values().map(AsRef::as_ref),
            self.pools.objects.values().map(AsRef::as_ref),
            self.services.objects.values().map(AsRef::as_ref),
            self.nodes.objects.values().map(AsRef::as_ref),
            catalog,
            live,
            &mut self.rings,
        )
    }

    /// Whether an EndpointSlice event can change the plan: only the
    /// endpoints of `externalTrafficPolicy: Local` Services choose nodes.
    pub fn slice_matters(
        &self,
        catalog: &Catalog,
        slice: &portico_controllers::k8s::EndpointSlice,
    ) -> bool {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(portico_catalog::labels::SERVICE_NAME))
        else {
            return false;
        };
        let key = Key::new(
            slice
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            service.clone(),
        );
        catalog
            .service(&key)
            .is_none_or(|s| s.external_traffic_policy == TrafficPolicy::Local)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use portico_crds::{IPPoolSpec, L2AnnouncementSpec};
    use portico_testkit::objects;

    fn mk_node(name: &str, ready: bool, labels: &[(&str, &str)]) -> Node {
        labels
            .iter()
            .fold(objects::node(name).ready(ready), |n, (k, v)| n.label(k, v))
            .build()
    }

    fn mk_pool(name: &str, addresses: &[&str]) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                addresses: addresses.iter().map(|s| (*s).into()).collect(),
                ..Default::default()
            },
        )
    }

    fn mk_svc(name: &str, ips: &[&str], local: bool, labels: &[(&str, &str)]) -> Service {
        let svc = objects::service("default", name)
            .type_("LoadBalancer")
            .cluster_ip("10.96.0.10")
            .external_traffic_local(local)
            .port(80, "TCP");
        let svc = labels.iter().fold(svc, |s, (k, v)| s.label(k, v));
        ips.iter().fold(svc, |s, ip| s.ingress(ip)).build()
    }

    fn mk_slice(svc: &str, nodes: &[&str]) -> EndpointSlice {
        let slice = objects::slice("default", &format!("{svc}-1"), svc).port(8080);
        nodes
            .iter()
            .enumerate()
            .fold(slice, |s, (i, n)| {
                s.endpoint(&format!("10.244.{}.2", i + 1), Some(n), Some(true))
            })
            .build()
    }

    fn mk_l2(name: &str, spec: L2AnnouncementSpec) -> L2Announcement {
        L2Announcement::new(name, spec)
    }

    fn catalog(services: &[Service], slices: &[EndpointSlice]) -> Catalog {
        let mut c = Catalog::new();
        c.reset_services(services.iter());
        c.reset_slices(slices.iter());
        c
    }

    fn owner(plan: &Plan, ip: &str) -> Option<String> {
        plan.addresses[&ip.parse::<IpAddr>().unwrap()].owner.clone()
    }

    #[test]
    fn one_ready_node_owns_each_address_and_not_ready_nodes_never_do() {
        let nodes = [
            mk_node("n1", true, &[]),
            mk_node("n2", true, &[]),
            mk_node("n3", false, &[]),
        ];
        let pools = [mk_pool("lab", &["192.168.56.60-192.168.56.70"])];
        let services: Vec<Service> = (0..8)
            .map(|i| {
                mk_svc(
                    &format!("s{i}"),
                    &[&format!("192.168.56.{}", 60 + i)],
                    false,
                    &[],
                )
            })
            .chain([mk_svc("elsewhere", &["203.0.113.9"], false, &[])])
            .collect();
        let cat = catalog(&services, &[]);
        let l2 = [mk_l2("all", L2AnnouncementSpec::default())];
        let plan = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
        assert_eq!(plan.addresses.len(), 8, "only pool addresses: {plan:?}");
        let owners: BTreeSet<String> = plan
            .addresses
            .values()
            .filter_map(|p| p.owner.clone())
            .collect();
        assert_eq!(owners, ["n1".to_owned(), "n2".to_owned()].into());
        assert!(plan.addresses.values().all(|p| p.interfaces.auto));
        assert_eq!(
            plan.announcements["all"],
            AnnouncementStatus {
                ready: true,
                reason: "Valid",
                message: String::new(),
                announced: 8
            }
        );
        let n1: Vec<_> = plan.owned_by("n1").collect();
        assert!(!n1.is_empty());
        // n1 goes NotReady: n2 owns everything.
        let nodes = [
            mk_node("n1", false, &[]),
            mk_node("n2", true, &[]),
            mk_node("n3", false, &[]),
        ];
        let after = super::plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
        assert!(
            after
                .addresses
                .values()
                .all(|p| p.owner.as_deref() == Some("n2"))
        );
    }

    #[test]
    fn selectors_pick_pools_services_and_nodes() {
        let nodes = [
            mk_node("edge", true, &[("edge", "true")]),
            mk_node("core", true, &[]),
            mk_node(
                "excluded",
                true,
                &[("edge", "true"), (EXCLUDE_FROM_LOAD_BALANCERS, "")],
            ),
        ];
        let mut labelled = mk_pool("labelled", &["192.168.57.0/28"]);
        labelled.metadata.labels = Some([("announce".to_owned(), "l2".to_owned())].into());
        let pools = [
            mk_pool("lab", &["192.168.56.60-192.168.56.70"]),
            labelled,
            mk_pool("quiet", &["192.168.58.0/28"]),
        ];
        let services = [
            mk_svc("web", &["192.168.56.60"], false, &[("exposure", "lan")]),
            mk_svc("internal", &["192.168.56.61"], false, &[]),
            mk_svc("labelled", &["192.168.57.1"], false, &[("exposure", "lan")]),
            mk_svc("quiet", &["192.168.58.1"], false, &[("exposure", "lan")]),
        ];
        let cat = catalog(&services, &[]);
        let sel = |k: &str, v: &str| LabelSelector {
            match_labels: Some([(k.to_owned(), v.to_owned())].into()),
            ..Default::default()
        };
        let l2 = [mk_l2(
            "edge",
            L2AnnouncementSpec {
                ip_pools: vec!["lab".into()],
                ip_pool_selector: Some(sel("announce", "l2")),
                service_selector: Some(sel("exposure", "lan")),
                node_selector: Some(sel("edge", "true")),
                interfaces: vec!["eth*".into()],
            },
        )];
        let plan = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
        let announced: Vec<String> = plan.addresses.keys().map(|a| a.to_string()).collect();
        assert_eq!(announced, ["192.168.56.60", "192.168.57.1"]);
        assert_eq!(owner(&plan, "192.168.56.60").as_deref(), Some("edge"));
        let p = &plan.addresses[&"192.168.56.60".parse::<IpAddr>().unwrap()];
        assert!(!p.interfaces.auto);
        assert_eq!(p.interfaces.patterns, ["eth*".to_owned()].into());
        assert_eq!(
            plan.announced_by(&Key::new("default", "web")).as_deref(),
            Some("edge")
        );
        assert_eq!(plan.announced_by(&Key::new("default", "internal")), None);
    }

    #[test]
    fn external_traffic_policy_local_needs_a_ready_local_endpoint() {
        let nodes = [
            mk_node("n1", true, &[]),
            mk_node("n2", true, &[]),
            mk_node("n3", true, &[]),
        ];
        let pools = [mk_pool("lab", &["192.168.56.0/24"])];
        let services: Vec<Service> = (0..20)
            .map(|i| {
                mk_svc(
                    &format!("s{i}"),
                    &[&format!("192.168.56.{}", 60 + i)],
                    true,
                    &[],
                )
            })
            .collect();
        let slices: Vec<EndpointSlice> = (0..20)
            .map(|i| mk_slice(&format!("s{i}"), &["n3"]))
            .collect();
        let cat = catalog(&services, &slices);
        let l2 = [mk_l2("all", L2AnnouncementSpec::default())];
        let plan = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
        assert!(
            plan.addresses
                .values()
                .all(|p| p.owner.as_deref() == Some("n3"))
        );
        // No local endpoint anywhere: nobody announces, and it says so.
        let cat = catalog(&services, &[]);
        let plan = super::plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
        assert!(plan.addresses.values().all(|p| p.owner.is_none()));
        assert_eq!(plan.announcements["all"].announced, 0);
    }

    #[test]
    fn bad_announcements_get_a_reason_and_the_rest_keep_working() {
        let nodes = [mk_node("n1", true, &[])];
        let pools = [mk_pool("lab", &["192.168.56.60-192.168.56.70"])];
        let services = [mk_svc("web", &["192.168.56.60"], false, &[])];
        let cat = catalog(&services, &[]);
        let bad_selector = LabelSelector {
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "x".into(),
                    operator: "Sometimes".into(),
                    values: None,
                },
            ]),
            ..Default::default()
        };
        let l2 = [
            mk_l2(
                "bad-selector",
                L2AnnouncementSpec {
                    node_selector: Some(bad_selector),
                    ..Default::default()
                },
            ),
            mk_l2(
                "bad-interface",
                L2AnnouncementSpec {
                    interfaces: vec!["eth 0".into()],
                    ..Default::default()
                },
            ),
            mk_l2(
                "unknown-pool",
                L2AnnouncementSpec {
                    ip_pools: vec!["lab".into(), "nope".into()],
                    ..Default::default()
                },
            ),
        ];
        let plan = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
        assert_eq!(plan.announcements["bad-selector"].reason, "InvalidSelector");
        assert_eq!(
            plan.announcements["bad-interface"].reason,
            "InvalidInterface"
        );
        let unknown = &plan.announcements["unknown-pool"];
        assert_eq!(
            (unknown.ready, unknown.reason, unknown.announced),
            (false, "UnknownPool", 1)
        );
        assert!(unknown.message.contains("nope"), "{}", unknown.message);
        assert_eq!(owner(&plan, "192.168.56.60").as_deref(), Some("n1"));
    }

    #[test]
    fn statuses_are_written_when_they_change_and_keep_their_transition_time() {
        let nodes = [mk_node("n1", true, &[])];
        let pools = [mk_pool("lab", &["192.168.56.60-192.168.56.70"])];
        let services = [mk_svc("web", &["192.168.56.60"], false, &[])];
        let cat = catalog(&services, &[]);
        let mut l2 = vec![
            mk_l2("ok", L2AnnouncementSpec::default()),
            mk_l2(
                "bad",
                L2AnnouncementSpec {
                    interfaces: vec!["a/b".into()],
                    ..Default::default()
                },
            ),
        ];
        let p = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
        let writes = status_writes(&p, &l2);
        assert_eq!(writes.len(), 2);
        let status = |w: &portico_controllers::Write| match w {
            portico_controllers::Write::Apply(a) => {
                assert!(a.status);
                assert_eq!(
                    a.target.kind,
                    portico_controllers::TargetKind::L2Announcement
                );
                a.patch["status"].clone()
            }
            other => panic!("{other:?}"),
        };
        let bad = status(&writes[1]);
        assert_eq!(bad["conditions"][0]["reason"], "InvalidInterface");
        assert_eq!(bad["announced"], 0);
        let ok = status(&writes[0]);
        assert_eq!(ok["conditions"][0]["status"], "True");
        assert_eq!(ok["announced"], 1);
        // Stored as written: nothing more to write.
        for (a, w) in l2.iter_mut().zip(&writes) {
            a.status = Some(serde_json::from_value(status(w)).unwrap());
        }
        assert!(status_writes(&p, &l2).is_empty());
        // The count changes, the condition holds: its time is kept.
        let before = l2[1].status.as_ref().unwrap().conditions[0]
            .last_transition_time
            .clone();
        let nodes = [mk_node("n1", false, &[])];
        let p = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
        let writes = status_writes(&p, &l2);
        assert_eq!(writes.len(), 1);
        let ok = status(&writes[0]);
        assert_eq!(ok["announced"], 0);
        assert_eq!(
            ok["conditions"][0]["lastTransitionTime"],
            serde_json::to_value(&before).unwrap()
        );
    }

    #[test]
    fn rings_are_kept_while_their_node_set_is_used_and_dropped_after() {
        let nodes = [mk_node("n1", true, &[]), mk_node("n2", true, &[])];
        let pools = [mk_pool("lab", &["192.168.56.0/24"])];
        let services = [
            mk_svc("a", &["192.168.56.60"], false, &[]),
            mk_svc("b", &["192.168.56.61"], true, &[]),
        ];
        let slices = [mk_slice("b", &["n2"])];
        let cat = catalog(&services, &slices);
        let l2 = [mk_l2("all", L2AnnouncementSpec::default())];
        let mut rings = Rings::default();
        let first = plan_with(
            &l2,
            &pools,
            &services,
            &nodes,
            &cat,
            &node_ready,
            &mut rings,
        );
        // One ring for {n1, n2}, one for the ETP Local Service's {n2}.
        assert_eq!(rings.0.len(), 2);
        let again = plan_with(
            &l2,
            &pools,
            &services,
            &nodes,
            &cat,
            &node_ready,
            &mut rings,
        );
        assert_eq!(first, again);
        assert_eq!(
            first,
            plan(&l2, &pools, &services, &nodes, &cat, &node_ready)
        );
        let nodes = [mk_node("n1", true, &[]), mk_node("n2", false, &[])];
        plan_with(
            &l2,
            &pools,
            &services,
            &nodes,
            &cat,
            &node_ready,
            &mut rings,
        );
        let sets: Vec<&Vec<String>> = rings.0.keys().collect();
        assert_eq!(sets, [&Vec::<String>::new(), &vec!["n1".to_owned()]]);

        // Only the slices of ETP Local Services can move an address.
        let index = L2Index::default();
        assert!(index.slice_matters(&cat, &slices[0]));
        assert!(!index.slice_matters(&cat, &mk_slice("a", &["n1"])));
        assert!(index.slice_matters(&cat, &mk_slice("unknown", &["n1"])));
    }

    #[test]
    fn addresses_of_one_service_on_different_nodes_are_listed_in_the_annotation() {
        let mut plan = Plan::default();
        let key = Key::new("default", "web");
        for (a, o) in [("192.168.56.60", "n1"), ("fd00:56::60", "n2")] {
            let address: IpAddr = a.parse().unwrap();
            plan.addresses.insert(
                address,
                Planned {
                    address,
                    service: key.clone(),
                    owner: Some(o.into()),
                    interfaces: Interfaces::default(),
                },
            );
        }
        assert_eq!(
            plan.announced_by(&key).as_deref(),
            Some("192.168.56.60=n1,fd00:56::60=n2")
        );
    }

    fn one_link() -> Vec<Link> {
        vec![Link {
            name: "eth9".into(),
            mac: [2, 0, 0, 0, 0, 9],
            networks: vec!["192.168.56.31/24".parse().unwrap()],
            usable: true,
        }]
    }

    fn cannot_open(_: &Link, _: Duration) -> std::io::Result<Responder> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "no CAP_NET_RAW",
        ))
    }

    /// An address planned on this node whose responder cannot be opened is
    /// not answered: it is no takeover, so no `announced-by` annotation or
    /// Event names a node that does not answer ARP.
    #[test]
    fn a_responder_that_cannot_open_makes_no_takeover() {
        let address: IpAddr = "192.168.56.60".parse().unwrap();
        let plan = Plan {
            addresses: BTreeMap::from([(
                address,
                Planned {
                    address,
                    service: Key::new("default", "web"),
                    owner: Some("n1".into()),
                    interfaces: Interfaces {
                        patterns: BTreeSet::new(),
                        auto: true,
                    },
                },
            )]),
            announcements: BTreeMap::new(),
        };
        let mut agent = L2Agent::new("n1", Duration::ZERO).with_io(one_link, cannot_open);
        assert_eq!(agent.apply(plan.clone()), Vec::new());
        assert!(agent.announced().is_empty());
        assert_eq!(agent.apply(plan), Vec::new(), "nor the next time");
    }
}
