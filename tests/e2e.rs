//! End-to-end tests against a kind cluster that runs Portico instead of
//! kube-proxy and CoreDNS (`make e2e` creates it, loads the images and
//! installs the chart with an IPPool; see tests/e2e/README.md).
//!
//! Every test is `#[ignore]`, so `make test` never needs a cluster:
//! `cargo test --test e2e -- --ignored --test-threads=1` runs them against
//! the current kubeconfig context. Traffic and DNS are checked from inside
//! pods (busybox clients), the way workloads see them. Each test works in a
//! namespace of its own and deletes it at the end.
//!
//! Environment: `PORTICO_E2E_LB_RANGE` is the IPPool's range
//! (`first-last`), `PORTICO_E2E_IMAGE` the client and server image
//! (default `busybox:1.36`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

fn image() -> String {
    std::env::var("PORTICO_E2E_IMAGE").unwrap_or_else(|_| "busybox:1.36".to_owned())
}

/// A namespace for one test, deleted when the test ends (also on failure).
struct Scope {
    client: Client,
    ns: String,
}

impl Scope {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        let client = Client::try_default()
            .await
            .context("no cluster: run `make e2e`, or point KUBECONFIG at a cluster with Portico")?;
        let ns = format!("e2e-{prefix}-{}", std::process::id());
        create::<Namespace>(
            &Api::all(client.clone()),
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
        )
        .await?;
        Ok(Scope { client, ns })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A Deployment of `replicas` HTTP servers on port 8080 that answer
    /// with their pod name, and a Service `name` of `svc_type` on port 80.
    async fn web(&self, name: &str, replicas: i32, svc_type: &str) -> anyhow::Result<Service> {
        create::<Deployment>(
            &self.api(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": name },
                "spec": {
                    "replicas": replicas,
                    "selector": { "matchLabels": { "app": name } },
                    "template": {
                        "metadata": { "labels": { "app": name } },
                        "spec": { "containers": [server_container()] }
                    }
                }
            }),
        )
        .await?;
        create::<Service>(
            &self.api(),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": name },
                "spec": {
                    "type": svc_type,
                    "selector": { "app": name },
                    "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }]
                }
            }),
        )
        .await
    }

    /// Runs `script` in a busybox pod; its output when it exits 0.
    async fn run(&self, name: &str, script: &str) -> anyhow::Result<String> {
        let pods: Api<Pod> = self.api();
        create::<Pod>(
            &pods,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "client", "image": image(),
                        "command": ["sh", "-c", script]
                    }]
                }
            }),
        )
        .await?;
        let phase = wait_for(&format!("pod {name} to finish"), || async {
            let pod = pods.get(name).await?;
            let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
            Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
        })
        .await?;
        let logs = pods.logs(name, &LogParams::default()).await?;
        if phase != "Succeeded" {
            bail!("pod {name} failed running {script:?}; output:\n{logs}");
        }
        Ok(logs)
    }

    /// Waits until the Service has `n` ready endpoints in its EndpointSlices
    /// (for 0: no endpoints at all, only the placeholder slice).
    async fn wait_ready_endpoints(&self, service: &str, n: usize) -> anyhow::Result<()> {
        let slices: Api<EndpointSlice> = self.api();
        let selector = format!("kubernetes.io/service-name={service}");
        wait_for(&format!("{n} ready endpoints of {service}"), || async {
            let list = slices
                .list(&ListParams::default().labels(&selector))
                .await?;
            let endpoints = || list.items.iter().flat_map(|s| &s.endpoints);
            let ready = endpoints()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count();
            let done = !list.items.is_empty() && ready == n && (n > 0 || endpoints().count() == 0);
            Ok(done.then_some(()))
        })
        .await
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let (client, ns) = (self.client.clone(), self.ns.clone());
        // Best effort, on a runtime of its own: the test's may be gone.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = Api::<Namespace>::all(client)
                    .delete(&ns, &DeleteParams::background())
                    .await;
            });
        })
        .join();
    }
}

fn server_container() -> Value {
    json!({
        "name": "http",
        "image": image(),
        "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"],
        "ports": [{ "containerPort": 8080, "name": "http" }],
        "readinessProbe": { "tcpSocket": { "port": 8080 }, "periodSeconds": 1 }
    })
}

async fn create<K>(api: &Api<K>, obj: Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + DeserializeOwned + serde::Serialize,
{
    let obj: K = serde_json::from_value(obj)?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

/// Polls `check` every second until it yields a value or [`TIMEOUT`] passes.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A shell loop that fetches `url` until it answers (30 tries).
fn fetch(url: &str) -> String {
    format!(
        "for i in $(seq 30); do wget -T 2 -qO- {url} && exit 0; sleep 1; done; echo no answer from {url}; exit 1"
    )
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap()
}

#[tokio::test]
#[ignore = "needs a kind cluster with Portico: make e2e"]
async fn a_cluster_ip_service_answers_from_every_endpoint() -> anyhow::Result<()> {
    let scope = Scope::new("clusterip").await?;
    let svc = scope.web("web", 3, "ClusterIP").await?;
    let ip = cluster_ip(&svc);
    let range: ipnet::IpNet = "10.96.0.0/12".parse()?;
    assert!(
        range.contains(&ip.parse::<IpAddr>()?),
        "{ip} is not in {range}"
    );
    scope.wait_ready_endpoints("web", 3).await?;
    // 30 fresh connections reach more than one of the 3 pods.
    let out = scope
        .run(
            "client",
            &format!("for i in $(seq 30); do wget -T 2 -qO- http://{ip}/ || exit 1; done"),
        )
        .await?;
    let pods: std::collections::BTreeSet<&str> = out.lines().collect();
    assert!(pods.len() > 1, "every answer came from {pods:?}");
    assert!(pods.iter().all(|p| p.starts_with("web-")), "{pods:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with Portico: make e2e"]
async fn a_node_port_answers_on_a_node_address() -> anyhow::Result<()> {
    let scope = Scope::new("nodeport").await?;
    let svc = scope.web("web", 1, "NodePort").await?;
    let node_port = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    scope.wait_ready_endpoints("web", 1).await?;
    let nodes = Api::<Node>::all(scope.client.clone())
        .list(&ListParams::default())
        .await?;
    let address = nodes
        .items
        .iter()
        .flat_map(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default()
        })
        .find(|a| a.type_ == "InternalIP")
        .context("no node has an InternalIP")?
        .address;
    let out = scope
        .run("client", &fetch(&format!("http://{address}:{node_port}/")))
        .await?;
    assert!(out.starts_with("web-"), "{out}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with Portico: make e2e"]
async fn a_load_balancer_service_gets_an_address_from_the_pool_and_answers() -> anyhow::Result<()> {
    let range = std::env::var("PORTICO_E2E_LB_RANGE")
        .context("PORTICO_E2E_LB_RANGE (the IPPool's first-last) is not set")?;
    let (first, last) = range.split_once('-').context("PORTICO_E2E_LB_RANGE")?;
    let (first, last): (IpAddr, IpAddr) = (first.parse()?, last.parse()?);
    let scope = Scope::new("lb").await?;
    scope.web("web", 1, "LoadBalancer").await?;
    let services: Api<Service> = scope.api();
    let ip: IpAddr = wait_for("a LoadBalancer address", || async {
        let svc = services.get("web").await?;
        Ok(svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .and_then(|i| i.into_iter().find_map(|i| i.ip)))
    })
    .await?
    .parse()?;
    assert!(
        first <= ip && ip <= last,
        "{ip} is outside the pool {range}"
    );
    scope.wait_ready_endpoints("web", 1).await?;
    let out = scope
        .run("client", &fetch(&format!("http://{ip}/")))
        .await?;
    assert!(out.starts_with("web-"), "{out}");
    // The chart's L2Announcement of the pool makes one node answer ARP for
    // the address and say so on the Service.
    let nodes: Vec<String> = Api::<Node>::all(scope.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let announcer = wait_for("the portico.dev/announced-by annotation", || async {
        let svc = services.get("web").await?;
        Ok(svc
            .metadata
            .annotations
            .and_then(|a| a.get("portico.dev/announced-by").cloned()))
    })
    .await?;
    assert!(
        nodes.iter().any(|n| announcer.contains(n.as_str())),
        "announced by {announcer:?}, not one of {nodes:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with Portico: make e2e"]
async fn dns_answers_for_services_statefulset_pods_and_external_names() -> anyhow::Result<()> {
    let scope = Scope::new("dns").await?;
    let ns = scope.ns.clone();
    let svc = scope.web("web", 1, "ClusterIP").await?;
    let ip = cluster_ip(&svc);
    create::<Service>(
        &scope.api(),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "db" },
            "spec": {
                "clusterIP": "None",
                "selector": { "app": "db" },
                "ports": [{ "name": "http", "port": 8080 }]
            }
        }),
    )
    .await?;
    create::<StatefulSet>(
        &scope.api(),
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": { "name": "db" },
            "spec": {
                "serviceName": "db",
                "replicas": 1,
                "selector": { "matchLabels": { "app": "db" } },
                "template": {
                    "metadata": { "labels": { "app": "db" } },
                    "spec": { "containers": [server_container()] }
                }
            }
        }),
    )
    .await?;
    create::<Service>(
        &scope.api(),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "alias" },
            "spec": { "type": "ExternalName", "externalName": format!("web.{ns}.svc.cluster.local") }
        }),
    )
    .await?;
    scope.wait_ready_endpoints("db", 1).await?;
    let pods: Api<Pod> = scope.api();
    let db_ip = pods
        .get("db-0")
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("db-0 has no address")?;

    let lookup = |name: &str| {
        format!("for i in $(seq 20); do nslookup {name} && exit 0; sleep 1; done; exit 1")
    };
    let out = scope
        .run(
            "dns-service",
            &lookup(&format!("web.{ns}.svc.cluster.local")),
        )
        .await?;
    assert!(out.contains(&ip), "web's ClusterIP {ip} not in:\n{out}");
    // The pod's search path finds the short name too.
    let out = scope.run("dns-short", &lookup("web")).await?;
    assert!(out.contains(&ip), "short name: {ip} not in:\n{out}");
    let out = scope
        .run(
            "dns-pod",
            &lookup(&format!("db-0.db.{ns}.svc.cluster.local")),
        )
        .await?;
    assert!(
        out.contains(&db_ip),
        "db-0's address {db_ip} not in:\n{out}"
    );
    let out = scope
        .run(
            "dns-cname",
            &lookup(&format!("alias.{ns}.svc.cluster.local")),
        )
        .await?;
    assert!(
        out.contains(&format!("canonical name = web.{ns}.svc.cluster.local")),
        "no CNAME in:\n{out}"
    );
    assert!(out.contains(&ip), "the CNAME's target {ip} not in:\n{out}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with Portico: make e2e"]
async fn endpoint_slices_follow_a_deployment_scaled_from_1_to_5_to_0() -> anyhow::Result<()> {
    let scope = Scope::new("slices").await?;
    scope.web("web", 1, "ClusterIP").await?;
    scope.wait_ready_endpoints("web", 1).await?;
    let deployments: Api<Deployment> = scope.api();
    for replicas in [5usize, 0] {
        deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
            )
            .await?;
        scope.wait_ready_endpoints("web", replicas).await?;
    }
    // The slices are Portico's.
    let slices: Api<EndpointSlice> = scope.api();
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await?;
    assert!(
        !list.items.is_empty(),
        "a Service keeps a placeholder slice"
    );
    for s in &list.items {
        let labels = s.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("endpointslice.portico.dev"),
            "{labels:?}"
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with Portico: make e2e"]
async fn explain_traces_through_the_rules_a_node_agent_installed() -> anyhow::Result<()> {
    let scope = Scope::new("explain").await?;
    scope.web("web", 2, "ClusterIP").await?;
    scope.wait_ready_endpoints("web", 2).await?;
    let pods: Api<Pod> = scope.api();
    let mut want: Vec<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .iter()
        .filter_map(|p| Some(format!("{}:8080", p.status.as_ref()?.pod_ip.as_ref()?)))
        .collect();
    want.sort();
    let node = Api::<Node>::all(scope.client.clone())
        .list(&ListParams::default())
        .await?
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let target = format!("{}/web", scope.ns);
    // The agent may still be syncing the new endpoints: until it has.
    let explained: Value = wait_for("explain to trace to both pods", || async {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .args([
                "explain",
                &target,
                "--node",
                &node,
                "--from",
                "10.244.0.99",
                "-o",
                "json",
            ])
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok((v["verdict"]["endpoints"] == json!(want)).then_some(v))
    })
    .await?;
    assert_eq!(explained["verdict"]["action"], "dnat");
    let rules = explained["path"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "rules")
        .unwrap();
    assert!(
        rules["detail"].as_str().unwrap().contains("GET /rules"),
        "the agent's own rules: {rules}"
    );
    assert_eq!(explained["problems"], json!([]));
    Ok(())
}
