//! `portico local --dataplane`: one node of the manifests, as
//! `portico node` runs it, in the current network namespace.
//!
//! ```text
//!  World (after the reconcilers) ──Reset events──> NodeAgent ──sync──> nft
//!                                                      └──announce──> ARP/NDP, statuses and
//!  gossip (optional) ──live agents──────────────────────┘             annotations into the World
//! ```
//!
//! The agent is `portico_agent::NodeAgent`, the very one `portico node`
//! drives; here its changes come from the manifests. Syncs are paced as on
//! a node: a failed one is reported and retried, as a full sync, after a
//! pause that doubles with each failure in a row.

use crate::cli::{DataplaneArgs, L2Args};
use portico_agent::gossip::{self, Gossip};
use portico_agent::health::HealthChecks;
use portico_agent::l2::{L2Agent, Takeover};
use portico_agent::{Announced, NodeAgent, Pacing};
use portico_controllers::NetworkConfig;
use portico_dataplane::{
    Backend, Conntrack, ConntrackTool, Kernel, SyncReport, can_program_nftables,
};
use portico_local::World;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The shortest pause between syncs, and the first between failed ones.
const MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);

/// The agent of one node of the manifests, kept across `--watch` reloads
/// so that a reload is a partial sync. Generic over the backend, so tests
/// drive it with the in-memory one.
pub struct LocalDataplane<B: Backend = Kernel, C: Conntrack = ConntrackTool> {
    agent: NodeAgent<B, C>,
    /// The `healthCheckNodePort` servers, as on a node.
    health_checks: HealthChecks,
    gossip: Option<Gossip>,
    live: Option<tokio::sync::watch::Receiver<BTreeSet<String>>>,
    /// The live set last said.
    said: Option<BTreeSet<String>>,
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
        let announcer =
            (!l2.disable_l2_announcements).then(|| L2Agent::new(node_name, l2.garp_interval));
        let mut dp = LocalDataplane::build(
            net,
            node_name,
            settings,
            (
                Kernel::open(settings.dataplane_backend)?,
                ConntrackTool::new(),
            ),
            announcer,
        )?;
        if let Some(Some(listen)) = (!l2.disable_l2_announcements)
            .then(|| l2.gossip_listen.as_deref().map(gossip::parse_listen))
            .flatten()
            .transpose()?
        {
            let g = Gossip::start(l2.gossip_settings(node_name, listen)?).await?;
            // Hear from the others before claiming anything.
            dp.agent.settle(Instant::now() + l2.gossip_probe_period * 3);
            dp.agent.set_live(Some(g.live()));
            dp.live = Some(g.watch());
            dp.gossip = Some(g);
        }
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
        Self::build(net, node_name, settings, (backend, conntrack), None)
    }

    fn build(
        net: &NetworkConfig,
        node_name: &str,
        settings: &DataplaneArgs,
        io: (B, C),
        announcer: Option<L2Agent>,
    ) -> anyhow::Result<Self> {
        let pacing = Pacing {
            min_sync_period: MIN_SYNC_PERIOD,
            sync_period: None,
        };
        Ok(LocalDataplane {
            agent: NodeAgent::new(
                node_name,
                net,
                &settings.settings(),
                io,
                pacing,
                announcer,
                Instant::now(),
            )?,
            health_checks: HealthChecks::default(),
            gossip: None,
            live: None,
            said: None,
        })
    }

    /// Resolves when the gossip's live set changes (never without gossip).
    pub async fn liveness_changed(&mut self) {
        match self.live.as_mut() {
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
        if let Some(g) = self.gossip.take() {
            g.leave().await;
        }
    }

    /// Serves the `healthCheckNodePort`s of the last sync's catalog, as
    /// `portico node` does; returns the ports served.
    pub async fn serve_health_checks(&mut self) -> Vec<u16> {
        self.health_checks
            .update(self.agent.catalog(), self.agent.proxier().config())
            .await;
        self.health_checks.ports()
    }

    /// Whether this node takes part in L2 announcement (the manifests
    /// have L2Announcements and it is not disabled).
    pub fn announcing(&self) -> bool {
        self.agent.announcing()
    }

    /// Plans and applies L2 announcement with the current live set; says
    /// the takeovers, and returns what a node would write (every status,
    /// as the manifests show what the nodes agree on, the takeovers'
    /// Events and annotations).
    pub fn announce(&mut self) -> (Vec<Takeover>, Vec<portico_controllers::Write>) {
        if let Some(g) = &self.gossip {
            let live = g.live();
            if self.said.as_ref() != Some(&live) {
                let names: Vec<&str> = live.iter().map(String::as_str).collect();
                eprintln!("gossip: live agents {}", names.join(", "));
                self.said = Some(live.clone());
            }
            self.agent.set_live(Some(live));
        }
        let Announced {
            takeovers,
            statuses,
            writes,
            ..
        } = self.agent.announce(Instant::now());
        for t in &takeovers {
            eprintln!(
                "l2: {} now announces {} ({}){}",
                self.agent.node_name(),
                t.address,
                t.service,
                t.from
                    .as_deref()
                    .map(|f| format!(", was {f}"))
                    .unwrap_or_default()
            );
        }
        let mut out = statuses;
        out.extend(writes);
        (takeovers, out)
    }

    /// The addresses this node announces, with their Services.
    pub fn announced(&self) -> Vec<String> {
        self.agent.announced()
    }

    /// Takes in the world (after a reload): a sync is due.
    pub fn update(&mut self, world: &World) -> anyhow::Result<()> {
        if !world
            .nodes
            .store
            .state()
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(self.agent.node_name()))
        {
            tracing::warn!(node = %self.agent.node_name(), "no Node of that name in the manifests: every endpoint counts as remote");
        }
        let now = Instant::now();
        for change in world.agent_changes() {
            self.agent.on(change, now)?;
        }
        Ok(())
    }

    /// When the next sync (or announcement) is due.
    pub fn due(&self, now: Instant) -> Option<Instant> {
        self.agent.next_wakeup(now)
    }

    /// Whether a sync is due at `now` (rather than only the end of the
    /// gossip's settling time).
    pub fn sync_due(&self, now: Instant) -> bool {
        self.agent.due(now).is_some_and(|d| d <= now)
    }

    /// Programs the rules for the world: a full sync the first time and
    /// after a failure, else a partial sync of what changed.
    pub fn sync(&mut self, now: Instant) -> Result<SyncReport, portico_dataplane::Error> {
        self.agent.sync(now).map_err(|(_, e)| e)
    }

    /// The node the rules are for.
    pub fn node_name(&self) -> &str {
        self.agent.node_name()
    }

    /// Failed syncs in a row.
    pub fn failures(&self) -> u32 {
        self.agent.failures()
    }

    /// The pause before the next sync may start.
    pub fn pause(&self) -> Duration {
        self.agent.pause()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portico_dataplane::{MemoryNft, RecordingConntrack, SyncKind};
    use portico_local::{load, reconcile_once};

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
            MemoryNft::new(),
            RecordingConntrack::default(),
        )
        .unwrap();
        dp.update(&world(WEB)).unwrap();
        let start = Instant::now();
        assert!(dp.due(start).is_some_and(|t| t <= start));
        // What the watch loop runs: it reports a failure, returns nothing.
        dp.agent.backend_mut().fail_next("injected");
        crate::local::step_dataplane(&mut dp, None, start).unwrap();
        assert_eq!(dp.failures(), 1);
        // Due again with nothing changed, after the pause, which doubles
        // with the next failure.
        assert_eq!(dp.due(start), Some(start + MIN_SYNC_PERIOD));
        dp.agent.backend_mut().fail_next("injected again");
        let retry = start + dp.pause();
        crate::local::step_dataplane(&mut dp, None, retry).unwrap();
        assert_eq!(dp.failures(), 2);
        assert_eq!(dp.pause(), 2 * MIN_SYNC_PERIOD);
        let third = retry + dp.pause();
        let report = dp.sync(third).unwrap();
        assert_eq!(report.kind, SyncKind::Full);
        assert_eq!(dp.failures(), 0);
        assert_eq!(dp.due(third), None, "nothing to do");
        // A reload after that is a partial sync.
        dp.update(&world(&format!("{WEB}---\n{DNS}"))).unwrap();
        let later = third + MIN_SYNC_PERIOD;
        assert_eq!(dp.due(later), Some(later));
        let report = dp.sync(later).unwrap();
        assert_eq!(report.kind, SyncKind::Partial);
        assert_eq!(dp.agent.proxier().backend().applied(), 2);
    }
}
