//! `portico explain`: one view of a Service, from its name to the packet.
//!
//! ```text
//!  -f FILES ──load, reconcile (as `portico local`)──┐
//!  kubeconfig ──list the objects──────────────────────┼──> World ──> portico_explain::explain ──> text | json | svg
//! ```
//!
//! In a cluster, the rules come from the node's agent (`GET /rules`,
//! through the API server's node proxy). Everything it decides is
//! `portico_explain`; this file reads the objects and prints.

use crate::cli::{ExplainArgs, ExplainOutput};
use anyhow::Context as _;
use kube::Api;
use kube::api::ListParams;
use portico_controllers::reconcilers::{Config, Metrics};
use portico_controllers::{NetworkConfig, Reconcilers, Role};
use portico_explain::{Cluster, LiveRules, Request, Source, Target};
use portico_local::World;
use portico_local::load::{self, Manifests};
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

pub async fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let target: Target = args.target.parse()?;
    let from: Source = args.from.parse()?;
    let net = args.network.config()?;
    let client = if args.files.is_empty() {
        Some(crate::cluster::connect().await?)
    } else {
        None
    };
    let world = match &client {
        Some(client) => from_cluster(client).await?,
        None => from_files(&args, &net).await?,
    };
    let live = client.map(|c| installed_rules(c, args.node_metrics_port));
    let cluster = Cluster {
        live: live.as_ref().map(|f| f as LiveRules<'_>),
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
async fn from_cluster(client: &kube::Client) -> anyhow::Result<World> {
    let m = Manifests {
        namespaces: list(client).await?,
        nodes: list(client).await?,
        services: list(client).await?,
        pods: list::<k8s_openapi::api::core::v1::Pod>(client)
            .await?
            .into_iter()
            .map(portico_local::stored::StoredPod::new)
            .collect::<Result<_, _>>()?,
        endpoint_slices: list(client).await?,
        ippools: list(client).await?,
        clusteripranges: list(client).await?,
        l2announcements: list(client).await?,
        diagnostics: Vec::new(),
    };
    Ok(World::new(m))
}

/// What a node's agent has installed: its `GET /rules`, through the API
/// server's node proxy (`nodes/proxy`), so the node need not be reachable
/// from here.
fn installed_rules(
    client: kube::Client,
    port: u16,
) -> impl Fn(&str) -> Result<portico_agent::NodeRules, String> {
    move |node: &str| {
        let path = format!("/api/v1/nodes/{node}:{port}/proxy/rules");
        let request = axum::http::Request::get(&path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let client = client.clone();
        let text = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(client.request_text(request))
        })
        .map_err(|e| format!("GET {path}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e}"))
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portico_agent::{NodeAgent, NodeRules};
    use portico_dataplane::{MemoryNft, RecordingConntrack};
    use portico_testkit::MockApi;
    use serde_json::json;
    use std::path::Path;

    const RULES: &str = "/api/v1/nodes/n1:10256/proxy/rules";

    fn net() -> NetworkConfig {
        NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap()
    }

    /// n1, shop/web (10.96.0.10:80) and its one endpoint, `endpoint`.
    fn yaml(endpoint: &str) -> String {
        format!(
            r#"
apiVersion: v1
kind: Node
metadata: {{name: n1}}
status: {{addresses: [{{type: InternalIP, address: 192.168.56.31}}], conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop, labels: {{app: web}}}}
spec: {{nodeName: n1, containers: [{{name: c}}]}}
status: {{phase: Running, podIP: {endpoint}, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 10.96.0.10, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
"#
        )
    }

    /// The same objects as the API server holds them (reconciled, with
    /// their EndpointSlice).
    fn objects(endpoint: &str) -> (World, Vec<serde_json::Value>) {
        let m = load::parse(Path::new("cluster.yaml"), &yaml(endpoint));
        let world = portico_local::reconcile_once(m, &net()).unwrap();
        let mut objects = Vec::new();
        let with_kind = |v: serde_json::Value, api: &str, kind: &str| {
            let mut v = v;
            v["apiVersion"] = json!(api);
            v["kind"] = json!(kind);
            v
        };
        for n in world.nodes.sorted() {
            objects.push(with_kind(serde_json::to_value(&*n).unwrap(), "v1", "Node"));
        }
        for s in world.services.sorted() {
            objects.push(with_kind(
                serde_json::to_value(&*s).unwrap(),
                "v1",
                "Service",
            ));
        }
        for p in world.pods.iter() {
            objects.push(with_kind(serde_json::to_value(&p).unwrap(), "v1", "Pod"));
        }
        for s in world.endpoint_slices.sorted() {
            let v = serde_json::to_value(&*s).unwrap();
            objects.push(with_kind(v, "discovery.k8s.io/v1", "EndpointSlice"));
        }
        (world, objects)
    }

    /// What n1's agent installed when the endpoint was `endpoint`.
    fn installed(endpoint: &str) -> NodeRules {
        let (world, _) = objects(endpoint);
        NodeAgent::synced_once(
            "n1",
            &net(),
            &portico_agent::Settings::default(),
            (MemoryNft::new(), RecordingConntrack::default()),
            world.agent_changes(),
        )
        .unwrap()
        .rules()
        .unwrap()
    }

    fn explain_web(world: &World, live: LiveRules<'_>) -> portico_explain::Explanation {
        let net = net();
        let cluster = Cluster {
            live: Some(live),
            world,
            net: &net,
            settings: portico_agent::Settings::default(),
            zone: "cluster.local".into(),
        };
        let request = Request {
            target: "shop/web".parse().unwrap(),
            node: Some("n1".into()),
            from: "10.244.7.7".parse().unwrap(),
        };
        portico_explain::explain(&cluster, &request, &|_| Err("offline".into())).unwrap()
    }

    /// Without `-f`: the objects are listed from the API server, and the
    /// rules are the ones n1's agent says it installed, through the node
    /// proxy; an agent behind the objects is named. An agent that does
    /// not answer: the rules are rendered from the objects, and the path
    /// says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_a_cluster_the_rules_are_the_ones_the_node_agent_installed() {
        let (_, objects) = objects("10.244.1.5");
        let (api, client) = MockApi::start(objects);
        // The agent still holds the pod's old address.
        let stale = serde_json::to_string(&installed("10.244.1.9")).unwrap();
        api.canned(RULES, 200, stale);
        let world = from_cluster(&client).await.unwrap();
        assert_eq!(world.services.sorted().len(), 2, "web and kubernetes");
        let live = installed_rules(client.clone(), 10256);
        let e = explain_web(&world, &live);
        assert_eq!(e.verdict.endpoints, ["10.244.1.9:8080"]);
        assert_eq!(e.endpoints[0].address, "10.244.1.5");
        let rules = e.path.iter().find(|s| s.step == "rules").unwrap();
        assert!(
            rules
                .detail
                .contains("node n1's agent has installed (GET /rules)")
        );
        assert!(
            e.problems.iter().any(|p| p.contains(
                "node n1's installed rules send connections to 10.244.1.9:8080, which is no ready endpoint"
            )),
            "{:#?}",
            e.problems
        );
        // The requests: one list of each kind (CRDs not installed: 404,
        // nothing), one GET of the node's rules.
        let gets: Vec<String> = api.log().iter().map(|l| l.path.clone()).collect();
        assert_eq!(gets.iter().filter(|p| *p == RULES).count(), 1, "{gets:#?}");
        assert!(api.writes().is_empty());

        // An agent that reads its kernel back, and the kernel holds other
        // rules than it installed: the kernel's are traced, and it says so.
        let mut torn = installed("10.244.1.9");
        torn.kernel = Some(installed("10.244.1.5").rules);
        api.canned(RULES, 200, serde_json::to_string(&torn).unwrap());
        let e = explain_web(&world, &live);
        assert_eq!(e.verdict.endpoints, ["10.244.1.5:8080"]);
        let rules = e.path.iter().find(|s| s.step == "rules").unwrap();
        assert!(
            rules.detail.contains("node n1's kernel holds"),
            "{}",
            rules.detail
        );
        assert!(
            e.problems.iter().any(|p| p.starts_with(
                "node n1's kernel does not hold what its agent installed (set ip hairpin, set ip service-backends-tcp)"
            )),
            "{:#?}",
            e.problems
        );

        // An agent that does not answer.
        api.canned(RULES, 503, "unavailable");
        let e = explain_web(&world, &live);
        assert_eq!(e.verdict.endpoints, ["10.244.1.5:8080"]);
        let rules = e.path.iter().find(|s| s.step == "rules").unwrap();
        assert!(
            rules.detail.contains("rendered from the cluster's objects as node n1 would program them: its agent did not answer"),
            "{}",
            rules.detail
        );
        assert!(e.problems.is_empty(), "{:#?}", e.problems);
    }
}
