//! [`NodeAgent`]: what one node does, driven by `portico node` (watch
//! events) and `portico local --dataplane` (manifests) alike.
//!
//! ```text
//!  Change (Services, EndpointSlices, Nodes, L2Announcements, IPPools)
//!     │ on()
//!     v
//!  Catalog ──sync(now)──> Proxier ──> nftables (one transaction)
//!  L2Index ──announce(now)──> plan (live: Ready + gossip) ──> L2Agent (ARP/NDP responders)
//!                                  └──> writes: statuses, takeover Events, announced-by
//! ```
//!
//! The agent decides and reports; it sends nothing to the API and keeps no
//! timers. The driver gives it the time, runs the sync when [`due`]
//! (`NodeAgent::due`) says, carries its writes out, and feeds it the
//! gossip's live set.

use crate::config::{Settings, dataplane_config, primary_addresses};
use crate::health::Liveness;
use crate::l2::{L2Agent, L2Index, L2Metrics, Plan, Takeover, is_live, status_writes};
use ipnet::IpNet;
use portico_catalog::{Catalog, Key};
use portico_controllers::k8s::{EndpointSlice, Node, Service};
use portico_controllers::watch::Event;
use portico_controllers::{NetworkConfig, Write};
use portico_crds::names::{annotations, l2_reasons};
use portico_crds::{IPPool, L2Announcement};
use portico_dataplane::render::Entry;
use portico_dataplane::{
    Backend, Conntrack, DataplaneMetrics, Proxier, SyncKind, SyncReport, SyncSchedule,
};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One change of a kind the agent reads. Objects are shared with the
/// caller's stores, not copied.
#[derive(Debug)]
pub enum Change {
    /// Services.
    Services(Event<Arc<Service>>),
    /// EndpointSlices.
    Slices(Event<Arc<EndpointSlice>>),
    /// Nodes: every Node with L2 announcement on, else this node's alone.
    Nodes(Event<Arc<Node>>),
    /// L2Announcements (L2 announcement only).
    Announcements(Event<Arc<L2Announcement>>),
    /// IPPools (L2 announcement only).
    Pools(Event<Arc<IPPool>>),
}

/// How syncs are paced.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// At most one sync this often; the first pause after a failure.
    pub min_sync_period: Duration,
    /// A full sync this often (`None`: only after failures and config
    /// changes).
    pub sync_period: Option<Duration>,
}

/// What a node agent has installed (`GET /rules` on its metrics port):
/// the rules of its last successful syncs, and how current they are.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRules {
    /// The node.
    pub node: String,
    /// A sync has succeeded: the rules are in the kernel.
    pub programmed: bool,
    /// Failed syncs in a row (the kernel holds the rules of the last
    /// successful one).
    pub failed_syncs: u32,
    /// Changes wait for the next sync.
    pub pending: bool,
    /// The chains, rules and set elements, as the agent installed them.
    pub rules: portico_dataplane::RulesView,
    /// The same, as the kernel holds them (read back over netlink), when
    /// the backend can read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<portico_dataplane::RulesView>,
}

/// The agent's metrics (registered by `portico node`).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Syncs.
    pub dataplane: DataplaneMetrics,
    /// L2 announcement.
    pub l2: L2Metrics,
}

/// What an announcement round decided.
#[derive(Debug, Default)]
pub struct Announced {
    /// The addresses this node took over.
    pub takeovers: Vec<Takeover>,
    /// The L2Announcements' statuses as this node sees them.
    pub statuses: Vec<Write>,
    /// Whether this node is the one that writes the statuses (the live
    /// node with the smallest name).
    pub writes_statuses: bool,
    /// Takeover Events and `portico.dev/announced-by` annotations.
    pub writes: Vec<Write>,
}

impl Announced {
    /// Everything to write to the API: the statuses when this node writes
    /// them, then the takeovers' Events and annotations.
    pub fn into_writes(self) -> Vec<Write> {
        let mut out = if self.writes_statuses {
            self.statuses
        } else {
            Vec::new()
        };
        out.extend(self.writes);
        out
    }
}

struct L2 {
    agent: L2Agent,
    /// The gossip's live agents (`None`: no gossip, Ready alone).
    live: Option<BTreeSet<String>>,
    /// Announce nothing before this (the gossip has not heard the others).
    settle_until: Option<Instant>,
    /// Something the plan reads changed.
    dirty: bool,
}

/// One node's agent. See the module documentation.
pub struct NodeAgent<B: Backend, C: Conntrack> {
    node_name: String,
    net: NetworkConfig,
    settings: Settings,
    catalog: Catalog,
    proxier: Proxier<B, C>,
    schedule: SyncSchedule,
    /// The rules need a sync.
    changed: bool,
    /// A sync has succeeded: the rules are in place, so addresses may be
    /// announced.
    programmed: bool,
    services_synced: bool,
    slices_synced: bool,
    /// Nodes (all of them, or this one), and with L2 announcement the
    /// L2Announcements, IPPools and Services.
    index: L2Index,
    l2: Option<L2>,
    liveness: Arc<Mutex<Liveness>>,
    peers: Vec<SocketAddr>,
    peers_changed: bool,
    conflicts: Vec<(Entry, Vec<Key>)>,
    metrics: Metrics,
}

impl<B: Backend, C: Conntrack> NodeAgent<B, C> {
    /// The rules of `node_name` for `changes` (every kind, as relists),
    /// synced once into `io`: no pacing, no L2 announcement. `portico
    /// explain` renders a node's rules with it.
    pub fn synced_once(
        node_name: &str,
        net: &NetworkConfig,
        settings: &Settings,
        io: (B, C),
        changes: impl IntoIterator<Item = Change>,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        let pacing = Pacing {
            min_sync_period: Duration::ZERO,
            sync_period: None,
        };
        let mut agent = NodeAgent::new(node_name, net, settings, io, pacing, None, now)?;
        for change in changes {
            agent.on(change, now)?;
        }
        agent.sync(now).map_err(|(_, e)| anyhow::Error::new(e))?;
        Ok(agent)
    }

    /// Nothing known yet; the first sync is full. `l2`: this node's
    /// announcing side, or `None` with L2 announcement off.
    pub fn new(
        node_name: &str,
        net: &NetworkConfig,
        settings: &Settings,
        (backend, conntrack): (B, C),
        pacing: Pacing,
        l2: Option<L2Agent>,
        now: Instant,
    ) -> anyhow::Result<Self> {
        let config = dataplane_config(net, node_name, settings, None)?;
        Ok(NodeAgent {
            node_name: node_name.to_owned(),
            net: net.clone(),
            settings: settings.clone(),
            catalog: Catalog::new(),
            proxier: Proxier::new(config, backend, conntrack),
            schedule: SyncSchedule::new(now, pacing.min_sync_period, pacing.sync_period),
            changed: true,
            programmed: false,
            services_synced: false,
            slices_synced: false,
            index: L2Index::default(),
            l2: l2.map(|agent| L2 {
                agent,
                live: None,
                settle_until: None,
                dirty: true,
            }),
            liveness: Arc::new(Mutex::new(Liveness {
                last_success: None,
                pending_since: Some(now),
                sync_period: pacing.sync_period.unwrap_or(Duration::MAX / 4),
                timeout: (pacing.min_sync_period * 2).max(Duration::from_secs(60)),
            })),
            peers: Vec::new(),
            peers_changed: false,
            conflicts: Vec::new(),
            metrics: Metrics::default(),
        })
    }

    /// Counts into these metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The catalog the rules are rendered from.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The proxier.
    pub fn proxier(&self) -> &Proxier<B, C> {
        &self.proxier
    }

    /// The dataplane backend (to inject faults in tests).
    pub fn backend_mut(&mut self) -> &mut B {
        self.proxier.backend_mut()
    }

    /// Takes in a change. A change of this node's addresses changes the
    /// configuration (and makes the next sync full).
    pub fn on(&mut self, change: Change, now: Instant) -> anyhow::Result<()> {
        let l2 = self.l2.is_some();
        let mut plan_changed = true;
        match change {
            Change::Services(ev) => {
                self.services_synced |= matches!(ev, Event::Reset(_));
                if l2 {
                    self.index.feed_services(ev.clone());
                }
                ev.into_index(&mut self.catalog);
                self.changed = true;
            }
            Change::Slices(ev) => {
                self.slices_synced |= matches!(ev, Event::Reset(_));
                plan_changed = match &ev {
                    Event::Apply(s) | Event::Delete(s) => {
                        self.index.slice_matters(&self.catalog, s)
                    }
                    Event::Reset(_) => true,
                };
                ev.into_index(&mut self.catalog);
                self.changed = true;
            }
            Change::Nodes(ev) => {
                self.index.feed_nodes(ev);
                let me = self.index.node(&self.node_name);
                let config = dataplane_config(&self.net, &self.node_name, &self.settings, me)?;
                if &config != self.proxier.config() {
                    tracing::info!(nodeport_addresses = ?config.nodeport_addresses, "node addresses changed");
                    self.proxier.set_config(config);
                    self.changed = true;
                }
                let peers = self.peer_addresses();
                if peers != self.peers {
                    self.peers = peers;
                    self.peers_changed = true;
                }
            }
            Change::Announcements(ev) => self.index.feed_announcements(ev),
            Change::Pools(ev) => self.index.feed_pools(ev),
        }
        if let Some(l2) = self.l2.as_mut() {
            l2.dirty |= plan_changed;
        }
        if self.changed {
            self.live_state().pending_since.get_or_insert(now);
        }
        Ok(())
    }

    /// Whether the rules' inputs have been listed once.
    pub fn synced(&self) -> bool {
        self.services_synced && self.slices_synced && self.index.nodes_synced()
    }

    /// When the next sync is due: after a change or a failure, paced; a
    /// periodic full sync. `None` before everything has been listed.
    pub fn due(&self, now: Instant) -> Option<Instant> {
        if !self.synced() {
            return None;
        }
        self.schedule.due(now, self.changed)
    }

    /// When the agent has something to do next: a sync, or the end of the
    /// gossip's settling time with announcements waiting.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let settle = self
            .l2
            .as_ref()
            .filter(|l| l.dirty)
            .and_then(|l| l.settle_until);
        match (self.due(now), settle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Syncs what changed (everything when a full sync is due or after a
    /// failure); on failure the next sync is full and comes after a pause
    /// that doubles with each failure in a row.
    pub fn sync(
        &mut self,
        now: Instant,
    ) -> Result<SyncReport, (SyncKind, portico_dataplane::Error)> {
        if self.schedule.start(now) {
            self.proxier.request_full_sync();
        }
        let kind = if self.proxier.needs_full_sync() {
            SyncKind::Full
        } else {
            SyncKind::Partial
        };
        self.changed = false;
        let pending = self.catalog.take_changes();
        let result = self.proxier.sync(&self.catalog, &pending);
        self.schedule.finished(result.is_ok());
        match result {
            Ok(report) => {
                self.metrics
                    .dataplane
                    .observe(&report, self.proxier.model().service_count());
                self.programmed = true;
                let mut liveness = self.live_state();
                liveness.last_success = Some(now);
                liveness.pending_since = None;
                drop(liveness);
                let conflicts = self.proxier.model().conflicts();
                if conflicts != self.conflicts {
                    for (entry, owners) in &conflicts {
                        tracing::warn!(
                            ?entry,
                            ?owners,
                            "Services claim the same address and port; the oldest wins"
                        );
                    }
                    self.conflicts = conflicts;
                }
                Ok(report)
            }
            Err(e) => {
                self.changed = true;
                self.metrics.dataplane.error(kind, &e);
                Err((kind, e))
            }
        }
    }

    /// What the agent has installed, and what the kernel holds when its
    /// backend can read it back, for `/rules` (and `portico explain`).
    pub fn rules(&mut self) -> Result<NodeRules, portico_dataplane::Error> {
        let kernel = self.proxier.backend_mut().read().transpose()?;
        Ok(NodeRules {
            node: self.node_name.clone(),
            programmed: self.programmed,
            failed_syncs: self.failures(),
            pending: self.changed,
            rules: self.proxier.installed()?.view(),
            kernel,
        })
    }

    /// Failed syncs in a row.
    pub fn failures(&self) -> u32 {
        self.schedule.failures()
    }

    /// The pause before the next sync may start.
    pub fn pause(&self) -> Duration {
        self.schedule.pause()
    }

    /// `/healthz`: `Ok` while syncs keep succeeding.
    pub fn health(&self, now: Instant) -> Result<String, String> {
        self.live_state().check(now)
    }

    /// The liveness the agent keeps, for an HTTP server to check at each
    /// request (a stuck agent fails it).
    pub fn liveness(&self) -> Arc<Mutex<Liveness>> {
        self.liveness.clone()
    }

    fn live_state(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    // ---- L2 announcement ------------------------------------------------

    /// Whether L2 announcement is on and has something to announce.
    pub fn announcing(&self) -> bool {
        self.l2.is_some() && self.index.announcements().next().is_some()
    }

    /// The gossip's live agents (`None`: no gossip).
    pub fn set_live(&mut self, live: Option<BTreeSet<String>>) {
        if let Some(l2) = self.l2.as_mut() {
            if let Some(g) = &live {
                self.metrics
                    .l2
                    .live_agents
                    .set(i64::try_from(g.len()).unwrap_or(i64::MAX));
            }
            l2.dirty |= l2.live != live;
            l2.live = live;
        }
    }

    /// Announce nothing before `until` (the gossip is hearing the others).
    pub fn settle(&mut self, until: Instant) {
        if let Some(l2) = self.l2.as_mut() {
            l2.settle_until = Some(until);
        }
    }

    /// The other nodes' primary addresses at `port` (gossip peers), and
    /// whether they changed since last asked.
    pub fn take_peers(&mut self, port: u16) -> Option<Vec<SocketAddr>> {
        if !std::mem::take(&mut self.peers_changed) {
            return None;
        }
        Some(self.peers_at(port))
    }

    /// The other nodes' primary addresses at `port`.
    pub fn peers_at(&self, port: u16) -> Vec<SocketAddr> {
        self.peers
            .iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .collect()
    }

    fn peer_addresses(&self) -> Vec<SocketAddr> {
        self.index
            .nodes()
            .filter(|n| n.metadata.name.as_deref() != Some(self.node_name.as_str()))
            .flat_map(primary_addresses)
            .map(|a| SocketAddr::new(a.addr(), 0))
            .collect()
    }

    /// This node's primary address (what the gossip advertises).
    pub fn own_address(&self) -> Option<IpAddr> {
        self.index
            .node(&self.node_name)
            .and_then(|n| primary_addresses(n).first().map(IpNet::addr))
    }

    /// Plans L2 announcement over what is known and brings the responders
    /// to the plan; says what to write. Nothing before everything is
    /// listed and the rules are in place (an address answered before its
    /// rules exist would take traffic nowhere), while the gossip settles,
    /// or when nothing changed.
    pub fn announce(&mut self, now: Instant) -> Announced {
        let Some(l2) = self.l2.as_mut() else {
            return Announced::default();
        };
        if !self.index.synced() || !self.programmed || !l2.dirty {
            return Announced::default();
        }
        if l2.settle_until.is_some_and(|t| now < t) {
            return Announced::default();
        }
        l2.settle_until = None;
        l2.dirty = false;
        let me = self.node_name.as_str();
        let live = |n: &Node| is_live(n, me, l2.live.as_ref());
        let plan: Plan = self.index.plan(&self.catalog, &live);
        for (name, st) in &plan.announcements {
            if !st.ready {
                tracing::warn!(l2announcement = %name, reason = st.reason, message = %st.message, "L2Announcement not usable as it is");
            }
        }
        let writer = self
            .index
            .nodes()
            .filter(|n| live(n))
            .filter_map(|n| n.metadata.name.as_deref())
            .min();
        let statuses = status_writes(&plan, self.index.announcements());
        let writes_statuses = writer == Some(me);
        let takeovers = l2.agent.apply(plan);
        self.metrics.l2.observe(&l2.agent);
        self.metrics.l2.takeovers.inc_by(takeovers.len() as u64);
        let mut writes = Vec::new();
        let mut annotated = BTreeSet::new();
        for t in &takeovers {
            let Some(svc) = self.index.service(&t.service) else {
                continue;
            };
            writes.push(Write::event(
                svc,
                false,
                l2_reasons::ANNOUNCING,
                "Announce",
                format!(
                    "{} announced by {} (was {})",
                    t.address,
                    self.node_name,
                    t.from.as_deref().unwrap_or("none")
                ),
            ));
            if annotated.insert(t.service.clone())
                && let Some(value) = l2.agent.plan().announced_by(&t.service)
            {
                writes.push(Write::annotate_service(
                    &t.service.namespace,
                    &t.service.name,
                    &[(annotations::ANNOUNCED_BY.to_owned(), value)].into(),
                ));
            }
        }
        Announced {
            takeovers,
            statuses,
            writes_statuses,
            writes,
        }
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

    /// Brings the frame counters of the metrics up to date.
    pub fn observe(&self) {
        if let Some(l2) = &self.l2 {
            self.metrics.l2.observe(&l2.agent);
        }
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
