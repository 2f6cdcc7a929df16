//! `portico local --dataplane`: the rules `portico node` would program on
//! one node of the manifests, in the current network namespace.
//!
//! ```text
//!  World (after the reconcilers) ──> Catalog (Services + EndpointSlices) ──> Proxier ──> nft
//!        └─ L2Announcements, IPPools, Nodes (Ready = live; gossip too) ──> l2::plan ──> L2Agent (ARP/NDP)
//! ```
//!
//! Syncs are paced as in `portico node` (`SyncSchedule`): a failed one is
//! reported and retried, as a full sync, after a pause that doubles with
//! each failure in a row.

use super::world::World;
use crate::cli::{DataplaneArgs, L2Args};
use crate::gossip::{self, Gossip};
use crate::l2::{self, L2Agent, Takeover};
use portico_catalog::Catalog;
use portico_controllers::NetworkConfig;
use portico_controllers::k8s::{Node, Service};
use portico_crds::{IPPool, L2Announcement};
use portico_dataplane::{
    Backend, Conntrack, ConntrackTool, Nft, Proxier, SyncReport, SyncSchedule, can_program_nftables,
};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest pause between syncs, and the first between failed ones.
const MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);

/// The dataplane of one node of the manifests, kept across `--watch`
/// reloads so that a reload is a partial sync. Generic over the backend,
/// so tests drive it with the in-memory one.
pub struct LocalDataplane<B: Backend = Nft, C: Conntrack = ConntrackTool> {
    catalog: Catalog,
    proxier: Proxier<B, C>,
    schedule: SyncSchedule,
    /// The world changed since the last sync started.
    changed: bool,
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
        let mut dp = LocalDataplane::with_backend(
            net,
            node_name,
            settings,
            Nft::new(),
            ConntrackTool::new(),
        )?;
        dp.l2 = l2;
        Ok(dp)
    }
}

impl<B: Backend, C: Conntrack> LocalDataplane<B, C> {
    /// The rules of a node through any backend, without L2 announcement.
    pub fn with_backend(
        net: &NetworkConfig,
        node_name: &str,
        settings: &DataplaneArgs,
        backend: B,
        conntrack: C,
    ) -> anyhow::Result<Self> {
        let config = crate::node::dataplane_config(net, node_name, settings, None)?;
        Ok(LocalDataplane {
            catalog: Catalog::new(),
            proxier: Proxier::new(config, backend, conntrack),
            schedule: SyncSchedule::new(Instant::now(), MIN_SYNC_PERIOD, None),
            changed: false,
            health_checks: crate::node::HealthChecks::default(),
            node_name: node_name.to_owned(),
            settings: settings.clone(),
            net: net.clone(),
            l2: None,
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

    /// Takes in the world (after a reload): a sync is due.
    pub fn update(&mut self, world: &World) -> anyhow::Result<()> {
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
        super::update_catalog(&mut self.catalog, world);
        if let Some(l) = self.l2.as_mut() {
            l.announcements = world.l2announcements.sorted();
            l.pools = world.ippools.sorted();
            l.services = world.services.sorted();
            l.nodes = world.nodes.sorted();
        }
        self.changed = true;
        Ok(())
    }

    /// When the next sync is due: after a change or a failure, paced.
    pub fn due(&self, now: Instant) -> Option<Instant> {
        self.schedule.due(now, self.changed)
    }

    /// Programs the rules for the world: a full sync the first time and
    /// after a failure, else a partial sync of what changed. Announces
    /// what L2 announcement plans once the rules are there.
    pub fn sync(&mut self, now: Instant) -> Result<SyncReport, portico_dataplane::Error> {
        self.schedule.start(now);
        self.changed = false;
        let changes = self.catalog.take_changes();
        let result = self.proxier.sync(&self.catalog, &changes);
        self.schedule.finished(result.is_ok());
        if result.is_ok() {
            self.announce();
        }
        result
    }

    /// The node the rules are for.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Failed syncs in a row.
    pub fn failures(&self) -> u32 {
        self.schedule.failures()
    }

    /// The pause before the next sync may start.
    pub fn pause(&self) -> Duration {
        self.schedule.pause()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::local::{load, reconcile_once};
    use portico_dataplane::{FakeNft, RecordingConntrack, SyncKind};

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";
    const DNS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec: {clusterIP: 10.96.0.53, ports: [{port: 53, protocol: UDP}]}\n";

    fn net() -> NetworkConfig {
        NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap()
    }

    fn world(yaml: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, yaml).unwrap();
        reconcile_once(load::load(&[path]).unwrap(), &net()).unwrap()
    }

    #[test]
    fn a_failed_sync_is_retried_as_a_full_sync_after_a_growing_pause_and_the_watch_goes_on() {
        let mut dp = LocalDataplane::with_backend(
            &net(),
            "n1",
            &DataplaneArgs::default(),
            FakeNft::new(),
            RecordingConntrack::default(),
        )
        .unwrap();
        dp.update(&world(WEB)).unwrap();
        let start = Instant::now();
        assert!(dp.due(start).is_some_and(|t| t <= start));
        // What the watch loop runs: it reports a failure, returns nothing.
        dp.proxier.backend_mut().fail_next("injected");
        crate::local::sync_dataplane(&mut dp);
        assert_eq!(dp.failures(), 1);
        // Due again with nothing changed, after the pause, which doubles
        // with the next failure.
        let now = Instant::now();
        assert!(
            dp.due(now)
                .is_some_and(|t| t > now && t <= now + MIN_SYNC_PERIOD)
        );
        dp.proxier.backend_mut().fail_next("injected again");
        crate::local::sync_dataplane(&mut dp);
        assert_eq!(dp.pause(), 2 * MIN_SYNC_PERIOD);
        let report = dp.sync(Instant::now()).unwrap();
        assert_eq!(report.kind, SyncKind::Full);
        assert_eq!(dp.failures(), 0);
        assert_eq!(dp.due(Instant::now()), None, "nothing to do");
        // A reload after that is a partial sync.
        dp.update(&world(&format!("{WEB}---\n{DNS}"))).unwrap();
        let report = dp.sync(Instant::now()).unwrap();
        assert_eq!(report.kind, SyncKind::Partial);
        assert_eq!(dp.proxier.backend().applied(), 2);
    }
}
