//! `portico controller`: the reconcilers against a Kubernetes cluster.
//!
//! The watches, the loop and the writes are the cluster edge in
//! `portico_controllers::driver`; everything above it is `Reconcilers`,
//! which `portico local` drives too. This file wires them to the process:
//! the leader election, the admission webhook, `/metrics` and `/readyz`.

use crate::cli::ControllerArgs;
use crate::http::Health;
use crate::webhook::{self, WebhookState};
use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use portico_controllers::driver::{self, Status};
use portico_controllers::reconcilers::{Config, Metrics};
use portico_controllers::{ApiWriter, Reconcilers, Role};
use portico_crds::names::{CONTROLLER_LEASE, FIELD_MANAGER};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let client = connect().await?;
    let mut registry = Registry::default();
    let metrics = Metrics::default();
    metrics.register(&mut registry);
    let leader_gauge: Gauge = Gauge::default();
    registry.register(
        "portico_controller_leader",
        "1 when this replica holds the controller Lease and writes",
        leader_gauge.clone(),
    );
    let webhook_metrics = webhook::WebhookMetrics::default();
    webhook_metrics.register(&mut registry);

    let ip_addresses = driver::has_ip_addresses(&client).await;
    if !ip_addresses {
        tracing::info!(
            "the cluster has no networking.k8s.io/v1 IPAddress objects; Services are the only record of ClusterIPs"
        );
    }
    let reconcilers = Reconcilers::new(
        Config {
            clusterip_reuse_delay: args.clusterip.clusterip_reuse_delay,
            adoption_events: args.webhook.webhook_listen.is_some(),
            max_endpoints_per_slice: usize::from(args.endpointslices.max_endpoints_per_slice),
            batch_period: args.endpoint_updates_batch_period,
            default_load_balancer_class: args.lb.default_load_balancer_class,
            ..Config::new(args.network.config()?, Role::Cluster)
        },
        metrics,
    )?
    .with_ip_addresses(ip_addresses);
    let webhook = WebhookState {
        index: reconcilers.clusterip().clone(),
        leader: Arc::new(AtomicBool::new(false)),
        synced: Arc::new(AtomicBool::new(false)),
        reserve_for: args.webhook.webhook_reservation,
        metrics: webhook_metrics,
    };
    let serving = webhook.clone();
    let health = Health::new(registry).with_check("webhook", Arc::new(move || serving.serving()));
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
    let (leader_rx, lease_task) = if args.leader_elect {
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

    // The driver's status drives the gauge, /readyz and the webhook; a
    // replica that answers admissions labels its pod, for the webhook
    // Service.
    let (status_tx, mut status_rx) = tokio::sync::watch::channel(Status::default());
    let (serving_tx, serving_rx) = tokio::sync::watch::channel(false);
    let follower = {
        let (webhook, health) = (webhook.clone(), health.clone());
        tokio::spawn(async move {
            while status_rx.changed().await.is_ok() {
                let s = *status_rx.borrow_and_update();
                leader_gauge.set(i64::from(s.leader));
                webhook.leader.store(s.leader, Ordering::Relaxed);
                webhook.synced.store(s.admission_ready, Ordering::Relaxed);
                if s.synced && !health.is_ready() {
                    tracing::info!("initial sync done");
                    health.set_ready(true);
                }
                let on = webhook.serving();
                serving_tx.send_if_modified(|v| std::mem::replace(v, on) != on);
            }
        })
    };
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
                kube::Api::namespaced(client.clone(), &namespace),
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
            let done = std::future::pending();
            if let Err(e) = webhook::serve(listener, tls, app, Duration::from_secs(10), done).await
            {
                tracing::error!(error = %format!("{e:#}"), "admission webhook stopped");
            }
        });
    }

    let writer = ApiWriter::new(client.clone(), Some(identity));
    let watches = driver::watches(&client, ip_addresses);
    let ended = driver::drive(
        reconcilers,
        watches,
        writer,
        leader_rx,
        status_tx,
        shutdown_signal(),
    )
    .await;

    tracing::info!("shutting down");
    server.abort();
    follower.abort();
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
    Ok(ended?)
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
