//! Cases from MetalLB's own allocator and controller tests, in Portico's
//! terms (`IPPool` for `IPAddressPool`, `portico.dev/*` annotations for
//! `metallb.universe.tf/*`).

use super::*;

fn selecting(p: IPPool, label: (&str, &str)) -> IPPool {
    with_pool(p, |s| {
        s.service_selector = Some(LabelSelector {
            match_labels: Some([(label.0.to_owned(), label.1.to_owned())].into()),
            ..Default::default()
        })
    })
}

fn dual(svc: Service, policy: &str) -> Service {
    with_spec(svc, |s| {
        s.ip_family_policy = Some(policy.into());
        s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    })
}

#[test]
fn pools_that_select_the_service_come_first_and_priority_zero_comes_last() {
    // "request IP for service from no priority namespace specific ip pool":
    // a general pool that sorts first by name loses to a selecting pool
    // without a priority.
    let mut sim = Sim::new();
    sim.pool(mk_pool("a-general", &["192.168.57.0/28"], 0));
    sim.pool(selecting(
        mk_pool("z-team", &["192.168.58.0/28"], 1),
        ("team", "a"),
    ));
    sim.svc(labelled(mk_lb("default", "teamed", 0), "team", "a"));
    sim.svc(mk_lb("default", "plain", 1));
    sim.settle();
    assert_eq!(sim.ingress("default", "teamed"), ["192.168.58.0"]);
    assert_eq!(sim.ingress("default", "plain"), ["192.168.57.0"]);

    // Among selecting pools: a set priority (even a high one) before 0.
    let mut sim = Sim::new();
    sim.pool(selecting(
        mk_pool("a-unset", &["192.168.57.0/28"], 0),
        ("team", "a"),
    ));
    sim.pool(with_pool(
        selecting(mk_pool("b-ten", &["192.168.58.0/28"], 1), ("team", "a")),
        |s| s.priority = 10,
    ));
    sim.pool(with_pool(
        selecting(mk_pool("c-twenty", &["192.168.59.0/28"], 2), ("team", "a")),
        |s| s.priority = 20,
    ));
    sim.svc(labelled(mk_lb("default", "teamed", 0), "team", "a"));
    sim.settle();
    assert_eq!(sim.ingress("default", "teamed"), ["192.168.58.0"]);
}

#[test]
fn a_dual_stack_service_takes_both_addresses_from_one_pool() {
    let mut sim = Sim::new();
    // Sorts first, but has no IPv6: the dual-stack Service skips it.
    sim.pool(with_pool(mk_pool("a-v4", &["192.168.57.0/28"], 0), |s| {
        s.priority = 1
    }));
    sim.pool(with_pool(
        mk_pool(
            "b-dual",
            &["192.168.56.60-192.168.56.70", "fd00:56::/120"],
            1,
        ),
        |s| s.priority = 2,
    ));
    sim.pool(mk_pool("c-v6", &["fd00:57::/120"], 2));
    sim.svc(dual(mk_lb("default", "both", 0), "RequireDualStack"));
    sim.svc(mk_lb("default", "v4", 1));
    sim.settle();
    assert_eq!(
        sim.ingress("default", "both"),
        ["192.168.56.60", "fd00:56::"]
    );
    assert_eq!(sim.ingress("default", "v4"), ["192.168.57.0"]);

    // "ip dual-stack assign s1 from different pools": refused.
    sim.svc(annotated(
        dual(mk_lb("default", "split", 2), "RequireDualStack"),
        annotations::LOAD_BALANCER_IPS,
        "192.168.57.5,fd00:57::5",
    ));
    sim.settle();
    assert!(sim.ingress("default", "split").is_empty());
    let (status, reason, message) = sim.condition("default", "split");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidRequest")
    );
    assert!(message.contains("from one pool"), "{message}");
    assert_eq!(sim.pool_status("a-v4").used, 1, "the claim was let go");

    // Both in one pool: granted.
    sim.svc(annotated(
        dual(mk_lb("default", "together", 3), "RequireDualStack"),
        annotations::LOAD_BALANCER_IPS,
        "192.168.56.66,fd00:56::6",
    ));
    sim.settle();
    assert_eq!(
        sim.ingress("default", "together"),
        ["192.168.56.66", "fd00:56::6"]
    );

    // No pool has both families: PreferDualStack falls back to one family
    // (from the best pool), RequireDualStack gets nothing.
    let mut sim = Sim::new();
    sim.pool(mk_pool("v4", &["192.168.57.0/28"], 0));
    sim.pool(mk_pool("v6", &["fd00:57::/120"], 1));
    sim.svc(dual(mk_lb("default", "prefer", 0), "PreferDualStack"));
    sim.svc(dual(mk_lb("default", "require", 1), "RequireDualStack"));
    sim.settle();
    assert_eq!(sim.ingress("default", "prefer"), ["192.168.57.0"]);
    assert!(sim.ingress("default", "require").is_empty());
    assert_eq!(sim.condition("default", "require").1, "NoMatchingPool");
}

#[test]
fn requests_metallb_refuses_are_refused() {
    let mut sim = Sim::new();
    sim.pool(mk_pool(
        "lab",
        &["192.168.56.60-192.168.56.70", "fd00:56::/120"],
        0,
    ));
    // "request IP from both svc.spec.LoadBalancerIP and custom annotation".
    sim.svc(with_spec(
        annotated(
            mk_lb("default", "both-ways", 0),
            annotations::LOAD_BALANCER_IPS,
            "192.168.56.65",
        ),
        |s| s.load_balancer_ip = Some("192.168.56.65".into()),
    ));
    // "request specific loadbalancer IPv4 address via custom annotation for
    // dual-stack config".
    sim.svc(annotated(
        dual(mk_lb("default", "half", 1), "RequireDualStack"),
        annotations::LOAD_BALANCER_IPS,
        "192.168.56.66",
    ));
    // "request specific loadbalancer IP with dual-stack" (the legacy field
    // holds one address).
    sim.svc(with_spec(
        dual(mk_lb("default", "legacy-half", 2), "PreferDualStack"),
        |s| s.load_balancer_ip = Some("192.168.56.67".into()),
    ));
    sim.settle();
    for name in ["both-ways", "half", "legacy-half"] {
        assert!(sim.ingress("default", name).is_empty(), "{name}");
        assert_eq!(sim.condition("default", name).1, "InvalidRequest", "{name}");
    }
    assert!(
        sim.condition("default", "both-ways")
            .2
            .contains("both portico.dev/load-balancer-ips and spec.loadBalancerIP")
    );
    assert!(sim.condition("default", "half").2.contains("dual-stack"));
    assert_eq!(sim.pool_status("lab").used, 0);
}

#[test]
fn turning_on_avoid_buggy_ips_takes_dot_zero_and_dot_255_away() {
    // "enable buggy IPs not allowed".
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.57.0/24"], 0));
    sim.svc(annotated(
        mk_lb("default", "zero", 0),
        annotations::LOAD_BALANCER_IPS,
        "192.168.57.0",
    ));
    sim.svc(mk_lb("default", "other", 1));
    sim.settle();
    assert_eq!(sim.ingress("default", "zero"), ["192.168.57.0"]);
    assert_eq!(sim.ingress("default", "other"), ["192.168.57.1"]);
    sim.pool(with_pool(mk_pool("lab", &["192.168.57.0/24"], 0), |s| {
        s.avoid_buggy_ips = true
    }));
    sim.settle();
    assert!(sim.ingress("default", "zero").is_empty());
    assert_eq!(sim.condition("default", "zero").1, "RequestedIPNotInPool");
    assert_eq!(sim.ingress("default", "other"), ["192.168.57.1"], "kept");

    // A restart with .255 in a status: not adopted; the Service moves.
    let mut sim = Sim::new();
    sim.pool(with_pool(mk_pool("lab", &["192.168.57.0/24"], 0), |s| {
        s.avoid_buggy_ips = true
    }));
    let mut svc = mk_lb("default", "old", 0);
    svc.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
        load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
            ingress: Some(vec![k8s_openapi::api::core::v1::LoadBalancerIngress {
                ip: Some("192.168.57.255".into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    sim.svc(svc);
    sim.settle();
    assert_eq!(sim.ingress("default", "old"), ["192.168.57.1"]);
}

#[test]
fn local_and_cluster_services_do_not_share_an_address() {
    // MetalLB's backend key: the selector under Local, nothing under
    // Cluster ("can't share … (wrong backend key)").
    let mut sim = Sim::new();
    sim.pool(mk_pool("lab", &["192.168.56.60-192.168.56.70"], 0));
    let shared = |name: &str, age, port, policy: &str| {
        with_spec(
            annotated(
                on_port(mk_lb("default", name, age), port),
                annotations::SHARING_KEY,
                "k",
            ),
            |s| {
                s.external_traffic_policy = Some(policy.into());
                s.selector = Some([("app".to_owned(), "web".to_owned())].into());
            },
        )
    };
    sim.svc(shared("local", 0, 80, "Local"));
    sim.svc(shared("cluster", 1, 443, "Cluster"));
    sim.svc(shared("local-too", 2, 8080, "Local"));
    sim.svc(shared("cluster-too", 3, 8443, "Cluster"));
    sim.settle();
    assert_eq!(sim.ingress("default", "local"), ["192.168.56.60"]);
    assert_eq!(sim.ingress("default", "local-too"), ["192.168.56.60"]);
    assert_eq!(sim.ingress("default", "cluster"), ["192.168.56.61"]);
    assert_eq!(sim.ingress("default", "cluster-too"), ["192.168.56.61"]);
}
