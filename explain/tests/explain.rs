//! `explain` over manifests, reconciled as `portico local` reconciles them:
//! each target form, each problem it names, the JSON shape and the
//! picture.

#![allow(clippy::unwrap_used)]

mod support;

use support::net;

use portico_explain::{Action, Error, Explanation, Source};
use portico_local::{World, load, reconcile_once};
use std::path::Path;

/// Two ready nodes, a client pod on n1, and shop/web: two ready pods
/// (one per node) serving `http` on 8080 behind a ClusterIP on port 80.
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/zone: za}}
status:
  addresses: [{type: InternalIP, address: 192.168.56.31}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {topology.kubernetes.io/zone: zb}}
status:
  addresses: [{type: InternalIP, address: 192.168.56.32}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.9, podIPs: [{ip: 10.244.1.9}], conditions: [{type: Ready, status: "True"}]}
"#;

fn pod(name: &str, node: &str, ip: &str, app: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}
spec: {{nodeName: {node}, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], conditions: [{{type: Ready, status: "True"}}]}}
"#
    )
}

fn web_pods() -> String {
    pod("web-1", "n1", "10.244.1.5", "web") + &pod("web-2", "n2", "10.244.2.5", "web")
}

fn service(name: &str, extra_spec: &str) -> String {
    let ports = if extra_spec.contains("ports:") {
        ""
    } else {
        "  ports: [{name: http, port: 80, targetPort: http}]\n"
    };
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  selector: {{app: web}}
{ports}{extra_spec}
"#
    )
}

const POOL: &str = r#"---
apiVersion: portico.dev/v1alpha1
kind: IPPool
metadata: {name: lab}
spec: {addresses: ["192.168.56.60-192.168.56.70"]}
"#;

fn world(yaml: &str) -> World {
    let m = load::parse(Path::new("test.yaml"), &format!("{BASE}{yaml}"));
    assert!(
        m.diagnostics.iter().all(|d| !d.skipped),
        "{:?}",
        m.diagnostics
    );
    reconcile_once(m, &net()).unwrap()
}

fn explain_in(
    world: &World,
    target: &str,
    from: Source,
    node: Option<&str>,
) -> Result<Explanation, Error> {
    support::explain_with(world, None, target, from, node)
}

fn explain(yaml: &str, target: &str) -> Explanation {
    explain_in(&world(yaml), target, Source::Outside, None).unwrap()
}

fn has(e: &Explanation, words: &str) -> bool {
    e.problems.iter().any(|p| p.contains(words))
}

#[test]
fn a_service_is_explained_from_its_name_to_its_endpoints_by_each_target_form() {
    let w = world(&(web_pods() + &service("web", "  clusterIP: 10.96.0.10")));
    for target in [
        "shop/web",
        "web.shop",
        "web.shop.svc",
        "web.shop.svc.cluster.local",
        "10.96.0.10:80",
        "10.96.0.10:80/tcp",
    ] {
        let e = explain_in(&w, target, Source::Outside, None).unwrap();
        assert_eq!(e.service.name, "web", "{target}");
        assert_eq!(e.service.cluster_ips, ["10.96.0.10"]);
        assert_eq!(e.verdict.action, Action::Dnat, "{target}");
        assert_eq!(
            e.verdict.endpoints,
            ["10.244.1.5:8080", "10.244.2.5:8080"],
            "{target}"
        );
        // From outside the cluster: masqueraded, as kube-proxy does.
        assert!(e.verdict.masquerade);
        assert_eq!(e.dns[0].name, "web.shop.svc.cluster.local");
        assert_eq!(e.dns[0].answers, ["10.96.0.10"]);
        assert_eq!(e.destination.as_deref(), Some("10.96.0.10:80/tcp"));
        let pods: Vec<_> = e.endpoints.iter().map(|p| p.pod.clone().unwrap()).collect();
        assert_eq!(pods, ["shop/web-1", "shop/web-2"]);
        assert_eq!(e.endpoints[0].node.as_deref(), Some("n1"));
        assert_eq!(e.endpoints[0].zone.as_deref(), Some("za"));
        assert!(
            e.endpoints
                .iter()
                .all(|p| p.ready && p.serving && !p.terminating)
        );
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        // The path names the chains and rules the packet met, in order.
        let steps: Vec<&str> = e.path.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(steps.first(), Some(&"dns"), "{steps:?}");
        assert_eq!(steps.last(), Some(&"verdict"));
        assert!(
            e.path
                .iter()
                .any(|s| s.step == "nft ip portico services"
                    && s.detail.contains("vmap @service-ips")),
            "{:#?}",
            e.path
        );
    }
    // From a pod: its own address is kept.
    let e = explain_in(&w, "shop/web", Source::Pod(key("client")), None).unwrap();
    assert_eq!(e.node, "n1", "the source pod's node");
    assert!(!e.verdict.masquerade);
}

fn key(name: &str) -> portico_catalog::Key {
    portico_catalog::Key::new("shop", name)
}

#[test]
fn a_selector_that_matches_no_pod_is_named_and_the_connection_refused() {
    let yaml = r#"---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: nothing}, ports: [{port: 80}]}
"#;
    let e = explain(yaml, "shop/web");
    assert!(
        has(
            &e,
            "the selector app=nothing matches no Pod in namespace shop"
        ),
        "{:?}",
        e.problems
    );
    assert!(has(&e, "no ready endpoint"), "{:?}", e.problems);
    assert_eq!(e.verdict.action, Action::Reject);
    assert!(e.verdict.endpoints.is_empty());
}

#[test]
fn pods_that_match_but_are_not_ready_are_named_with_the_reason() {
    let yaml = r#"---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c}]}
status:
  phase: Running
  podIP: 10.244.1.6
  conditions: [{type: Ready, status: "False", reason: ContainersNotReady, message: "containers with unready status: [c]"}]
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: leaving, namespace: shop, labels: {app: web}, deletionTimestamp: "2026-01-01T00:00:00Z"}
spec: {nodeName: n2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.2.6, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {phase: Succeeded, podIP: 10.244.2.7}
"#
    .to_owned()
        + &service("web", "");
    let e = explain(&yaml, "shop/web");
    assert!(
        has(
            &e,
            "Pod shop/starting matches the selector but is not ready: its Ready condition is False (ContainersNotReady: containers with unready status: [c])"
        ),
        "{:#?}",
        e.problems
    );
    assert!(has(
        &e,
        "Pod shop/pending matches the selector but is not ready: it has no IP yet (phase Pending)"
    ));
    assert!(has(
        &e,
        "Pod shop/leaving matches the selector but is not ready: it is terminating"
    ));
    assert!(has(
        &e,
        "Pod shop/done matches the selector but is not ready: its phase is Succeeded"
    ));
    // The terminating pod is listed, not ready, serving, terminating.
    let leaving = e
        .endpoints
        .iter()
        .find(|p| p.address == "10.244.2.6")
        .unwrap();
    assert!(!leaving.ready && leaving.serving && leaving.terminating);
}

#[test]
fn a_target_port_name_no_matching_pod_declares_is_named() {
    let yaml = web_pods()
        + r#"---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: api, port: 80, targetPort: grpc}]}
"#;
    let e = explain(&yaml, "shop/web");
    assert!(
        has(
            &e,
            "port api (80/TCP): targetPort \"grpc\" is a name no matching Pod declares"
        ),
        "{:#?}",
        e.problems
    );
    assert_eq!(e.verdict.action, Action::Reject);
    // One pod of two declares it: the other is named.
    let yaml = pod("web-1", "n1", "10.244.1.5", "web")
        + r#"---
apiVersion: v1
kind: Pod
metadata: {name: web-old, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: legacy, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.244.2.8, conditions: [{type: Ready, status: "True"}]}
"# + &service("web", "");
    let e = explain(&yaml, "shop/web");
    assert!(
        has(&e, "targetPort \"http\" is not declared by Pods web-old"),
        "{:#?}",
        e.problems
    );
    assert_eq!(e.verdict.endpoints, ["10.244.1.5:8080"]);
}

#[test]
fn refused_cluster_ips_node_ports_and_load_balancer_addresses_are_named_with_their_reason() {
    let yaml = web_pods()
        + &service("outside", "  clusterIP: 10.200.0.1")
        + &service(
            "lowport",
            "  type: NodePort\n  ports: [{name: http, port: 80, targetPort: http, nodePort: 2000}]",
        )
        + &service("nopool", "  type: LoadBalancer");
    let w = world(&yaml);
    let e = explain_in(&w, "shop/outside", Source::Outside, None).unwrap();
    assert!(has(&e, "its ClusterIP was refused"), "{:#?}", e.problems);
    let e = explain_in(&w, "shop/lowport", Source::Outside, None).unwrap();
    assert!(has(&e, "its NodePort was refused"), "{:#?}", e.problems);
    let e = explain_in(&w, "shop/nopool", Source::Outside, None).unwrap();
    assert!(
        has(&e, "its LoadBalancer address was refused") && has(&e, "NoMatchingPool"),
        "{:#?}",
        e.problems
    );
}

#[test]
fn external_traffic_policy_local_on_a_node_without_a_local_endpoint_drops() {
    let yaml = pod("web-2", "n2", "10.244.2.5", "web")
        + &service(
            "web",
            "  type: NodePort\n  externalTrafficPolicy: Local\n  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]",
        );
    let w = world(&yaml);
    // The node is the one the address names.
    let e = explain_in(&w, "192.168.56.31:30080", Source::Outside, None).unwrap();
    assert_eq!(e.node, "n1");
    assert!(
        has(
            &e,
            "externalTrafficPolicy is Local and node n1 has no ready endpoint"
        ),
        "{:#?}",
        e.problems
    );
    assert_eq!(e.verdict.action, Action::Drop);
    // On the node that has one: the client's address is kept.
    let e = explain_in(&w, "192.168.56.32:30080/tcp", Source::Outside, None).unwrap();
    assert_eq!(e.node, "n2");
    assert!(e.problems.is_empty(), "{:#?}", e.problems);
    assert_eq!(e.verdict.endpoints, ["10.244.2.5:8080"]);
    assert!(!e.verdict.masquerade);
}

#[test]
fn internal_traffic_policy_local_from_a_node_without_a_local_endpoint_drops() {
    let yaml = pod("web-2", "n2", "10.244.2.5", "web")
        + &service(
            "web",
            "  clusterIP: 10.96.0.10\n  internalTrafficPolicy: Local",
        );
    let w = world(&yaml);
    let e = explain_in(&w, "shop/web", Source::Pod(key("client")), None).unwrap();
    assert_eq!(e.node, "n1");
    assert!(
        has(
            &e,
            "internalTrafficPolicy is Local and node n1 has no ready endpoint"
        ),
        "{:#?}",
        e.problems
    );
    assert_eq!(e.verdict.action, Action::Drop);
    let e = explain_in(&w, "shop/web", Source::Pod(key("client")), Some("n2")).unwrap();
    assert_eq!(e.verdict.endpoints, ["10.244.2.5:8080"]);
}

#[test]
fn load_balancer_source_ranges_that_leave_the_source_out_drop() {
    let yaml = web_pods()
        + POOL
        + &service(
            "web",
            "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.0/8]",
        );
    let w = world(&yaml);
    let e = explain_in(&w, "192.168.56.60:80", Source::Outside, None).unwrap();
    assert_eq!(e.service.load_balancer_ips, ["192.168.56.60"]);
    assert!(
        has(
            &e,
            "loadBalancerSourceRanges (10.0.0.0/8) do not include the source 203.0.113.10"
        ),
        "{:#?}",
        e.problems
    );
    assert_eq!(e.verdict.action, Action::Drop);
    let inside = Source::Address("10.1.2.3".parse().unwrap());
    let e = explain_in(&w, "192.168.56.60:80", inside, None).unwrap();
    assert!(e.problems.is_empty(), "{:#?}", e.problems);
    assert_eq!(e.verdict.action, Action::Dnat);
}

#[test]
fn a_service_another_proxy_owns_has_no_rules_and_says_so() {
    let yaml = web_pods()
        + r#"---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {service.kubernetes.io/service-proxy-name: cilium}}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"#;
    let e = explain(&yaml, "shop/web");
    assert!(
        has(
            &e,
            "service.kubernetes.io/service-proxy-name=cilium: the proxy cilium owns it"
        ),
        "{:#?}",
        e.problems
    );
    // Portico's rules know nothing of it: as kube-proxy's, they drop what
    // goes to an address of the service range they do not hold.
    assert_eq!(e.verdict.action, Action::Drop);
}

#[test]
fn an_external_name_that_does_not_resolve_is_named() {
    let yaml = r#"---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: nothing.invalid}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: shop}
spec: {type: ExternalName, externalName: missing.shop.svc.cluster.local}
"#;
    let w = world(yaml);
    let e = explain_in(&w, "ext.shop", Source::Outside, None).unwrap();
    assert_eq!(e.dns[0].type_, "CNAME");
    assert_eq!(e.dns[0].answers, ["nothing.invalid"]);
    assert!(
        has(
            &e,
            "the ExternalName target nothing.invalid does not resolve (nothing.invalid: NXDOMAIN)"
        ),
        "{:#?}",
        e.problems
    );
    assert_eq!(e.destination, None);
    // A target in the cluster zone is asked of the zone itself.
    let e = explain_in(&w, "shop/alias", Source::Outside, None).unwrap();
    assert!(
        has(
            &e,
            "missing.shop.svc.cluster.local does not resolve (NXDOMAIN)"
        ),
        "{:#?}",
        e.problems
    );
}

#[test]
fn a_headless_service_is_reached_directly_and_a_pod_name_names_its_pod() {
    let yaml = r#"---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {nodeName: n1, hostname: db-0, subdomain: db, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.20, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
"#;
    let w = world(yaml);
    let e = explain_in(&w, "shop/db", Source::Outside, None).unwrap();
    assert_eq!(e.verdict.action, Action::Accept);
    assert_eq!(e.verdict.endpoints, ["10.244.1.20:5432"]);
    assert_eq!(e.dns[0].answers, ["10.244.1.20"]);
    let e = explain_in(&w, "db-0.db.shop", Source::Outside, None).unwrap();
    assert_eq!(e.service.name, "db");
    assert_eq!(e.dns[0].name, "db-0.db.shop.svc.cluster.local");
    assert_eq!(e.verdict.endpoints, ["10.244.1.20:5432"]);
}

#[test]
fn the_announcer_of_a_load_balancer_address_is_the_planned_owner() {
    let yaml = web_pods()
        + POOL
        + &service("web", "  type: LoadBalancer")
        + r#"---
apiVersion: portico.dev/v1alpha1
kind: L2Announcement
metadata: {name: lab}
spec: {}
"#;
    let e = explain(&yaml, "192.168.56.60:80/tcp");
    let owner = e.announcer.clone().unwrap();
    // By name, from outside the cluster: through the LoadBalancer address.
    let by_name = explain(&yaml, "shop/web");
    assert_eq!(by_name.destination.as_deref(), Some("192.168.56.60:80/tcp"));
    assert_eq!(by_name.announcer, e.announcer);
    assert!(owner == "n1" || owner == "n2", "{owner}");
    assert_eq!(e.verdict.action, Action::Dnat);
    // Without L2 announcement, nobody.
    let e = explain(
        &(web_pods() + POOL + &service("web", "  type: LoadBalancer")),
        "shop/web",
    );
    assert_eq!(e.announcer, None);
}

#[test]
fn unknown_targets_are_clear_errors_naming_them() {
    let w = world(&(web_pods() + &service("web", "  clusterIP: 10.96.0.10")));
    let cases = [
        ("shop/nope", "no Service shop/nope"),
        (
            "nope.shop",
            "no Service answers nope.shop.svc.cluster.local (NXDOMAIN)",
        ),
        ("10.96.9.9:80", "no Service holds 10.96.9.9:80"),
        ("10.96.0.10:81/udp", "no Service holds 10.96.0.10:81/UDP"),
        (
            "example.com",
            "no Service answers example.com.svc.cluster.local",
        ),
        (
            "a.b.c.d.svc.cluster.local",
            "a.b.c.d.svc.cluster.local is not a Service's name in the cluster zone cluster.local",
        ),
        ("web", "\"web\" is not a target"),
    ];
    for (target, message) in cases {
        let e = explain_in(&w, target, Source::Outside, None).unwrap_err();
        assert!(e.to_string().contains(message), "{target}: {e}");
    }
    let e = explain_in(&w, "shop/web", Source::Outside, Some("n9")).unwrap_err();
    assert_eq!(e.to_string(), "no Node n9");
    let e = explain_in(&w, "shop/web", Source::Pod(key("ghost")), None).unwrap_err();
    assert_eq!(e.to_string(), "no Pod shop/ghost");
}

#[test]
fn the_json_has_every_field_scripts_read() {
    let e = explain(&(web_pods() + &service("web", "")), "shop/web");
    let v = serde_json::to_value(&e).unwrap();
    for field in [
        "service",
        "dns",
        "endpoints",
        "path",
        "verdict",
        "announcer",
        "problems",
    ] {
        assert!(v.get(field).is_some(), "{field}: {v:#}");
    }
    for field in [
        "namespace",
        "name",
        "type",
        "clusterIPs",
        "externalIPs",
        "loadBalancerIPs",
        "ports",
    ] {
        assert!(v["service"].get(field).is_some(), "service.{field}");
    }
    for field in [
        "address",
        "pod",
        "node",
        "zone",
        "ready",
        "serving",
        "terminating",
    ] {
        assert!(
            v["endpoints"][0].get(field).is_some(),
            "endpoints[].{field}"
        );
    }
    assert_eq!(v["verdict"]["action"], "dnat");
    assert_eq!(v["dns"][0]["type"], "A");
    assert!(v["path"][0].get("step").is_some() && v["path"][0].get("detail").is_some());
}

#[test]
fn the_picture_is_svg_that_names_the_service_and_its_endpoints() {
    let e = explain(
        &(web_pods() + POOL + &service("web", "  type: LoadBalancer")),
        "shop/web",
    );
    let svg = portico_explain::svg::render(&e);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let text: String = doc
        .descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "Service shop/web (LoadBalancer)",
        "shop/web-1",
        "10.244.1.5:8080",
        "shop/web-2",
        "10.244.2.5:8080",
        "node n1",
        "dnat",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    let width: f64 = root.attribute("width").unwrap().parse().unwrap();
    let height: f64 = root.attribute("height").unwrap().parse().unwrap();
    assert!(
        width > 0.0 && height > 0.0 && height < 2000.0,
        "{width}x{height}"
    );
    // And the text output says the same.
    let text = portico_explain::text::render(&e);
    assert!(
        text.contains("Verdict:          dnat → 10.244.1.5:8080, 10.244.2.5:8080"),
        "{text}"
    );
}
