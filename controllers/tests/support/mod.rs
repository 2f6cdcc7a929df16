//! What the controller's cluster-edge tests share: a small cluster as JSON
//! objects, and a controller driven against the in-memory API server.

#![allow(dead_code, clippy::unwrap_used)]

use portico_controllers::driver::{self, Status};
use portico_controllers::reconcilers::{Config, Metrics};
use portico_controllers::{ApiWriter, NetworkConfig, Reconcilers, Role};
use portico_testkit::MockApi;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::watch;

pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";

pub fn namespace(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } })
}

pub fn node(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": name, "labels": { "topology.kubernetes.io/zone": "z1" } } })
}

pub fn web() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web", "namespace": "shop", "uid": "uid-web",
                      "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": { "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                  "selector": { "app": "web" },
                  "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }] },
    })
}

pub fn pod(name: &str, ip: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                      "labels": { "app": "web" } },
        "spec": { "nodeName": "n1", "containers": [{ "name": "c" }] },
        "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }],
                    "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
    })
}

pub fn pool() -> Value {
    json!({ "apiVersion": "portico.dev/v1alpha1", "kind": "IPPool",
            "metadata": { "name": "lab" },
            "spec": { "addresses": ["192.168.56.60-192.168.56.70"] } })
}

pub fn lb() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "front", "namespace": "shop", "uid": "uid-front",
                      "creationTimestamp": "2026-01-01T00:00:01Z" },
        "spec": { "type": "LoadBalancer", "clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11"],
                  "ports": [{ "port": 443, "protocol": "TCP", "nodePort": 30443 }] },
    })
}

pub fn world() -> Vec<Value> {
    vec![
        namespace("shop"),
        node("n1"),
        web(),
        pod("web-1", "10.244.1.5", true),
        pool(),
        lb(),
    ]
}

pub struct Controller {
    pub api: MockApi,
    /// The replica's metrics (shared with its reconcilers).
    pub metrics: Metrics,
    pub leader: watch::Sender<bool>,
    pub status: watch::Receiver<Status>,
}

pub fn start(objects: Vec<Value>, leader: bool) -> Controller {
    let (api, client) = MockApi::start(objects);
    start_on(api, client, leader)
}

/// A controller replica against an API server that is already running
/// (two replicas share one).
pub fn start_on(api: MockApi, client: kube::Client, leader: bool) -> Controller {
    let net = NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap();
    let metrics = Metrics::default();
    let reconcilers = Reconcilers::new(Config::new(net, Role::Cluster), metrics.clone()).unwrap();
    let watches = driver::watches(&client, false);
    let writer = ApiWriter::new(client, Some("portico-controller-0".into()));
    let (leader_tx, leader_rx) = watch::channel(leader);
    let (status_tx, status) = watch::channel(Status::default());
    // The driver ends when the test drops the leader's sender.
    tokio::spawn(driver::drive(
        reconcilers,
        watches,
        writer,
        leader_rx,
        status_tx,
        std::future::pending(),
    ));
    Controller {
        api,
        metrics,
        leader: leader_tx,
        status,
    }
}

impl Controller {
    pub async fn synced(&mut self) {
        self.status.wait_for(|s| s.synced).await.unwrap();
    }

    /// Lets every timer of the next minute fire (paused time: instant).
    pub async fn a_minute_later(&self) {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// A LoadBalancer Service `shop/<name>`, created `age` seconds after the
/// others' epoch (older first).
pub fn lb_named(name: &str, age: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                      "creationTimestamp": format!("2026-01-01T00:{:02}:{:02}Z", age / 60, age % 60) },
        "spec": { "type": "LoadBalancer", "clusterIP": format!("10.96.1.{}", age + 1),
                  "clusterIPs": [format!("10.96.1.{}", age + 1)],
                  "ports": [{ "port": 443, "protocol": "TCP", "nodePort": 30000 + age }] },
    })
}

/// The lab pool and `n` LoadBalancer Services `lb-0`…
pub fn load_balancers(n: u32) -> Vec<Value> {
    let mut objects = vec![namespace("shop"), node("n1"), pool()];
    objects.extend((0..n).map(|i| lb_named(&format!("lb-{i}"), i)));
    objects
}

/// The addresses the LoadBalancer Services hold, by Service.
pub fn ingress(api: &MockApi) -> Vec<(String, Vec<String>)> {
    api.objects("/api/v1/services")
        .iter()
        .filter(|s| s["spec"]["type"] == "LoadBalancer")
        .map(|s| {
            let ips = s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["ip"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (
                s["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ips,
            )
        })
        .collect()
}

/// Every LoadBalancer Service holds exactly one address.
pub fn converged(api: &MockApi) -> bool {
    ingress(api).iter().all(|(_, ips)| ips.len() == 1)
}

/// Addresses held by more than one Service.
pub fn duplicates(api: &MockApi) -> usize {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for (_, ips) in ingress(api) {
        for ip in ips {
            *seen.entry(ip).or_default() += 1;
        }
    }
    seen.values().filter(|n| **n > 1).count()
}

/// Status writes to one Service.
pub fn status_writes(api: &MockApi, name: &str) -> usize {
    let path = format!("/api/v1/namespaces/shop/services/{name}/status");
    api.writes().iter().filter(|w| w.path == path).count()
}
