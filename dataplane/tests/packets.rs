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
use portico_dataplane::conntrack::{self, PROC_SYS_NET, TCP_BE_LIBERAL};
use portico_dataplane::{ConntrackTool, Kernel, Proxier};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use support::lab::{From, Lab, TIMEOUT, in_netns};
use support::rawtcp::{ACK, IP_HEADER, Injector, PSH, RST, SYN, Segment, Sniffer, checksum};
use support::*;

const PORT: u16 = 8080;
const HTTP: [(&str, &str, i32); 1] = [("http", "TCP", 8080)];
const BOTH: [(&str, &str, i32); 2] = [("http", "TCP", 8080), ("dns", "UDP", 8080)];

fn proxier(lab: &Lab) -> Proxier<Kernel, ConntrackTool> {
    Proxier::new(config(), lab.kernel(), lab.conntrack())
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

fn sync(p: &mut Proxier<Kernel, ConntrackTool>, catalog: &mut Catalog) {
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

/// kube-proxy's cleanup of a UDP Service that gets its first endpoint:
/// a flow made while nothing served the NodePort is not translated, and
/// would keep bypassing the new rules until it timed out.
#[test]
fn a_udp_flow_made_before_its_service_served_reaches_the_pod_once_it_does() {
    let Some(lab) = lab(
        "a_udp_flow_made_before_its_service_served_reaches_the_pod_once_it_does",
        2,
    ) else {
        return;
    };
    let np = svc("default", "np", "10.96.0.20")
        .port("dns", "UDP", 80)
        .node_ports(&[30053]);
    let mut c = catalog(&[], &[]);
    let mut p = proxier(&lab);
    p.full_sync(&c).unwrap();
    // Nothing serves the port: the datagram meets the node itself.
    assert!(
        lab.udp(From::Client, "192.168.77.1:30053", Some(41000))
            .is_err()
    );
    let entries = lab.conntrack_entries();
    assert!(
        entries.lines().any(|l| l.contains("dport=30053")
            && l.contains("src=192.168.77.1 dst=192.168.77.2 sport=30053")),
        "an untranslated entry: {entries}"
    );
    c.apply_service(&np.0);
    c.apply_slice(&slice(
        "default",
        "np-1",
        "np",
        &[("dns", "UDP", 8080)],
        &[ep("10.244.2.2").on(OTHER_NODE)],
    ));
    let changes = c.take_changes();
    let report = p.sync(&c, &changes).unwrap();
    assert!(report.conntrack_deleted >= 1, "{report:?}");
    // The same client port now reaches the pod.
    assert_eq!(
        lab.udp(From::Client, "192.168.77.1:30053", Some(41000))
            .unwrap(),
        "pod2 10.244.2.1"
    );
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
    // Refused, not timed out: the answer is a reset or an ICMP error,
    // which is what "at once" means to a client.
    refused(lab.tcp(From::Client, "10.96.0.60:80"), "TCP ClusterIP");
    refused(
        lab.udp(From::Client, "10.96.0.60:80", None),
        "UDP ClusterIP",
    );
    refused(lab.tcp(From::Client, "192.168.77.1:30083"), "TCP NodePort");
    refused(lab.tcp(From::Pod(1), "10.96.0.60:80"), "TCP from a pod");
    // A port the Service does not have.
    refused(lab.tcp(From::Client, "10.96.0.10:81"), "unknown port");
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
fn fifty_endpoint_moves_in_a_row_fail_no_connection_and_new_ones_reach_the_current_endpoints() {
    let Some(lab) = lab(
        "fifty_endpoint_moves_in_a_row_fail_no_connection_and_new_ones_reach_the_current_endpoints",
        3,
    ) else {
        return;
    };
    let web = svc("default", "web", "10.96.0.10").port("http", "TCP", 80);
    let pods = ["10.244.1.2", "10.244.2.2", "10.244.3.2"];
    // Always one ready endpoint at least: one pod, then it and the next,
    // then the next alone, around the three.
    let set = |step: usize| -> Vec<usize> {
        let first = (step / 2) % 3;
        if step.is_multiple_of(2) {
            vec![first]
        } else {
            vec![first, (first + 1) % 3]
        }
    };
    let slice_of = |members: &[usize]| {
        let eps: Vec<_> = members.iter().map(|i| ep(pods[*i])).collect();
        slice("default", "web-1", "web", &BOTH, &eps)
    };
    let mut c = catalog(&[web], &[slice_of(&set(0))]);
    let mut p = proxier(&lab);
    p.full_sync(&c).unwrap();
    let mut connections = 0;
    for step in 1..=50 {
        let members = set(step);
        c.apply_slice(&slice_of(&members));
        sync(&mut p, &mut c);
        let allowed: Vec<String> = members.iter().map(|i| format!("pod{}", i + 1)).collect();
        for _ in 0..4 {
            let line = lab
                .tcp(From::Client, "10.96.0.10:80")
                .unwrap_or_else(|e| panic!("move {step}: a connection failed: {e}"));
            let pod = line.split(' ').next().unwrap_or_default().to_owned();
            assert!(
                allowed.contains(&pod),
                "move {step}: {pod} is not in {allowed:?}"
            );
            connections += 1;
        }
    }
    assert_eq!(connections, 200);
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

/// How far beyond the client's receive window the forged segment starts:
/// a quarter of the sequence space, more than any window can be.
const OUT_OF_WINDOW: u32 = 1 << 30;

/// How the client answered the forged segment.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A reset: the segment reached it untranslated, from the endpoint's
    /// address, which it has no connection with.
    Reset,
    /// An acknowledgement: the segment reached its socket, translated,
    /// and the socket asked again for the data it expects.
    Ack,
}

/// What became of one connection after the forged segment.
#[derive(Debug, PartialEq, Eq)]
struct Fate {
    answer: Answer,
    /// What the server read next from the client (or why it could not).
    server_read: Result<String, ErrorKind>,
    /// What the client read next from the server.
    client_read: Result<String, ErrorKind>,
}

impl Fate {
    fn survived() -> Fate {
        Fate {
            answer: Answer::Ack,
            server_read: Ok("again".into()),
            client_read: Ok("still".into()),
        }
    }

    fn reset() -> Fate {
        Fate {
            answer: Answer::Reset,
            server_read: Err(ErrorKind::ConnectionReset),
            client_read: Err(ErrorKind::ConnectionReset),
        }
    }
}

/// Upstream's e2e test "Conntrack should drop INVALID conntrack entries":
/// pod 1 (on this node) talks through the ClusterIP 10.96.0.10:80 to pod
/// 2 (on another node, routed through this one, not masqueraded), whose
/// side then sends one segment far outside pod 1's receive window. The
/// node's conntrack sees it in the reply direction of the connection.
struct OutOfWindow {
    lab: Lab,
    listener: std::net::TcpListener,
    /// What reaches pod 2: the client's segments, after DNAT.
    sniffer: Sniffer,
    /// Forges segments from pod 2.
    injector: Injector,
}

impl OutOfWindow {
    fn new(test: &str) -> Option<OutOfWindow> {
        if !root_or_skip(test) {
            return None;
        }
        let lab = Lab::new(2);
        let c = catalog(
            &[svc("default", "web", "10.96.0.10").port("http", "TCP", 80)],
            &[slice(
                "default",
                "web-1",
                "web",
                &HTTP,
                &[ep("10.244.2.2").on(OTHER_NODE)],
            )],
        );
        proxier(&lab).full_sync(&c).unwrap();
        let (listener, sniffer, injector) = in_netns(&lab.pods[1], || {
            let listener = std::net::TcpListener::bind(("0.0.0.0", PORT)).unwrap();
            // A guard: accept gives up instead of waiting forever.
            socket2::SockRef::from(&listener)
                .set_read_timeout(Some(TIMEOUT))
                .unwrap();
            (
                listener,
                Sniffer::new(TIMEOUT).unwrap(),
                Injector::new().unwrap(),
            )
        });
        Some(OutOfWindow {
            lab,
            listener,
            sniffer,
            injector,
        })
    }

    /// `nf_conntrack_tcp_be_liberal` in the node namespace.
    fn tcp_be_liberal(&self) -> String {
        let path = Path::new(PROC_SYS_NET).join(TCP_BE_LIBERAL);
        in_netns(&self.lab.node, move || std::fs::read_to_string(path))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// One connection: data both ways, the forged segment, data both
    /// ways again.
    fn connection(&mut self) -> Fate {
        let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let mut client = in_netns(&self.lab.pods[0], move || {
            TcpStream::connect_timeout(&service, TIMEOUT)
        })
        .unwrap();
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (mut server, peer) = self.listener.accept().unwrap();
        server.set_read_timeout(Some(TIMEOUT)).unwrap();
        let SocketAddr::V4(peer) = peer else {
            panic!("{peer}")
        };
        assert_eq!(*peer.ip(), Ipv4Addr::new(10, 244, 1, 2), "not masqueraded");
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), PORT);

        client.write_all(b"ping\n").unwrap();
        assert_eq!(read(&mut server, 5), Ok("ping".into()));
        server.write_all(b"pong\n").unwrap();
        assert_eq!(read(&mut client, 5), Ok("pong".into()));

        // The sequence numbers, from what reached the server: the
        // client's SYN carries its initial one, its first ACK the
        // server's plus one; each side has sent 5 bytes since.
        let from_client = move |s: &Segment| s.src == peer && s.dst == local;
        let syn = self.sniffer.next(|s| from_client(s) && s.has(SYN)).unwrap();
        let first_ack = self.sniffer.next(|s| from_client(s) && s.has(ACK)).unwrap();
        let client_next = syn.seq.wrapping_add(1 + 5);
        let server_next = first_ack.ack.wrapping_add(5);
        // Once the client has acknowledged all the server sent, its next
        // segment is its answer to the forged one.
        self.sniffer
            .next(|s| from_client(s) && s.ack == server_next)
            .unwrap();

        // A valid ACK (everything the client sent), a sequence number far
        // beyond the client's window, and data, so that a socket that gets
        // it answers at once (duplicate ACKs for data are not rate-limited).
        self.injector
            .send(&Segment {
                src: local,
                dst: peer,
                seq: server_next.wrapping_add(OUT_OF_WINDOW),
                ack: client_next,
                flags: ACK | PSH,
                window: 502,
                payload: b"out of window\n".to_vec(),
            })
            .unwrap();
        // Waiting for the answer orders it before the data below: a reset
        // that arrived after the server had read more would fall outside
        // its window and be ignored.
        let answer = self.sniffer.next(from_client).unwrap();
        let answer = if answer.has(RST) {
            assert_eq!(answer.seq, client_next, "{answer:?}");
            Answer::Reset
        } else {
            Answer::Ack
        };

        client.write_all(b"again\n").unwrap();
        let server_read = read(&mut server, 6);
        if server_read.is_ok() {
            server.write_all(b"still\n").unwrap();
        }
        let client_read = read(&mut client, 6);
        Fate {
            answer,
            server_read,
            client_read,
        }
    }
}

/// Exactly `n` bytes from `s`, without the trailing newline.
fn read(s: &mut TcpStream, n: usize) -> Result<String, ErrorKind> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).map_err(|e| e.kind())?;
    Ok(String::from_utf8_lossy(&buf).trim_end().to_owned())
}

#[test]
fn with_tcp_be_liberal_an_out_of_window_segment_from_an_endpoint_spares_the_connection() {
    let Some(mut oow) = OutOfWindow::new(
        "with_tcp_be_liberal_an_out_of_window_segment_from_an_endpoint_spares_the_connection",
    ) else {
        return;
    };
    // What `--conntrack-tcp-be-liberal` does at start, in the node namespace.
    let before = in_netns(&oow.lab.node, || {
        conntrack::set_tcp_be_liberal(Path::new(PROC_SYS_NET))
    })
    .unwrap();
    assert_eq!(before, "0", "a new namespace starts strict");
    assert_eq!(oow.tcp_be_liberal(), "1");
    let fates: Vec<Fate> = (0..3).map(|_| oow.connection()).collect();
    assert_eq!(
        fates,
        [Fate::survived(), Fate::survived(), Fate::survived()]
    );
}

#[test]
fn without_tcp_be_liberal_an_out_of_window_segment_from_an_endpoint_resets_the_connection() {
    let Some(mut oow) = OutOfWindow::new(
        "without_tcp_be_liberal_an_out_of_window_segment_from_an_endpoint_resets_the_connection",
    ) else {
        return;
    };
    assert_eq!(oow.tcp_be_liberal(), "0");
    let fates: Vec<Fate> = (0..3).map(|_| oow.connection()).collect();
    assert_eq!(fates, [Fate::reset(), Fate::reset(), Fate::reset()]);
}

#[test]
fn a_forged_segment_parses_back_with_correct_checksums() {
    let seg = Segment {
        src: "10.244.2.2:8080".parse().unwrap(),
        dst: "10.244.1.2:40000".parse().unwrap(),
        seq: 0xdead_beef,
        ack: 7,
        flags: ACK | PSH,
        window: 512,
        payload: b"odd".to_vec(),
    };
    let packet = seg.to_packet();
    assert_eq!(Segment::parse(&packet), Some(seg));
    // Data with a correct checksum sums to zero: the IPv4 header, and the
    // TCP segment with its pseudo-header.
    assert_eq!(checksum(&[&packet[..IP_HEADER]]), 0);
    let tcp = &packet[IP_HEADER..];
    let len = u16::try_from(tcp.len()).unwrap().to_be_bytes();
    let pseudo = [&packet[12..20], &[0, 6], &len[..]].concat();
    assert_eq!(checksum(&[&pseudo, tcp]), 0);
}

/// kube-proxy's contract: a Service labelled
/// `service.kubernetes.io/service-proxy-name` belongs to another proxy. Its
/// address is then an unheld one of the service range (dropped) until the
/// label goes.
#[test]
fn a_service_another_proxy_owns_gets_no_rules_until_the_label_goes() {
    let Some(lab) = lab(
        "a_service_another_proxy_owns_gets_no_rules_until_the_label_goes",
        2,
    ) else {
        return;
    };
    let owned = svc("default", "other", "10.96.0.11")
        .port("http", "TCP", 80)
        .label("service.kubernetes.io/service-proxy-name", "other-proxy");
    let mut c = catalog(
        &[
            svc("default", "web", "10.96.0.10").port("http", "TCP", 80),
            owned.clone(),
        ],
        &[
            slice("default", "web-1", "web", &HTTP, &[ep("10.244.1.2")]),
            slice("default", "other-1", "other", &HTTP, &[ep("10.244.2.2")]),
        ],
    );
    let mut p = proxier(&lab);
    p.full_sync(&c).unwrap();
    assert_eq!(
        lab.tcp(From::Client, "10.96.0.10:80").unwrap(),
        "pod1 10.244.1.1"
    );
    let refused = lab.tcp(From::Client, "10.96.0.11:80");
    assert!(refused.is_err(), "another proxy's Service: {refused:?}");

    let mut unlabelled = owned.0.clone();
    unlabelled.metadata.labels = None;
    c.apply_service(&unlabelled);
    sync(&mut p, &mut c);
    assert_eq!(
        lab.tcp(From::Client, "10.96.0.11:80").unwrap(),
        "pod2 10.244.2.1"
    );

    c.apply_service(&owned.0);
    sync(&mut p, &mut c);
    let refused = lab.tcp(From::Client, "10.96.0.11:80");
    assert!(refused.is_err(), "labelled again: {refused:?}");
}
