//! `portico explain`: one view of a Service, from its name to the packet.
//!
//! ```text
//!  -f FILES ──load, reconcile (as `portico local`)──┐
//!  kubeconfig ──list the objects──────────────────────┼──> World ──> portico_explain::explain ──> text | json | svg
//! ```
//!
//! Everything it decides is `portico_explain`; this file reads the
//! objects and prints.

use crate::cli::{ExplainArgs, ExplainOutput};
use anyhow::Context as _;
use kube::Api;
use kube::api::ListParams;
use portico_controllers::reconcilers::{Config, Metrics};
use portico_controllers::{NetworkConfig, Reconcilers, Role};
use portico_explain::{Cluster, Request, Source, Target};
use portico_local::World;
use portico_local::load::{self, Manifests};
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

pub async fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let target: Target = args.target.parse()?;
    let from: Source = args.from.parse()?;
    let net = args.network.config()?;
    let world = if args.files.is_empty() {
        from_cluster().await?
    } else {
        from_files(&args, &net).await?
    };
    let cluster = Cluster {
        world: &world,
        net: &net,
        settings: args.rules.settings(),
        zone: args
            .cluster_domain
            .trim_end_matches('.')
            .to_ascii_lowercase(),
    };
    let request = Request {
        target,
        node: args.node.clone(),
        from,
    };
    let explained = portico_explain::explain(&cluster, &request, &resolve)?;
    match args.output {
        ExplainOutput::Text => print!("{}", portico_explain::text::render(&explained)),
        ExplainOutput::Json => println!("{}", serde_json::to_string_pretty(&explained)?),
        ExplainOutput::Svg => print!("{}", portico_explain::svg::render(&explained)),
    }
    Ok(())
}

/// The manifests, reconciled as `portico local` does them.
async fn from_files(args: &ExplainArgs, net: &NetworkConfig) -> anyhow::Result<World> {
    let manifests = load::load(&args.files)?;
    for d in &manifests.diagnostics {
        eprintln!("{d}");
    }
    let role = Role::ApiServer {
        node_ports: args.service_node_port_range,
    };
    let mut reconcilers = Reconcilers::new(Config::new(net.clone(), role), Metrics::default())?;
    portico_local::reconcile(manifests, net, None, &mut reconcilers).await
}

/// The cluster's objects, as they are (its controllers have reconciled
/// them).
async fn from_cluster() -> anyhow::Result<World> {
    let client = crate::cluster::connect().await?;
    let m = Manifests {
        namespaces: list(&client).await?,
        nodes: list(&client).await?,
        services: list(&client).await?,
        pods: list::<k8s_openapi::api::core::v1::Pod>(&client)
            .await?
            .into_iter()
            .map(portico_local::stored::StoredPod::new)
            .collect::<Result<_, _>>()?,
        endpoint_slices: list(&client).await?,
        ippools: list(&client).await?,
        clusteripranges: list(&client).await?,
        l2announcements: list(&client).await?,
        diagnostics: Vec::new(),
    };
    Ok(World::new(m))
}

/// Every object of a kind; none when the kind is not installed (a CRD).
async fn list<K>(client: &kube::Client) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    match Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => Ok(l.items),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", K::plural(&()))),
    }
}

/// Names outside the cluster zone, through the system's resolver, within
/// 3 s.
fn resolve(name: &str) -> Result<Vec<IpAddr>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = name.to_owned();
    std::thread::spawn(move || {
        let r = (owned.as_str(), 0)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect::<Vec<_>>())
            .map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    rx.recv_timeout(Duration::from_secs(3))
        .unwrap_or_else(|_| Err("no answer within 3 s".into()))
}
