//! Address conventions: ClusterIPs in 10.96.0.0/12, pods in 10.244.0.0/16,
//! IPv6 ClusterIPs in fd00:96::/64.

use super::*;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, PodIP, PodStatus,
    ServicePort as K8sServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as K8sEndpoint, EndpointConditions, EndpointPort as K8sEndpointPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::time::Duration;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn mk_svc(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, &str, i32)]) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, port)| K8sServicePort {
                        name: Some((*n).into()),
                        protocol: Some((*p).into()),
                        port: *port,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

fn mk_ep(ip: &str, ready: bool, hostname: Option<&str>) -> K8sEndpoint {
    K8sEndpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        hostname: hostname.map(Into::into),
        ..Default::default()
    }
}

fn mk_slice(ns: &str, name: &str, svc: &str, eps: Vec<K8sEndpoint>) -> EndpointSlice {
    let mut m = meta(ns, name);
    m.labels = Some([(labels_service_name(), svc.to_owned())].into());
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: eps,
        ports: Some(vec![K8sEndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

fn labels_service_name() -> String {
    crate::labels::SERVICE_NAME.to_owned()
}

fn mk_pod(ns: &str, name: &str, ips: &[&str]) -> Pod {
    Pod {
        metadata: meta(ns, name),
        spec: None,
        status: Some(PodStatus {
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).into() }).collect()),
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}

fn key(ns: &str, name: &str) -> Key {
    Key::new(ns, name)
}

#[track_caller]
fn assert_changed(c: &mut Catalog, expected: &[(&str, &str)]) {
    let changes = c.take_changes();
    let got: Vec<(String, String)> = changes
        .services
        .into_iter()
        .map(|k| (k.namespace, k.name))
        .collect();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(got, want);
}

fn addresses(c: &Catalog, k: &Key) -> Vec<String> {
    c.endpoints(k)
        .iter()
        .map(|e| e.address.to_string())
        .collect()
}

#[test]
fn a_service_is_normalised() {
    let mut svc = mk_svc("default", "web", "10.96.0.10", &[("http", "TCP", 80)]);
    let spec = svc.spec.as_mut().unwrap();
    spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00:96::10".into()]);
    spec.type_ = Some("LoadBalancer".into());
    spec.external_ips = Some(vec!["192.0.2.1".into(), "not-an-ip".into()]);
    spec.session_affinity = Some("ClientIP".into());
    spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(60),
        }),
    });
    spec.external_traffic_policy = Some("Local".into());
    spec.health_check_node_port = Some(30900);
    spec.load_balancer_source_ranges = Some(vec![
        "192.168.56.0/24".into(),
        "203.0.113.7".into(),
        "10.1.2.3/8".into(),
        "bogus".into(),
    ]);
    spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![
                LoadBalancerIngress {
                    ip: Some("192.168.56.60".into()),
                    ..Default::default()
                },
                LoadBalancerIngress {
                    ip: Some("192.168.56.61".into()),
                    ip_mode: Some("VIP".into()),
                    ..Default::default()
                },
                LoadBalancerIngress {
                    ip: Some("192.168.56.62".into()),
                    ip_mode: Some("Proxy".into()),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    });
    let info = ServiceInfo::from_service(&svc);
    assert_eq!(info.type_, ServiceType::LoadBalancer);
    assert_eq!(
        info.cluster_ips,
        vec![
            "10.96.0.10".parse::<IpAddr>().unwrap(),
            "fd00:96::10".parse().unwrap()
        ]
    );
    assert!(!info.headless);
    assert_eq!(
        info.external_ips,
        vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        info.load_balancer_ips,
        vec![
            "192.168.56.60".parse::<IpAddr>().unwrap(),
            "192.168.56.61".parse().unwrap()
        ],
        "ipMode Proxy addresses are left out"
    );
    assert_eq!(
        info.session_affinity,
        SessionAffinity::ClientIp {
            timeout: Duration::from_secs(60)
        }
    );
    assert_eq!(info.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(info.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(info.health_check_node_port, Some(30900));
    assert_eq!(
        info.load_balancer_source_ranges,
        vec![
            "192.168.56.0/24".parse::<ipnet::IpNet>().unwrap(),
            "203.0.113.7/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]
    );
    assert_eq!(
        info.ports,
        vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(30080),
        }]
    );
}

#[test]
fn headless_and_external_name_services_are_recognised() {
    let headless = ServiceInfo::from_service(&mk_svc("default", "db", "None", &[]));
    assert!(headless.headless);
    assert!(headless.cluster_ips.is_empty());

    let mut ext = mk_svc("default", "corp", "", &[]);
    let spec = ext.spec.as_mut().unwrap();
    spec.type_ = Some("ExternalName".into());
    spec.external_name = Some("db.corp.example".into());
    let ext = ServiceInfo::from_service(&ext);
    assert_eq!(ext.type_, ServiceType::ExternalName);
    assert_eq!(ext.external_name.as_deref(), Some("db.corp.example"));
}

#[test]
fn applying_an_unchanged_service_reports_nothing() {
    let mut c = Catalog::new();
    let svc = mk_svc("default", "web", "10.96.0.10", &[("http", "TCP", 80)]);
    c.apply_service(&svc);
    assert_changed(&mut c, &[("default", "web")]);
    c.apply_service(&svc);
    assert_changed(&mut c, &[]);
    c.delete_service(&svc);
    assert_changed(&mut c, &[("default", "web")]);
    assert!(c.service(&key("default", "web")).is_none());
}

#[test]
fn endpoints_are_merged_over_slices_and_deduplicated_by_address() {
    let mut c = Catalog::new();
    c.apply_slice(&mk_slice(
        "default",
        "web-a",
        "web",
        vec![
            mk_ep("10.244.0.1", true, None),
            mk_ep("10.244.0.2", false, None),
        ],
    ));
    c.apply_slice(&mk_slice(
        "default",
        "web-b",
        "web",
        vec![
            mk_ep("10.244.0.2", true, None),
            mk_ep("10.244.0.3", true, None),
        ],
    ));
    assert_changed(&mut c, &[("default", "web")]);
    let k = key("default", "web");
    assert_eq!(
        addresses(&c, &k),
        vec!["10.244.0.1", "10.244.0.2", "10.244.0.3"]
    );
    // The ready copy of 10.244.0.2 (from web-b) wins.
    assert!(c.endpoints(&k).iter().all(|e| e.ready));
    assert_eq!(c.endpoints(&k)[0].ports[0].port, 8080);

    c.delete_slice(&mk_slice("default", "web-b", "web", vec![]));
    assert_changed(&mut c, &[("default", "web")]);
    assert_eq!(addresses(&c, &k), vec!["10.244.0.1", "10.244.0.2"]);
    assert!(!c.endpoints(&k)[1].ready);
}

#[test]
fn a_slice_change_touches_only_its_service() {
    let mut c = Catalog::new();
    c.apply_slice(&mk_slice(
        "default",
        "a-1",
        "a",
        vec![mk_ep("10.244.0.1", true, None)],
    ));
    c.apply_slice(&mk_slice(
        "default",
        "b-1",
        "b",
        vec![mk_ep("10.244.0.2", true, None)],
    ));
    c.take_changes();
    c.apply_slice(&mk_slice(
        "default",
        "a-1",
        "a",
        vec![mk_ep("10.244.0.9", true, None)],
    ));
    assert_changed(&mut c, &[("default", "a")]);
    // The same slice again is no change.
    c.apply_slice(&mk_slice(
        "default",
        "a-1",
        "a",
        vec![mk_ep("10.244.0.9", true, None)],
    ));
    assert_changed(&mut c, &[]);
}

#[test]
fn a_slice_that_moves_to_another_service_changes_both() {
    let mut c = Catalog::new();
    c.apply_slice(&mk_slice(
        "default",
        "s",
        "a",
        vec![mk_ep("10.244.0.1", true, None)],
    ));
    c.take_changes();
    c.apply_slice(&mk_slice(
        "default",
        "s",
        "b",
        vec![mk_ep("10.244.0.1", true, None)],
    ));
    assert_changed(&mut c, &[("default", "a"), ("default", "b")]);
    assert!(c.endpoints(&key("default", "a")).is_empty());
    assert_eq!(addresses(&c, &key("default", "b")), vec!["10.244.0.1"]);
}

#[test]
fn slices_without_a_service_label_or_of_fqdn_type_give_no_endpoints() {
    let mut c = Catalog::new();
    let mut unlabelled = mk_slice("default", "x", "web", vec![mk_ep("10.244.0.1", true, None)]);
    unlabelled.metadata.labels = None;
    c.apply_slice(&unlabelled);
    assert_changed(&mut c, &[]);

    let mut fqdn = mk_slice("default", "y", "web", vec![mk_ep("db.example", true, None)]);
    fqdn.address_type = "FQDN".into();
    c.apply_slice(&fqdn);
    assert_changed(&mut c, &[]);
    assert!(c.endpoints(&key("default", "web")).is_empty());
}

#[test]
fn endpoint_fields_are_kept() {
    let mut c = Catalog::new();
    let mut ep = mk_ep("10.244.0.1", true, Some("db-0"));
    ep.node_name = Some("node-a".into());
    ep.zone = Some("zone-1".into());
    ep.target_ref = Some(k8s_openapi::api::core::v1::ObjectReference {
        kind: Some("Pod".into()),
        name: Some("db-0".into()),
        ..Default::default()
    });
    ep.conditions = None;
    c.apply_slice(&mk_slice("default", "db-1", "db", vec![ep]));
    let e = &c.endpoints(&key("default", "db"))[0];
    assert_eq!(e.hostname.as_deref(), Some("db-0"));
    assert_eq!(e.node_name.as_deref(), Some("node-a"));
    assert_eq!(e.zone.as_deref(), Some("zone-1"));
    assert_eq!(e.pod.as_deref(), Some("db-0"));
    // Unset conditions: ready and serving, not terminating.
    assert!(e.ready && e.serving && !e.terminating);
}

#[test]
fn a_relist_reports_only_what_differs() {
    let mut c = Catalog::new();
    let a = mk_svc("default", "a", "10.96.0.1", &[]);
    let b = mk_svc("default", "b", "10.96.0.2", &[]);
    let b2 = mk_svc("default", "b", "10.96.0.3", &[]);
    let d = mk_svc("default", "d", "10.96.0.4", &[]);
    c.reset_services([&a, &b, &d]);
    assert_changed(
        &mut c,
        &[("default", "a"), ("default", "b"), ("default", "d")],
    );
    c.reset_services([&a, &b2]);
    assert_changed(&mut c, &[("default", "b"), ("default", "d")]);

    let s1 = mk_slice("default", "a-1", "a", vec![mk_ep("10.244.0.1", true, None)]);
    let s2 = mk_slice("default", "b-1", "b", vec![mk_ep("10.244.0.2", true, None)]);
    c.reset_slices([&s1, &s2]);
    assert_changed(&mut c, &[("default", "a"), ("default", "b")]);
    let s2b = mk_slice("default", "b-1", "b", vec![mk_ep("10.244.0.3", true, None)]);
    c.reset_slices([&s1, &s2b]);
    assert_changed(&mut c, &[("default", "b")]);
    c.reset_slices([&s1]);
    assert_changed(&mut c, &[("default", "b")]);
    assert!(c.endpoints(&key("default", "b")).is_empty());
}

#[test]
fn pod_addresses_are_counted_per_namespace() {
    let mut c = Catalog::new();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // Two host-network pods share the node's address.
    c.apply_pod(&mk_pod("kube-system", "proxy", &["192.168.56.10"]));
    c.apply_pod(&mk_pod("kube-system", "agent", &["192.168.56.10"]));
    c.apply_pod(&mk_pod("default", "web", &["10.244.0.1", "fd00:244::1"]));
    let changes = c.take_changes();
    assert_eq!(changes.pod_addresses.len(), 3);
    assert!(c.has_pod_address("kube-system", ip("192.168.56.10")));
    assert!(!c.has_pod_address("default", ip("192.168.56.10")));
    assert!(c.has_pod_address("default", ip("fd00:244::1")));

    c.delete_pod(&mk_pod("kube-system", "proxy", &[]));
    assert!(c.take_changes().pod_addresses.is_empty());
    assert!(c.has_pod_address("kube-system", ip("192.168.56.10")));
    c.delete_pod(&mk_pod("kube-system", "agent", &[]));
    assert_eq!(c.take_changes().pod_addresses.len(), 1);
    assert!(!c.has_pod_address("kube-system", ip("192.168.56.10")));

    // A finished pod has released its address.
    let mut done = mk_pod("default", "web", &["10.244.0.1"]);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    c.apply_pod(&done);
    assert!(!c.has_pod_address("default", ip("10.244.0.1")));
    assert_eq!(c.pod_count(), 0);
}

#[test]
fn a_pod_relist_streams_and_removes_the_pods_not_listed() {
    let mut c = Catalog::new();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let a = mk_pod("default", "a", &["10.244.0.1"]);
    let b = mk_pod("default", "b", &["10.244.0.2"]);
    c.reset_pods([&a, &b]);
    let changes = c.take_changes();
    assert!(changes.pods_relisted);
    assert!(changes.pod_addresses.is_empty());
    assert_eq!(c.pod_addresses().count(), 2);

    // A relist as a watch delivers it: one pod at a time.
    c.begin_pod_relist();
    c.apply_pod(&a);
    c.apply_pod(&mk_pod("default", "c", &["10.244.0.3"]));
    c.finish_pod_relist();
    assert!(c.take_changes().pods_relisted);
    assert!(c.has_pod_address("default", ip("10.244.0.1")));
    assert!(!c.has_pod_address("default", ip("10.244.0.2")));
    assert!(c.has_pod_address("default", ip("10.244.0.3")));
    assert_eq!(c.pod_count(), 2);

    // After the relist, changes are reported one by one again.
    c.delete_pod(&a);
    let changes = c.take_changes();
    assert!(!changes.pods_relisted);
    assert_eq!(changes.pod_addresses.len(), 1);
}

#[test]
fn a_pod_keeps_one_address_per_family() {
    let mut c = Catalog::new();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    c.apply_pod(&mk_pod(
        "default",
        "a",
        &["10.244.0.1", "10.244.0.9", "fd00:244::1"],
    ));
    assert!(c.has_pod_address("default", ip("10.244.0.1")));
    assert!(!c.has_pod_address("default", ip("10.244.0.9")));
    assert!(c.has_pod_address("default", ip("fd00:244::1")));
}

mod prop {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Whatever order slices arrive and leave in, the merged endpoints
        /// equal a merge computed from scratch over the slices that remain.
        #[test]
        fn incremental_merge_equals_a_fresh_merge(
            ops in proptest::collection::vec((0u8..4, 0u8..3, proptest::collection::vec((0u8..6, any::<bool>()), 0..4)), 1..30)
        ) {
            let mut c = Catalog::new();
            let mut live: BTreeMap<u8, EndpointSlice> = BTreeMap::new();
            for (slice, svc, eps) in ops {
                let name = format!("s{slice}");
                let svc_name = format!("svc{svc}");
                if eps.is_empty() {
                    if let Some(old) = live.remove(&slice) {
                        c.delete_slice(&old);
                    }
                    continue;
                }
                let eps = eps.iter().map(|(a, r)| mk_ep(&format!("10.244.0.{a}"), *r, None)).collect();
                let s = mk_slice("default", &name, &svc_name, eps);
                c.apply_slice(&s);
                live.insert(slice, s);
            }
            let mut fresh = Catalog::new();
            fresh.reset_slices(live.values());
            for svc in 0..3 {
                let k = key("default", &format!("svc{svc}"));
                prop_assert_eq!(c.endpoints(&k), fresh.endpoints(&k));
            }
        }
    }
}
