//! Table tests: the showcase ruleset, traced packet by packet
//! (`source, destination, protocol -> endpoint | REJECT | DROP | PASS`).
//! Each row is traced with every `numgen` draw, so a row lists every
//! endpoint a connection may reach.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_catalog::Protocol;
use portico_dataplane::trace::{self, Origin, Packet, Tracer};
use portico_dataplane::{Config, MemoryNft, Proxier, RecordingConntrack};
use std::collections::BTreeSet;
use support::*;

const NODE_ADDRESSES: [&str; 4] = ["192.168.77.1", "10.244.1.1", "fd77::1", "127.0.0.1"];

fn showcase_nft() -> MemoryNft {
    let (services, slices) = showcase();
    rules(config(), &services, &slices)
}

/// The rules a full sync of `services` and `slices` installs under `cfg`.
fn rules(cfg: Config, services: &[Svc], slices: &[EndpointSlice]) -> MemoryNft {
    let mut p = Proxier::new(cfg, MemoryNft::new(), RecordingConntrack::default());
    p.full_sync(&catalog(services, slices)).unwrap();
    p.backend().clone()
}

fn packet(src: &str, dst: &str, proto: &str, origin: Origin) -> Packet {
    Packet {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: match proto {
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => Protocol::Tcp,
        },
        origin,
        local: NODE_ADDRESSES.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

/// Every outcome of a packet, one per combination of its draws.
fn outcomes(nft: &MemoryNft, p: &Packet) -> BTreeSet<String> {
    trace::every_outcome(nft, p, 1024)
        .unwrap_or_else(|e| panic!("{p:?}: {e}"))
        .into_iter()
        .map(|(o, _)| o.to_string())
        .collect()
}

/// A first packet `src -> dst` meets exactly the `expected` outcomes.
#[track_caller]
fn assert_outcomes(
    nft: &MemoryNft,
    (src, dst, proto, origin): (&str, &str, &str, Origin),
    expected: &[&str],
) {
    let got = outcomes(nft, &packet(src, dst, proto, origin));
    let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(got, expected, "{src} -> {dst}/{proto} ({origin:?})");
}

#[test]
fn packets_go_where_the_services_say() {
    let nft = showcase_nft();
    let client = "192.168.77.2";
    let pod = "10.244.3.2";
    #[rustfmt::skip]
    let table: &[(&str, &str, &str, Origin, &[&str])] = &[
        // ClusterIP from outside the cluster: masqueraded, both endpoints.
        (client, "10.96.0.10:80", "tcp", Origin::Remote, &["10.244.1.2:8080 masq", "10.244.2.2:8080 masq"]),
        // From a pod: the source is kept.
        (pod, "10.96.0.10:80", "tcp", Origin::Remote, &["10.244.1.2:8080", "10.244.2.2:8080"]),
        // A pod reaching itself is masqueraded (hairpin), others not.
        ("10.244.1.2", "10.96.0.10:80", "tcp", Origin::Remote, &["10.244.1.2:8080 masq", "10.244.2.2:8080"]),
        // From the node itself.
        ("192.168.77.1", "10.96.0.10:80", "tcp", Origin::Node, &["10.244.1.2:8080 masq", "10.244.2.2:8080 masq"]),
        // UDP and TCP on one port number, IPv6 too.
        (pod, "10.96.0.53:53", "udp", Origin::Remote, &["10.244.3.2:5353 masq", "10.244.4.2:5353"]),
        ("fd44:0:9::2", "[fd96::53]:53", "udp", Origin::Remote, &["[fd44:0:3::2]:5353"]),
        ("fd77::2", "[fd96::53]:53", "tcp", Origin::Remote, &["[fd44:0:3::2]:5353 masq"]),
        (pod, "10.96.0.90:9000", "sctp", Origin::Remote, &["10.244.1.2:9000"]),
        // No endpoints: refused at once; unknown port: refused; free address: dropped.
        (client, "10.96.0.60:80", "tcp", Origin::Remote, &["REJECT"]),
        (client, "10.96.0.60:80", "udp", Origin::Remote, &["REJECT"]),
        (client, "10.96.0.10:81", "tcp", Origin::Remote, &["REJECT"]),
        (client, "10.96.0.99:80", "tcp", Origin::Remote, &["DROP"]),
        ("192.168.77.1", "10.96.0.99:80", "tcp", Origin::Node, &["DROP"]),
        // internalTrafficPolicy Local without a local endpoint: dropped.
        (pod, "10.96.0.70:80", "tcp", Origin::Remote, &["DROP"]),
        // Only terminating endpoints: the serving one is used.
        (pod, "10.96.0.80:80", "tcp", Origin::Remote, &["10.244.1.2:8080"]),
        // NodePorts on the node's address only.
        (client, "192.168.77.1:30080", "tcp", Origin::Remote, &["10.244.1.2:8080 masq"]),
        (client, "192.168.77.1:30083", "tcp", Origin::Remote, &["REJECT"]),
        (client, "10.244.1.1:30080", "tcp", Origin::Remote, &["PASS"]),
        (client, "192.168.77.9:30080", "tcp", Origin::Remote, &["PASS"]),
        // LoadBalancer address behind loadBalancerSourceRanges.
        (client, "192.168.56.60:80", "tcp", Origin::Remote, &["DROP"]),
        ("192.168.56.5", "192.168.56.60:80", "tcp", Origin::Remote, &["10.244.1.2:8080 masq", "10.244.2.2:8080 masq"]),
        ("198.51.100.7", "192.168.56.60:80", "tcp", Origin::Remote, &["10.244.1.2:8080 masq", "10.244.2.2:8080 masq"]),
        // The externalIP of the same Service is not firewalled.
        (client, "203.0.113.10:80", "tcp", Origin::Remote, &["10.244.1.2:8080 masq", "10.244.2.2:8080 masq"]),
        // externalTrafficPolicy Local: clients reach the local endpoint with
        // their own address; pods and the node reach every endpoint.
        (client, "192.168.56.61:80", "tcp", Origin::Remote, &["10.244.1.2:8080"]),
        (client, "192.168.77.1:30082", "tcp", Origin::Remote, &["10.244.1.2:8080"]),
        (pod, "192.168.56.61:80", "tcp", Origin::Remote, &["10.244.1.2:8080", "10.244.2.2:8080"]),
        ("192.168.77.1", "192.168.56.61:80", "tcp", Origin::Node, &["10.244.1.2:8080 masq", "10.244.2.2:8080 masq"]),
        // Pods that serve one named port on different numbers.
        (pod, "10.96.0.100:80", "tcp", Origin::Remote, &["10.244.1.2:8080", "10.244.2.2:9090"]),
        (client, "192.168.77.1:30084", "tcp", Origin::Remote, &["10.244.1.2:8080 masq", "10.244.2.2:9090 masq"]),
        // Not a Service at all.
        (client, "10.244.2.2:8080", "tcp", Origin::Remote, &["PASS"]),
    ];
    for (src, dst, proto, origin, expected) in table {
        assert_outcomes(&nft, (src, dst, proto, *origin), expected);
    }
}

#[test]
fn session_affinity_keeps_a_client_on_its_first_endpoint() {
    let nft = showcase_nft();
    let mut draws = 0usize;
    let mut t = Tracer::new(&nft, move |n| {
        draws += 1;
        draws % n
    });
    let p = packet("192.168.77.2", "10.96.0.50:80", "tcp", Origin::Remote);
    let first = t.trace(&p).unwrap();
    for _ in 0..10 {
        assert_eq!(t.trace(&p).unwrap(), first);
    }
    // Another client is free to land elsewhere, and then sticks too.
    let q = packet("192.168.77.3", "10.96.0.50:80", "tcp", Origin::Remote);
    let second = t.trace(&q).unwrap();
    for _ in 0..10 {
        assert_eq!(t.trace(&q).unwrap(), second);
    }
}

#[test]
fn an_unknown_rule_is_an_error_not_a_pass() {
    let mut nft = showcase_nft();
    let mut tx = portico_dataplane::Transaction::new();
    tx.add_rule(
        portico_dataplane::names::Family::Ipv4,
        "services",
        "ip saddr 1.2.3.4 counter accept",
    );
    use portico_dataplane::Backend as _;
    nft.apply(&tx).unwrap();
    let mut t = Tracer::new(&nft, |_| 0);
    let p = packet("192.168.77.2", "10.244.9.9:80", "tcp", Origin::Remote);
    assert!(t.trace(&p).is_err());
}

/// What a proxier says it installed is what its syncs wrote, after a full
/// sync and after partial ones; and a view of it (what `portico node`
/// serves at `/rules`) traces the same.
#[test]
fn the_installed_rules_are_what_the_syncs_wrote_and_their_view_traces_the_same() {
    let (services, slices) = showcase();
    let mut c = catalog(&services, &slices);
    let mut p = Proxier::new(config(), MemoryNft::new(), RecordingConntrack::default());
    p.full_sync(&c).unwrap();
    assert_eq!(p.installed().unwrap().dump(), p.backend().dump());
    // A partial sync: one Service goes, another loses its endpoints.
    showcase_change(&mut c, &services);
    let changes = c.take_changes();
    p.sync(&c, &changes).unwrap();
    let installed = p.installed().unwrap();
    assert_eq!(installed.dump(), p.backend().dump());
    let view = installed.view();
    let back = MemoryNft::from_view(&view).unwrap();
    assert_eq!(back.view(), view);
    let json = serde_json::to_string(&view).unwrap();
    assert_eq!(
        serde_json::from_str::<portico_dataplane::RulesView>(&json).unwrap(),
        view
    );
    for dst in [
        "10.96.0.10:80",
        "10.96.0.11:80",
        "10.96.0.53:53",
        "192.168.77.1:30080",
    ] {
        let pk = packet("192.168.77.2", dst, "tcp", Origin::Remote);
        assert_eq!(outcomes(&back, &pk), outcomes(&installed, &pk), "{dst}");
    }
}

/// kube-proxy's nftables cases for source ranges and NodePort addresses
/// (its `TestLoadBalancer` and `TestNodePorts`), on a small catalog.
#[test]
fn source_ranges_by_family_from_the_node_and_no_nodeports_on_localhost() {
    let services = vec![
        svc("default", "lb", "10.96.0.30")
            .also("fd96::30")
            .port("http", "TCP", 80)
            .load_balancer("192.168.56.60", &[30081])
            .load_balancer("fd56::60", &[])
            // IPv4 ranges only, one of them holding the node's address.
            .source_ranges(&["192.168.77.0/24", "198.51.100.7"]),
    ];
    let http = [("http", "TCP", 8080)];
    let slices = vec![
        slice("default", "lb-v4", "lb", &http, &[ep("10.244.1.2")]),
        slice("default", "lb-v6", "lb", &http, &[ep("fd44:0:1::2")]),
    ];
    let mut cfg = config();
    cfg.nodeport_addresses = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    let nft = rules(cfg, &services, &slices);
    #[rustfmt::skip]
    let table: &[(&str, &str, Origin, &[&str])] = &[
        // Within the ranges, and outside them.
        ("198.51.100.7", "192.168.56.60:80", Origin::Remote, &["10.244.1.2:8080 masq"]),
        ("203.0.113.9", "192.168.56.60:80", Origin::Remote, &["DROP"]),
        // The node is in a range: the address itself is let through as a
        // source (the node's own traffic to it comes back so).
        ("192.168.56.60", "192.168.56.60:80", Origin::Remote, &["10.244.1.2:8080 masq"]),
        // No IPv6 range: the IPv6 address is open to all.
        ("2001:db8::9", "[fd56::60]:80", Origin::Remote, &["[fd44:0:1::2]:8080 masq"]),
        // NodePorts on every address of the node but localhost.
        ("192.168.77.2", "192.168.77.1:30081", Origin::Remote, &["10.244.1.2:8080 masq"]),
        ("127.0.0.1", "127.0.0.1:30081", Origin::Node, &["PASS"]),
        ("::1", "[::1]:30081", Origin::Node, &["PASS"]),
        ("fd77::2", "[fd77::1]:30081", Origin::Remote, &["[fd44:0:1::2]:8080 masq"]),
    ];
    for (src, dst, origin, expected) in table {
        assert_outcomes(&nft, (src, dst, "tcp", *origin), expected);
    }
}

/// kube-proxy's topology-aware routing (`TestTopologyAwareHints`,
/// `CategorizeEndpoints`): zone hints narrow the cluster-wide endpoints
/// when every ready endpoint has them and some are for the node's zone.
#[test]
fn zone_hints_keep_traffic_in_the_nodes_zone() {
    let http = [("http", "TCP", 8080)];
    let services = vec![
        svc("default", "close", "10.96.0.10").port("http", "TCP", 80),
        svc("default", "partly", "10.96.0.11").port("http", "TCP", 80),
        svc("default", "elsewhere", "10.96.0.12").port("http", "TCP", 80),
    ];
    let slices = vec![
        slice(
            "default",
            "close-1",
            "close",
            &http,
            &[
                ep("10.244.1.2").zoned("zone-a", Some("zone-a")),
                ep("10.244.2.2")
                    .on(OTHER_NODE)
                    .zoned("zone-b", Some("zone-b")),
                ep("10.244.3.2")
                    .on(OTHER_NODE)
                    .zoned("zone-a", Some("zone-a")),
                // Not ready: neither counted nor picked.
                ep("10.244.4.2").on(OTHER_NODE).not_ready(),
            ],
        ),
        // One ready endpoint without hints: hints are ignored.
        slice(
            "default",
            "partly-1",
            "partly",
            &http,
            &[
                ep("10.244.1.3").zoned("zone-a", Some("zone-a")),
                ep("10.244.2.3").on(OTHER_NODE),
            ],
        ),
        // No endpoint for this zone: every endpoint.
        slice(
            "default",
            "elsewhere-1",
            "elsewhere",
            &http,
            &[
                ep("10.244.2.4")
                    .on(OTHER_NODE)
                    .zoned("zone-b", Some("zone-b")),
                ep("10.244.2.5")
                    .on(OTHER_NODE)
                    .zoned("zone-c", Some("zone-c")),
            ],
        ),
    ];
    let mut cfg = config();
    cfg.zone = Some("zone-a".into());
    let nft = rules(cfg, &services, &slices);
    let pod = "10.244.9.9";
    #[rustfmt::skip]
    let table: &[(&str, &[&str])] = &[
        ("10.96.0.10:80", &["10.244.1.2:8080", "10.244.3.2:8080"]),
        ("10.96.0.11:80", &["10.244.1.3:8080", "10.244.2.3:8080"]),
        ("10.96.0.12:80", &["10.244.2.4:8080", "10.244.2.5:8080"]),
    ];
    for (dst, expected) in table {
        assert_outcomes(&nft, (pod, dst, "tcp", Origin::Remote), expected);
    }
}

/// kube-proxy's `--masquerade-all`: pods' connections to a ClusterIP are
/// masqueraded too.
#[test]
fn masquerade_all_masquerades_pods_too() {
    let (services, slices) = showcase();
    let mut cfg = config();
    cfg.masquerade_all = true;
    assert_outcomes(
        &rules(cfg, &services, &slices),
        ("10.244.3.2", "10.96.0.10:80", "tcp", Origin::Remote),
        &["10.244.1.2:8080 masq", "10.244.2.2:8080 masq"],
    );
}

/// A node-local endpoint that only `internalTrafficPolicy: Local` still
/// picks (terminating, while ready ones serve elsewhere) is masqueraded
/// when it reaches itself, as every kube-proxy endpoint chain does.
#[test]
fn a_local_terminating_endpoint_reaching_itself_is_masqueraded() {
    let services = vec![
        svc("default", "itp", "10.96.0.70")
            .port("http", "TCP", 80)
            .itp_local(),
    ];
    let slices = vec![slice(
        "default",
        "itp-1",
        "itp",
        &[("http", "TCP", 8080)],
        &[
            ep("10.244.1.2").terminating(),
            ep("10.244.2.2").on(OTHER_NODE),
        ],
    )];
    assert_outcomes(
        &rules(config(), &services, &slices),
        ("10.244.1.2", "10.96.0.70:80", "tcp", Origin::Remote),
        &["10.244.1.2:8080 masq"],
    );
}
