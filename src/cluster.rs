//! `portico controller`: the reconcilers against a Kubernetes cluster.
//!
//! ```text
//!  watch Services ─────────┐
//!  watch Pods ─────────────┤    ClusterIpController (audit) ──┐
//!  watch Node metadata ────┼──> EndpointSliceController ──────┼──> writes ──> ApiWriter
//!  watch Portico's slices ─┤    LbIpamController ─────────────┤   (leader only)
//!  watch IPPools, Namespace metadata ┘ ^                      │
//!                                   └── what the API stored ──┘
//! ```
//!
//! Every replica watches and keeps its indexes warm; only the Lease holder
//! writes. A replica that becomes leader rebuilds the ClusterIP index from
//! its store, syncs every Service's slices, and re-adopts LoadBalancer
//! addresses from the Services' statuses as they are. What the API returns for a
//! write is fed back into the index at once, so a Service is never synced
//! against a store that has not seen Portico's own last write; a failed
//! write makes its Service sync again after a pause.

use crate::cli::ControllerArgs;
use crate::http::Health;
use crate::webhook::{self, SharedIndex, WebhookState, lock};
use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::networking::v1::IPAddress;
use kube::api::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use portico_controllers::clusterip::{ClusterIpController, Mode};
use portico_controllers::endpointslices::{self, EndpointSliceController};
use portico_controllers::k8s::{EndpointSlice, Namespace, Node, Pod, Service};
use portico_controllers::lbipam::{self, LbIpamController};
use portico_controllers::metrics::{ClusterIpMetrics, EndpointSliceMetrics, LbIpamMetrics};
use portico_controllers::{ApiWriter, Object, TargetKind, Write, Written};
use portico_crds::names::{CONTROLLER_LEASE, ENDPOINTSLICE_MANAGER, FIELD_MANAGER, labels};
use portico_crds::{ClusterIPRange, IPPool};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// A failed write makes its Service sync again after this pause.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// One watch event of any kind the controllers read.
enum Change {
    Service(Box<watcher::Event<Service>>),
    Pod(Box<watcher::Event<Pod>>),
    Node(watcher::Event<PartialObjectMeta<Node>>),
    Slice(watcher::Event<EndpointSlice>),
    Pool(Box<watcher::Event<IPPool>>),
    Range(Box<watcher::Event<ClusterIPRange>>),
    IpAddress(Box<watcher::Event<IPAddress>>),
    Namespace(watcher::Event<PartialObjectMeta<Namespace>>),
}

/// One watch with kube-runtime's default backoff, its events wrapped in the
/// driver's own change type.
pub(crate) fn watch<K, C>(
    api: Api<K>,
    config: watcher::Config,
    wrap: impl FnMut(watcher::Event<K>) -> C + Send + 'static,
) -> futures::stream::BoxStream<'static, Result<C, watcher::Error>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    C: Send + 'static,
{
    watcher(api, config).default_backoff().map_ok(wrap).boxed()
}

/// Objects of one kind collected during a relist.
pub(crate) struct Relist<K> {
    buffer: Vec<K>,
    pub(crate) synced: bool,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist {
            buffer: Vec::new(),
            synced: false,
        }
    }
}

impl<K> Relist<K> {
    /// Feeds a watch event; returns the relisted objects on `InitDone`, and
    /// the change for other events.
    pub(crate) fn feed(&mut self, event: watcher::Event<K>) -> Option<Fed<K>> {
        match event {
            watcher::Event::Init => {
                self.buffer.clear();
                None
            }
            watcher::Event::InitApply(o) => {
                self.buffer.push(o);
                None
            }
            watcher::Event::InitDone => {
                self.synced = true;
                Some(Fed::Reset(std::mem::take(&mut self.buffer)))
            }
            watcher::Event::Apply(o) => Some(Fed::Apply(o)),
            watcher::Event::Delete(o) => Some(Fed::Delete(o)),
        }
    }
}

pub(crate) enum Fed<K> {
    Reset(Vec<K>),
    Apply(K),
    Delete(K),
}

/// Only the labels of Nodes (zones) and Namespaces (pool selectors) matter,
/// so they are watched as metadata and rebuilt as objects with metadata only.
fn from_meta<K: kube::Resource + Default>(
    ev: watcher::Event<PartialObjectMeta<K>>,
) -> watcher::Event<K> {
    let obj = |meta: PartialObjectMeta<K>| {
        let mut o = K::default();
        *o.meta_mut() = meta.metadata;
        o
    };
    match ev {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(m) => watcher::Event::InitApply(obj(m)),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(m) => watcher::Event::Apply(obj(m)),
        watcher::Event::Delete(m) => watcher::Event::Delete(obj(m)),
    }
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let net = args.network.config()?;
    let client = connect().await?;

    let mut registry = Registry::default();
    let clusterip_metrics = ClusterIpMetrics::default();
    clusterip_metrics.register(&mut registry);
    let slice_metrics = EndpointSliceMetrics::default();
    slice_metrics.register(&mut registry);
    let lb_metrics = LbIpamMetrics::default();
    lb_metrics.register(&mut registry);
    let leader_gauge: Gauge = Gauge::default();
    registry.register(
        "portico_controller_leader",
        "1 when this replica holds the controller Lease and writes",
        leader_gauge.clone(),
    );
    let webhook_metrics = webhook::WebhookMetrics::default();
    webhook_metrics.register(&mut registry);
    let webhook_leader = Arc::new(AtomicBool::new(false));
    let webhook_synced = Arc::new(AtomicBool::new(false));
    let (l, s) = (webhook_leader.clone(), webhook_synced.clone());
    let health = Health::new(registry).with_check(
        "webhook",
        Arc::new(move || l.load(Ordering::Relaxed) && s.load(Ordering::Relaxed)),
    );
    let server = tokio::spawn(health.clone().serve(args.metrics_addr));

    let identity = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "portico-controller".to_owned());
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| {
            std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "default".to_owned());

    // Without leader election this replica always leads; the sender is kept
    // so the channel never reports a change.
    let mut _always_leader = None;
    let (mut leader_rx, lease_task) = if args.leader_elect {
        let manager = LeaseManagerBuilder::new(client.clone(), CONTROLLER_LEASE)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_field_manager(FIELD_MANAGER)
            .with_duration(args.lease_duration.as_secs().max(2))
            .with_grace(args.lease_duration.as_secs().max(2) / 3)
            .build()
            .await
            .context("setting up leader election")?;
        let (rx, task) = manager.watch().await;
        tracing::info!(%namespace, lease = CONTROLLER_LEASE, %identity, "leader election started");
        (rx, Some(task))
    } else {
        let (tx, rx) = tokio::sync::watch::channel(true);
        _always_leader = Some(tx);
        (rx, None)
    };

    let writer = ApiWriter::new(client.clone(), Some(identity));
    let (store, store_writer) = reflector::store::<Service>();
    let managed = format!("{}={ENDPOINTSLICE_MANAGER}", labels::MANAGED_BY);
    // kube-apiserver's IPAddress objects (KEP-1880), where the cluster has them.
    let has_ip_addresses = client
        .list_api_group_resources("networking.k8s.io/v1")
        .await
        .map(|l| l.resources.iter().any(|r| r.name == "ipaddresses"))
        .unwrap_or(false);
    let mut changes = futures::stream::select_all([
        reflector(
            store_writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map_ok(|e| Change::Service(Box::new(e)))
        .boxed(),
        watch(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            |e| Change::Pod(Box::new(e)),
        ),
        watch(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            watcher::Config::default(),
            Change::Node,
        ),
        watch(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&managed),
            Change::Slice,
        ),
        watch(
            Api::<IPPool>::all(client.clone()),
            watcher::Config::default(),
            |e| Change::Pool(Box::new(e)),
        ),
        watch(
            Api::<ClusterIPRange>::all(client.clone()),
            watcher::Config::default(),
            |e| Change::Range(Box::new(e)),
        ),
        watch(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
            Change::Namespace,
        ),
    ]);

    if has_ip_addresses {
        changes.push(watch(
            Api::<IPAddress>::all(client.clone()),
            watcher::Config::default(),
            |e| Change::IpAddress(Box::new(e)),
        ));
    } else {
        tracing::info!(
            "the cluster has no networking.k8s.io/v1 IPAddress objects; Services are the only record of ClusterIPs"
        );
    }
    let mut ip_addresses: Relist<IPAddress> = Relist::default();
    let new_index = || -> anyhow::Result<ClusterIpController> {
        Ok(
            ClusterIpController::new(&net, Mode::Audit, clusterip_metrics.clone())?
                .with_reuse_delay(args.clusterip.clusterip_reuse_delay)
                .with_adoption_events(args.webhook.webhook_listen.is_some()),
        )
    };
    let clusterip: SharedIndex = Arc::new(Mutex::new(new_index()?));
    let webhook = WebhookState {
        index: clusterip.clone(),
        leader: webhook_leader,
        synced: webhook_synced,
        reserve_for: args.webhook.webhook_reservation,
        metrics: webhook_metrics,
    };
    // Whether this replica answers admissions (leader and synced); it
    // labels its pod accordingly, for the webhook Service.
    let (serving_tx, serving_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = args.webhook.webhook_listen {
        let tls = Arc::new(webhook::Tls::load(
            &args.webhook.webhook_cert_file,
            &args.webhook.webhook_key_file,
        )?);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admission webhook to {addr}"))?;
        tracing::info!(%addr, "serving the ClusterIP admission webhook (HTTPS POST /mutate-services)");
        let app = webhook::router(webhook.clone());
        if let Some(pod_name) = args.pod_name.clone() {
            tokio::spawn(webhook::follow_leadership(
                Api::namespaced(client.clone(), &namespace),
                pod_name,
                serving_rx,
                Duration::from_secs(2),
            ));
        } else {
            tracing::warn!(
                "no --pod-name (POD_NAME): this replica cannot label its pod, so a webhook Service that selects the leader label never reaches it"
            );
        }
        tokio::spawn(async move {
            if let Err(e) = webhook::serve(
                listener,
                tls,
                app,
                Duration::from_secs(10),
                std::future::pending(),
            )
            .await
            {
                tracing::error!(error = %format!("{e:#}"), "admission webhook stopped");
            }
        });
    }
    let mut slices = EndpointSliceController::new(
        endpointslices::Config {
            max_endpoints_per_slice: usize::from(args.endpointslices.max_endpoints_per_slice),
            batch_period: args.endpoint_updates_batch_period,
            delete_orphans: false,
        },
        slice_metrics,
    );
    let mut lb = LbIpamController::new(
        lbipam::Config {
            default_class: args.lb.default_load_balancer_class,
        },
        &net,
        lb_metrics,
    );
    let mut pools: Relist<IPPool> = Relist::default();
    let mut cluster_ranges: Relist<ClusterIPRange> = Relist::default();
    let mut namespaces: Relist<Namespace> = Relist::default();
    let mut services: Relist<Service> = Relist::default();
    let mut pods: Relist<Pod> = Relist::default();
    let mut nodes: Relist<Node> = Relist::default();
    let mut slice_relist: Relist<EndpointSlice> = Relist::default();
    let mut leader = *leader_rx.borrow_and_update();
    leader_gauge.set(i64::from(leader));
    webhook.leader.store(leader, Ordering::Relaxed);

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut quarantine_tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let serving = webhook.serving();
        serving_tx.send_if_modified(|v| std::mem::replace(v, serving) != serving);
        let all_synced = services.synced
            && pods.synced
            && nodes.synced
            && slice_relist.synced
            && pools.synced
            && namespaces.synced;
        let next_due = slices.next_due().filter(|_| all_synced);
        let mut writes: Vec<Write> = tokio::select! {
            () = &mut shutdown => break,
            changed = leader_rx.changed() => {
                changed.context("leader election stopped")?;
                let now = *leader_rx.borrow_and_update();
                leader_gauge.set(i64::from(now));
                webhook.leader.store(now, Ordering::Relaxed);
                tracing::info!(leader = now, "leadership changed");
                let gained = now && !leader;
                leader = now;
                if gained && services.synced {
                    // A new leader reports the current problems afresh and
                    // writes the slices the others only computed.
                    *lock(&clusterip) = new_index()?;
                    slices.resync_all(Instant::now());
                    lb.reset_services(store.state().iter().map(|s| s.as_ref()));
                    lock(&clusterip).reset(store.state().iter().map(|s| s.as_ref()))
                } else {
                    Vec::new()
                }
            }
            () = sleep_until(next_due) => Vec::new(),
            _ = quarantine_tick.tick() => lock(&clusterip).tick(),
            change = changes.try_next() => {
                let now = Instant::now();
                match change {
                    Ok(Some(Change::Service(ev))) => match services.feed(*ev) {
                        Some(Fed::Reset(all)) => {
                            slices.reset_services(all.iter(), now);
                            lb.reset_services(all.iter());
                            lock(&clusterip).reset(all.iter())
                        }
                        Some(Fed::Apply(svc)) => {
                            slices.apply_service(&svc, now);
                            lb.apply_service(&svc);
                            lock(&clusterip).apply(&svc)
                        }
                        Some(Fed::Delete(svc)) => {
                            slices.delete_service(&svc, now);
                            lb.delete_service(&svc);
                            lock(&clusterip).delete(&svc)
                        }
                        None => Vec::new(),
                    },
                    Ok(Some(Change::Pod(ev))) => {
                        match pods.feed(*ev) {
                            Some(Fed::Reset(all)) => slices.reset_pods(all.iter(), now),
                            Some(Fed::Apply(pod)) => slices.apply_pod(&pod, now),
                            Some(Fed::Delete(pod)) => slices.delete_pod(&pod, now),
                            None => {}
                        }
                        Vec::new()
                    }
                    Ok(Some(Change::Node(ev))) => {
                        match nodes.feed(from_meta(ev)) {
                            Some(Fed::Reset(all)) => slices.reset_nodes(all.iter(), now),
                            Some(Fed::Apply(node)) => slices.apply_node(&node, now),
                            Some(Fed::Delete(node)) => slices.delete_node(&node, now),
                            None => {}
                        }
                        Vec::new()
                    }
                    Ok(Some(Change::Slice(ev))) => {
                        match slice_relist.feed(ev) {
                            Some(Fed::Reset(all)) => slices.reset_slices(all.into_iter().map(Arc::new), now),
                            Some(Fed::Apply(s)) => slices.apply_slice(Arc::new(s), now),
                            Some(Fed::Delete(s)) => slices.delete_slice(&s, now),
                            None => {}
                        }
                        Vec::new()
                    }
                    Ok(Some(Change::Pool(ev))) => {
                        match pools.feed(*ev) {
                            Some(Fed::Reset(all)) => lb.reset_pools(all.iter()),
                            Some(Fed::Apply(p)) => lb.apply_pool(&p),
                            Some(Fed::Delete(p)) => lb.delete_pool(&p),
                            None => {}
                        }
                        Vec::new()
                    }
                    Ok(Some(Change::IpAddress(ev))) => {
                        match ip_addresses.feed(*ev) {
                            Some(Fed::Reset(all)) => lock(&clusterip).reset_ip_addresses(all.iter()),
                            Some(Fed::Apply(o)) => lock(&clusterip).apply_ip_address(&o),
                            Some(Fed::Delete(o)) => lock(&clusterip).delete_ip_address(&o),
                            None => {}
                        }
                        Vec::new()
                    }
                    Ok(Some(Change::Range(ev))) => match cluster_ranges.feed(*ev) {
                        Some(Fed::Reset(all)) => lock(&clusterip).reset_ranges(all.iter()),
                        Some(Fed::Apply(r)) => lock(&clusterip).apply_range(&r),
                        Some(Fed::Delete(r)) => lock(&clusterip).delete_range(&r),
                        None => Vec::new(),
                    },
                    Ok(Some(Change::Namespace(ev))) => {
                        match namespaces.feed(from_meta(ev)) {
                            Some(Fed::Reset(all)) => {
                                lb.reset_namespaces(all.iter());
                                lock(&clusterip).reset_namespaces(all.iter());
                            }
                            Some(Fed::Apply(ns)) => {
                                lb.apply_namespace(&ns);
                                lock(&clusterip).apply_namespace(&ns);
                            }
                            Some(Fed::Delete(_)) | None => {}
                        }
                        Vec::new()
                    }
                    Ok(None) => anyhow::bail!("a watch ended"),
                    Err(e) => {
                        tracing::warn!(error = %e, "watch failed; retrying with backoff");
                        Vec::new()
                    }
                }
            }
        };
        let all_synced = services.synced
            && pods.synced
            && nodes.synced
            && slice_relist.synced
            && pools.synced
            && namespaces.synced;
        webhook.synced.store(
            services.synced
                && cluster_ranges.synced
                && namespaces.synced
                && (ip_addresses.synced || !has_ip_addresses),
            Ordering::Relaxed,
        );
        if all_synced {
            if !health.is_ready() {
                tracing::info!(services = store.len(), "initial sync done");
                health.set_ready(true);
            }
            writes.extend(slices.flush(Instant::now()));
            writes.extend(lb.flush());
        }
        if !leader {
            continue;
        }
        for write in &writes {
            match writer.write(write).await {
                Ok(Written::Object(Object::EndpointSlice(slice))) => {
                    slices.apply_slice(Arc::new(*slice), Instant::now());
                }
                Ok(Written::Deleted(t)) if t.kind == TargetKind::EndpointSlice => {
                    slices.forget_slice(&t.namespace, &t.name, Instant::now());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.metric_label(), ?write, "write failed");
                    if let Write::Create(Object::EndpointSlice(slice))
                    | Write::Replace(Object::EndpointSlice(slice)) = write
                    {
                        let target = Object::EndpointSlice(slice.clone()).target();
                        slices.retry(&target, Some(slice), Instant::now(), RETRY_DELAY);
                    }
                }
            }
        }
    }

    tracing::info!("shutting down");
    server.abort();
    drop(leader_rx);
    if let Some(task) = lease_task {
        match task.await {
            Ok(Ok(manager)) => {
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "releasing the Lease");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election ended with an error"),
            Err(e) => tracing::warn!(error = %e, "leader election task"),
        }
    }
    Ok(())
}

/// Sleeps until `due`, or forever without one.
pub async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A client from KUBECONFIG, ~/.kube/config or the in-cluster service
/// account, for every component that talks to the API.
pub async fn connect() -> anyhow::Result<Client> {
    Client::try_default().await.context(
        "connecting to the Kubernetes API (from KUBECONFIG, ~/.kube/config or the in-cluster service account)",
    )
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
