//! `portico local`: the whole suite on one machine, from manifest files.
//!
//! ```text
//!  manifests ──load──> World (reflector stores) ──reconcilers──> writes ──┐
//!                          ^                                             │
//!                          └──────────── local writer (merge) <──────────┘
//!                 repeated until no reconciler writes (a fixpoint), then printed
//! ```
//!
//! The reconcilers are the very ones `portico controller` runs; here Portico
//! is the allocator, so ClusterIPs are assigned rather than audited. With
//! `--dataplane`, the rules of one node are programmed too (`dataplane.rs`).

pub mod dataplane;

use crate::cli::{LocalArgs, Output};
use anyhow::Context as _;
use portico_controllers::reconcilers::{Config, Metrics};
use portico_controllers::{NetworkConfig, Reconcilers, Role};
use portico_local::load::{self, Diagnostic};
use portico_local::{World, catalog, l2_statuses, print, reconcile};
use std::io::Write as _;
use std::time::Instant;

pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let net = args.network.config()?;
    let mut previous: Option<World> = None;
    // The reconcilers live across --watch reloads, so that Services
    // removed from the files go through the reuse quarantine and come back
    // with their addresses, and problems are not reported again. Without
    // --watch they go once the world is settled: serving needs the world.
    let mut reconcilers = Some(Reconcilers::new(
        config(&args, net.clone()),
        Metrics::default(),
    )?);
    let mut seen = load::fingerprint(&args.files);
    // Said once the first answers are in place.
    let mut dns_announcement = None;
    let dns = if args.dns {
        let dns = portico_dns::Dns::new(args.dns_settings.config(args.dns_listen)?)
            .context("configuring the DNS server")?;
        let listener = dns
            .bind()
            .await
            .with_context(|| format!("binding DNS to {}", args.dns_listen))?;
        dns_announcement = Some(format!(
            "serving DNS on {} (UDP and TCP); Ctrl-C to stop",
            listener.local_addr()
        ));
        tokio::spawn(async move {
            if let Err(e) = listener.run(crate::cluster::shutdown_signal()).await {
                eprintln!("error: DNS server: {e}");
            }
        });
        Some(dns)
    } else {
        None
    };
    let mut node_dataplane = match (&args.node_name, args.dataplane) {
        (Some(node), true) => Some(
            dataplane::LocalDataplane::new(&net, node, &args.dataplane_settings, &args.l2).await?,
        ),
        _ => None,
    };
    let mut health_ports: Vec<u16> = Vec::new();
    loop {
        let manifests = load::load(&args.files)?;
        report(&manifests.diagnostics);
        let Some(r) = reconcilers.as_mut() else {
            anyhow::bail!("the reconcilers are gone; this is a bug");
        };
        let mut world = reconcile(manifests, &net, previous.as_ref(), r).await?;
        if !args.watch {
            reconcilers = None;
        }
        // One catalog a round for DNS and the L2 statuses (the node agent
        // keeps its own, which records what changed between rounds).
        let l2_without_agent = node_dataplane.is_none() && !world.l2announcements.store.is_empty();
        let shared = (dns.is_some() || l2_without_agent).then(|| catalog(&world));
        if let Some(dp) = node_dataplane.as_mut() {
            dp.update(&world)?;
            step_dataplane(dp, Some(&mut world), Instant::now())?;
            health_ports = dp.serve_health_checks().await;
        } else if let Some(shared) = shared.as_ref().filter(|_| l2_without_agent) {
            l2_statuses(&mut world, shared)?;
        }
        l2_warnings(&world);
        let mut out = std::io::stdout().lock();
        match args.output {
            Output::Table => print::tables(&mut out, &world, &args.show)?,
            Output::Yaml => print::yaml(&mut out, &world)?,
        }
        out.flush()?;
        print::warnings(&world);
        if let (Some(dns), Some(shared)) = (&dns, &shared) {
            dns.reset(shared);
            dns.mark_synced();
            if let Some(line) = dns_announcement.take() {
                eprintln!("{line}");
            }
        }
        if !health_ports.is_empty() {
            eprintln!(
                "serving healthCheckNodePorts {:?} (Ctrl-C to stop)",
                health_ports
            );
        }
        let announcing = node_dataplane
            .as_ref()
            .is_some_and(dataplane::LocalDataplane::announcing);
        if !args.watch {
            if dns.is_some() || announcing || !health_ports.is_empty() {
                // Serve until stopped; the gossip's live set may still move
                // addresses, and a failed sync is retried.
                let shutdown = crate::cluster::shutdown_signal();
                tokio::pin!(shutdown);
                loop {
                    let due = sync_due(&node_dataplane);
                    tokio::select! {
                        () = &mut shutdown => {
                            if let Some(dp) = node_dataplane.as_mut() {
                                dp.leave().await;
                            }
                            break;
                        }
                        () = portico_controllers::watch::sleep_until(due) => {
                            if let Some(dp) = node_dataplane.as_mut() {
                                step_dataplane(dp, Some(&mut world), Instant::now())?;
                            }
                        }
                        () = liveness_changed(&mut node_dataplane) => {
                            if let Some(dp) = node_dataplane.as_mut() {
                                step_dataplane(dp, Some(&mut world), Instant::now())?;
                            }
                        }
                    }
                }
            } else if node_dataplane.as_ref().is_some_and(|dp| dp.failures() > 0) {
                anyhow::bail!("the dataplane sync failed");
            }
            return Ok(());
        }
        previous = Some(world);
        // Wait for a change of the files (or Ctrl-C / SIGTERM); a failed
        // sync is retried meanwhile, and never ends the watch.
        loop {
            let due = sync_due(&node_dataplane);
            tokio::select! {
                () = crate::cluster::shutdown_signal() => {
                    if let Some(dp) = node_dataplane.as_mut() {
                        dp.leave().await;
                    }
                    return Ok(());
                }
                () = tokio::time::sleep(args.watch_interval) => {}
                () = portico_controllers::watch::sleep_until(due) => {
                    if let Some(dp) = node_dataplane.as_mut() {
                        step_dataplane(dp, previous.as_mut(), Instant::now())?;
                    }
                }
                () = liveness_changed(&mut node_dataplane) => {
                    if let Some(dp) = node_dataplane.as_mut() {
                        step_dataplane(dp, previous.as_mut(), Instant::now())?;
                    }
                    continue;
                }
            }
            let now = load::fingerprint(&args.files);
            if now != seen {
                seen = now;
                eprintln!("--- files changed; reconciling again");
                break;
            }
        }
    }
}

/// Says which L2Announcements cannot be used, and why (their Ready
/// condition).
fn l2_warnings(world: &World) {
    for a in world.l2announcements.sorted() {
        let conditions = a.status.iter().flat_map(|s| s.conditions.iter());
        for c in conditions.filter(|c| c.type_ == "Ready" && c.status == "False") {
            eprintln!(
                "warning: L2Announcement {}: {}: {}",
                a.metadata.name.as_deref().unwrap_or_default(),
                c.reason,
                c.message
            );
        }
    }
}

/// When the node's rules are due for a sync (after a failure; a reload
/// syncs at once).
fn sync_due(dp: &Option<dataplane::LocalDataplane>) -> Option<Instant> {
    dp.as_ref().and_then(|dp| dp.due(Instant::now()))
}

/// Syncs the node's rules when due and says how it went (a failure is
/// retried later, as a full sync); then announces what L2 announcement
/// plans, and writes what a node would write into the world.
fn step_dataplane<B, C>(
    dp: &mut dataplane::LocalDataplane<B, C>,
    world: Option<&mut World>,
    now: Instant,
) -> anyhow::Result<()>
where
    B: portico_dataplane::Backend,
    C: portico_dataplane::Conntrack,
{
    let mut synced = false;
    if dp.sync_due(now) {
        match dp.sync(now) {
            Ok(r) => {
                synced = true;
                eprintln!(
                    "dataplane: {} sync in {} ms: {} operations, {} chains, {} elements \
                     (`portico node --dump` shows them)",
                    r.kind.label(),
                    r.duration.as_millis(),
                    r.operations,
                    r.chains,
                    r.elements
                );
            }
            Err(e) => {
                eprintln!(
                    "dataplane: sync failed ({} in a row): {e}; retrying in {:.0}s with a full sync",
                    dp.failures(),
                    dp.pause().as_secs_f64()
                );
                return Ok(());
            }
        }
    }
    let (takeovers, writes) = dp.announce();
    if let Some(world) = world {
        world.write(writes)?;
    }
    if dp.announcing() && (synced || !takeovers.is_empty()) {
        eprintln!(
            "l2: {} announces [{}] (Ctrl-C to stop)",
            dp.node_name(),
            dp.announced().join(", ")
        );
    }
    Ok(())
}

async fn liveness_changed(dp: &mut Option<dataplane::LocalDataplane>) {
    match dp.as_mut() {
        Some(dp) => dp.liveness_changed().await,
        None => std::future::pending().await,
    }
}

fn report(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        eprintln!("{d}");
    }
}

/// The reconcilers of `portico local`: Portico plays the API server, so it
/// allocates ClusterIPs and node ports.
pub fn config(args: &LocalArgs, net: NetworkConfig) -> Config {
    Config {
        max_endpoints_per_slice: usize::from(args.endpointslices.max_endpoints_per_slice),
        clusterip_reuse_delay: args.clusterip.clusterip_reuse_delay,
        default_load_balancer_class: args.lb.default_load_balancer_class,
        ..Config::new(
            net,
            Role::ApiServer {
                node_ports: args.service_node_port_range,
            },
        )
    }
}
