//! Real packets through the rules, applied with the real `nft` in a node
//! namespace: a client outside the cluster, pods running TCP/UDP servers
//! (see `support/lab.rs` for the addresses). Needs root.
//!
//! Servers answer `<pod> <source address they saw>`, so each test sees
//! both where a connection went and whether it was masqueraded: a
//! masqueraded connection arrives from the node's address on the pod's
//! link (10.244.N.1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use portico_catalog::Catalog;
use portico_dataplane::{ConntrackTool, Nft, Proxier};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::time::{Duration, Instant};
use support::lab::{From, Lab};
use support::*;

const PORT: u16 = 8080;
const HTTP: [(&str, &str, i32); 1] = [("http", "TCP", 8080)];
const BOTH: [(&str, &str, i32); 2] = [("http", "TCP", 8080), ("dns", "UDP", 8080)];

fn proxier(lab: &Lab) -> Proxier<Nft, ConntrackTool> {
    Proxier::new(config(), lab.nft(), lab.conntrack())
}

/// A lab with `pods` pods serving on 8080, or `None` when the test must
/// skip.
fn lab(test: &str, pods: usize) -> Option<Lab> {
    if !root_or_skip(test) {
        return None;
    }
    let mut lab = Lab::new(pods);
    for i in 1..=pods {
        lab.serve(i, PORT);
    }
    Some(lab)
}

/// Which pods answered `n` connections, and how often.
fn spread(lab: &Lab, from: From, dst: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let line = lab.tcp(from, dst).unwrap();
        let pod = line.split(' ').next().unwrap().to_owned();
        *seen.entry(pod).or_default() += 1;
    }
    seen
}

fn sync(p: &mut Proxier<Nft, ConntrackTool>, catalog: &mut Catalog) {
    let changes = catalog.take_changes();
    p.sync(catalog, &changes).unwrap();
}

#[test]
fn a_client_reaches_a_pod_through_its_cluster_ip() {
    let Some(lab) = lab("a_client_reaches_a_pod_through_its_cluster_ip", 2) else {
        return;
    };
    let c = catalog(
        &[svc("default", "web", "10.96.0.10")
            .port("http", "TCP", 80)
            .port("dns", "UDP", 80)],
        &[slice("default", "web-1", "web", &BOTH, &[ep("10.244.1.2")])],
    );
    proxier(&lab).full_sync(&c).unwrap();
    // From outside the cluster: masqueraded.
    assert_eq!(
        lab.tcp(From::Client, "10.96.0.10:80").unwrap(),
        "pod1 10.244.1.1"
    );
    assert_eq!(
        lab.udp(From::Client, "10.96.0.10:80", None).unwrap(),
        "pod1 10.244.1.1"
    );
    // From a pod: the pod's own address is kept.
    assert_eq!(
        lab.tcp(From::Pod(2), "10.96.0.10:80").unwrap(),
        "pod1 10.244.2.2"
    );
    // From the node itself.
    assert_eq!(
        lab.tcp(From::Node, "10.96.0.10:80").unwrap(),
        "pod1 10.244.1.1"
    );
}

#[test]
fn three_pods_behind_one_service_all_get_connections() {
    let Some(lab) = lab("three_pods_behind_one_service_all_get_connections", 3) else {
        return;
    };
    let c = catalog(
        &[svc("default", "web", "10.96.0.10").port("http", "TCP", 80)],
        &[slice(
            "default",
            "web-1",
            "web",
            &HTTP,
            &[
                ep("10.244.1.2"),
                ep("10.244.2.2"),
                ep("10.244.3.2").on(OTHER_NODE),
            ],
        )],
    );
    proxier(&lab).full_sync(&c).unwrap();
    let seen = spread(&lab, From::Client, "10.96.0.10:80", 60);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["pod1", "pod2", "pod3"],
        "{seen:?}"
    );
    assert!(seen.values().all(|&n| n >= 5), "{seen:?}");
}

#[test]
fn pods_that_serve_a_named_port_on_different_numbers_all_get_connections() {
    let test = "pods_that_serve_a_named_port_on_different_numbers_all_get_connections";
    if !root_or_skip(test) {
        return;
    }
    let mut lab = Lab::new(3);
    lab.serve(1, 8080);
    lab.serve(2, 9090);
    lab.serve(3, 8080);
    let c = catalog(
        &[svc("default", "web", "10.96.0.10")
            .port("http", "TCP", 80)
            .node_ports(&[30080])],
        &[
            slice("default", "web-1", "web", &HTTP, &[ep("10.244.1.2")]),
            slice(
                "default",
                "web-2",
                "web",
                &[("http", "TCP", 9090)],
                &[ep("10.244.2.2")],
            ),
        ],
    );
    let mut p = proxier(&lab);
    p.full_sync(&c).unwrap();
    for dst in ["10.96.0.10:80", "192.168.77.1:30080"] {
        let seen = spread(&lab, From::Client, dst, 40);
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            vec!["pod1", "pod2"],
            "{dst}: {seen:?}"
        );
    }

    // When the pods agree again, the shared pick chains take over.
    let mut c = c;
    c.apply_slice(&slice(
        "default",
        "web-2",
        "web",
        &HTTP,
        &[ep("10.244.3.2")],
    ));
    sync(&mut p, &mut c);
    let seen = spread(&lab, From::Client, "10.96.0.10:80", 40);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["pod1", "pod3"],
        "{seen:?}"
    );
}

#[test]
fn a_node_port_answers_on_the_node_address() {
    let Some(lab) = lab("a_node_port_answers_on_the_node_address", 2) else {
        return;
    };
    let c = catalog(
        &[svc("default", "np", "10.96.0.20")
            .port("http", "TCP", 80)
            .port("dns", "UDP", 80)
            .node_ports(&[30080, 30080])],
        &[slice(
            "default",
            "np-1",
            "np",
            &BOTH,
            &[ep("10.244.2.2").on(OTHER_NODE)],
        )],
    );
    proxier(&lab).full_sync(&c).unwrap();
    assert_eq!(
        lab.tcp(From::Client, "192.168.77.1:30080").unwrap(),
        "pod2 10.244.2.1"
    );
    assert_eq!(
        lab.udp(From::Client, "192.168.77.1:30080", None).unwrap(),
        "pod2 10.244.2.1"
    );
    // Only on the NodePort addresses: the node's pod-side address is not one.
    assert!(lab.tcp(From::Pod(1), "10.244.1.1:30080").is_err());
}

#[test]
fn a_load_balancer_address_reaches_the_pods_within_its_source_ranges() {
    let Some(lab) = lab(
        "a_load_balancer_address_reaches_the_pods_within_its_source_ranges",
        2,
    ) else {
        return;
    };
    let lb = |ranges: &[&str]| {
        svc("default", "lb", "10.96.0.30")
            .port("http", "TCP", 80)
            .load_balancer("192.168.56.60", &[30081])
            .source_ranges(ranges)
    };
    let slices = [slice(
        "default",
        "lb-1",
        "lb",
        &HTTP,
        &[ep("10.244.1.2"), ep("10.244.2.2").on(OTHER_NODE)],
    )];
    let mut c = catalog(&[lb(&["192.168.77.0/24"])], &slices);
    let mut p = proxier(&lab);
    p.full_sync(&c).unwrap();
    let seen = spread(&lab, From::Client, "192.168.56.60:80", 30);
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Not in the source ranges any more: dropped.
    c.apply_service(&lb(&["10.0.0.0/8"]).0);
    sync(&mut p, &mut c);
    let err = lab.tcp(From::Client, "192.168.56.60:80").unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{err:?}"
    );
    // The ClusterIP is not firewalled.
    assert!(lab.tcp(From::Client, "10.96.0.30:80").is_ok());
}

#[test]
fn session_affinity_pins_a_client_to_one_pod() {
    let Some(lab) = lab("session_affinity_pins_a_client_to_one_pod", 3) else {
        return;
    };
    let c = catalog(
        &[svc("default", "sticky", "10.96.0.50")
            .port("http", "TCP", 80)
            .affinity(600)],
        &[slice(
            "default",
            "sticky-1",
            "sticky",
            &HTTP,
            &[ep("10.244.1.2"), ep("10.244.2.2"), ep("10.244.3.2")],
        )],
    );
    proxier(&lab).full_sync(&c).unwrap();
    let from_client = spread(&lab, From::Client, "10.96.0.50:80", 20);
    assert_eq!(from_client.len(), 1, "{from_client:?}");
    let from_pod = spread(&lab, From::Pod(1), "10.96.0.50:80", 20);
    assert_eq!(from_pod.len(), 1, "{from_pod:?}");
    let dump = lab.nft().dump().unwrap();
    assert!(
        dump.contains("192.168.77.2"),
        "the client is remembered:\n{dump}"
    );
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_the_node() {
    let Some(lab) = lab(
        "external_traffic_policy_local_keeps_the_client_address_and_the_node",
        2,
    ) else {
        return;
    };
    let local = svc("default", "local", "10.96.0.40")
        .port("http", "TCP", 80)
        .load_balancer("192.168.56.61", &[30082])
        .etp_local(30900);
    let mut c = catalog(
        std::slice::from_ref(&local),
        &[slice(
            "default",
            "local-1",
            "local",
            &HTTP,
            &[ep("10.244.1.2"), ep("10.244.2.2").on(OTHER_NODE)],
        )],
    );
    let mut p = proxier(&lab);
    p.full_sync(&c).unwrap();
    for dst in ["192.168.77.1:30082", "192.168.56.61:80"] {
        for _ in 0..10 {
            assert_eq!(
                lab.tcp(From::Client, dst).unwrap(),
                "pod1 192.168.77.2",
                "{dst}"
            );
        }
    }
    // Pods reach every endpoint (pod 1 is the one on this node).
    let seen = spread(&lab, From::Pod(1), "192.168.56.61:80", 30);
    assert_eq!(seen.len(), 2, "{seen:?}");

    // No local endpoint: external traffic is dropped.
    c.apply_slice(&slice(
        "default",
        "local-1",
        "local",
        &HTTP,
        &[ep("10.244.2.2").on(OTHER_NODE)],
    ));
    sync(&mut p, &mut c);
    let err = lab.tcp(From::Client, "192.168.77.1:30082").unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{err:?}"
    );
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    let Some(lab) = lab("a_pod_reaches_itself_through_its_service", 1) else {
        return;
    };
    let c = catalog(
        &[svc("default", "web", "10.96.0.10").port("http", "TCP", 80)],
        &[slice("default", "web-1", "web", &HTTP, &[ep("10.244.1.2")])],
    );
    proxier(&lab).full_sync(&c).unwrap();
    // Masqueraded, or the pod would answer itself directly.
    assert_eq!(
        lab.tcp(From::Pod(1), "10.96.0.10:80").unwrap(),
        "pod1 10.244.1.1"
    );
}

#[test]
fn a_service_without_endpoints_refuses_at_once() {
    let Some(lab) = lab("a_service_without_endpoints_refuses_at_once", 1) else {
        return;
    };
    let c = catalog(
        &[
            svc("default", "empty", "10.96.0.60")
                .port("http", "TCP", 80)
                .port("dns", "UDP", 80)
                .node_ports(&[30083, 30083]),
            svc("default", "web", "10.96.0.10").port("http", "TCP", 80),
        ],
        &[slice("default", "web-1", "web", &HTTP, &[ep("10.244.1.2")])],
    );
    proxier(&lab).full_sync(&c).unwrap();
    let refused = |r: std::io::Result<String>, what: &str| {
        let err = r.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{what}: {err:?}");
    };
    let start = Instant::now();
    refused(lab.tcp(From::Client, "10.96.0.60:80"), "TCP ClusterIP");
    refused(
        lab.udp(From::Client, "10.96.0.60:80", None),
        "UDP ClusterIP",
    );
    refused(lab.tcp(From::Client, "192.168.77.1:30083"), "TCP NodePort");
    refused(lab.tcp(From::Pod(1), "10.96.0.60:80"), "TCP from a pod");
    // A port the Service does not have.
    refused(lab.tcp(From::Client, "10.96.0.10:81"), "unknown port");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // An address of the service range that no Service holds: dropped.
    let err = lab.tcp(From::Client, "10.96.0.99:80").unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{err:?}"
    );
}

#[test]
fn a_removed_endpoint_gets_no_new_connections_and_loses_its_udp_flows() {
    let Some(lab) = lab(
        "a_removed_endpoint_gets_no_new_connections_and_loses_its_udp_flows",
        2,
    ) else {
        return;
    };
    let web = svc("default", "web", "10.96.0.10")
        .port("http", "TCP", 80)
        .port("dns", "UDP", 80);
    let mut c = catalog(
        &[web],
        &[slice(
            "default",
            "web-1",
            "web",
            &BOTH,
            &[ep("10.244.1.2"), ep("10.244.2.2")],
        )],
    );
    let mut p = proxier(&lab);
    p.full_sync(&c).unwrap();
    // UDP flows from fixed source ports, until some go to pod 2.
    let mut to_pod2 = Vec::new();
    for port in 40000..40040 {
        let line = lab.udp(From::Client, "10.96.0.10:80", Some(port)).unwrap();
        if line.starts_with("pod2") {
            to_pod2.push(port);
        }
    }
    assert!(!to_pod2.is_empty());
    assert!(lab.conntrack_entries().contains("src=10.244.2.2"));

    c.apply_slice(&slice(
        "default",
        "web-1",
        "web",
        &BOTH,
        &[ep("10.244.1.2")],
    ));
    let changes = c.take_changes();
    let report = p.sync(&c, &changes).unwrap();
    assert!(report.conntrack_deleted >= to_pod2.len(), "{report:?}");
    let entries = lab.conntrack_entries();
    assert!(
        !entries
            .lines()
            .any(|l| l.contains("udp") && l.contains("src=10.244.2.2")),
        "{entries}"
    );
    // The same client ports now reach pod 1, and so do new connections.
    for port in to_pod2 {
        assert!(
            lab.udp(From::Client, "10.96.0.10:80", Some(port))
                .unwrap()
                .starts_with("pod1")
        );
    }
    let seen = spread(&lab, From::Client, "10.96.0.10:80", 20);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), vec!["pod1"]);
}

#[test]
fn an_ipv6_cluster_ip_reaches_a_pod() {
    let Some(lab) = lab("an_ipv6_cluster_ip_reaches_a_pod", 2) else {
        return;
    };
    let c = catalog(
        &[
            svc("default", "web6", "fd96::10")
                .port("http", "TCP", 80)
                .port("dns", "UDP", 80),
            svc("default", "empty6", "fd96::60").port("http", "TCP", 80),
        ],
        &[slice(
            "default",
            "web6-1",
            "web6",
            &BOTH,
            &[ep("fd44:0:1::2"), ep("fd44:0:2::2")],
        )],
    );
    proxier(&lab).full_sync(&c).unwrap();
    let seen = spread(&lab, From::Client, "[fd96::10]:80", 30);
    assert_eq!(seen.len(), 2, "{seen:?}");
    let line = lab.tcp(From::Pod(1), "[fd96::10]:80").unwrap();
    assert!(
        line == "pod1 fd44:0:1::1" || line == "pod2 fd44:0:1::2",
        "hairpin masqueraded, pod to pod kept: {line}"
    );
    assert!(
        lab.udp(From::Client, "[fd96::10]:80", None)
            .unwrap()
            .starts_with("pod")
    );
    let err = lab.tcp(From::Client, "[fd96::60]:80").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err:?}");
}
