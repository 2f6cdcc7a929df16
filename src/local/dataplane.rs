//! `portico local --dataplane`: the rules `portico node` would program on
//! one node of the manifests, in the current network namespace.
//!
//! ```text
//!  World (after the reconcilers) ──> Catalog (Services + EndpointSlices) ──> Proxier ──> nft
//!        └─ L2Announcements, IPPools, Nodes (Ready = live; gossip too) ──> l2::plan ──> L2Agent (ARP/NDP)
//! ```

use super::world::World;
use crate::cli::{DataplaneArgs, L2Args};
use crate::gossip::{self, Gossip};
use crate::l2::{self, L2Agent, Takeover};
use portico_catalog::Catalog;
use portico_controllers::NetworkConfig;
use portico_controllers::k8s::{Node, Service};
use portico_crds::{IPPool, L2Announcement};
use portico_dataplane::{ConntrackTool, Nft, Proxier, SyncReport, can_program_nftables};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The catalog of a world: its Services and EndpointSlices.
pub fn catalog(world: &World) -> Catalog {
    let mut c = Catalog::new();
    update_catalog(&mut c, world);
    c.take_changes();
    c
}

/// Brings a catalog to a (reloaded) world; the catalog records what
/// changed.
pub fn update_catalog(catalog: &mut Catalog, world: &World) {
    let services = world.services.store.state();
    catalog.reset_services(services.iter().map(AsRef::as_ref));
    let slices = world.endpoint_slices.store.state();
    catalog.reset_slices(slices.iter().map(AsRef::as_ref));
}

/// The dataplane of one node of the manifests, kept across `--watch`
/// reloads so that a reload is a partial sync.
pub struct LocalDataplane {
    catalog: Catalog,
    proxier: Proxier<Nft, ConntrackTool>,
    /// The `healthCheckNodePort` servers, as on a node.
    health_checks: crate::node::HealthChecks,
    node_name: String,
    settings: DataplaneArgs,
    net: NetworkConfig,
    l2: Option<LocalL2>,
}

/// L2 announcement of one node of the manifests.
struct LocalL2 {
    agent: L2Agent,
    gossip: Option<Gossip>,
    live: Option<tokio::sync::watch::Receiver<BTreeSet<String>>>,
    announcements: Vec<Arc<L2Announcement>>,
    pools: Vec<Arc<IPPool>>,
    services: Vec<Arc<Service>>,
    nodes: Vec<Arc<Node>>,
    rings: l2::Rings,
}

impl LocalDataplane {
    /// Refuses without CAP_NET_ADMIN, before anything is changed.
    pub async fn new(
        net: &NetworkConfig,
        node_name: &str,
        settings: &DataplaneArgs,
        l2: &L2Args,
    ) -> anyhow::Result<Self> {
        if !can_program_nftables() {
            anyhow::bail!(
                "--dataplane programs nftables in the current network namespace and needs root \
                 (CAP_NET_ADMIN): run it with sudo, or in a namespace of its own \
                 (sudo ip netns add lab && sudo ip netns exec lab portico local … --dataplane)"
            );
        }
        settings.conntrack.apply()?;
        let config = crate::node::dataplane_config(net, node_name, settings, None)?;
        let l2 = if l2.disable_l2_announcements {
            None
        } else {
            let gossip = match l2.gossip_listen.as_deref().map(gossip::parse_listen) {
                Some(Ok(Some(listen))) => {
                    let g = Gossip::start(l2.gossip_settings(node_name, listen)?).await?;
                    // Hear from the others before claiming anything.
                    tokio::time::sleep(l2.gossip_probe_period * 3).await;
                    Some(g)
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(None)) | None => None,
            };
            Some(LocalL2 {
                agent: L2Agent::new(node_name, l2.garp_interval),
                live: gossip.as_ref().map(Gossip::watch),
                gossip,
                announcements: Vec::new(),
                pools: Vec::new(),
                services: Vec::new(),
                nodes: Vec::new(),
                rings: l2::Rings::default(),
            })
        };
        Ok(LocalDataplane {
            catalog: Catalog::new(),
            proxier: Proxier::new(config, Nft::new(), ConntrackTool::new()),
            health_checks: crate::node::HealthChecks::default(),
            node_name: node_name.to_owned(),
            settings: settings.clone(),
            net: net.clone(),
            l2,
        })
    }

    /// Resolves when the gossip's live set changes (never without gossip).
    pub async fn liveness_changed(&mut self) {
        match self.l2.as_mut().and_then(|l| l.live.as_mut()) {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Leaves the gossip (the others take the addresses over at once).
    pub async fn leave(&mut self) {
        if let Some(g) = self.l2.as_mut().and_then(|l| l.gossip.take()) {
            g.leave().await;
        }
    }

    /// Serves the `healthCheckNodePort`s of the last sync's catalog, as
    /// `portico node` does; returns the ports served.
    pub async fn serve_health_checks(&mut self) -> Vec<u16> {
        self.health_checks
            .update(&self.catalog, &self.node_name)
            .await;
        self.health_checks.ports()
    }

    /// Whether this node takes part in L2 announcement (the manifests
    /// have L2Announcements and it is not disabled).
    pub fn announcing(&self) -> bool {
        self.l2
            .as_ref()
            .is_some_and(|l| !l.announcements.is_empty())
    }

    /// Plans and applies L2 announcement from the objects of the last
    /// sync and the current live set; returns the takeovers.
    pub fn announce(&mut self) -> Vec<Takeover> {
        let Some(l) = self.l2.as_mut() else {
            return Vec::new();
        };
        let gossip_live = l.gossip.as_ref().map(Gossip::live);
        let me = self.node_name.clone();
        let live = |n: &Node| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            l2::node_ready(n)
                && gossip_live
                    .as_ref()
                    .is_none_or(|g| name == me || g.contains(name))
        };
        let plan = l2::plan_with(
            l.announcements.iter().map(AsRef::as_ref),
            l.pools.iter().map(AsRef::as_ref),
            l.services.iter().map(AsRef::as_ref),
            l.nodes.iter().map(AsRef::as_ref),
            &self.catalog,
            &live,
            &mut l.rings,
        );
        let takeovers = l.agent.apply(plan);
        for t in &takeovers {
            eprintln!(
                "l2: {} now announces {} ({}){}",
                self.node_name,
                t.address,
                t.service,
                t.from
                    .as_deref()
                    .map(|f| format!(", was {f}"))
                    .unwrap_or_default()
            );
        }
        takeovers
    }

    /// The addresses this node announces, with their Services.
    pub fn announced(&self) -> Vec<String> {
        self.l2
            .as_ref()
            .map(|l| {
                l.agent
                    .plan()
                    .owned_by(&self.node_name)
                    .map(|p| format!("{} ({})", p.address, p.service))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Programs the rules for the world: a full sync the first time, then
    /// a partial sync of what changed.
    pub fn sync(&mut self, world: &World) -> anyhow::Result<SyncReport> {
        let node = world
            .nodes
            .sorted()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()));
        if node.is_none() {
            tracing::warn!(node = %self.node_name, "no Node of that name in the manifests: every endpoint counts as remote");
        }
        let config = crate::node::dataplane_config(
            &self.net,
            &self.node_name,
            &self.settings,
            node.as_deref(),
        )?;
        self.proxier.set_config(config);
        update_catalog(&mut self.catalog, world);
        let changes = self.catalog.take_changes();
        let report = self.proxier.sync(&self.catalog, &changes)?;
        if let Some(l) = self.l2.as_mut() {
            l.announcements = world.l2announcements.sorted();
            l.pools = world.ippools.sorted();
            l.services = world.services.sorted();
            l.nodes = world.nodes.sorted();
        }
        self.announce();
        Ok(report)
    }
}
