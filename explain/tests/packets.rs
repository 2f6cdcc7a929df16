//! What `explain` predicts is what a real connection gets: the lab's node
//! namespace is programmed by the node agent from the same manifests
//! (with the real `nft`), and a client outside the cluster connects to
//! each target. Needs root (runs in CI).
//!
//! ```text
//!   client 192.168.77.2 ── 192.168.77.1 [node-a] ── pod1 10.244.1.2, pod2 10.244.2.2 (app=web, :8080)
//! ```

#![allow(clippy::unwrap_used)]

mod support;

use support::net;

use portico_agent::NodeAgent;
use portico_dataplane::backend::netlink::Netlink;
use portico_dataplane::{ConntrackTool, Kernel};
use portico_explain::{Action, Explanation, LiveRules, Source};
use portico_local::{World, load, reconcile_once};
use portico_testkit::lab::{From, Lab};
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::Path;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 192.168.77.1}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: pod1, namespace: default, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.244.1.2, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pod2, namespace: default, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.244.2.2, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: default}
spec: {type: NodePort, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec: {clusterIP: 10.96.0.11, selector: {app: nothing}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: guarded, namespace: default}
spec: {type: LoadBalancer, loadBalancerSourceRanges: [10.0.0.0/8], selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: portico.dev/v1alpha1
kind: IPPool
metadata: {name: lab}
spec: {addresses: ["192.168.56.60-192.168.56.70"]}
"#;

fn explain(world: &World, live: Option<LiveRules<'_>>, target: &str) -> Explanation {
    let from = Source::Address("192.168.77.2".parse().unwrap());
    support::explain_with(world, live, target, from, Some("node-a")).unwrap()
}

/// Connects `n` times; the endpoints reached (`ip:8080`) and whether the
/// pods saw the node's address (masqueraded), or the error kind.
fn connect(lab: &Lab, dst: &str, n: usize) -> Result<(BTreeSet<String>, bool), ErrorKind> {
    let mut reached = BTreeSet::new();
    let mut masqueraded = false;
    for _ in 0..n {
        let line = lab.tcp(From::Client, dst).map_err(|e| e.kind())?;
        let (pod, peer) = line.split_once(' ').unwrap();
        let i: usize = pod.trim_start_matches("pod").parse().unwrap();
        reached.insert(format!("{}:8080", Lab::pod_ip(i)));
        masqueraded |= peer == format!("10.244.{i}.1");
    }
    Ok((reached, masqueraded))
}

#[test]
fn the_verdict_explain_predicts_is_what_a_real_connection_gets() {
    let test = "the_verdict_explain_predicts_is_what_a_real_connection_gets";
    if !portico_testkit::ready_or_skip(test, &["nft", "ip", "conntrack"]) {
        return;
    }
    let mut lab = Lab::new(2);
    lab.serve(1, 8080);
    lab.serve(2, 8080);
    let world = reconcile_once(load::parse(Path::new("lab.yaml"), MANIFESTS), &net()).unwrap();
    let agent = NodeAgent::synced_once(
        "node-a",
        &net(),
        &portico_agent::Settings::default(),
        // Through netlink, so that the agent reads the kernel's rules back.
        (
            Kernel::Netlink(portico_testkit::in_netns(&lab.node, || {
                Netlink::new().unwrap()
            })),
            ConntrackTool::in_netns(&lab.node),
        ),
        world.agent_changes(),
    )
    .unwrap();

    let targets = [
        ("default/web", "10.96.0.10:80"),
        ("web.default.svc.cluster.local", "10.96.0.10:80"),
        ("192.168.77.1:30080/tcp", "192.168.77.1:30080"),
        ("default/empty", "10.96.0.11:80"),
        ("192.168.56.60:80", "192.168.56.60:80"),
    ];
    // Rendered from the manifests, and as the programming agent says it
    // installed them (what `GET /rules` serves): the same verdicts.
    let agent = std::cell::RefCell::new(agent);
    let installed = |_: &str| agent.borrow_mut().rules().map_err(|e| e.to_string());
    let held = agent.borrow_mut().rules().unwrap();
    assert_eq!(
        held.kernel.as_ref(),
        Some(&held.rules),
        "the kernel holds what was installed"
    );
    for (target, dst, live) in targets
        .iter()
        .flat_map(|(t, d)| [(*t, *d, None), (*t, *d, Some(&installed as LiveRules<'_>))])
    {
        let e = explain(&world, live, target);
        assert_eq!(
            e.path.iter().any(|s| s.detail.contains("GET /rules")),
            live.is_some()
        );
        let real = connect(&lab, dst, 30);
        eprintln!(
            "{target}: explain says {:?}, a real client gets {real:?}",
            e.verdict
        );
        match e.verdict.action {
            Action::Dnat => {
                let (reached, masqueraded) = real.unwrap();
                let predicted: BTreeSet<String> = e.verdict.endpoints.iter().cloned().collect();
                assert_eq!(reached, predicted, "{target}");
                assert_eq!(masqueraded, e.verdict.masquerade, "{target}");
            }
            Action::Reject => assert_eq!(real, Err(ErrorKind::ConnectionRefused), "{target}"),
            Action::Drop => assert!(
                matches!(real, Err(ErrorKind::TimedOut | ErrorKind::WouldBlock)),
                "{target}: {real:?}"
            ),
            Action::Accept => panic!("{target}: no target here is left untouched"),
        }
    }
    // Each kind of verdict was met.
    let actions: BTreeSet<&str> = targets
        .iter()
        .map(|(t, _)| explain(&world, None, t).verdict.action.as_str())
        .collect();
    assert_eq!(actions, BTreeSet::from(["dnat", "drop", "reject"]));
}
