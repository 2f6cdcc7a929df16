//! LoadBalancer IPAM tests.
//!
//! Address conventions: the lab pool `lab` is 192.168.56.60-192.168.56.70,
//! a second pool `extra` 192.168.57.0/28, IPv6 pool `v6` fd00:56::/120; the
//! service range is 10.96.0.0/12 and the pod network 20.96.0.0/12 (the
//! mission's lab). `Sim` plays the API server: it merges status writes back
//! into the objects and feeds them to the controller, as a watch would.

use super::*;
use crate::k8s::KeyOf;
use crate::k8s::{ServicePort, ServiceSpec};
use k8s_openapi::DeepMerge;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

mod metallb;

fn net() -> NetworkConfig {
    NetworkConfig::parse("10.96.0.0/12", "20.96.0.0/12").unwrap()
}

fn mk_pool(name: &str, addresses: &[&str], age: i64) -> IPPool {
    let mut p = IPPool::new(
        name,
        IPPoolSpec {
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    );
    p.metadata.creation_timestamp =
        Some(Time(Timestamp::from_second(1_700_000_000 + age).unwrap()));
    p
}

fn with_pool(mut p: IPPool, f: impl FnOnce(&mut IPPoolSpec)) -> IPPool {
    f(&mut p.spec);
    p
}

fn mk_lb(ns: &str, name: &str, age: i64) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            creation_timestamp: Some(Time(Timestamp::from_second(1_700_000_000 + age).unwrap())),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some([("app".to_owned(), name.to_owned())].into()),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
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

fn annotated(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    svc
}

fn labelled(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    svc
}

fn on_port(svc: Service, port: i32) -> Service {
    with_spec(svc, |s| {
        s.ports = Some(vec![ServicePort {
            port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }])
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Sim {
    ctrl: LbIpamController,
    services: BTreeMap<Key, Service>,
    pools: BTreeMap<String, IPPool>,
    events: Vec<(bool, String, String)>,
}

impl Sim {
    fn new() -> Self {
        Sim::with(Config::default())
    }

    fn with(cfg: Config) -> Self {
        let mut ctrl = LbIpamController::new(cfg, &net(), LbIpamMetrics::default());
        ctrl.reset_pools(std::iter::empty());
        ctrl.reset_services(std::iter::empty());
        ctrl.reset_namespaces(std::iter::empty());
        Sim {
            ctrl,
            services: BTreeMap::new(),
            pools: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    fn pool(&mut self, p: IPPool) -> &mut Self {
        self.ctrl.apply_pool(&p);
        self.pools.insert(p.metadata.name.clone().unwrap(), p);
        self
    }

    fn delete_pool(&mut self, name: &str) {
        let p = self.pools.remove(name).unwrap();
        self.ctrl.delete_pool(&p);
    }

    fn svc(&mut self, s: Service) -> &mut Self {
        let key = Key::of(&s);
        // Keep the status the "API" holds, as an update of the spec would.
        let mut s = s;
        if let Some(old) = self.services.get(&key) {
            s.status = old.status.clone();
        }
        self.ctrl.apply_service(&s);
        self.services.insert(key, s);
        self
    }

    fn delete(&mut self, ns: &str, name: &str) {
        let s = self.services.remove(&Key::new(ns, name)).unwrap();
        self.ctrl.delete_service(&s);
    }

    /// Flushes and merges writes back until quiet; returns the first
    /// flush's writes.
    #[track_caller]
    fn settle(&mut self) -> Vec<Write> {
        let first = self.ctrl.flush();
        let mut writes = first.clone();
        for _ in 0..6 {
            if writes.is_empty() {
                return first;
            }
            for w in writes {
                self.carry_out(w);
            }
            writes = self.ctrl.flush();
        }
        panic!("the controller keeps writing: {writes:#?}");
    }

    fn carry_out(&mut self, w: Write) {
        match w {
            Write::Apply(Apply { target, patch, .. }) => match target.kind {
                TargetKind::Service => {
                    let key = Key::new(target.namespace, target.name);
                    let svc = self.services.get_mut(&key).unwrap();
                    svc.merge_from(serde_json::from_value::<Service>(patch).unwrap());
                    self.ctrl.apply_service(svc);
                }
                TargetKind::IPPool => {
                    let p = self.pools.get_mut(&target.name).unwrap();
                    let status: IPPoolStatus =
                        serde_json::from_value(patch["status"].clone()).unwrap();
                    p.status = Some(status);
                    self.ctrl.apply_pool(p);
                }
                TargetKind::EndpointSlice
                | TargetKind::ClusterIPRange
                | TargetKind::L2Announcement => {
                    panic!("not written by LB IPAM")
                }
            },
            Write::Event(e) => self.events.push((e.warning, e.reason, e.note)),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn ingress(&self, ns: &str, name: &str) -> Vec<String> {
        status_ips(&self.services[&Key::new(ns, name)])
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[track_caller]
    fn condition(&self, ns: &str, name: &str) -> (String, String, String) {
        let c = service_condition(&self.services[&Key::new(ns, name)], CONDITION_IP_ALLOCATED)
            .expect("condition");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn pool_status(&self, name: &str) -> IPPoolStatus {
        self.pools[name].status.clone().unwrap_or_default()
    }

    fn pool_condition(&self, pool: &str, type_: &str) -> (String, String) {
        let s = self.pool_status(pool);
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.message.clone())
    }

    fn take_events(&mut self) -> Vec<(bool, String, String)> {
        std::mem::take(&mut self.events)
    }
}

// ---- assignment ------------------------------------------------------------

#[test]
fn the_lab_service_gets_the_first_address_of_the_pool_with_status_condition_and_event() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    sim.svc(mk_lb("default", "api-tester-lb", 0));
    sim.settle();
    assert_eq!(sim.ingress("default", "api-tester-lb"), ["192.168.56.60"]);
    let ingress = &sim.services[&Key::new("default", "api-tester-lb")]
        .status
        .clone()
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap()[0];
    assert_eq!(ingress.ip_mode.as_deref(), Some("VIP"));
    assert_eq!(
        sim.condition("default", "api-tester-lb"),
        (
            "True".into(),
            "IPAllocated".into(),
            "192.168.56.60 from pool lab".into()
        )
    );
    assert_eq!(
        sim.take_events(),
        [(
            false,
            "IPAllocated".into(),
            "assigned 192.168.56.60 from pool lab".into()
        )]
    );
    let st = sim.pool_status("lab");
    assert_eq!((st.used, st.free), (1, 10));
    assert_eq!(
        st.ipv4,
        Some(FamilyUsage {
            total: 11,
            used: 1,
            free: 10
        })
    );
    assert_eq!(sim.pool_condition("lab", "Ready").0, "True");
    assert_eq!(sim.pool_condition("lab", "Conflict").0, "False");
    // Nothing changes: nothing is written.
    sim.svc(mk_lb("default", "api-tester-lb", 0));
    assert!(sim.settle().is_empty());
}

#[test]
fn only_load_balancers_of_portico_class_are_served() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    sim.svc(with_spec(mk_lb("default", "clusterip", 0), |s| {
        s.type_ = Some("ClusterIP".into())
    }));
    sim.svc(with_spec(mk_lb("default", "other", 1), |s| {
        s.load_balancer_class = Some("example.com/lb".into())
    }));
    sim.svc(with_spec(mk_lb("default", "ours", 2), |s| {
        s.load_balancer_class = Some("portico.dev/lb".into())
    }));
    sim.svc(mk_lb("default", "unset", 3));
    sim.settle();
    assert!(sim.ingress("default", "clusterip").is_empty());
    assert!(sim.ingress("default", "other").is_empty());
    assert_eq!(sim.ingress("default", "ours"), ["192.168.56.60"]);
    assert_eq!(sim.ingress("default", "unset"), ["192.168.56.61"]);

    let mut strict = Sim::with(Config {
        default_class: false,
    });
    strict.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    strict.svc(mk_lb("default", "unset", 0));
    strict.settle();
    assert!(
        strict.ingress("default", "unset").is_empty(),
        "not the default class: no class, no address"
    );
}

#[test]
fn a_service_that_stops_being_a_load_balancer_releases_its_address() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    sim.svc(mk_lb("default", "web", 0));
    sim.settle();
    sim.take_events();
    sim.svc(with_spec(mk_lb("default", "web", 0), |s| {
        s.type_ = Some("NodePort".into())
    }));
    sim.settle();
    assert!(sim.ingress("default", "web").is_empty());
    assert_eq!(sim.condition("default", "web").0, "False");
    assert_eq!(
        sim.take_events()[0].2,
        "released 192.168.56.60 from pool lab: the Service is of type NodePort"
    );
    assert_eq!(sim.pool_status("lab").used, 0);
}

#[test]
fn selectors_priority_and_auto_assign_choose_the_pool() {
    let mut sim = Sim::new();
    sim.pool(with_pool(mk_pool("cheap", &["192.168.57.0/28"], 0), |s| {
        s.priority = 10
    }));
    sim.pool(with_pool(
        mk_pool("preferred", &["192.168.56.60-192.168.56.70"], 1),
        |s| s.priority = 1,
    ));
    sim.pool(with_pool(mk_pool("team-a", &["192.168.58.0/28"], 2), |s| {
        s.priority = 0;
        s.service_selector = Some(LabelSelector {
            match_labels: Some([("team".to_owned(), "a".to_owned())].into()),
            ..Default::default()
        });
    }));
    sim.pool(with_pool(mk_pool("manual", &["192.168.59.0/28"], 3), |s| {
        s.priority = -5;
        s.auto_assign = false;
    }));
    sim.svc(mk_lb("default", "plain", 0));
    sim.svc(labelled(mk_lb("default", "teamed", 1), "team", "a"));
    sim.svc(annotated(
        mk_lb("default", "asks-manual", 2),
        annotations::IP_POOL,
        "manual",
    ));
    sim.svc(annotated(
        mk_lb("default", "asks-manual-ip", 3),
        annotations::LOAD_BALANCER_IPS,
        "192.168.59.9",
    ));
    sim.settle();
    assert_eq!(
        sim.ingress("default", "plain"),
        ["192.168.56.60"],
        "lowest priority that selects it"
    );
    assert_eq!(sim.ingress("default", "teamed"), ["192.168.58.0"]);
    assert_eq!(sim.ingress("default", "asks-manual"), ["192.168.59.0"]);
    assert_eq!(sim.ingress("default", "asks-manual-ip"), ["192.168.59.9"]);
    assert_eq!(sim.pool_status("cheap").used, 0);
}

#[test]
fn namespace_selectors_follow_namespace_labels() {
    let mut sim = Sim::new();
    sim.pool(with_pool(
        mk_pool("prod", &["192.168.56.60-192.168.56.70"], 0),
        |s| {
            s.namespace_selector = Some(LabelSelector {
                match_labels: Some([("env".to_owned(), "prod".to_owned())].into()),
                ..Default::default()
            });
        },
    ));
    sim.svc(mk_lb("shop", "web", 0));
    sim.settle();
    assert_eq!(sim.condition("shop", "web").1, "NoMatchingPool");
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            labels: Some([("env".to_owned(), "prod".to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    sim.ctrl.apply_namespace(&ns);
    sim.settle();
    assert_eq!(sim.ingress("shop", "web"), ["192.168.56.60"]);
}

#[test]
fn requested_addresses_are_honoured_or_refused_with_the_reason() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    sim.svc(annotated(
        mk_lb("default", "a", 0),
        annotations::LOAD_BALANCER_IPS,
        "192.168.56.65",
    ));
    sim.svc(with_spec(mk_lb("default", "legacy", 1), |s| {
        s.load_balancer_ip = Some("192.168.56.66".into())
    }));
    sim.svc(annotated(
        mk_lb("default", "taken", 2),
        annotations::LOAD_BALANCER_IPS,
        "192.168.56.65",
    ));
    sim.svc(annotated(
        mk_lb("default", "outside", 3),
        annotations::LOAD_BALANCER_IPS,
        "10.0.0.1",
    ));
    sim.svc(annotated(
        mk_lb("default", "garbage", 4),
        annotations::LOAD_BALANCER_IPS,
        "banana",
    ));
    sim.svc(annotated(
        mk_lb("default", "two-v4", 5),
        annotations::LOAD_BALANCER_IPS,
        "192.168.56.67,192.168.56.68",
    ));
    sim.settle();
    assert_eq!(sim.ingress("default", "a"), ["192.168.56.65"]);
    assert_eq!(sim.ingress("default", "legacy"), ["192.168.56.66"]);
    let (status, reason, message) = sim.condition("default", "taken");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RequestedIPInUse")
    );
    assert!(message.contains("held by Service default/a"), "{message}");
    assert_eq!(
        sim.condition("default", "outside").1,
        "RequestedIPNotInPool"
    );
    assert_eq!(sim.condition("default", "garbage").1, "InvalidRequest");
    assert!(
        sim.condition("default", "two-v4")
            .2
            .contains("at most one per family")
    );
    // The holder leaves: the waiting Service gets its address.
    sim.delete("default", "a");
    sim.settle();
    assert_eq!(sim.ingress("default", "taken"), ["192.168.56.65"]);
    assert_eq!(sim.condition("default", "taken").0, "True");
}

#[test]
fn services_share_an_address_under_a_sharing_key_when_ports_do_not_collide() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    let key = annotations::SHARING_KEY;
    sim.svc(annotated(
        on_port(mk_lb("default", "http", 0), 80),
        key,
        "web",
    ));
    sim.svc(annotated(
        on_port(mk_lb("default", "https", 1), 443),
        key,
        "web",
    ));
    sim.svc(annotated(
        on_port(mk_lb("default", "clash", 2), 80),
        key,
        "web",
    ));
    sim.svc(annotated(
        annotated(on_port(mk_lb("default", "clash-asks", 3), 80), key, "web"),
        annotations::LOAD_BALANCER_IPS,
        "192.168.56.60",
    ));
    sim.svc(annotated(
        on_port(mk_lb("other", "elsewhere", 4), 8443),
        key,
        "web",
    ));
    sim.settle();
    assert_eq!(sim.ingress("default", "http"), ["192.168.56.60"]);
    assert_eq!(sim.ingress("default", "https"), ["192.168.56.60"], "shared");
    assert_eq!(
        sim.ingress("default", "clash"),
        ["192.168.56.61"],
        "port 80 is taken on .60: its own address"
    );
    let (status, reason, message) = sim.condition("default", "clash-asks");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RequestedIPInUse")
    );
    assert!(message.contains("both use port 80/TCP"), "{message}");
    assert_eq!(
        sim.ingress("other", "elsewhere"),
        ["192.168.56.62"],
        "another namespace never shares"
    );
    assert_eq!(sim.ctrl.holders(ip("192.168.56.60")).len(), 2);
    // A sharer that drops its key while keeping a clashing configuration
    // moves; the other keeps the address.
    sim.svc(annotated(
        on_port(mk_lb("default", "https2", 5), 8443),
        key,
        "web",
    ));
    sim.settle();
    assert_eq!(sim.ingress("default", "https2"), ["192.168.56.60"]);
    sim.svc(on_port(mk_lb("default", "https2", 5), 8443));
    sim.settle();
    assert_eq!(
        sim.ingress("default", "https2"),
        ["192.168.56.63"],
        "no key, no sharing"
    );
    assert_eq!(sim.ingress("default", "https"), ["192.168.56.60"]);
    sim.delete("default", "https2");
    sim.settle();
    // One sharer leaving keeps the address for the other.
    sim.delete("default", "http");
    sim.settle();
    assert_eq!(sim.ingress("default", "https"), ["192.168.56.60"]);
    assert_eq!(sim.pool_status("lab").used, 3);
}

#[test]
fn exhaustion_is_reported_and_a_release_serves_the_waiting_service() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("tiny", &["192.168.56.60-192.168.56.61"], 0));
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        sim.svc(mk_lb("default", n, i as i64));
    }
    sim.settle();
    assert_eq!(sim.ingress("default", "a"), ["192.168.56.60"]);
    assert_eq!(sim.ingress("default", "b"), ["192.168.56.61"]);
    assert_eq!(
        sim.condition("default", "c"),
        (
            "False".into(),
            "PoolExhausted".into(),
            "no free IPv4 address left in pool tiny".into()
        )
    );
    assert_eq!(sim.pool_status("tiny").free, 0);
    sim.delete("default", "a");
    sim.settle();
    assert_eq!(sim.ingress("default", "c"), ["192.168.56.60"]);
}

#[test]
fn dual_stack_services_get_one_address_per_family() {
    let mut sim = Sim::new();
    sim.pool(mk_pool(
        "lab",
        &["192.168.56.60-192.168.56.70", "fd00:56::/120"],
        0,
    ));
    sim.pool(mk_pool("v4only", &["192.168.57.0/28"], 1));
    sim.svc(with_spec(mk_lb("default", "dual", 0), |s| {
        s.ip_family_policy = Some("RequireDualStack".into());
        s.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
    }));
    sim.svc(with_spec(mk_lb("default", "v6", 1), |s| {
        s.ip_families = Some(vec!["IPv6".into()])
    }));
    sim.settle();
    assert_eq!(
        sim.ingress("default", "dual"),
        ["fd00:56::", "192.168.56.60"]
    );
    assert_eq!(sim.ingress("default", "v6"), ["fd00:56::1"]);

    // RequireDualStack without an IPv6 pool for it: nothing; PreferDualStack: IPv4 only.
    let mut sim = Sim::new();
    sim.pool(mk_pool("v4only", &["192.168.57.0/28"], 0));
    let dual = |name, policy: &str| {
        with_spec(mk_lb("default", name, 0), |s| {
            s.ip_family_policy = Some(policy.into());
            s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        })
    };
    sim.svc(dual("require", "RequireDualStack"));
    sim.svc(dual("prefer", "PreferDualStack"));
    sim.settle();
    assert!(sim.ingress("default", "require").is_empty());
    assert_eq!(sim.condition("default", "require").1, "NoMatchingPool");
    assert_eq!(sim.ingress("default", "prefer"), ["192.168.57.0"]);
}

// ---- conflicts and pool edits ----------------------------------------------

#[test]
fn overlapping_pools_conflict_and_the_newer_one_makes_no_assignments() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("old", &["192.168.56.60-192.168.56.70"], 0));
    sim.pool(with_pool(
        mk_pool("new", &["192.168.56.64/30", "192.168.60.0/24"], 10),
        |s| s.priority = -1,
    ));
    sim.pool(mk_pool("services", &["10.96.0.0/24"], 20));
    sim.pool(mk_pool("pods", &["20.96.5.0/24"], 30));
    sim.svc(mk_lb("default", "web", 0));
    sim.settle();
    assert_eq!(
        sim.ingress("default", "web"),
        ["192.168.56.60"],
        "the conflicting pool is skipped despite its priority"
    );
    let (status, message) = sim.pool_condition("new", "Conflict");
    assert_eq!(status, "True");
    assert_eq!(
        message,
        "its addresses 192.168.56.64/30 overlap pool old (192.168.56.60-192.168.56.70)"
    );
    assert_eq!(sim.pool_condition("new", "Ready").0, "False");
    assert_eq!(sim.pool_condition("old", "Conflict").0, "False");
    assert!(
        sim.pool_condition("services", "Conflict")
            .1
            .contains("overlap the service range 10.96.0.0/12")
    );
    assert!(
        sim.pool_condition("pods", "Conflict")
            .1
            .contains("overlap the pod network 20.96.0.0/12")
    );
    let events = sim.take_events();
    assert_eq!(events.iter().filter(|e| e.1 == "PoolConflict").count(), 3);
    // Asking for the conflicting pool says why nothing comes.
    sim.svc(annotated(
        mk_lb("default", "asks", 1),
        annotations::IP_POOL,
        "new",
    ));
    sim.settle();
    let (_, reason, message) = sim.condition("default", "asks");
    assert_eq!(reason, "PoolInConflict");
    assert!(message.contains("pool new is in conflict"), "{message}");
    // The overlap goes away: the pool works.
    sim.pool(with_pool(mk_pool("new", &["192.168.60.0/24"], 10), |s| {
        s.priority = -1
    }));
    sim.settle();
    assert_eq!(sim.pool_condition("new", "Conflict").0, "False");
    assert_eq!(sim.ingress("default", "asks"), ["192.168.60.0"]);
    assert_eq!(
        sim.ingress("default", "web"),
        ["192.168.56.60"],
        "kept: still inside a pool it may use"
    );
}

#[test]
fn pool_edits_keep_addresses_inside_usable_pools_and_reassign_the_rest() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    // No priorities: "lab" comes first by its name.
    sim.pool(mk_pool("spare", &["192.168.57.0/28"], 1));
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        sim.svc(mk_lb("default", n, i as i64));
    }
    sim.settle();
    sim.take_events();
    // Disabled: existing assignments stay, new Services go elsewhere.
    sim.pool(with_pool(
        mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0),
        |s| s.disabled = true,
    ));
    sim.svc(mk_lb("default", "d", 3));
    sim.settle();
    assert_eq!(sim.ingress("default", "a"), ["192.168.56.60"]);
    assert_eq!(sim.ingress("default", "d"), ["192.168.57.0"]);
    assert_eq!(sim.pool_condition("lab", "Ready").0, "False");
    // Shrunk: b and c fall outside and move, with an Event.
    sim.take_events();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.60"], 0));
    sim.settle();
    assert_eq!(sim.ingress("default", "a"), ["192.168.56.60"]);
    assert_eq!(sim.ingress("default", "b"), ["192.168.57.1"]);
    assert_eq!(sim.ingress("default", "c"), ["192.168.57.2"]);
    let events = sim.take_events();
    assert!(
        events.iter().any(|e| e
            .2
            .contains("192.168.56.61 in the Service's status is not kept: it is in no pool")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.2 == "assigned 192.168.57.1 from pool spare"),
        "{events:?}"
    );
    // Deleted: a moves too.
    sim.delete_pool("lab");
    sim.settle();
    assert_eq!(sim.ingress("default", "a"), ["192.168.57.3"]);
}

#[test]
fn an_invalid_pool_is_not_ready_and_says_why() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("bad", &["192.168.56.70-192.168.56.60"], 0));
    sim.svc(mk_lb("default", "web", 0));
    sim.settle();
    let (status, message) = sim.pool_condition("bad", "Ready");
    assert_eq!(status, "False");
    assert!(
        message.starts_with("spec.addresses:") && message.contains("192.168.56.70-192.168.56.60"),
        "{message}"
    );
    assert_eq!(sim.condition("default", "web").1, "NoMatchingPool");
}

// ---- restarts ----------------------------------------------------------------

#[test]
fn a_restart_re_adopts_every_address_before_assigning_anything_new() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    for i in 0..5 {
        sim.svc(mk_lb("default", &format!("s{i}"), i));
    }
    sim.settle();
    sim.delete("default", "s0"); // frees .60
    sim.settle();
    let before: Vec<Vec<String>> = (1..5)
        .map(|i| sim.ingress("default", &format!("s{i}")))
        .collect();

    // A new replica: everything from the API, and a newcomer created meanwhile.
    let mut fresh = LbIpamController::new(Config::default(), &net(), LbIpamMetrics::default());
    let mut services: Vec<Service> = sim.services.values().cloned().collect();
    services.push(mk_lb("default", "newcomer", -100)); // older than all, but holds nothing
    fresh.reset_pools(sim.pools.values());
    fresh.reset_namespaces(std::iter::empty());
    fresh.reset_services(services.iter());
    let writes = fresh.flush();
    for (i, want) in before.iter().enumerate() {
        let got: Vec<String> = fresh
            .assigned(&Key::new("default", format!("s{}", i + 1)))
            .iter()
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(&got, want);
    }
    let newcomer: Vec<String> = fresh
        .assigned(&Key::new("default", "newcomer"))
        .iter()
        .map(|(ip, _)| ip.to_string())
        .collect();
    assert_eq!(
        newcomer,
        ["192.168.56.60"],
        "the newcomer gets the free address, not a held one"
    );
    let service_writes = writes
        .iter()
        .filter(|w| matches!(w, Write::Apply(a) if a.target.kind == TargetKind::Service))
        .count();
    assert_eq!(
        service_writes, 1,
        "only the newcomer's status is written: {writes:#?}"
    );
}

#[test]
fn addresses_in_statuses_that_cannot_be_kept_are_reported_and_replaced() {
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    let with_status = |mut s: Service, ips: &[&str]| {
        s.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
            load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|ip| k8s_openapi::api::core::v1::LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        s
    };
    let mut fresh = LbIpamController::new(Config::default(), &net(), LbIpamMetrics::default());
    let old = with_status(mk_lb("default", "old", 0), &["192.168.56.65"]);
    let twin = with_status(mk_lb("default", "twin", 1), &["192.168.56.65"]);
    let stray = with_status(mk_lb("default", "stray", 2), &["10.1.2.3"]);
    fresh.reset_pools(sim.pools.values());
    fresh.reset_namespaces(std::iter::empty());
    fresh.reset_services([&old, &twin, &stray]);
    let writes = fresh.flush();
    let notes: Vec<String> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Event(e) if e.warning => Some(e.note.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        notes,
        [
            "192.168.56.65 in the Service's status is not kept: Service default/old holds it and they do not have the same portico.dev/sharing-key annotation",
            "10.1.2.3 in the Service's status is not kept: it is in no pool",
        ]
    );
    assert_eq!(
        fresh.assigned(&Key::new("default", "old"))[0].0,
        ip("192.168.56.65")
    );
    assert_eq!(
        fresh.assigned(&Key::new("default", "twin"))[0].0,
        ip("192.168.56.60")
    );
    assert_eq!(
        fresh.assigned(&Key::new("default", "stray"))[0].0,
        ip("192.168.56.61")
    );
}

// ---- property ----------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever Services come and go (with sharing keys, ports, requests and
    /// pool edits), two Services that may not share never hold the same
    /// address, and every held address is inside a pool.
    #[test]
    fn no_two_services_that_may_not_share_hold_one_address(
        ops in proptest::collection::vec((0u8..12, 0u8..6, 0u8..3, 0u8..3, 0u8..16), 1..60),
    ) {
        let mut sim = Sim::new();
        sim.pool(mk_pool("a", &["192.168.56.60-192.168.56.63"], 0));
        sim.pool(mk_pool("b", &["192.168.57.0/30"], 1));
        for (id, op, key, port, req) in ops {
            let name = format!("s{id}");
            match op {
                0 => {
                    if sim.services.contains_key(&Key::new("default", name.clone())) {
                        sim.delete("default", &name);
                    }
                }
                5 => {
                    // Pool edit: shrink or grow pool a.
                    let addrs = if key == 0 { "192.168.56.60-192.168.56.61" } else { "192.168.56.60-192.168.56.63" };
                    sim.pool(mk_pool("a", &[addrs], 0));
                }
                _ => {
                    let mut s = on_port(mk_lb(if id % 5 == 0 { "other" } else { "default" }, &name, id as i64), 80 + i32::from(port));
                    if key > 0 {
                        s = annotated(s, annotations::SHARING_KEY, &format!("k{key}"));
                    }
                    if req < 4 {
                        s = annotated(s, annotations::LOAD_BALANCER_IPS, &format!("192.168.56.{}", 60 + req));
                    }
                    sim.svc(s);
                }
            }
            sim.settle();
            let mut by_ip: BTreeMap<IpAddr, Vec<Key>> = BTreeMap::new();
            for (key, ip, pool) in sim.ctrl.assignments() {
                prop_assert!(sim.pools[pool].spec.addresses.iter().any(|a| Pool::parse(&[a], PoolOptions::lb_pool()).unwrap().contains(ip)));
                by_ip.entry(ip).or_default().push(key.clone());
            }
            for (ip, keys) in by_ip {
                for (i, a) in keys.iter().enumerate() {
                    for b in &keys[i + 1..] {
                        let (sa, sb) = (&sim.services[a], &sim.services[b]);
                        prop_assert!(can_share(sa, sb).is_ok(), "{a} and {b} both hold {ip}");
                    }
                }
            }
        }
    }
}
