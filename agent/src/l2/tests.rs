#![allow(clippy::unwrap_used)]
use super::*;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use portico_crds::{IPPoolSpec, L2AnnouncementSpec};
use portico_dataplane::l2::Responder;
use portico_testkit::objects;
use std::time::Duration;

fn mk_node(name: &str, ready: bool, labels: &[(&str, &str)]) -> Node {
    labels
        .iter()
        .fold(objects::node(name).ready(ready), |n, (k, v)| n.label(k, v))
        .build()
}

fn mk_pool(name: &str, addresses: &[&str]) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            addresses: addresses.iter().map(|s| (*s).into()).collect(),
            ..Default::default()
        },
    )
}

fn mk_svc(name: &str, ips: &[&str], local: bool, labels: &[(&str, &str)]) -> Service {
    let svc = objects::service("default", name)
        .type_("LoadBalancer")
        .cluster_ip("10.96.0.10")
        .external_traffic_local(local)
        .port(80, "TCP");
    let svc = labels.iter().fold(svc, |s, (k, v)| s.label(k, v));
    ips.iter().fold(svc, |s, ip| s.ingress(ip)).build()
}

fn mk_slice(svc: &str, nodes: &[&str]) -> EndpointSlice {
    let slice = objects::slice("default", &format!("{svc}-1"), svc).port(8080);
    nodes
        .iter()
        .enumerate()
        .fold(slice, |s, (i, n)| {
            s.endpoint(&format!("10.244.{}.2", i + 1), Some(n), Some(true))
        })
        .build()
}

fn mk_l2(name: &str, spec: L2AnnouncementSpec) -> L2Announcement {
    L2Announcement::new(name, spec)
}

fn catalog(services: &[Service], slices: &[EndpointSlice]) -> Catalog {
    let mut c = Catalog::new();
    c.reset_services(services.iter());
    c.reset_slices(slices.iter());
    c
}

fn owner(plan: &Plan, ip: &str) -> Option<String> {
    plan.addresses[&ip.parse::<IpAddr>().unwrap()].owner.clone()
}

#[test]
fn one_ready_node_owns_each_address_and_not_ready_nodes_never_do() {
    let nodes = [
        mk_node("n1", true, &[]),
        mk_node("n2", true, &[]),
        mk_node("n3", false, &[]),
    ];
    let pools = [mk_pool("lab", &["192.168.56.60-192.168.56.70"])];
    let services: Vec<Service> = (0..8)
        .map(|i| {
            mk_svc(
                &format!("s{i}"),
                &[&format!("192.168.56.{}", 60 + i)],
                false,
                &[],
            )
        })
        .chain([mk_svc("elsewhere", &["203.0.113.9"], false, &[])])
        .collect();
    let cat = catalog(&services, &[]);
    let l2 = [mk_l2("all", L2AnnouncementSpec::default())];
    let plan = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
    assert_eq!(plan.addresses.len(), 8, "only pool addresses: {plan:?}");
    let owners: BTreeSet<String> = plan
        .addresses
        .values()
        .filter_map(|p| p.owner.clone())
        .collect();
    assert_eq!(owners, ["n1".to_owned(), "n2".to_owned()].into());
    assert!(plan.addresses.values().all(|p| p.interfaces.auto));
    assert_eq!(
        plan.announcements["all"],
        AnnouncementStatus {
            ready: true,
            reason: "Valid",
            message: String::new(),
            announced: 8
        }
    );
    let n1: Vec<_> = plan.owned_by("n1").collect();
    assert!(!n1.is_empty());
    // n1 goes NotReady: n2 owns everything.
    let nodes = [
        mk_node("n1", false, &[]),
        mk_node("n2", true, &[]),
        mk_node("n3", false, &[]),
    ];
    let after = super::plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
    assert!(
        after
            .addresses
            .values()
            .all(|p| p.owner.as_deref() == Some("n2"))
    );
}

#[test]
fn selectors_pick_pools_services_and_nodes() {
    let nodes = [
        mk_node("edge", true, &[("edge", "true")]),
        mk_node("core", true, &[]),
        mk_node(
            "excluded",
            true,
            &[("edge", "true"), (EXCLUDE_FROM_LOAD_BALANCERS, "")],
        ),
    ];
    let mut labelled = mk_pool("labelled", &["192.168.57.0/28"]);
    labelled.metadata.labels = Some([("announce".to_owned(), "l2".to_owned())].into());
    let pools = [
        mk_pool("lab", &["192.168.56.60-192.168.56.70"]),
        labelled,
        mk_pool("quiet", &["192.168.58.0/28"]),
    ];
    let services = [
        mk_svc("web", &["192.168.56.60"], false, &[("exposure", "lan")]),
        mk_svc("internal", &["192.168.56.61"], false, &[]),
        mk_svc("labelled", &["192.168.57.1"], false, &[("exposure", "lan")]),
        mk_svc("quiet", &["192.168.58.1"], false, &[("exposure", "lan")]),
    ];
    let cat = catalog(&services, &[]);
    let sel = |k: &str, v: &str| LabelSelector {
        match_labels: Some([(k.to_owned(), v.to_owned())].into()),
        ..Default::default()
    };
    let l2 = [mk_l2(
        "edge",
        L2AnnouncementSpec {
            ip_pools: vec!["lab".into()],
            ip_pool_selector: Some(sel("announce", "l2")),
            service_selector: Some(sel("exposure", "lan")),
            node_selector: Some(sel("edge", "true")),
            interfaces: vec!["eth*".into()],
        },
    )];
    let plan = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
    let announced: Vec<String> = plan.addresses.keys().map(|a| a.to_string()).collect();
    assert_eq!(announced, ["192.168.56.60", "192.168.57.1"]);
    assert_eq!(owner(&plan, "192.168.56.60").as_deref(), Some("edge"));
    let p = &plan.addresses[&"192.168.56.60".parse::<IpAddr>().unwrap()];
    assert!(!p.interfaces.auto);
    assert_eq!(p.interfaces.patterns, ["eth*".to_owned()].into());
    assert_eq!(
        plan.announced_by(&Key::new("default", "web")).as_deref(),
        Some("edge")
    );
    assert_eq!(plan.announced_by(&Key::new("default", "internal")), None);
}

#[test]
fn external_traffic_policy_local_needs_a_ready_local_endpoint() {
    let nodes = [
        mk_node("n1", true, &[]),
        mk_node("n2", true, &[]),
        mk_node("n3", true, &[]),
    ];
    let pools = [mk_pool("lab", &["192.168.56.0/24"])];
    let services: Vec<Service> = (0..20)
        .map(|i| {
            mk_svc(
                &format!("s{i}"),
                &[&format!("192.168.56.{}", 60 + i)],
                true,
                &[],
            )
        })
        .collect();
    let slices: Vec<EndpointSlice> = (0..20)
        .map(|i| mk_slice(&format!("s{i}"), &["n3"]))
        .collect();
    let cat = catalog(&services, &slices);
    let l2 = [mk_l2("all", L2AnnouncementSpec::default())];
    let plan = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
    assert!(
        plan.addresses
            .values()
            .all(|p| p.owner.as_deref() == Some("n3"))
    );
    // No local endpoint anywhere: nobody announces, and it says so.
    let cat = catalog(&services, &[]);
    let plan = super::plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
    assert!(plan.addresses.values().all(|p| p.owner.is_none()));
    assert_eq!(plan.announcements["all"].announced, 0);
}

#[test]
fn bad_announcements_get_a_reason_and_the_rest_keep_working() {
    let nodes = [mk_node("n1", true, &[])];
    let pools = [mk_pool("lab", &["192.168.56.60-192.168.56.70"])];
    let services = [mk_svc("web", &["192.168.56.60"], false, &[])];
    let cat = catalog(&services, &[]);
    let bad_selector = LabelSelector {
        match_expressions: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "x".into(),
                operator: "Sometimes".into(),
                values: None,
            },
        ]),
        ..Default::default()
    };
    let l2 = [
        mk_l2(
            "bad-selector",
            L2AnnouncementSpec {
                node_selector: Some(bad_selector),
                ..Default::default()
            },
        ),
        mk_l2(
            "bad-interface",
            L2AnnouncementSpec {
                interfaces: vec!["eth 0".into()],
                ..Default::default()
            },
        ),
        mk_l2(
            "unknown-pool",
            L2AnnouncementSpec {
                ip_pools: vec!["lab".into(), "nope".into()],
                ..Default::default()
            },
        ),
    ];
    let plan = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
    assert_eq!(plan.announcements["bad-selector"].reason, "InvalidSelector");
    assert_eq!(
        plan.announcements["bad-interface"].reason,
        "InvalidInterface"
    );
    let unknown = &plan.announcements["unknown-pool"];
    assert_eq!(
        (unknown.ready, unknown.reason, unknown.announced),
        (false, "UnknownPool", 1)
    );
    assert!(unknown.message.contains("nope"), "{}", unknown.message);
    assert_eq!(owner(&plan, "192.168.56.60").as_deref(), Some("n1"));
}

#[test]
fn statuses_are_written_when_they_change_and_keep_their_transition_time() {
    let nodes = [mk_node("n1", true, &[])];
    let pools = [mk_pool("lab", &["192.168.56.60-192.168.56.70"])];
    let services = [mk_svc("web", &["192.168.56.60"], false, &[])];
    let cat = catalog(&services, &[]);
    let mut l2 = vec![
        mk_l2("ok", L2AnnouncementSpec::default()),
        mk_l2(
            "bad",
            L2AnnouncementSpec {
                interfaces: vec!["a/b".into()],
                ..Default::default()
            },
        ),
    ];
    let p = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
    let writes = status_writes(&p, &l2);
    assert_eq!(writes.len(), 2);
    let status = |w: &portico_controllers::Write| match w {
        portico_controllers::Write::Apply(a) => {
            assert!(a.status);
            assert_eq!(
                a.target.kind,
                portico_controllers::TargetKind::L2Announcement
            );
            a.patch["status"].clone()
        }
        other => panic!("{other:?}"),
    };
    let bad = status(&writes[1]);
    assert_eq!(bad["conditions"][0]["reason"], "InvalidInterface");
    assert_eq!(bad["announced"], 0);
    let ok = status(&writes[0]);
    assert_eq!(ok["conditions"][0]["status"], "True");
    assert_eq!(ok["announced"], 1);
    // Stored as written: nothing more to write.
    for (a, w) in l2.iter_mut().zip(&writes) {
        a.status = Some(serde_json::from_value(status(w)).unwrap());
    }
    assert!(status_writes(&p, &l2).is_empty());
    // The count changes, the condition holds: its time is kept.
    let before = l2[1].status.as_ref().unwrap().conditions[0]
        .last_transition_time
        .clone();
    let nodes = [mk_node("n1", false, &[])];
    let p = plan(&l2, &pools, &services, &nodes, &cat, &node_ready);
    let writes = status_writes(&p, &l2);
    assert_eq!(writes.len(), 1);
    let ok = status(&writes[0]);
    assert_eq!(ok["announced"], 0);
    assert_eq!(
        ok["conditions"][0]["lastTransitionTime"],
        serde_json::to_value(&before).unwrap()
    );
}

#[test]
fn rings_are_kept_while_their_node_set_is_used_and_dropped_after() {
    let nodes = [mk_node("n1", true, &[]), mk_node("n2", true, &[])];
    let pools = [mk_pool("lab", &["192.168.56.0/24"])];
    let services = [
        mk_svc("a", &["192.168.56.60"], false, &[]),
        mk_svc("b", &["192.168.56.61"], true, &[]),
    ];
    let slices = [mk_slice("b", &["n2"])];
    let cat = catalog(&services, &slices);
    let l2 = [mk_l2("all", L2AnnouncementSpec::default())];
    let mut rings = Rings::default();
    let first = plan_with(
        &l2,
        &pools,
        &services,
        &nodes,
        &cat,
        &node_ready,
        &mut rings,
    );
    // One ring for {n1, n2}, one for the ETP Local Service's {n2}.
    assert_eq!(rings.0.len(), 2);
    let again = plan_with(
        &l2,
        &pools,
        &services,
        &nodes,
        &cat,
        &node_ready,
        &mut rings,
    );
    assert_eq!(first, again);
    assert_eq!(
        first,
        plan(&l2, &pools, &services, &nodes, &cat, &node_ready)
    );
    let nodes = [mk_node("n1", true, &[]), mk_node("n2", false, &[])];
    plan_with(
        &l2,
        &pools,
        &services,
        &nodes,
        &cat,
        &node_ready,
        &mut rings,
    );
    let sets: Vec<&Vec<String>> = rings.0.keys().collect();
    assert_eq!(sets, [&Vec::<String>::new(), &vec!["n1".to_owned()]]);

    // Only the slices of ETP Local Services can move an address.
    let index = L2Index::default();
    assert!(index.slice_matters(&cat, &slices[0]));
    assert!(!index.slice_matters(&cat, &mk_slice("a", &["n1"])));
    assert!(index.slice_matters(&cat, &mk_slice("unknown", &["n1"])));
}

#[test]
fn addresses_of_one_service_on_different_nodes_are_listed_in_the_annotation() {
    let mut plan = Plan::default();
    let key = Key::new("default", "web");
    for (a, o) in [("192.168.56.60", "n1"), ("fd00:56::60", "n2")] {
        let address: IpAddr = a.parse().unwrap();
        plan.addresses.insert(
            address,
            Planned {
                address,
                service: key.clone(),
                owner: Some(o.into()),
                interfaces: Interfaces::default(),
            },
        );
    }
    assert_eq!(
        plan.announced_by(&key).as_deref(),
        Some("192.168.56.60=n1,fd00:56::60=n2")
    );
}

fn one_link() -> Vec<Link> {
    vec![Link {
        name: "eth9".into(),
        mac: [2, 0, 0, 0, 0, 9],
        networks: vec!["192.168.56.31/24".parse().unwrap()],
        usable: true,
    }]
}

fn cannot_open(_: &Link, _: Duration) -> std::io::Result<Responder> {
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "no CAP_NET_RAW",
    ))
}

/// An address planned on this node whose responder cannot be opened is
/// not answered: it is no takeover, so no `announced-by` annotation or
/// Event names a node that does not answer ARP.
#[test]
fn a_responder_that_cannot_open_makes_no_takeover() {
    let address: IpAddr = "192.168.56.60".parse().unwrap();
    let plan = Plan {
        addresses: BTreeMap::from([(
            address,
            Planned {
                address,
                service: Key::new("default", "web"),
                owner: Some("n1".into()),
                interfaces: Interfaces {
                    patterns: BTreeSet::new(),
                    auto: true,
                },
            },
        )]),
        announcements: BTreeMap::new(),
    };
    let mut agent = L2Agent::new("n1", Duration::ZERO).with_io(one_link, cannot_open);
    assert_eq!(agent.apply(plan.clone()), Vec::new());
    assert!(agent.announced().is_empty());
    assert_eq!(agent.apply(plan), Vec::new(), "nor the next time");
}
