//! EndpointSlice controller tests.
//!
//! Address conventions: pods 10.244.x.y (IPv4) and fd00:10:244::x (IPv6),
//! nodes `node-a` (zone `zone-a`) and `node-b` (zone `zone-b`), namespace
//! `default` unless a test says otherwise. `Sim` plays the API server: it
//! names created slices, bumps resource versions and feeds every write back.

use super::*;
use crate::k8s::{Endpoint, EndpointPort, ServicePort, ServiceSpec};
use crate::write::Object;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

mod upstream;

// ---- fixtures ----------------------------------------------------------

fn mk_svc(name: &str, app: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), app.to_owned())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                ..Default::default()
            }]),
            ip_families: Some(vec!["IPv4".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_spec(mut svc: Service, f: impl FnOnce(&mut ServiceSpec)) -> Service {
    f(svc.spec.get_or_insert_with(Default::default));
    svc
}

fn mk_pod(name: &str, app: &str, ips: &[&str], node: &str, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some([("app".to_owned(), app.to_owned())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "main".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("web".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ips.first().map(|s| s.to_string()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn terminating(mut pod: Pod) -> Pod {
    pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    pod
}

fn with_web_port(mut pod: Pod, port: i32) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].ports = Some(vec![ContainerPort {
            name: Some("web".into()),
            container_port: port,
            ..Default::default()
        }]);
    }
    pod
}

fn mk_node(name: &str, zone: &str) -> Node {
    portico_testkit::objects::node(name)
        .label(labels::ZONE, zone)
        .build()
}

/// The controller plus a fake API server for slices.
struct Sim {
    ctrl: EndpointSliceController,
    slices: BTreeMap<String, EndpointSlice>,
    now: Instant,
    next: u32,
    /// Warning Events: (reason, note).
    warnings: Vec<(String, String)>,
}

impl Sim {
    fn new(max: usize) -> Self {
        let cfg = Config {
            max_endpoints_per_slice: max,
            batch_period: Duration::ZERO,
            delete_orphans: true,
        };
        let mut ctrl = EndpointSliceController::new(cfg, EndpointSliceMetrics::default());
        let now = Instant::now();
        ctrl.reset_nodes(
            [&mk_node("node-a", "zone-a"), &mk_node("node-b", "zone-b")],
            now,
        );
        Sim {
            ctrl,
            slices: BTreeMap::new(),
            now,
            next: 0,
            warnings: Vec::new(),
        }
    }

    /// Flushes and carries out the writes until the controller is quiet;
    /// returns the writes of the first flush.
    #[track_caller]
    fn settle(&mut self) -> Vec<Write> {
        let first = self.ctrl.flush(self.now);
        let mut writes = first.clone();
        for _ in 0..5 {
            if writes.is_empty() {
                return first;
            }
            for w in writes {
                self.carry_out(w);
            }
            writes = self.ctrl.flush(self.now);
        }
        panic!("the controller keeps writing: {writes:#?}");
    }

    fn carry_out(&mut self, w: Write) {
        match w {
            Write::Create(Object::EndpointSlice(s)) => {
                let mut s = Arc::unwrap_or_clone(s);
                assert!(s.metadata.name.is_none());
                self.next += 1;
                let prefix = s.metadata.generate_name.clone().unwrap();
                s.metadata.name = Some(format!("{prefix}{:05}", self.next));
                s.metadata.resource_version = Some(self.next.to_string());
                self.ctrl.apply_slice(Arc::new(s.clone()), self.now);
                self.slices.insert(s.metadata.name.clone().unwrap(), s);
            }
            Write::Replace(Object::EndpointSlice(s)) => {
                let mut s = Arc::unwrap_or_clone(s);
                let name = s.metadata.name.clone().unwrap();
                let stored = &self.slices[&name];
                assert_eq!(
                    s.metadata.resource_version, stored.metadata.resource_version,
                    "updates carry the version they replace"
                );
                self.next += 1;
                s.metadata.resource_version = Some(self.next.to_string());
                self.ctrl.apply_slice(Arc::new(s.clone()), self.now);
                self.slices.insert(name, s);
            }
            Write::Delete { target } => {
                let s = self.slices.remove(&target.name).unwrap();
                self.ctrl.delete_slice(&s, self.now);
            }
            Write::Event(e) if e.warning => self.warnings.push((e.reason, e.note)),
            other => panic!("unexpected write {other:?}"),
        }
    }

    fn of_service(&self, svc: &str) -> Vec<&EndpointSlice> {
        self.slices
            .values()
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::SERVICE_NAME))
                    .map(String::as_str)
                    == Some(svc)
            })
            .collect()
    }

    /// Every endpoint of a Service, by address.
    fn endpoints(&self, svc: &str) -> BTreeMap<String, Endpoint> {
        self.of_service(svc)
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| (e.addresses[0].clone(), e.clone()))
            .collect()
    }
}

fn count(writes: &[Write]) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for w in writes {
        match w {
            Write::Create(_) => c.0 += 1,
            Write::Replace(_) => c.1 += 1,
            Write::Delete { .. } => c.2 += 1,
            _ => {}
        }
    }
    c
}

fn conditions(ep: &Endpoint) -> (bool, bool, bool) {
    let c = ep.conditions.clone().unwrap();
    (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
}

// ---- rules -------------------------------------------------------------

#[test]
fn a_service_gets_one_slice_with_its_ready_pods_and_upstream_fields() {
    let mut sim = Sim::new(100);
    let svc = mk_svc("web", "web");
    sim.ctrl.apply_service(&svc, sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &mk_pod("other", "db", &["10.244.1.11"], "node-a", true),
        sim.now,
    );
    assert_eq!(count(&sim.settle()), (1, 0, 0));
    let slices = sim.of_service("web");
    assert_eq!(slices.len(), 1);
    let s = slices[0];
    assert_eq!(s.address_type, "IPv4");
    assert!(s.metadata.name.as_ref().unwrap().starts_with("web-"));
    assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
    let l = s.metadata.labels.as_ref().unwrap();
    assert_eq!(l[labels::SERVICE_NAME], "web");
    assert_eq!(l[labels::MANAGED_BY], "endpointslice.portico.dev");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Service", "web", "uid-web")
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(
        s.ports.as_deref().unwrap(),
        [EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None
        }]
    );
    let ep = &s.endpoints[0];
    assert_eq!(ep.addresses, ["10.244.1.10"]);
    assert_eq!(conditions(ep), (true, true, false));
    assert_eq!(ep.node_name.as_deref(), Some("node-a"));
    assert_eq!(ep.zone.as_deref(), Some("zone-a"));
    let r = ep.target_ref.as_ref().unwrap();
    assert_eq!(
        (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
        (Some("Pod"), Some("web-1"), Some("uid-web-1"))
    );
    assert_eq!(ep.hostname, None);
    assert_eq!(s.endpoints.len(), 1, "the db pod is not selected");
}

#[test]
fn readiness_and_termination_set_the_three_conditions() {
    let mut sim = Sim::new(100);
    sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("ready", "web", &["10.244.1.1"], "node-a", true),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &mk_pod("not-ready", "web", &["10.244.1.2"], "node-a", false),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &terminating(mk_pod("leaving", "web", &["10.244.1.3"], "node-a", true)),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &terminating(mk_pod("dying", "web", &["10.244.1.4"], "node-a", false)),
        sim.now,
    );
    sim.settle();
    let eps = sim.endpoints("web");
    assert_eq!(conditions(&eps["10.244.1.1"]), (true, true, false));
    assert_eq!(conditions(&eps["10.244.1.2"]), (false, false, false));
    assert_eq!(conditions(&eps["10.244.1.3"]), (false, true, true));
    assert_eq!(conditions(&eps["10.244.1.4"]), (false, false, true));
}

#[test]
fn publish_not_ready_addresses_makes_every_endpoint_ready() {
    let mut sim = Sim::new(100);
    let svc = with_spec(mk_svc("web", "web"), |s| {
        s.publish_not_ready_addresses = Some(true)
    });
    sim.ctrl.apply_service(&svc, sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("not-ready", "web", &["10.244.1.2"], "node-a", false),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &terminating(mk_pod("leaving", "web", &["10.244.1.3"], "node-a", true)),
        sim.now,
    );
    sim.settle();
    let eps = sim.endpoints("web");
    assert_eq!(conditions(&eps["10.244.1.2"]), (true, false, false));
    assert_eq!(conditions(&eps["10.244.1.3"]), (true, true, true));
}

#[test]
fn pods_without_addresses_and_finished_pods_are_left_out() {
    let mut sim = Sim::new(100);
    sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
    sim.ctrl
        .apply_pod(&mk_pod("pending", "web", &[], "node-a", false), sim.now);
    let mut done = mk_pod("done", "web", &["10.244.1.5"], "node-a", false);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let mut failed = mk_pod("failed", "web", &["10.244.1.6"], "node-a", false);
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    sim.ctrl.apply_pod(&done, sim.now);
    sim.ctrl.apply_pod(&failed, sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("ok", "web", &["10.244.1.7"], "node-a", true),
        sim.now,
    );
    sim.settle();
    assert_eq!(
        sim.endpoints("web").keys().collect::<Vec<_>>(),
        ["10.244.1.7"]
    );
}

#[test]
fn named_target_ports_that_resolve_differently_go_to_different_slices() {
    let mut sim = Sim::new(100);
    let svc = with_spec(mk_svc("web", "web"), |s| {
        s.ports = Some(vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: Some(IntOrString::String("web".into())),
            app_protocol: Some("kubernetes.io/h2c".into()),
            ..Default::default()
        }]);
    });
    sim.ctrl.apply_service(&svc, sim.now);
    sim.ctrl.apply_pod(
        &with_web_port(mk_pod("v1-a", "web", &["10.244.1.1"], "node-a", true), 8080),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &with_web_port(mk_pod("v1-b", "web", &["10.244.1.2"], "node-a", true), 8080),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &with_web_port(mk_pod("v2", "web", &["10.244.1.3"], "node-b", true), 9090),
        sim.now,
    );
    // A pod without a port named "web" gets an endpoint with no ports.
    let mut portless = mk_pod("portless", "web", &["10.244.1.4"], "node-b", true);
    portless.spec.as_mut().unwrap().containers[0].ports = None;
    sim.ctrl.apply_pod(&portless, sim.now);
    assert_eq!(count(&sim.settle()), (3, 0, 0));
    let mut by_port: Vec<(Option<i32>, usize)> = sim
        .of_service("web")
        .iter()
        .map(|s| {
            (
                s.ports.as_ref().unwrap().first().and_then(|p| p.port),
                s.endpoints.len(),
            )
        })
        .collect();
    by_port.sort();
    assert_eq!(by_port, vec![(None, 1), (Some(8080), 2), (Some(9090), 1)]);
    let s = sim
        .of_service("web")
        .into_iter()
        .find(|s| s.endpoints.len() == 2)
        .unwrap();
    assert_eq!(
        s.ports.as_ref().unwrap()[0].app_protocol.as_deref(),
        Some("kubernetes.io/h2c")
    );
    assert_eq!(s.ports.as_ref().unwrap()[0].name.as_deref(), Some("http"));
}

#[test]
fn dual_stack_services_get_one_set_of_slices_per_family() {
    let mut sim = Sim::new(100);
    let svc = with_spec(mk_svc("web", "web"), |s| {
        s.ip_families = Some(vec!["IPv6".into(), "IPv4".into()])
    });
    sim.ctrl.apply_service(&svc, sim.now);
    sim.ctrl.apply_pod(
        &mk_pod(
            "both",
            "web",
            &["10.244.1.1", "fd00:10:244::1"],
            "node-a",
            true,
        ),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &mk_pod("v4-only", "web", &["10.244.1.2"], "node-a", true),
        sim.now,
    );
    sim.settle();
    let mut types: Vec<(String, Vec<String>)> = sim
        .of_service("web")
        .iter()
        .map(|s| {
            (
                s.address_type.clone(),
                s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        vec![
            (
                "IPv4".into(),
                vec!["10.244.1.1".to_owned(), "10.244.1.2".to_owned()]
            ),
            ("IPv6".into(), vec!["fd00:10:244::1".to_owned()]),
        ]
    );
}

#[test]
fn hostname_is_set_only_when_the_subdomain_names_the_service() {
    let mut sim = Sim::new(100);
    let svc = with_spec(mk_svc("db", "db"), |s| s.cluster_ip = Some("None".into()));
    sim.ctrl.apply_service(&svc, sim.now);
    let mut db0 = mk_pod("db-0", "db", &["10.244.1.20"], "node-a", true);
    let spec = db0.spec.as_mut().unwrap();
    spec.hostname = Some("db-0".into());
    spec.subdomain = Some("db".into());
    let mut other = mk_pod("db-x", "db", &["10.244.1.21"], "node-a", true);
    let spec = other.spec.as_mut().unwrap();
    spec.hostname = Some("db-x".into());
    spec.subdomain = Some("elsewhere".into());
    sim.ctrl.apply_pod(&db0, sim.now);
    sim.ctrl.apply_pod(&other, sim.now);
    sim.settle();
    let eps = sim.endpoints("db");
    assert_eq!(eps["10.244.1.20"].hostname.as_deref(), Some("db-0"));
    assert_eq!(eps["10.244.1.21"].hostname, None);
    let s = sim.of_service("db")[0];
    assert_eq!(
        s.metadata
            .labels
            .as_ref()
            .unwrap()
            .get(labels::HEADLESS)
            .map(String::as_str),
        Some("")
    );
}

#[test]
fn more_than_the_maximum_endpoints_are_split_into_full_slices() {
    let mut sim = Sim::new(100);
    sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
    for i in 0..250 {
        let ip = format!("10.244.{}.{}", i / 200, i % 200 + 1);
        sim.ctrl.apply_pod(
            &mk_pod(&format!("web-{i}"), "web", &[&ip], "node-a", true),
            sim.now,
        );
    }
    assert_eq!(count(&sim.settle()), (3, 0, 0));
    let mut sizes: Vec<usize> = sim
        .of_service("web")
        .iter()
        .map(|s| s.endpoints.len())
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![50, 100, 100]);
    assert_eq!(sim.endpoints("web").len(), 250);
}

#[test]
fn services_without_a_selector_are_left_alone_and_lose_portico_slices() {
    let mut sim = Sim::new(100);
    let svc = mk_svc("web", "web");
    sim.ctrl.apply_service(&svc, sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    sim.settle();
    // A slice the user manages for the same Service name.
    let mut mine = sim.of_service("web")[0].clone();
    mine.metadata.name = Some("web-by-hand".into());
    mine.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(labels::MANAGED_BY.into(), "someone-else".into());
    sim.ctrl.apply_slice(Arc::new(mine.clone()), sim.now);
    sim.slices.insert("web-by-hand".into(), mine);

    let selectorless = with_spec(svc, |s| s.selector = None);
    sim.ctrl.apply_service(&selectorless, sim.now);
    assert_eq!(count(&sim.settle()), (0, 0, 1));
    assert_eq!(
        sim.slices.keys().collect::<Vec<_>>(),
        ["web-by-hand"],
        "the user's slice is untouched"
    );
    // ...and nothing more happens while it stays selector-less.
    sim.ctrl.apply_pod(
        &mk_pod("web-2", "web", &["10.244.1.11"], "node-a", true),
        sim.now,
    );
    assert!(sim.settle().is_empty());
}

#[test]
fn a_service_without_pods_gets_one_placeholder_slice_which_is_reused() {
    let mut sim = Sim::new(100);
    sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
    assert_eq!(count(&sim.settle()), (1, 0, 0));
    let placeholder = sim.of_service("web")[0].clone();
    assert!(placeholder.endpoints.is_empty());
    assert_eq!(placeholder.ports.as_deref(), Some(&[][..]));
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    assert_eq!(
        count(&sim.settle()),
        (0, 1, 0),
        "the placeholder is updated, not replaced"
    );
    assert_eq!(
        sim.of_service("web")[0].metadata.name,
        placeholder.metadata.name
    );
    // Back to no pods: back to a placeholder, still the same object.
    sim.ctrl.delete_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    assert_eq!(count(&sim.settle()), (0, 1, 0));
    assert!(sim.of_service("web")[0].endpoints.is_empty());
}

#[test]
fn deleting_a_service_deletes_its_slices_in_local_mode_only() {
    let mut sim = Sim::new(100);
    let svc = mk_svc("web", "web");
    sim.ctrl.apply_service(&svc, sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    sim.settle();
    sim.ctrl.delete_service(&svc, sim.now);
    assert_eq!(count(&sim.settle()), (0, 0, 1));
    assert!(sim.slices.is_empty());

    let mut cluster =
        EndpointSliceController::new(Config::default(), EndpointSliceMetrics::default());
    let now = Instant::now();
    cluster.apply_service(&svc, now);
    cluster.apply_slice(Arc::new(sim_slice("web-abcde", "web")), now);
    cluster.flush(now);
    cluster.delete_service(&svc, now);
    assert!(
        cluster.flush(now).is_empty(),
        "the garbage collector deletes owned slices in a cluster"
    );
}

fn sim_slice(name: &str, svc: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(
                [
                    (labels::SERVICE_NAME.to_owned(), svc.to_owned()),
                    (
                        labels::MANAGED_BY.to_owned(),
                        ENDPOINTSLICE_MANAGER.to_owned(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Vec::new(),
        ports: Some(Vec::new()),
    }
}

#[test]
fn zones_follow_node_labels() {
    let mut sim = Sim::new(100);
    sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-b", true),
        sim.now,
    );
    sim.settle();
    assert_eq!(
        sim.endpoints("web")["10.244.1.10"].zone.as_deref(),
        Some("zone-b")
    );
    sim.ctrl.apply_node(&mk_node("node-b", "zone-c"), sim.now);
    assert_eq!(count(&sim.settle()), (0, 1, 0));
    assert_eq!(
        sim.endpoints("web")["10.244.1.10"].zone.as_deref(),
        Some("zone-c")
    );
}

// ---- few writes --------------------------------------------------------

#[test]
fn an_unchanged_service_causes_zero_writes_even_after_a_relist() {
    let mut sim = Sim::new(100);
    let svc = mk_svc("web", "web");
    sim.ctrl.apply_service(&svc, sim.now);
    let pods: Vec<Pod> = (0..30)
        .map(|i| {
            mk_pod(
                &format!("web-{i}"),
                "web",
                &[&format!("10.244.1.{}", i + 1)],
                "node-a",
                true,
            )
        })
        .collect();
    for p in &pods {
        sim.ctrl.apply_pod(p, sim.now);
    }
    sim.settle();
    sim.ctrl.apply_service(&svc, sim.now);
    for p in &pods {
        sim.ctrl.apply_pod(p, sim.now);
    }
    assert!(sim.settle().is_empty());
    // A restart: a new index from what the API holds.
    let stored: Vec<EndpointSlice> = sim.slices.values().cloned().collect();
    let mut fresh =
        EndpointSliceController::new(Config::default(), EndpointSliceMetrics::default());
    fresh.reset_services([&svc], sim.now);
    fresh.reset_pods(pods.iter(), sim.now);
    fresh.reset_nodes(
        [&mk_node("node-a", "zone-a"), &mk_node("node-b", "zone-b")],
        sim.now,
    );
    fresh.reset_slices(stored.into_iter().map(Arc::new), sim.now);
    assert!(
        fresh.flush(sim.now).is_empty(),
        "existing slices are adopted by their labels"
    );
}

#[test]
fn one_pod_changing_causes_one_slice_write() {
    let mut sim = Sim::new(10);
    sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
    for i in 0..35 {
        sim.ctrl.apply_pod(
            &mk_pod(
                &format!("web-{i}"),
                "web",
                &[&format!("10.244.1.{}", i + 1)],
                "node-a",
                true,
            ),
            sim.now,
        );
    }
    assert_eq!(count(&sim.settle()), (4, 0, 0));
    sim.ctrl.apply_pod(
        &mk_pod("web-7", "web", &["10.244.1.8"], "node-a", false),
        sim.now,
    );
    assert_eq!(count(&sim.settle()), (0, 1, 0));
    sim.ctrl.delete_pod(
        &mk_pod("web-8", "web", &["10.244.1.9"], "node-a", true),
        sim.now,
    );
    assert_eq!(count(&sim.settle()), (0, 1, 0));
}

#[test]
fn new_endpoints_fill_slices_with_room_before_a_new_slice_is_made() {
    let mut sim = Sim::new(10);
    sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
    for i in 0..15 {
        sim.ctrl.apply_pod(
            &mk_pod(
                &format!("web-{i}"),
                "web",
                &[&format!("10.244.1.{}", i + 1)],
                "node-a",
                true,
            ),
            sim.now,
        );
    }
    sim.settle(); // 10 + 5
    for i in 15..18 {
        sim.ctrl.apply_pod(
            &mk_pod(
                &format!("web-{i}"),
                "web",
                &[&format!("10.244.1.{}", i + 1)],
                "node-a",
                true,
            ),
            sim.now,
        );
    }
    assert_eq!(
        count(&sim.settle()),
        (0, 1, 0),
        "three new endpoints fit the slice of 5"
    );
    let mut sizes: Vec<usize> = sim
        .of_service("web")
        .iter()
        .map(|s| s.endpoints.len())
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![8, 10]);
    // Removing endpoints does not repack: each slice only loses its own.
    let before: BTreeMap<String, BTreeSet<String>> = sim
        .of_service("web")
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap(),
                s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
            )
        })
        .collect();
    for i in 0..6 {
        sim.ctrl.delete_pod(
            &mk_pod(&format!("web-{i}"), "web", &["10.244.1.1"], "node-a", true),
            sim.now,
        );
    }
    let writes = sim.settle();
    assert_eq!(
        count(&writes).0 + count(&writes).2,
        0,
        "no slice created or deleted: {writes:#?}"
    );
    let gone: BTreeSet<String> = (0..6).map(|i| format!("10.244.1.{}", i + 1)).collect();
    for s in sim.of_service("web") {
        let now: BTreeSet<String> = s.endpoints.iter().map(|e| e.addresses[0].clone()).collect();
        let was = &before[s.metadata.name.as_ref().unwrap()];
        assert_eq!(
            &now,
            &was.difference(&gone).cloned().collect(),
            "slices are not repacked just to be tidy"
        );
    }
}

#[test]
fn pod_events_are_batched_per_service() {
    let cfg = Config {
        batch_period: Duration::from_secs(1),
        ..Config::default()
    };
    let mut ctrl = EndpointSliceController::new(cfg, EndpointSliceMetrics::default());
    let t0 = Instant::now();
    ctrl.apply_service(&mk_svc("web", "web"), t0);
    assert_eq!(
        ctrl.flush(t0).len(),
        1,
        "Service changes are synced at once (placeholder)"
    );
    ctrl.apply_pod(&mk_pod("web-1", "web", &["10.244.1.1"], "node-a", true), t0);
    ctrl.apply_pod(
        &mk_pod("web-2", "web", &["10.244.1.2"], "node-a", true),
        t0 + Duration::from_millis(300),
    );
    assert!(
        ctrl.flush(t0 + Duration::from_millis(500)).is_empty(),
        "not due yet"
    );
    assert_eq!(ctrl.next_due(), Some(t0 + Duration::from_secs(1)));
    let writes = ctrl.flush(t0 + Duration::from_secs(1));
    assert_eq!(writes.len(), 1, "two pod events, one write: {writes:#?}");
    assert_eq!(ctrl.next_due(), None);
}

// ---- properties --------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// After any sequence of pod changes, the union of the Service's slices
    /// is exactly the endpoints of the matching pods, no endpoint appears
    /// twice, and no slice exceeds the maximum.
    #[test]
    fn slices_hold_exactly_the_matching_pods(
        max in 1usize..8,
        ops in proptest::collection::vec((0u8..40, 0u8..4, any::<bool>(), any::<bool>()), 1..80),
    ) {
        let mut sim = Sim::new(max);
        sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
        let mut live: BTreeMap<u8, Pod> = BTreeMap::new();
        for (i, (id, kind, ready, alt_port)) in ops.into_iter().enumerate() {
            let app = if kind == 3 { "other" } else { "web" };
            let mut pod = mk_pod(&format!("p{id}"), app, &[&format!("10.244.0.{}", id + 1)], "node-a", ready);
            if alt_port {
                pod = with_web_port(pod, 9090);
            }
            if kind == 0 {
                if let Some(old) = live.remove(&id) {
                    sim.ctrl.delete_pod(&old, sim.now);
                }
            } else {
                sim.ctrl.apply_pod(&pod, sim.now);
                live.insert(id, pod);
            }
            if i % 7 == 0 {
                sim.settle();
            }
        }
        sim.settle();
        let slices = sim.of_service("web");
        prop_assert!(!slices.is_empty());
        let mut seen = BTreeSet::new();
        for s in &slices {
            prop_assert!(s.endpoints.len() <= max);
            for e in &s.endpoints {
                prop_assert!(seen.insert(e.addresses[0].clone()), "{} twice", e.addresses[0]);
            }
        }
        let want: BTreeSet<String> = live
            .values()
            .filter(|p| p.metadata.labels.as_ref().unwrap()["app"] == "web")
            .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
            .collect();
        prop_assert_eq!(seen, want);
        for (addr, ep) in sim.endpoints("web") {
            let pod = live.values().find(|p| p.status.as_ref().unwrap().pod_ip.as_deref() == Some(&addr)).unwrap();
            let ready = pod.status.as_ref().unwrap().conditions.as_ref().unwrap()[0].status == "True";
            prop_assert_eq!(conditions(&ep).0, ready);
        }
    }
}
