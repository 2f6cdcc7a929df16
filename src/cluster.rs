//! `portico controller`: the reconcilers against a Kubernetes cluster.
//!
//! ```text
//!  watch Services ──> reflector Store ──> ClusterIpController (audit) ──> writes
//!                                                                         │
//!  Lease (kube-lease-manager) ── leader? ─────────────────────────────────┴─> ApiWriter
//! ```
//!
//! Every replica watches and keeps its index warm; only the Lease holder
//! writes. A replica that becomes leader rebuilds its index from the store
//! and reports what is wrong at that moment.

use crate::cli::ControllerArgs;
use crate::http::Health;
use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use portico_controllers::clusterip::{ClusterIpController, Mode};
use portico_controllers::k8s::Service;
use portico_controllers::metrics::ClusterIpMetrics;
use portico_controllers::{ApiWriter, NetworkConfig, Write};
use portico_crds::names::{CONTROLLER_LEASE, FIELD_MANAGER};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let net = NetworkConfig::parse(
        &args.network.service_cluster_ip_range,
        &args.network.cluster_cidr,
    )?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (from KUBECONFIG, ~/.kube/config or the in-cluster service account)")?;

    let mut registry = Registry::default();
    let metrics = ClusterIpMetrics::default();
    metrics.register(&mut registry);
    let leader_gauge: Gauge = Gauge::default();
    registry.register(
        "portico_controller_leader",
        "1 when this replica holds the controller Lease and writes",
        leader_gauge.clone(),
    );
    let health = Health::new(registry);
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
    let services =
        watcher(Api::<Service>::all(client), watcher::Config::default()).default_backoff();
    let mut events = reflector(store_writer, services).boxed();

    let mut ctrl = ClusterIpController::new(&net, Mode::Audit, metrics.clone())?;
    let mut relist: Vec<Service> = Vec::new();
    let mut synced = false;
    let mut leader = *leader_rx.borrow_and_update();
    leader_gauge.set(i64::from(leader));

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let writes: Vec<Write> = tokio::select! {
            () = &mut shutdown => break,
            changed = leader_rx.changed() => {
                changed.context("leader election stopped")?;
                let now = *leader_rx.borrow_and_update();
                leader_gauge.set(i64::from(now));
                tracing::info!(leader = now, "leadership changed");
                let gained = now && !leader;
                leader = now;
                if gained && synced {
                    // A new leader reports the current problems afresh.
                    ctrl = ClusterIpController::new(&net, Mode::Audit, metrics.clone())?;
                    ctrl.reset(store.state().iter().map(|s| s.as_ref()))
                } else {
                    Vec::new()
                }
            }
            event = events.try_next() => match event {
                Ok(Some(watcher::Event::Init)) => { relist.clear(); Vec::new() }
                Ok(Some(watcher::Event::InitApply(svc))) => { relist.push(svc); Vec::new() }
                Ok(Some(watcher::Event::InitDone)) => {
                    let writes = ctrl.reset(relist.iter());
                    relist.clear();
                    if !synced {
                        tracing::info!(services = store.len(), "initial sync done");
                    }
                    synced = true;
                    health.set_ready(true);
                    writes
                }
                Ok(Some(watcher::Event::Apply(svc))) => ctrl.apply(&svc),
                Ok(Some(watcher::Event::Delete(svc))) => ctrl.delete(&svc),
                Ok(None) => anyhow::bail!("the Service watch ended"),
                Err(e) => {
                    tracing::warn!(error = %e, "Service watch failed; retrying with backoff");
                    Vec::new()
                }
            },
        };
        if leader {
            for write in &writes {
                if let Err(e) = writer.write(write).await {
                    tracing::warn!(error = %e, kind = e.metric_label(), ?write, "write failed");
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
