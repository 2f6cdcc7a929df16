//! `portico dns`: cluster DNS in a cluster.
//!
//! ```text
//!  watch Services ─────┐
//!  watch EndpointSlices ┼──> Catalog ── take_changes() ──> Dns (record index, snapshot) ──> UDP/TCP answers
//!  watch Pods ─────────┘                                      (SERVFAIL for the zone until synced)
//! ```

use crate::cli::DnsArgs;
use crate::cluster::shutdown_signal;
use crate::http::Health;
use anyhow::Context as _;
use futures::TryStreamExt;
use kube::Api;
use kube::runtime::watcher;
use portico_catalog::Catalog;
use portico_controllers::k8s::{EndpointSlice, Pod, Service};
use portico_controllers::watch::{Relist, watch};
use portico_dns::{Dns, PodsMode};
use prometheus_client::registry::Registry;

enum Change {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Pod(Box<watcher::Event<Pod>>),
}

pub async fn run(args: DnsArgs) -> anyhow::Result<()> {
    let config = args.dns.config(args.listen)?;
    let pods_needed = config.pods == PodsMode::Verified;
    let dns = Dns::new(config).context("configuring the DNS server")?;
    let client = crate::cluster::connect().await?;
    let mut registry = Registry::default();
    dns.register(&mut registry);
    let health = Health::new(registry);
    let http = tokio::spawn(health.clone().serve(args.metrics_addr));

    let mut streams = vec![
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
    ];
    if pods_needed {
        streams.push(watch(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            |e| Change::Pod(Box::new(e)),
        ));
    }
    let mut changes = futures::stream::select_all(streams);

    let server = dns.clone();
    let mut serving = tokio::spawn(async move { server.serve(shutdown_signal()).await });
    tracing::info!(listen = %args.listen, "serving DNS (SERVFAIL for the cluster zone until the first sync)");

    let mut catalog = Catalog::new();
    let mut services: Relist<Service> = Relist::default();
    let mut slices: Relist<EndpointSlice> = Relist::default();
    let mut pods_synced = !pods_needed;
    loop {
        let change = tokio::select! {
            served = &mut serving => {
                http.abort();
                return match served {
                    Ok(result) => result.context("serving DNS"),
                    Err(e) => Err(anyhow::anyhow!("the DNS server task failed: {e}")),
                };
            }
            change = changes.try_next() => change,
        };
        match change {
            Ok(Some(Change::Service(ev))) => {
                if let Some(ev) = services.feed(*ev) {
                    ev.into_index(&mut catalog);
                }
            }
            Ok(Some(Change::Slice(ev))) => {
                if let Some(ev) = slices.feed(*ev) {
                    ev.into_index(&mut catalog);
                }
            }
            // Pods stream straight into the catalog, even during a relist:
            // buffering 100,000 Pod objects would cost more than the whole
            // DNS server.
            Ok(Some(Change::Pod(ev))) => match *ev {
                watcher::Event::Init => catalog.begin_pod_relist(),
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => catalog.apply_pod(&o),
                watcher::Event::InitDone => {
                    catalog.finish_pod_relist();
                    pods_synced = true;
                }
                watcher::Event::Delete(o) => catalog.delete_pod(&o),
            },
            Ok(None) => anyhow::bail!("a watch ended"),
            Err(e) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
        }
        if !(services.synced() && slices.synced() && pods_synced) {
            continue;
        }
        let changes = catalog.take_changes();
        if dns.is_synced() {
            if !changes.is_empty() {
                dns.apply(&catalog, &changes);
            }
        } else {
            dns.reset(&catalog);
            dns.mark_synced();
            health.set_ready(true);
            tracing::info!(
                services = catalog.service_count(),
                pods = catalog.pod_count(),
                "initial sync done"
            );
        }
    }
}
