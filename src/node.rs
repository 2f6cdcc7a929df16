//! `portico node`: the node agent (kube-proxy's job, and L2 announcement),
//! one per node, fed by watches.
//!
//! ```text
//!  watch Services, EndpointSlices, Nodes ─┐              ┌──> nft (one transaction per sync)
//!  watch L2Announcements, IPPools ────────┼──> NodeAgent ┼──> ARP/NDP responders
//!  gossip (live agents) ──────────────────┘              └──> writes ──> API (in order, retried)
//!  healthCheckNodePort servers, /healthz, /readyz, /metrics
//! ```
//!
//! Everything the agent decides is `portico_agent::NodeAgent`, which
//! `portico local --dataplane` drives too; this file is the cluster edge.
//! Nodes are watched once: every Node with L2 announcement on (the plan
//! needs them), this node's alone without.

use crate::cli::NodeArgs;
use crate::http::{Answer, Endpoint, Health};
use anyhow::Context as _;
use futures::TryStreamExt;
use kube::Api;
use kube::runtime::watcher;
use portico_agent::gossip::{self, Gossip};
use portico_agent::health::HealthChecks;
use portico_agent::l2::L2Agent;
use portico_agent::{Change, Metrics, NodeAgent, Pacing};
use portico_controllers::ApiWriter;
use portico_controllers::k8s::{EndpointSlice, Node, Service};
use portico_controllers::watch::{Relist, sleep_until, watch};
use portico_crds::{IPPool, L2Announcement};
use portico_dataplane::{ConntrackTool, Kernel, Nft, SyncKind, can_program_nftables};
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One watch event of a kind the agent reads.
#[allow(missing_docs)]
pub enum Watched {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Node(Box<watcher::Event<Node>>),
    Announcement(Box<watcher::Event<L2Announcement>>),
    Pool(Box<watcher::Event<IPPool>>),
}

#[derive(Default)]
struct Relists {
    services: Relist<Service>,
    slices: Relist<EndpointSlice>,
    nodes: Relist<Node>,
    announcements: Relist<L2Announcement>,
    pools: Relist<IPPool>,
}

impl Relists {
    fn feed(&mut self, w: Watched) -> Option<Change> {
        Some(match w {
            Watched::Service(e) => Change::Services(self.services.feed(*e)?.map(Arc::new)),
            Watched::Slice(e) => Change::Slices(self.slices.feed(*e)?.map(Arc::new)),
            Watched::Node(e) => Change::Nodes(self.nodes.feed(*e)?.map(Arc::new)),
            Watched::Announcement(e) => {
                Change::Announcements(self.announcements.feed(*e)?.map(Arc::new))
            }
            Watched::Pool(e) => Change::Pools(self.pools.feed(*e)?.map(Arc::new)),
        })
    }
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    if args.dump {
        print!("{}", Nft::new().dump()?);
        return Ok(());
    }
    if args.cleanup {
        Kernel::open(args.dataplane.dataplane_backend)?.cleanup()?;
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
    let l2_on = !args.l2.disable_l2_announcements;

    let mut registry = Registry::default();
    let metrics = Metrics::default();
    let gossip_drops = metrics.l2.gossip_dropped.clone();
    metrics.dataplane.register(&mut registry);
    if l2_on {
        metrics.l2.register(&mut registry);
    }
    let agent = NodeAgent::new(
        &node_name,
        &net,
        &args.dataplane.settings(),
        (
            Kernel::open(args.dataplane.dataplane_backend)?,
            ConntrackTool::new(),
        ),
        Pacing {
            min_sync_period: args.min_sync_period,
            sync_period: Some(args.sync_period),
        },
        l2_on.then(|| L2Agent::new(&node_name, args.l2.garp_interval)),
        Instant::now(),
    )?
    .with_metrics(metrics);
    let liveness = agent.liveness();
    let (rules_requests, rules) = tokio::sync::mpsc::channel(8);
    let health = Health::with_liveness(registry, move || match liveness.lock() {
        Ok(l) => l.check(Instant::now()),
        Err(_) => Err("poisoned\n".to_owned()),
    })
    .with_endpoint("/rules", rules_endpoint(rules_requests));
    let server = tokio::spawn(health.clone().serve(args.metrics_addr));

    let watches = watches(&client, &node_name, l2_on);
    // The gossip starts once the agent knows its own address.
    let gossip =
        match gossip::parse_listen(args.l2.gossip_listen.as_deref().unwrap_or("0.0.0.0:7946"))? {
            Some(listen) if l2_on => Some(gossip::Settings {
                drops: gossip_drops,
                ..args.l2.gossip_settings(&node_name, listen)?
            }),
            _ => None,
        };
    let writer = ApiWriter::for_node(client.clone(), &node_name);
    let ready = health.clone();
    let result = drive(
        agent,
        watches,
        writer,
        gossip,
        rules,
        move || ready.set_ready(true),
        crate::cluster::shutdown_signal(),
    )
    .await;
    tracing::info!("shutting down (the rules stay; `portico node --cleanup` removes them)");
    server.abort();
    result.map(drop)
}

/// The watches of a node agent: every Node with L2 announcement on (the
/// plan needs them), this node's alone without.
pub fn watches(
    client: &kube::Client,
    node_name: &str,
    l2_on: bool,
) -> futures::stream::SelectAll<futures::stream::BoxStream<'static, Result<Watched, watcher::Error>>>
{
    let all = watcher::Config::default;
    let nodes = if l2_on {
        all()
    } else {
        all().fields(&format!("metadata.name={node_name}"))
    };
    let mut watches = futures::stream::select_all([
        watch(Api::<Service>::all(client.clone()), all(), |e| {
            Watched::Service(Box::new(e))
        }),
        watch(Api::<EndpointSlice>::all(client.clone()), all(), |e| {
            Watched::Slice(Box::new(e))
        }),
        watch(Api::<Node>::all(client.clone()), nodes, |e| {
            Watched::Node(Box::new(e))
        }),
    ]);
    if l2_on {
        watches.push(watch(
            Api::<L2Announcement>::all(client.clone()),
            all(),
            |e| Watched::Announcement(Box::new(e)),
        ));
        watches.push(watch(Api::<IPPool>::all(client.clone()), all(), |e| {
            Watched::Pool(Box::new(e))
        }));
    }
    watches
}

/// A request for the agent's rules (`GET /rules`); the agent answers on it.
pub type RulesRequest = tokio::sync::oneshot::Sender<Answer>;

/// `GET /rules`: what the agent has installed, as JSON
/// (`portico_agent::NodeRules`), asked of the agent's loop.
fn rules_endpoint(requests: tokio::sync::mpsc::Sender<RulesRequest>) -> Endpoint {
    Arc::new(move || {
        let requests = requests.clone();
        Box::pin(async move {
            let gone = (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "the agent has stopped\n".to_owned(),
            );
            let (reply, answer) = tokio::sync::oneshot::channel();
            if requests.send(reply).await.is_err() {
                return gone;
            }
            answer.await.unwrap_or(gone)
        })
    })
}

fn rules_answer<B, C>(agent: &mut NodeAgent<B, C>) -> Answer
where
    B: portico_dataplane::Backend,
    C: portico_dataplane::Conntrack,
{
    let json = agent
        .rules()
        .map_err(|e| e.to_string())
        .and_then(|r| serde_json::to_string(&r).map_err(|e| e.to_string()));
    match json {
        Ok(body) => (axum::http::StatusCode::OK, "application/json", body),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("{e}\n"),
        ),
    }
}

/// Runs the agent until `shutdown`: watch events in, syncs when due, the
/// gossip's live set, and the agent's writes out through `writer` (in
/// order, retried until they land); `rules` asks for what it has installed
/// (`/rules`). `ready` is called after the first successful sync. Returns
/// the agent when stopped.
#[allow(clippy::too_many_arguments)]
pub async fn drive<B, C>(
    mut agent: NodeAgent<B, C>,
    mut watches: impl futures::Stream<Item = Result<Watched, watcher::Error>> + Unpin,
    writer: ApiWriter,
    mut gossip_settings: Option<gossip::Settings>,
    mut rules: tokio::sync::mpsc::Receiver<RulesRequest>,
    ready: impl Fn(),
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<NodeAgent<B, C>>
where
    B: portico_dataplane::Backend,
    C: portico_dataplane::Conntrack,
{
    let mut relists = Relists::default();
    // The agent's writes go out in order and are retried until they land.
    let (writes, queue) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(portico_controllers::write_in_order(
        writer,
        queue,
        Duration::from_millis(500),
    ));
    let mut gossip: Option<Gossip> = None;
    let mut live: Option<tokio::sync::watch::Receiver<BTreeSet<String>>> = None;
    let mut health_checks = HealthChecks::default().with_liveness(agent.liveness());
    let mut l2_tick = tokio::time::interval(Duration::from_secs(5));

    tokio::pin!(shutdown);
    loop {
        if let Some(settings) = gossip_settings.take_if(|_| agent.synced()) {
            match start_gossip(&mut agent, settings).await {
                Ok(g) => {
                    live = Some(g.watch());
                    gossip = Some(g);
                }
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot gossip; liveness from the Nodes' Ready conditions alone"
                ),
            }
        }
        if let (Some(g), Some(peers)) = (&gossip, agent.take_peers(gossip_port(&gossip))) {
            g.join(peers);
        }
        let announced = tokio::task::block_in_place(|| agent.announce(Instant::now()));
        for w in announced.into_writes() {
            // The writer task lives as long as this loop.
            let _ = writes.send(w);
        }
        let due = agent.next_wakeup(Instant::now());
        tokio::select! {
            () = &mut shutdown => break,
            () = sleep_until(due) => {}
            () = live_changed(&mut live) => {
                agent.set_live(live.as_ref().map(|rx| rx.borrow().clone()));
                continue;
            }
            _ = l2_tick.tick() => {
                agent.observe();
                continue;
            }
            Some(reply) = rules.recv() => {
                let _ = reply.send(tokio::task::block_in_place(|| rules_answer(&mut agent)));
                continue;
            }
            w = watches.try_next() => {
                match w {
                    Ok(Some(w)) => {
                        if let Some(change) = relists.feed(w) {
                            agent.on(change, Instant::now())?;
                        }
                    }
                    Ok(None) => anyhow::bail!("the watches ended"),
                    Err(e) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
                }
                continue;
            }
        }
        let now = Instant::now();
        if agent.due(now).is_none_or(|d| d > now) {
            continue;
        }
        match tokio::task::block_in_place(|| agent.sync(now)) {
            Ok(report) => {
                ready();
                let fields = (
                    report.kind.label(),
                    report.duration.as_millis() as u64,
                    report.operations,
                    report.services,
                );
                if report.kind == SyncKind::Full || report.conntrack_deleted > 0 {
                    tracing::info!(
                        kind = fields.0,
                        ms = fields.1,
                        operations = fields.2,
                        services = fields.3,
                        chains = report.chains,
                        elements = report.elements,
                        conntrack_deleted = report.conntrack_deleted,
                        "synced"
                    );
                } else {
                    tracing::debug!(
                        kind = fields.0,
                        ms = fields.1,
                        operations = fields.2,
                        services = fields.3,
                        "synced"
                    );
                }
                health_checks
                    .update(agent.catalog(), agent.proxier().config())
                    .await;
            }
            Err((kind, e)) => tracing::warn!(
                error = %e,
                kind = kind.label(),
                retry_in_ms = agent.pause().as_millis() as u64,
                "sync failed; retrying with a full sync"
            ),
        }
    }
    if let Some(g) = gossip.take() {
        tracing::info!(
            addresses = agent.announced().len(),
            "leaving; other nodes take over the addresses"
        );
        g.leave().await;
    }
    health_checks.stop();
    Ok(agent)
}

/// Starts the gossip from the agent's own address and the other nodes';
/// the agent announces nothing before it has heard the others (three
/// probe periods).
async fn start_gossip<B, C>(
    agent: &mut NodeAgent<B, C>,
    mut settings: gossip::Settings,
) -> anyhow::Result<Gossip>
where
    B: portico_dataplane::Backend,
    C: portico_dataplane::Conntrack,
{
    settings.advertise = agent.own_address();
    settings.join.extend(agent.peers_at(settings.listen.port()));
    let g = Gossip::start(settings.clone()).await?;
    tracing::info!(addr = %g.local_addr(), peers = settings.join.len(), "gossiping with the other agents");
    agent.settle(Instant::now() + settings.probe_period * 3);
    agent.set_live(Some(g.live()));
    Ok(g)
}

fn gossip_port(g: &Option<Gossip>) -> u16 {
    g.as_ref().map_or(0, |g| g.local_addr().port())
}

/// Resolves when the gossip's live set changes (never without gossip).
async fn live_changed(live: &mut Option<tokio::sync::watch::Receiver<BTreeSet<String>>>) {
    match live.as_mut() {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::Method;
    use portico_dataplane::l2::{Link, Responder};
    use portico_dataplane::names::Family;
    use portico_dataplane::{MemoryNft, RecordingConntrack};
    use portico_testkit::MockApi;
    use serde_json::json;

    fn lab_link() -> Vec<Link> {
        vec![Link {
            name: "lab0".into(),
            mac: [2, 0, 0, 0, 0, 31],
            networks: vec!["192.168.56.31/24".parse().unwrap()],
            usable: true,
        }]
    }

    fn quiet(link: &Link, _: Duration) -> std::io::Result<Responder> {
        Responder::inert(link)
    }

    fn cluster() -> Vec<serde_json::Value> {
        vec![
            json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": "n1" },
                    "status": { "addresses": [{ "type": "InternalIP", "address": "192.168.56.31" }],
                                "conditions": [{ "type": "Ready", "status": "True" }] } }),
            json!({ "apiVersion": "v1", "kind": "Service",
                    "metadata": { "name": "web", "namespace": "default", "uid": "uid-web" },
                    "spec": { "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                              "ports": [{ "port": 80, "protocol": "TCP", "nodePort": 30080 }] },
                    "status": { "loadBalancer": { "ingress": [{ "ip": "192.168.56.60" }] } } }),
            json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": { "name": "web-1", "namespace": "default",
                                  "labels": { "kubernetes.io/service-name": "web" } },
                    "addressType": "IPv4",
                    "endpoints": [{ "addresses": ["10.244.1.5"], "nodeName": "n1",
                                    "conditions": { "ready": true } }],
                    "ports": [{ "port": 8080, "protocol": "TCP" }] }),
            json!({ "apiVersion": "portico.dev/v1alpha1", "kind": "IPPool", "metadata": { "name": "lab" },
                    "spec": { "addresses": ["192.168.56.60-192.168.56.70"] } }),
            json!({ "apiVersion": "portico.dev/v1alpha1", "kind": "L2Announcement",
                    "metadata": { "name": "lab" }, "spec": {} }),
        ]
    }

    type Running =
        tokio::task::JoinHandle<anyhow::Result<NodeAgent<MemoryNft, RecordingConntrack>>>;

    /// Node n1's agent (L2 on, gossip off) driven against `client`; what
    /// stops it, and what asks for its rules.
    fn start(
        client: &kube::Client,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        Running,
        tokio::sync::mpsc::Sender<RulesRequest>,
    ) {
        let net =
            portico_controllers::NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap();
        let agent = NodeAgent::new(
            "n1",
            &net,
            &portico_agent::Settings::default(),
            (MemoryNft::new(), RecordingConntrack::default()),
            Pacing {
                min_sync_period: Duration::from_millis(10),
                sync_period: None,
            },
            Some(L2Agent::new("n1", Duration::from_secs(60)).with_io(lab_link, quiet)),
            Instant::now(),
        )
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (rules_requests, rules) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(drive(
            agent,
            watches(client, "n1", true),
            ApiWriter::for_node(client.clone(), "n1"),
            None,
            rules,
            || {},
            async {
                let _ = stopped.await;
            },
        ));
        (stop, task, rules_requests)
    }

    /// Faults at the node agent's API edge: a failed status write is sent
    /// again (in order, before the writes after it), and an expired watch
    /// relists; the agent goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_is_sent_again_and_an_expired_watch_relists() {
        let (api, client) = MockApi::start(cluster());
        api.fail_next(Method::PATCH, "/l2announcements/lab/status", 500);
        let (stop, task, _rules) = start(&client);
        let done = tokio::time::timeout(
            Duration::from_secs(20),
            api.wait_for("the annotation after the retried status", |log| {
                log.iter()
                    .any(|l| l.path == "/api/v1/namespaces/default/services/web")
            }),
        )
        .await;
        assert!(done.is_ok(), "{:#?}", api.writes());
        let writes: Vec<String> = api.writes().iter().map(|w| w.path.clone()).collect();
        assert_eq!(
            writes,
            [
                "/apis/portico.dev/v1alpha1/l2announcements/lab/status",
                "/apis/portico.dev/v1alpha1/l2announcements/lab/status",
                "/apis/events.k8s.io/v1/namespaces/default/events",
                "/api/v1/namespaces/default/services/web",
            ],
            "the failed status first, again, then the rest in order"
        );
        let lists = |api: &MockApi| {
            api.log()
                .iter()
                .filter(|l| l.path == "/api/v1/services" && !l.is_watch())
                .count()
        };
        assert_eq!(lists(&api), 1);
        api.expire_watches("/api/v1/services");
        api.wait_for("a relist of the Services", |log| {
            log.iter()
                .filter(|l| l.path == "/api/v1/services" && !l.is_watch())
                .count()
                == 2
        })
        .await;
        stop.send(()).unwrap();
        let agent = task.await.unwrap().unwrap();
        assert_eq!(agent.announced(), ["192.168.56.60 (default/web)"]);
    }

    /// The node agent's cluster edge against an in-memory API server:
    /// the watches in (Nodes once), the rules programmed, and the
    /// takeover's writes out, exactly, through the real client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_agent_programs_rules_and_reports_its_takeover_through_the_api() {
        let (api, client) = MockApi::start(cluster());
        let (stop, task, rules) = start(&client);
        let annotated = |l: &portico_testkit::Logged| {
            l.method == Method::PATCH && l.path == "/api/v1/namespaces/default/services/web"
        };
        api.wait_for("the announced-by annotation", |log| {
            log.iter().any(annotated)
        })
        .await;
        let writes: Vec<(Method, String)> = api
            .writes()
            .iter()
            .map(|w| (w.method.clone(), w.path.clone()))
            .collect();
        assert_eq!(
            writes,
            [
                (
                    Method::PATCH,
                    "/apis/portico.dev/v1alpha1/l2announcements/lab/status".to_owned()
                ),
                (
                    Method::POST,
                    "/apis/events.k8s.io/v1/namespaces/default/events".to_owned()
                ),
                (
                    Method::PATCH,
                    "/api/v1/namespaces/default/services/web".to_owned()
                ),
            ]
        );
        for w in api.writes().iter().filter(|w| w.method == Method::PATCH) {
            assert_eq!(w.param("fieldManager"), Some("portico-node"));
        }
        let web = api
            .get(&json!({ "apiVersion": "v1", "kind": "Service",
                          "metadata": { "name": "web", "namespace": "default" } }))
            .unwrap();
        assert_eq!(
            web["metadata"]["annotations"]["portico.dev/announced-by"],
            "n1"
        );
        // One watch of the Nodes (all of them: L2 announcement needs them).
        let node_lists: Vec<_> = api
            .log()
            .into_iter()
            .filter(|l| l.path == "/api/v1/nodes" && !l.is_watch())
            .collect();
        assert_eq!(node_lists.len(), 1, "{node_lists:#?}");
        assert_eq!(node_lists[0].param("fieldSelector"), None);

        // `/rules`: what the agent installed, as `portico explain` reads it.
        let (code, content_type, body) = rules_endpoint(rules)().await;
        assert_eq!(
            (code.as_u16(), content_type),
            (200, "application/json"),
            "{body}"
        );
        let installed: portico_agent::NodeRules = serde_json::from_str(&body).unwrap();
        assert!(installed.programmed);
        assert_eq!(installed.node, "n1");
        let service_ips = &installed.rules.tables["ip"].sets[portico_dataplane::names::SERVICE_IPS];
        let keys: Vec<&String> = service_ips.elements.keys().collect();
        assert_eq!(keys, ["10.96.0.10 . tcp . 80", "192.168.56.60 . tcp . 80"]);

        stop.send(()).unwrap();
        let agent = task.await.unwrap().unwrap();
        let backend = agent.proxier().backend();
        let elements = backend
            .elements(Family::Ipv4, portico_dataplane::names::SERVICE_IPS)
            .unwrap_or_else(|| panic!("applied {}:\n{}", backend.applied(), backend.dump()));
        let keys: Vec<&String> = elements.keys().collect();
        assert_eq!(keys, ["10.96.0.10 . tcp . 80", "192.168.56.60 . tcp . 80"]);
        assert_eq!(agent.announced(), ["192.168.56.60 (default/web)"]);
    }
}
