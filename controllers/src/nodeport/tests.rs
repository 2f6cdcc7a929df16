#![allow(clippy::unwrap_used)]
//! Node ports as kube-apiserver hands them out, over Services merged with
//! the writes (as the local world applies them). Range 30000-32767; its
//! static band is 30000-30085.

use super::*;
use crate::k8s::KeyOf;
use crate::k8s::{ObjectMeta, ServicePort, ServiceSpec, Time, merge_service, service_condition};
use crate::write::Apply;

fn alloc() -> NodePortAllocator {
    NodePortAllocator::new("30000-32767".parse().unwrap()).with_seed(1)
}

/// A Service of `type_` with ports `(port, protocol, nodePort)`, created
/// `age` seconds after a fixed time.
fn mk_svc(name: &str, type_: &str, ports: &[(i32, &str, i32)], age: i64) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(name.into()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + age).unwrap(),
            )),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(port, proto, np)| ServicePort {
                        port: *port,
                        protocol: Some((*proto).into()),
                        node_port: (*np != 0).then_some(*np),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

fn etp_local(mut svc: Service, health: i32) -> Service {
    let spec = svc.spec.as_mut().unwrap();
    spec.external_traffic_policy = Some("Local".into());
    spec.health_check_node_port = (health != 0).then_some(health);
    svc
}

/// The Service as the API would show it after the writes.
fn merged(svc: &Service, writes: &[Write]) -> Service {
    let mut out = svc.clone();
    for w in writes {
        if let Write::Apply(Apply { patch, .. }) = w {
            merge_service(&mut out, serde_json::from_value(patch.clone()).unwrap());
        }
    }
    out
}

fn node_ports(svc: &Service) -> Vec<i32> {
    svc.spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .map(|p| p.node_port.unwrap_or(0))
        .collect()
}

fn health(svc: &Service) -> i32 {
    svc.spec
        .as_ref()
        .unwrap()
        .health_check_node_port
        .unwrap_or(0)
}

/// (warning, reason) of each Event.
fn events(writes: &[Write]) -> Vec<(bool, String)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Event(e) => Some((e.warning, e.reason.clone())),
            _ => None,
        })
        .collect()
}

#[track_caller]
fn assert_condition(svc: &Service, status: &str, reason: &str) {
    let c = service_condition(svc, CONDITION_NODE_PORT_ALLOCATED).expect("condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        (status, reason),
        "{c:?}"
    );
}

#[test]
fn a_node_port_service_gets_one_port_per_port_from_the_dynamic_band() {
    let mut a = alloc();
    let svc = mk_svc("web", "NodePort", &[(80, "TCP", 0), (443, "TCP", 0)], 0);
    let writes = a.apply(&svc);
    let got = merged(&svc, &writes);
    let ports = node_ports(&got);
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], ports[1]);
    for p in &ports {
        assert!((30086..=32767).contains(p), "{p} outside the dynamic band");
    }
    assert_eq!(events(&writes), [(false, "NodePortAllocated".to_owned())]);
    assert!(service_condition(&got, CONDITION_NODE_PORT_ALLOCATED).is_none());
    // Seen again with its ports: nothing to write.
    assert!(a.apply(&got).is_empty());
}

#[test]
fn tcp_and_udp_on_one_port_number_share_a_node_port() {
    let mut a = alloc();
    let svc = mk_svc("dns", "NodePort", &[(53, "TCP", 0), (53, "UDP", 0)], 0);
    let got = merged(&svc, &a.apply(&svc));
    let ports = node_ports(&got);
    assert_eq!(ports[0], ports[1], "{ports:?}");
    assert_ne!(ports[0], 0);
    let protocols: Vec<_> = got
        .spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .map(|p| p.protocol.clone().unwrap())
        .collect();
    assert_eq!(protocols, ["TCP", "UDP"], "both entries stay");
    // Named on the second entry only: both use it.
    let svc = mk_svc("dns2", "NodePort", &[(53, "TCP", 0), (53, "UDP", 30053)], 1);
    assert_eq!(node_ports(&merged(&svc, &a.apply(&svc))), [30053, 30053]);
}

#[test]
fn a_requested_port_that_is_taken_or_out_of_range_is_refused_and_held_nowhere() {
    let mut a = alloc();
    let first = mk_svc("first", "NodePort", &[(80, "TCP", 30080)], 0);
    assert_eq!(node_ports(&merged(&first, &a.apply(&first))), [30080]);

    let twin = mk_svc("twin", "NodePort", &[(80, "TCP", 30080), (81, "TCP", 0)], 1);
    let writes = a.apply(&twin);
    let got = merged(&twin, &writes);
    assert_eq!(node_ports(&got), [0, 0], "all or nothing");
    assert_condition(&got, "False", "DuplicateNodePort");
    assert_eq!(events(&writes), [(true, "DuplicateNodePort".to_owned())]);
    assert_eq!(
        got.metadata.annotations.as_ref().unwrap()[annotations::REQUESTED_NODE_PORTS],
        "80/TCP=30080"
    );
    assert_eq!(a.holder(30080), Some(&Key::new("default", "first")));
    assert!(a.held(&Key::new("default", "twin")).is_empty());
    // Its own echo changes nothing and says nothing again.
    let echo = a.apply(&got);
    assert!(events(&echo).is_empty(), "{echo:?}");
    assert_eq!(node_ports(&merged(&got, &echo)), [0, 0]);

    let out = mk_svc("out", "NodePort", &[(80, "TCP", 8080)], 2);
    let got_out = merged(&out, &a.apply(&out));
    assert_condition(&got_out, "False", "NodePortOutOfRange");
    assert_eq!(node_ports(&got_out), [0]);

    // The holder goes: the refused request is granted, from the annotation.
    let writes = a.delete(&first);
    let granted = merged(&got, &writes);
    assert_eq!(node_ports(&granted)[0], 30080);
    assert_condition(&granted, "True", "Allocated");
}

#[test]
fn node_ports_are_only_for_node_port_and_load_balancer_services() {
    let mut a = alloc();
    let plain = mk_svc("plain", "ClusterIP", &[(80, "TCP", 0)], 0);
    assert!(a.apply(&plain).is_empty());
    let bad = mk_svc("bad", "ClusterIP", &[(80, "TCP", 30080)], 1);
    let got = merged(&bad, &a.apply(&bad));
    assert_condition(&got, "False", "NodePortNotAllocated");
    assert_eq!(node_ports(&got), [0]);
    assert_eq!(a.holder(30080), None);

    // allocateLoadBalancerNodePorts: false keeps what is asked, adds none.
    let mut lb = mk_svc(
        "lb",
        "LoadBalancer",
        &[(80, "TCP", 0), (443, "TCP", 30443)],
        2,
    );
    lb.spec.as_mut().unwrap().allocate_load_balancer_node_ports = Some(false);
    assert_eq!(node_ports(&merged(&lb, &a.apply(&lb))), [0, 30443]);
}

#[test]
fn an_external_traffic_policy_local_load_balancer_gets_a_health_check_node_port() {
    let mut a = alloc();
    let svc = etp_local(mk_svc("lb", "LoadBalancer", &[(80, "TCP", 0)], 0), 0);
    let got = merged(&svc, &a.apply(&svc));
    let (np, hc) = (node_ports(&got)[0], health(&got));
    assert!(np != 0 && hc != 0 && np != hc, "{np} {hc}");
    assert_eq!(a.held(&Key::new("default", "lb")).len(), 2);

    let asks = etp_local(mk_svc("lb2", "LoadBalancer", &[(80, "TCP", 0)], 1), 32000);
    assert_eq!(health(&merged(&asks, &a.apply(&asks))), 32000);
    let taken = etp_local(mk_svc("lb3", "LoadBalancer", &[(80, "TCP", 0)], 2), 32000);
    let got = merged(&taken, &a.apply(&taken));
    assert_condition(&got, "False", "DuplicateNodePort");
    assert_eq!((node_ports(&got), health(&got)), (vec![0], 0));

    let cluster = etp_local(mk_svc("np", "NodePort", &[(80, "TCP", 0)], 3), 31000);
    let got = merged(&cluster, &a.apply(&cluster));
    assert_condition(&got, "False", "NodePortNotAllocated");
}

#[test]
fn a_restart_gives_every_service_the_ports_it_had_the_oldest_first() {
    let mut a = alloc();
    let svcs: Vec<Service> = (0..50)
        .map(|i| mk_svc(&format!("s{i}"), "NodePort", &[(80, "TCP", 0)], i))
        .collect();
    let before: Vec<Service> = svcs.iter().map(|s| merged(s, &a.apply(s))).collect();
    // A newcomer asks, by number, for the port of s7, and is refused.
    let wanted = node_ports(&before[7])[0];
    let thief = mk_svc("thief", "NodePort", &[(80, "TCP", wanted)], 100);
    let thief = merged(&thief, &a.apply(&thief));
    assert_condition(&thief, "False", "DuplicateNodePort");

    let mut fresh = alloc();
    let mut all: Vec<&Service> = before.iter().collect();
    all.push(&thief);
    all.reverse();
    let writes = fresh.reset(all);
    let spec_writes = writes
        .iter()
        .filter(|w| matches!(w, Write::Apply(Apply { status: false, .. })))
        .count();
    assert_eq!(spec_writes, 0, "nothing moves: {writes:#?}");
    for s in &before {
        let key = Key::of(s);
        assert_eq!(fresh.held(&key), [node_ports(s)[0] as u16]);
    }
    assert_eq!(
        fresh.holder(wanted as u16),
        Some(&Key::new("default", "s7"))
    );
    assert!(fresh.problem(&Key::new("default", "thief")).is_some());
}

/// The ports a Service names (its node ports, its health check port) are
/// taken before any chosen at random for it, so a random choice never
/// takes one: with room for exactly its three ports, every seed fits.
#[test]
fn a_services_named_ports_are_taken_before_its_random_ones() {
    for seed in 0..64 {
        let mut a = NodePortAllocator::new("32000-32002".parse().unwrap()).with_seed(seed);
        let svc = etp_local(
            mk_svc(
                "lb",
                "LoadBalancer",
                &[(80, "TCP", 0), (81, "TCP", 32001)],
                0,
            ),
            32000,
        );
        let got = merged(&svc, &a.apply(&svc));
        assert_eq!(
            (node_ports(&got), health(&got)),
            (vec![32002, 32001], 32000),
            "seed {seed}"
        );
    }
}
