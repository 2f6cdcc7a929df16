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
use portico_crds::names::{EXCLUDE_FROM_LOAD_BALANCERS, l2_reasons};
use portico_crds::{IPPool, L2Announcement};
use portico_dataplane::l2::{Link, Ring, interfaces_for, responder};
use portico_dataplane::local_endpoint_count;
use portico_ipam::{Pool, PoolOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

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

mod agent;
mod index;
#[cfg(test)]
mod tests;

pub use agent::{L2Agent, L2Metrics, Takeover};
pub use index::L2Index;
