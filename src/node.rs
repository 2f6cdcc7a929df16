//! `portico node`: the node dataplane (kube-proxy's job), one per node.
//!
//! ```text
//!  watch Services ───────┐
//!  watch EndpointSlices ─┼──> Catalog ── Changes ──> Proxier ──> nft -f - (one transaction per sync)
//!  watch own Node ───────┘        │                     └──> conntrack -D (UDP flows of removed endpoints)
//!   (NodePort addresses)          └──> healthCheckNodePort servers (local endpoints of ETP Local Services)
//! ```
//!
//! L2 announcement (`l2.rs`): with the L2Announcements, IPPools and every
//! Node watched too, the agent answers ARP/NDP for the LoadBalancer
//! addresses it owns; the agents gossip (SWIM, `gossip.rs`) to notice a
//! dead one within seconds, and the one that takes an address over writes
//! `portico.dev/announced-by` and an Event.
//!
//! Syncs are coalesced: at most one per `--min-sync-period`; a full sync at
//! start, every `--sync-period` and after any failure, partial syncs of the
//! changed Services in between. A failed sync is retried after a pause
//! that doubles with each failure in a row (`portico_dataplane::schedule`,
//! shared with `portico local`). `/healthz` answers 200 only while syncs
//! succeed (like kube-proxy's :10256/healthz); `/readyz` once the first
//! sync is done.

use crate::cli::{DataplaneArgs, NodeArgs};
use crate::gossip::{self, Gossip};
use crate::http::Health;
use crate::l2::{L2Agent, L2Index, L2Metrics};
use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use portico_catalog::{Catalog, ServiceKey, TrafficPolicy};
use portico_controllers::NetworkConfig;
use portico_controllers::k8s::{EndpointSlice, Node, Service};
use portico_controllers::watch::{Event, Relist, sleep_until, watch};
use portico_controllers::{ApiWriter, Write};
use portico_crds::names::{annotations, l2_reasons};
use portico_crds::{IPPool, L2Announcement};
use portico_dataplane::{
    Backend, Config, Conntrack, ConntrackTool, DataplaneMetrics, Nft, Proxier, SyncKind,
    SyncReport, SyncSchedule, can_program_nftables, local_endpoint_count,
};
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The NodePort addresses by default: the node's first InternalIP of each
/// family (its ExternalIP when it has no InternalIP of that family), as
/// host routes.
pub fn primary_addresses(node: &Node) -> Vec<IpNet> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out: Vec<IpNet> = Vec::new();
    for kind in ["InternalIP", "ExternalIP"] {
        for a in addresses.iter().filter(|a| a.type_ == kind) {
            if let Ok(ip) = a.address.parse::<IpAddr>()
                && !out.iter().any(|n| n.addr().is_ipv4() == ip.is_ipv4())
            {
                out.push(IpNet::from(ip));
            }
        }
    }
    out
}

/// The dataplane configuration of a node: its networks, and where its
/// NodePorts answer (the given CIDRs, else the node's primary addresses).
pub fn dataplane_config(
    net: &NetworkConfig,
    node_name: &str,
    settings: &DataplaneArgs,
    node: Option<&Node>,
) -> anyhow::Result<Config> {
    let nodeport_addresses = if settings.nodeport_addresses.is_empty() {
        node.map(primary_addresses).unwrap_or_default()
    } else {
        settings
            .nodeport_addresses
            .iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| anyhow::anyhow!("--nodeport-addresses: {s:?} is not a CIDR"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    Ok(Config {
        node_name: node_name.to_owned(),
        cluster_cidrs: net.cluster_cidrs.clone(),
        service_cidrs: net.service_ranges.clone(),
        nodeport_addresses,
        service_proxy_name: settings.service_proxy_name.clone(),
    })
}

/// When `/healthz` says the node is healthy.
#[derive(Debug)]
struct Liveness {
    last_success: Option<Instant>,
    pending_since: Option<Instant>,
    sync_period: Duration,
    timeout: Duration,
}

impl Liveness {
    fn check(&self, now: Instant) -> Result<String, String> {
        let Some(last) = self.last_success else {
            return Err("no successful sync yet\n".into());
        };
        let age = now.saturating_duration_since(last);
        if let Some(p) = self.pending_since {
            let waiting = now.saturating_duration_since(p);
            if waiting > self.timeout {
                return Err(format!(
                    "changes have waited {:.0}s for a successful sync (last success {:.0}s ago)\n",
                    waiting.as_secs_f64(),
                    age.as_secs_f64()
                ));
            }
        }
        if age > self.sync_period + self.timeout {
            return Err(format!(
                "the last successful sync was {:.0}s ago\n",
                age.as_secs_f64()
            ));
        }
        Ok(format!(
            "ok: last successful sync {:.1}s ago\n",
            age.as_secs_f64()
        ))
    }
}

/// One watch event of a kind only L2 announcement reads.
pub enum L2Change {
    /// An L2Announcement event.
    Announcement(Box<watcher::Event<L2Announcement>>),
    /// An IPPool event.
    Pool(Box<watcher::Event<IPPool>>),
    /// An event of any Node.
    Node(Box<watcher::Event<Node>>),
}

/// One watch event of a kind `portico node` reads.
pub enum Change {
    /// A Service event.
    Service(Box<watcher::Event<Service>>),
    /// An EndpointSlice event.
    Slice(Box<watcher::Event<EndpointSlice>>),
    /// An event of this node's Node.
    Node(Box<watcher::Event<Node>>),
    /// An event for L2 announcement alone.
    L2(L2Change),
}

/// What `portico node` knows between watch events and syncs: the catalog,
/// its Node, and the proxier. Generic over the backend, so tests drive it
/// with the in-memory one.
pub struct NodeState<B: Backend, C: Conntrack> {
    catalog: Catalog,
    node: Option<Node>,
    proxier: Proxier<B, C>,
    services: Relist<Service>,
    slices: Relist<EndpointSlice>,
    nodes: Relist<Node>,
    net: NetworkConfig,
    node_name: String,
    settings: DataplaneArgs,
    /// Something changed since the last successful sync.
    pub dirty: bool,
}

impl<B: Backend, C: Conntrack> NodeState<B, C> {
    /// Nothing known yet; the first sync will be full.
    pub fn new(
        net: &NetworkConfig,
        node_name: &str,
        settings: &DataplaneArgs,
        backend: B,
        conntrack: C,
    ) -> anyhow::Result<Self> {
        let config = dataplane_config(net, node_name, settings, None)?;
        Ok(NodeState {
            catalog: Catalog::new(),
            node: None,
            proxier: Proxier::new(config, backend, conntrack),
            services: Relist::default(),
            slices: Relist::default(),
            nodes: Relist::default(),
            net: net.clone(),
            node_name: node_name.to_owned(),
            settings: settings.clone(),
            dirty: true,
        })
    }

    /// Every watch has listed once.
    pub fn synced(&self) -> bool {
        self.services.synced() && self.slices.synced() && self.nodes.synced()
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The proxier.
    pub fn proxier(&self) -> &Proxier<B, C> {
        &self.proxier
    }

    /// Takes in a watch event. A change of the node's addresses changes
    /// the configuration (and makes the next sync full).
    pub fn feed(&mut self, change: Change) -> anyhow::Result<()> {
        match change {
            Change::Service(ev) => {
                if let Some(ev) = self.services.feed(*ev) {
                    ev.into_index(&mut self.catalog);
                }
            }
            Change::Slice(ev) => {
                if let Some(ev) = self.slices.feed(*ev) {
                    ev.into_index(&mut self.catalog);
                }
            }
            Change::Node(ev) => {
                match self.nodes.feed(*ev) {
                    Some(Event::Reset(all)) => self.node = all.into_iter().next(),
                    Some(Event::Apply(n)) => self.node = Some(n),
                    Some(Event::Delete(_)) => self.node = None,
                    None => {}
                }
                let config = dataplane_config(
                    &self.net,
                    &self.node_name,
                    &self.settings,
                    self.node.as_ref(),
                )?;
                if &config != self.proxier.config() {
                    tracing::info!(nodeport_addresses = ?config.nodeport_addresses, "node addresses changed");
                    self.proxier.set_config(config);
                }
            }
            Change::L2(_) => return Ok(()),
        }
        self.dirty = true;
        Ok(())
    }

    /// Syncs what changed (everything when `full`, or when a full sync is
    /// due anyway). On failure the next sync is full.
    pub fn sync(&mut self, full: bool) -> Result<SyncReport, (SyncKind, portico_dataplane::Error)> {
        if full {
            self.proxier.request_full_sync();
        }
        let kind = if self.proxier.needs_full_sync() {
            SyncKind::Full
        } else {
            SyncKind::Partial
        };
        let pending = self.catalog.take_changes();
        match self.proxier.sync(&self.catalog, &pending) {
            Ok(r) => {
                self.dirty = false;
                Ok(r)
            }
            Err(e) => {
                self.dirty = true;
                Err((kind, e))
            }
        }
    }
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    if args.dump {
        print!("{}", Nft::new().dump()?);
        return Ok(());
    }
    if args.cleanup {
        Nft::new().cleanup()?;
        eprintln!("removed Portico's nftables tables (ip portico, ip6 portico)");
        return Ok(());
    }
    let node_name = args
        .node_name
        .clone()
        .context("--node-name (or NODE_NAME) is required")?;
    if !can_program_nftables() {
        anyhow::bail!(
            "portico node programs nftables and needs CAP_NET_ADMIN (run it as root, \
             or in the chart's DaemonSet)"
        );
    }
    args.dataplane.conntrack.apply()?;
    let net = args.network.config()?;
    let client = crate::cluster::connect().await?;

    let mut registry = Registry::default();
    let metrics = DataplaneMetrics::default();
    metrics.register(&mut registry);
    let l2_metrics = L2Metrics::default();
    if !args.l2.disable_l2_announcements {
        l2_metrics.register(&mut registry);
    }
    let liveness = Arc::new(Mutex::new(Liveness {
        last_success: None,
        pending_since: Some(Instant::now()),
        sync_period: args.sync_period,
        timeout: (args.min_sync_period * 2).max(Duration::from_secs(60)),
    }));
    let check = {
        let liveness = liveness.clone();
        move || match liveness.lock() {
            Ok(l) => l.check(Instant::now()),
            Err(_) => Err("poisoned\n".to_owned()),
        }
    };
    let health = Health::with_liveness(registry, check);
    let server = tokio::spawn(health.clone().serve(args.metrics_addr));

    let mut changes = futures::stream::select_all([
        watch(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            |e| Change::Service(Box::new(e)),
        ),
        watch(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            |e| Change::Slice(Box::new(e)),
        ),
        watcher(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        )
        .default_backoff()
        .map_ok(|e| Change::Node(Box::new(e)))
        .boxed(),
    ]);
    let mut l2 = if args.l2.disable_l2_announcements {
        None
    } else {
        changes.push(watch(
            Api::<L2Announcement>::all(client.clone()),
            watcher::Config::default(),
            |e| Change::L2(L2Change::Announcement(Box::new(e))),
        ));
        changes.push(watch(
            Api::<IPPool>::all(client.clone()),
            watcher::Config::default(),
            |e| Change::L2(L2Change::Pool(Box::new(e))),
        ));
        changes.push(watch(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            |e| Change::L2(L2Change::Node(Box::new(e))),
        ));
        Some(NodeL2::new(
            &args.l2,
            &node_name,
            ApiWriter::for_node(client.clone(), &node_name),
        )?)
    };
    let mut l2_tick = tokio::time::interval(Duration::from_secs(5));

    let mut state = NodeState::new(
        &net,
        &node_name,
        &args.dataplane,
        Nft::new(),
        ConntrackTool::new(),
    )?;
    let mut health_checks = HealthChecks::default();
    let mut schedule =
        SyncSchedule::new(Instant::now(), args.min_sync_period, Some(args.sync_period));
    let mut conflicts: Vec<(portico_dataplane::render::Entry, Vec<ServiceKey>)> = Vec::new();

    let shutdown = crate::cluster::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        if let Some(l2) = l2.as_mut() {
            l2.step(&state, &l2_metrics).await;
        }
        let due = if state.synced() {
            schedule.due(Instant::now(), state.dirty)
        } else {
            None
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = sleep_until(due) => {}
            () = l2_wakeup(&mut l2) => continue,
            _ = l2_tick.tick() => {
                if let Some(l2) = l2.as_ref() {
                    l2_metrics.observe(&l2.agent);
                }
                continue;
            }
            change = changes.try_next() => {
                match change {
                    Ok(Some(change)) => {
                        if let Some(l2) = l2.as_mut() {
                            l2.feed(&change, state.catalog());
                        }
                        state.feed(change)?;
                        if let Ok(mut l) = liveness.lock() {
                            l.pending_since.get_or_insert_with(Instant::now);
                        }
                    }
                    Ok(None) => anyhow::bail!("a watch ended"),
                    Err(e) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
                }
                continue;
            }
        }
        let now = Instant::now();
        if due.is_none_or(|d| d > now) {
            continue;
        }
        let full = schedule.start(now);
        let result = tokio::task::block_in_place(|| state.sync(full));
        schedule.finished(result.is_ok());
        match result {
            Ok(report) => {
                metrics.observe(&report, state.proxier().model().service_count());
                if let Ok(mut l) = liveness.lock() {
                    l.last_success = Some(Instant::now());
                    l.pending_since = None;
                }
                if !health.is_ready() {
                    health.set_ready(true);
                }
                let log = report.kind == SyncKind::Full || report.conntrack_deleted > 0;
                if log {
                    tracing::info!(
                        kind = report.kind.label(),
                        ms = report.duration.as_millis() as u64,
                        operations = report.operations,
                        services = report.services,
                        chains = report.chains,
                        elements = report.elements,
                        conntrack_deleted = report.conntrack_deleted,
                        "synced"
                    );
                } else {
                    tracing::debug!(
                        kind = report.kind.label(),
                        ms = report.duration.as_millis() as u64,
                        operations = report.operations,
                        services = report.services,
                        "synced"
                    );
                }
                let now_conflicts = state.proxier().model().conflicts();
                if now_conflicts != conflicts {
                    for (entry, owners) in &now_conflicts {
                        tracing::warn!(
                            ?entry,
                            ?owners,
                            "Services claim the same address and port; the first wins"
                        );
                    }
                    conflicts = now_conflicts;
                }
                health_checks.update(state.catalog(), &node_name).await;
            }
            Err((kind, e)) => {
                metrics.error(kind, &e);
                tracing::warn!(
                    error = %e,
                    kind = kind.label(),
                    retry_in_ms = schedule.pause().as_millis() as u64,
                    "sync failed; retrying with a full sync"
                );
            }
        }
    }
    if let Some(mut l2) = l2.take() {
        tracing::info!(
            addresses = l2.agent.announced().len(),
            "leaving; other nodes take over the addresses"
        );
        if let Some(g) = l2.gossip.take() {
            g.leave().await;
        }
    }
    tracing::info!("shutting down (the rules stay; `portico node --cleanup` removes them)");
    server.abort();
    health_checks.stop();
    Ok(())
}

/// L2 announcement in `portico node`: the index, the gossip, the agent,
/// and when the plan is to be computed again.
struct NodeL2 {
    index: L2Index,
    agent: L2Agent,
    node: String,
    /// Annotation and Event writes, carried out in order and retried until
    /// they land (`write_in_order`).
    writes: tokio::sync::mpsc::UnboundedSender<Write>,
    gossip: Option<Gossip>,
    live: Option<tokio::sync::watch::Receiver<BTreeSet<String>>>,
    /// `None`: gossip off. Otherwise where to listen, and the settings.
    gossip_settings: Option<gossip::Settings>,
    /// Announce nothing before this (the gossip has not heard the others).
    settle_until: Option<Instant>,
    dirty: bool,
}

impl NodeL2 {
    fn new(args: &crate::cli::L2Args, node: &str, writer: ApiWriter) -> anyhow::Result<Self> {
        let listen = gossip::parse_listen(args.gossip_listen.as_deref().unwrap_or("0.0.0.0:7946"))?;
        let gossip_settings = match listen {
            Some(listen) => Some(args.gossip_settings(node, listen)?),
            None => None,
        };
        let (writes, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(portico_controllers::write_in_order(
            writer,
            queue,
            Duration::from_millis(500),
        ));
        Ok(NodeL2 {
            index: L2Index::default(),
            agent: L2Agent::new(node, args.garp_interval),
            node: node.to_owned(),
            writes,
            gossip: None,
            live: None,
            gossip_settings,
            settle_until: None,
            dirty: true,
        })
    }

    /// Takes in a watch event (Services and EndpointSlices matter too),
    /// before the catalog does.
    fn feed(&mut self, change: &Change, catalog: &Catalog) {
        let changed = match change {
            Change::L2(L2Change::Announcement(ev)) => self.index.feed_announcement((**ev).clone()),
            Change::L2(L2Change::Pool(ev)) => self.index.feed_pool((**ev).clone()),
            Change::L2(L2Change::Node(ev)) => {
                let changed = self.index.feed_node((**ev).clone());
                if changed && let (Some(g), Some(s)) = (&self.gossip, &self.gossip_settings) {
                    g.join(self.peers(s.listen.port()));
                }
                changed
            }
            Change::Service(ev) => self.index.feed_service((**ev).clone()),
            Change::Slice(ev) => match &**ev {
                watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
                    self.index.slice_matters(catalog, s)
                }
                _ => true,
            },
            Change::Node(_) => false,
        };
        self.dirty |= changed;
    }

    /// Every other Node's primary addresses at the gossip port.
    fn peers(&self, port: u16) -> Vec<SocketAddr> {
        self.index
            .nodes()
            .filter(|n| n.metadata.name.as_deref() != Some(self.node.as_str()))
            .flat_map(primary_addresses)
            .map(|a| SocketAddr::new(a.addr(), port))
            .collect()
    }

    /// Starts the gossip once the node's address is known; plans and
    /// announces when something changed; writes what changed owner.
    async fn step<B: Backend, C: Conntrack>(
        &mut self,
        state: &NodeState<B, C>,
        metrics: &L2Metrics,
    ) {
        if !self.index.synced() || !state.synced() {
            return;
        }
        if self.gossip.is_none()
            && let Some(settings) = self.gossip_settings.clone()
        {
            let advertise = self
                .index
                .node(&self.node)
                .and_then(|n| primary_addresses(n).first().map(IpNet::addr));
            let mut settings = settings;
            settings.advertise = advertise;
            settings.join.extend(self.peers(settings.listen.port()));
            match Gossip::start(settings.clone()).await {
                Ok(g) => {
                    tracing::info!(addr = %g.local_addr(), peers = settings.join.len(), "gossiping with the other agents");
                    self.live = Some(g.watch());
                    self.gossip = Some(g);
                    // Three probe periods to hear from the others before
                    // claiming anything.
                    self.settle_until = Some(Instant::now() + settings.probe_period * 3);
                }
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot gossip; liveness from the Nodes' Ready conditions alone"
                    );
                    self.gossip_settings = None;
                }
            }
        }
        if self.settle_until.is_some_and(|t| Instant::now() < t) || !self.dirty {
            return;
        }
        self.dirty = false;
        let gossip_live = self.gossip.as_ref().map(Gossip::live);
        if let Some(g) = &gossip_live {
            metrics
                .live_agents
                .set(i64::try_from(g.len()).unwrap_or(i64::MAX));
        }
        let me = self.node.clone();
        let live = |n: &Node| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            crate::l2::node_ready(n)
                && gossip_live
                    .as_ref()
                    .is_none_or(|g| name == me || g.contains(name))
        };
        let plan = self.index.plan(state.catalog(), &live);
        for (name, st) in &plan.announcements {
            if !st.ready {
                tracing::warn!(l2announcement = %name, reason = st.reason, message = %st.message, "L2Announcement not usable as it is");
            }
        }
        // One agent writes the L2Announcements' statuses: the live one with
        // the smallest name (every agent knows which without asking).
        let writer_node = self
            .index
            .nodes()
            .filter(|n| live(n))
            .filter_map(|n| n.metadata.name.as_deref())
            .min();
        let mut writes = if writer_node == Some(self.node.as_str()) {
            crate::l2::status_writes(&plan, self.index.announcements())
        } else {
            Vec::new()
        };
        let takeovers = tokio::task::block_in_place(|| self.agent.apply(plan));
        metrics.observe(&self.agent);
        metrics.takeovers.inc_by(takeovers.len() as u64);
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
                    self.node,
                    t.from.as_deref().unwrap_or("none")
                ),
            ));
            if annotated.insert(t.service.clone())
                && let Some(value) = self.agent.plan().announced_by(&t.service)
            {
                writes.push(Write::annotate_service(
                    &t.service.namespace,
                    &t.service.name,
                    &[(annotations::ANNOUNCED_BY.to_owned(), value)].into(),
                ));
            }
        }
        for w in writes {
            // The writer task lives as long as this agent.
            let _ = self.writes.send(w);
        }
    }
}

/// Resolves when L2 announcement has something to do: the gossip's live
/// set changed, or the settling time ended.
async fn l2_wakeup(l2: &mut Option<NodeL2>) {
    let Some(l2) = l2.as_mut() else {
        return std::future::pending().await;
    };
    if let Some(t) = l2.settle_until {
        if Instant::now() < t {
            tokio::time::sleep_until(t.into()).await;
            l2.settle_until = None;
            l2.dirty = true;
            return;
        }
        l2.settle_until = None;
    }
    match l2.live.as_mut() {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            l2.dirty = true;
        }
        None => std::future::pending().await,
    }
}

// ---- healthCheckNodePort ----------------------------------------------------

/// One `healthCheckNodePort` server.
struct HealthCheck {
    service: ServiceKey,
    local: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// The `healthCheckNodePort` servers of the Services with
/// `externalTrafficPolicy: Local`: load balancers ask each node whether it
/// has local endpoints (200 with at least one, 503 without).
#[derive(Default)]
pub struct HealthChecks {
    servers: HashMap<u16, HealthCheck>,
    /// Where to listen (default: every address, both families).
    bind: Option<IpAddr>,
}

impl HealthChecks {
    /// Servers that listen on one address only.
    pub fn on(address: IpAddr) -> Self {
        HealthChecks {
            servers: HashMap::new(),
            bind: Some(address),
        }
    }

    /// Starts, updates and stops servers to match the catalog.
    pub async fn update(&mut self, catalog: &Catalog, node: &str) {
        let mut wanted: HashMap<u16, (ServiceKey, usize)> = HashMap::new();
        for svc in catalog.services() {
            if svc.external_traffic_policy != TrafficPolicy::Local {
                continue;
            }
            if let Some(port) = svc.health_check_node_port {
                let key = svc.key();
                let count = local_endpoint_count(svc, catalog.endpoints(&key), node);
                wanted.insert(port, (key, count));
            }
        }
        self.servers.retain(|port, hc| {
            let keep = wanted.get(port).is_some_and(|(k, _)| *k == hc.service);
            if !keep {
                hc.task.abort();
            }
            keep
        });
        for (port, (service, count)) in wanted {
            if let Some(hc) = self.servers.get(&port) {
                hc.local.store(count, Ordering::Relaxed);
                continue;
            }
            let local = Arc::new(AtomicUsize::new(count));
            match bind(self.bind, port).await {
                Ok(listener) => {
                    tracing::info!(port, service = %service, "serving healthCheckNodePort");
                    let task =
                        tokio::spawn(serve_health_check(listener, service.clone(), local.clone()));
                    self.servers.insert(
                        port,
                        HealthCheck {
                            service,
                            local,
                            task,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(port, service = %service, error = %e, "cannot serve healthCheckNodePort");
                }
            }
        }
    }

    /// Stops every server.
    pub fn stop(&mut self) {
        for (_, hc) in self.servers.drain() {
            hc.task.abort();
        }
    }

    /// The ports served.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.servers.keys().copied().collect();
        p.sort_unstable();
        p
    }
}

/// The given address, else both families when the host has IPv6, else
/// IPv4.
async fn bind(address: Option<IpAddr>, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    if let Some(a) = address {
        return tokio::net::TcpListener::bind(SocketAddr::new(a, port)).await;
    }
    match tokio::net::TcpListener::bind(SocketAddr::from(([0u16; 8], port))).await {
        Ok(l) => Ok(l),
        Err(_) => tokio::net::TcpListener::bind(SocketAddr::from(([0u8; 4], port))).await,
    }
}

/// What kube-proxy answers: the Service, its local endpoints, 200 or 503.
pub fn health_check_response(service: &ServiceKey, local: usize) -> (u16, String) {
    let body = serde_json::json!({
        "service": { "namespace": service.namespace, "name": service.name },
        "localEndpoints": local,
        "serviceProxyHealthy": true,
    });
    (if local > 0 { 200 } else { 503 }, format!("{body}\n"))
}

async fn serve_health_check(
    listener: tokio::net::TcpListener,
    service: ServiceKey,
    local: Arc<AtomicUsize>,
) {
    use axum::http::{StatusCode, header};
    let app = axum::Router::new().fallback(move || {
        let service = service.clone();
        let local = local.clone();
        async move {
            let (code, body) = health_check_response(&service, local.load(Ordering::Relaxed));
            (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
        }
    });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "healthCheckNodePort server stopped");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portico_controllers::k8s::EndpointSlice;
    use portico_controllers::k8s::ObjectMeta;

    fn node(addresses: &[(&str, &str)]) -> Node {
        use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: (*t).into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn node_ports_answer_on_the_primary_addresses_unless_told_otherwise() {
        let n = node(&[
            ("Hostname", "n1"),
            ("ExternalIP", "203.0.113.5"),
            ("InternalIP", "192.168.56.31"),
            ("InternalIP", "192.168.56.99"),
            ("InternalIP", "fd00::31"),
        ]);
        assert_eq!(
            primary_addresses(&n),
            vec![
                "192.168.56.31/32".parse::<IpNet>().unwrap(),
                "fd00::31/128".parse().unwrap()
            ]
        );
        let net = NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap();
        let c = dataplane_config(&net, "n1", &DataplaneArgs::default(), Some(&n)).unwrap();
        assert_eq!(c.nodeport_addresses.len(), 2);
        let addresses = |a: &[&str]| DataplaneArgs {
            nodeport_addresses: a.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let c = dataplane_config(
            &net,
            "n1",
            &addresses(&["10.0.0.0/8", "192.168.1.1"]),
            Some(&n),
        )
        .unwrap();
        assert_eq!(
            c.nodeport_addresses,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.168.1.1/32".parse().unwrap()
            ]
        );
        assert!(dataplane_config(&net, "n1", &addresses(&["nope"]), None).is_err());
    }

    #[test]
    fn healthz_fails_before_the_first_sync_and_when_changes_wait_too_long() {
        let t0 = Instant::now();
        let mut l = Liveness {
            last_success: None,
            pending_since: Some(t0),
            sync_period: Duration::from_secs(3600),
            timeout: Duration::from_secs(60),
        };
        assert!(l.check(t0).is_err());
        l.last_success = Some(t0);
        l.pending_since = None;
        assert!(l.check(t0 + Duration::from_secs(30)).is_ok());
        l.pending_since = Some(t0 + Duration::from_secs(10));
        assert!(l.check(t0 + Duration::from_secs(30)).is_ok());
        assert!(l.check(t0 + Duration::from_secs(100)).is_err());
        l.pending_since = None;
        assert!(l.check(t0 + Duration::from_secs(3700)).is_err());
    }

    /// GET / on a local port; the status code and body.
    async fn get(port: u16) -> (u16, String) {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
            (
                code,
                out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
            )
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn health_check_node_ports_follow_the_local_endpoints() {
        use k8s_openapi::api::core::v1::{Service as K8sService, ServicePort, ServiceSpec};
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let svc = K8sService {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some("local".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.40".into()),
                type_: Some("LoadBalancer".into()),
                external_traffic_policy: Some("Local".into()),
                health_check_node_port: Some(i32::from(port)),
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let slice = |nodes: &[&str]| EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some("local-1".into()),
                labels: Some(
                    [("kubernetes.io/service-name".to_owned(), "local".to_owned())].into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| Endpoint {
                    addresses: vec![format!("10.244.{}.2", i + 1)],
                    node_name: Some((*n).into()),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                port: Some(8080),
                ..Default::default()
            }]),
        };
        let mut catalog = Catalog::new();
        catalog.apply_service(&svc);
        catalog.apply_slice(&slice(&["n1", "n2", "n1"]));
        let mut hc = HealthChecks::on("127.0.0.1".parse().unwrap());
        hc.update(&catalog, "n1").await;
        assert_eq!(hc.ports(), vec![port]);
        let (code, body) = get(port).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"localEndpoints\":2"), "{body}");

        catalog.apply_slice(&slice(&["n2"]));
        hc.update(&catalog, "n1").await;
        assert_eq!(get(port).await.0, 503);

        catalog.delete_service(&svc);
        hc.update(&catalog, "n1").await;
        assert!(hc.ports().is_empty());
        hc.stop();
    }

    fn events<K>(objects: Vec<K>) -> Vec<watcher::Event<K>> {
        let mut v = vec![watcher::Event::Init];
        v.extend(objects.into_iter().map(watcher::Event::InitApply));
        v.push(watcher::Event::InitDone);
        v
    }

    #[test]
    fn watch_events_become_rules_and_node_addresses_nodeport_addresses() {
        use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
        use portico_dataplane::names::Family;
        use portico_dataplane::{FakeNft, RecordingConntrack};
        let net = NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap();
        let mut st = NodeState::new(
            &net,
            "n1",
            &DataplaneArgs::default(),
            FakeNft::new(),
            RecordingConntrack::default(),
        )
        .unwrap();
        let svc = Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                type_: Some("NodePort".into()),
                ports: Some(vec![ServicePort {
                    port: 80,
                    node_port: Some(30080),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let slice = |n: usize| EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some("web-1".into()),
                labels: Some([("kubernetes.io/service-name".to_owned(), "web".to_owned())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: (0..n)
                .map(|i| Endpoint {
                    addresses: vec![format!("10.244.{}.2", i + 1)],
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                port: Some(8080),
                ..Default::default()
            }]),
        };
        for ev in events(vec![svc.clone()]) {
            st.feed(Change::Service(Box::new(ev))).unwrap();
        }
        for ev in events(vec![slice(1)]) {
            st.feed(Change::Slice(Box::new(ev))).unwrap();
        }
        assert!(!st.synced());
        for ev in events(vec![node(&[("InternalIP", "192.168.56.31")])]) {
            st.feed(Change::Node(Box::new(ev))).unwrap();
        }
        assert!(st.synced() && st.dirty);
        let elements = |st: &NodeState<FakeNft, RecordingConntrack>, set: &str| {
            st.proxier()
                .backend()
                .elements(Family::Ipv4, set)
                .unwrap()
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k} : {v}"),
                    None => k.clone(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(st.sync(false).unwrap().kind, SyncKind::Full);
        assert!(!st.dirty);
        assert_eq!(elements(&st, "nodeport-ips"), vec!["192.168.56.31"]);
        assert_eq!(
            elements(&st, "service-ips"),
            vec!["10.96.0.10 . tcp . 80 : goto pick-1"]
        );

        st.feed(Change::Slice(Box::new(watcher::Event::Apply(slice(2)))))
            .unwrap();
        assert_eq!(st.sync(false).unwrap().kind, SyncKind::Partial);
        assert_eq!(
            elements(&st, "service-nodeports"),
            vec!["tcp . 30080 : goto nodeport-pick-masq-2"]
        );

        // New node address: a full sync.
        st.feed(Change::Node(Box::new(watcher::Event::Apply(node(&[(
            "InternalIP",
            "192.168.56.41",
        )])))))
        .unwrap();
        assert_eq!(st.sync(false).unwrap().kind, SyncKind::Full);
        assert_eq!(elements(&st, "nodeport-ips"), vec!["192.168.56.41"]);

        st.feed(Change::Service(Box::new(watcher::Event::Delete(svc))))
            .unwrap();
        assert_eq!(st.sync(false).unwrap().kind, SyncKind::Partial);
        assert!(elements(&st, "service-ips").is_empty());
        // A periodic full sync is full.
        assert_eq!(st.sync(true).unwrap().kind, SyncKind::Full);
    }

    /// The cluster path of L2 announcement without a cluster: watch events
    /// in, the plan makes this node the owner, and the agent applies
    /// `portico.dev/announced-by` and reports the takeover to a mock API
    /// server (exact requests). Gossip is off: liveness from Ready.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_node_that_takes_an_address_over_annotates_the_service_and_reports_it() {
        use http::{Method, Request, Response};
        use k8s_openapi::api::core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, NodeCondition, ServicePort, ServiceSpec,
            ServiceStatus,
        };
        use kube::client::Body;
        use portico_crds::{IPPoolSpec, L2AnnouncementSpec};
        use portico_dataplane::{FakeNft, RecordingConntrack};

        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let writer = ApiWriter::for_node(kube::Client::new(mock, "default"), "n1");
        let args = crate::cli::L2Args {
            disable_l2_announcements: false,
            garp_interval: Duration::from_secs(60),
            gossip_listen: Some("off".into()),
            gossip_join: Vec::new(),
            gossip_probe_period: Duration::from_millis(400),
            gossip_probe_timeout: Duration::from_millis(150),
            gossip_suspect_timeout: Duration::from_millis(800),
            gossip_key_file: None,
        };
        // The agent takes an address over only when a responder answers
        // ARP for it: one on `lo`, standing for the lab's network, needs a
        // raw socket (root).
        if !portico_dataplane::can_program_nftables() {
            assert!(
                std::env::var_os("PORTICO_REQUIRE_ROOT_TESTS").is_none(),
                "this test needs root (a raw socket)"
            );
            eprintln!("skipping: this test needs root (a raw socket)");
            return;
        }
        fn lab_link() -> Vec<portico_dataplane::l2::Link> {
            vec![portico_dataplane::l2::Link {
                name: "lo".into(),
                mac: [2, 0, 0, 0, 0, 31],
                networks: vec!["192.168.56.31/24".parse().unwrap()],
                usable: true,
            }]
        }
        let mut l2 = NodeL2::new(&args, "n1", writer).unwrap();
        let agent = std::mem::replace(&mut l2.agent, L2Agent::new("n1", Duration::ZERO));
        l2.agent = agent.with_io(lab_link, portico_dataplane::l2::Responder::open);
        let net = NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap();
        let mut st = NodeState::new(
            &net,
            "n1",
            &DataplaneArgs::default(),
            FakeNft::new(),
            RecordingConntrack::default(),
        )
        .unwrap();
        let mut ready = node(&[("InternalIP", "192.168.56.31")]);
        if let Some(s) = ready.status.as_mut() {
            s.conditions = Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]);
        }
        let svc = Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some("web".into()),
                uid: Some("6b1c1e1e-0000-4000-8000-000000000001".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                type_: Some("LoadBalancer".into()),
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some("192.168.56.60".into()),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }),
        };
        let pool = IPPool::new(
            "lab",
            IPPoolSpec {
                addresses: vec!["192.168.56.60-192.168.56.70".into()],
                ..Default::default()
            },
        );
        let announcement = L2Announcement::new("lab", L2AnnouncementSpec::default());
        let mut changes: Vec<Change> = Vec::new();
        changes.extend(
            events(vec![svc])
                .into_iter()
                .map(|e| Change::Service(Box::new(e))),
        );
        changes.extend(
            events(Vec::<EndpointSlice>::new())
                .into_iter()
                .map(|e| Change::Slice(Box::new(e))),
        );
        changes.extend(
            events(vec![ready.clone()])
                .into_iter()
                .map(|e| Change::Node(Box::new(e))),
        );
        changes.extend(
            events(vec![ready])
                .into_iter()
                .map(|e| Change::L2(L2Change::Node(Box::new(e)))),
        );
        changes.extend(
            events(vec![pool])
                .into_iter()
                .map(|e| Change::L2(L2Change::Pool(Box::new(e)))),
        );
        changes.extend(
            events(vec![announcement])
                .into_iter()
                .map(|e| Change::L2(L2Change::Announcement(Box::new(e)))),
        );
        for c in changes {
            l2.feed(&c, st.catalog());
            st.feed(c).unwrap();
        }
        let metrics = L2Metrics::default();
        l2.step(&st, &metrics).await;
        assert_eq!(metrics.takeovers.get(), 1);

        // Each write: its method and path checked, its body echoed back as
        // the API server would store it, and returned.
        async fn answer(
            handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
            what: &str,
            method: Method,
            path_and_query: &str,
        ) -> serde_json::Value {
            let (request, send) =
                tokio::time::timeout(Duration::from_secs(2), handle.next_request())
                    .await
                    .unwrap_or_else(|_| panic!("the agent wrote no {what}"))
                    .unwrap();
            assert_eq!(request.method(), method, "{what}");
            assert_eq!(request.uri().to_string(), path_and_query, "{what}");
            let body: serde_json::Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap();
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
            body
        }

        // n1 is the only live node, so it writes the L2Announcement's status.
        let body = answer(
            &mut handle,
            "status",
            Method::PATCH,
            "/apis/portico.dev/v1alpha1/l2announcements/lab/status?&force=true&fieldManager=portico-node",
        )
        .await;
        assert_eq!(body["status"]["announced"], 1);
        assert_eq!(body["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(body["status"]["conditions"][0]["status"], "True");
        let mut stored = L2Announcement::new("lab", L2AnnouncementSpec::default());
        stored.status = Some(serde_json::from_value(body["status"].clone()).unwrap());

        let body = answer(
            &mut handle,
            "Event",
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events?",
        )
        .await;
        assert_eq!(body["reason"], "L2Announcing");
        assert_eq!(body["note"], "192.168.56.60 announced by n1 (was none)");
        assert_eq!(body["reportingInstance"], "n1");

        let body = answer(
            &mut handle,
            "annotation",
            Method::PATCH,
            "/api/v1/namespaces/default/services/web?&force=true&fieldManager=portico-node",
        )
        .await;
        assert_eq!(
            body["metadata"],
            serde_json::json!({
                "name": "web",
                "namespace": "default",
                "annotations": { "portico.dev/announced-by": "n1" }
            })
        );

        // The watch brings the status back; nothing changed, so nothing
        // more is written.
        l2.feed(
            &Change::L2(L2Change::Announcement(Box::new(watcher::Event::Apply(
                stored,
            )))),
            st.catalog(),
        );
        assert!(l2.dirty);
        l2.step(&st, &metrics).await;
        assert_eq!(metrics.takeovers.get(), 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), handle.next_request())
                .await
                .is_err(),
            "a second write"
        );
    }

    #[test]
    fn a_health_check_answers_with_the_local_endpoints() {
        let key = ServiceKey::new("default", "local");
        let (code, body) = health_check_response(&key, 2);
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(v["service"]["name"], "local");
        assert_eq!(health_check_response(&key, 0).0, 503);
    }
}
