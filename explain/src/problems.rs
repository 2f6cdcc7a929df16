//! What is wrong with a Service, in plain sentences.

use crate::target::From;
use crate::{Action, Cluster, EndpointView, Resolved, Verdict};
use k8s_openapi::api::core::v1::{Pod, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_catalog::labels::{HEADLESS, SERVICE_PROXY_NAME};
use portico_controllers::endpointslices::PodInfo;
use portico_crds::names::{
    CONDITION_CLUSTER_IP_ALLOCATED, CONDITION_IP_ALLOCATED, CONDITION_NODE_PORT_ALLOCATED,
};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What the problems are found from.
pub(crate) struct Facts<'a> {
    pub cluster: &'a Cluster<'a>,
    pub resolved: &'a Resolved,
    pub node: &'a str,
    pub source: &'a From,
    pub endpoints: &'a [EndpointView],
    pub verdict: &'a Verdict,
    pub external: &'a Option<Result<Vec<IpAddr>, String>>,
}

/// Every problem found, in the order a packet would meet them.
pub(crate) fn find(f: &Facts<'_>) -> Vec<String> {
    let svc = &f.resolved.svc;
    let spec = svc.spec.clone().unwrap_or_default();
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let mut out = Vec::new();
    refused(svc, &mut out);
    proxy(f, svc, &mut out);
    if type_ == "ExternalName" {
        if let Some(Err(why)) = f.external {
            out.push(format!(
                "the ExternalName target {} does not resolve ({why}): clients get no address",
                spec.external_name.as_deref().unwrap_or_default()
            ));
        }
        return out;
    }
    pods(f, &spec, &mut out);
    policies(f, &spec, type_, &mut out);
    source_ranges(f, &spec, &mut out);
    if f.verdict.action == Action::Reject && !f.endpoints.iter().any(|e| e.ready) {
        out.push(
            "the Service has no ready endpoint: connections to it are refused (as kube-proxy refuses them)"
                .into(),
        );
    }
    out
}

/// A ClusterIP, NodePort or LoadBalancer address the allocators refused.
fn refused(svc: &Service, out: &mut Vec<String>) {
    let conditions = svc.status.as_ref().and_then(|s| s.conditions.as_ref());
    for c in conditions.into_iter().flatten() {
        if c.status != "False" {
            continue;
        }
        let what = match c.type_.as_str() {
            CONDITION_CLUSTER_IP_ALLOCATED => "its ClusterIP",
            CONDITION_NODE_PORT_ALLOCATED => "its NodePort",
            CONDITION_IP_ALLOCATED => "its LoadBalancer address",
            _ => continue,
        };
        out.push(format!(
            "{what} was refused: {} ({}: {})",
            c.message, c.type_, c.reason
        ));
    }
}

/// A Service that another proxy (or none) programs.
fn proxy(f: &Facts<'_>, svc: &Service, out: &mut Vec<String>) {
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    let ours = f.cluster.settings.service_proxy_name.as_deref();
    match (labels.get(SERVICE_PROXY_NAME), ours) {
        (Some(theirs), mine) if Some(theirs.as_str()) != mine => out.push(format!(
            "the Service is labelled {SERVICE_PROXY_NAME}={theirs}: the proxy {theirs} owns it, and Portico writes no rules for it"
        )),
        (None, Some(mine)) => out.push(format!(
            "Portico here programs only the Services labelled {SERVICE_PROXY_NAME}={mine}, and this one is not: it has no rules"
        )),
        _ => {}
    }
    if labels.contains_key(HEADLESS) {
        out.push(format!(
            "the Service is labelled {HEADLESS}: no proxy writes rules for it"
        ));
    }
}

fn selects(selector: &BTreeMap<String, String>, pod: &PodInfo) -> bool {
    selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

/// The selector, the pods it matches, and their ports.
fn pods(f: &Facts<'_>, spec: &ServiceSpec, out: &mut Vec<String>) {
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return;
    };
    let ns = &f.resolved.key.namespace;
    let matched: Vec<(Pod, PodInfo)> = f
        .cluster
        .world
        .pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == ns)
        .map(|p| {
            let info = PodInfo::of(&p);
            (p, info)
        })
        .filter(|(_, info)| selects(selector, info))
        .collect();
    let shown: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if matched.is_empty() {
        out.push(format!(
            "the selector {} matches no Pod in namespace {ns}",
            shown.join(",")
        ));
        return;
    }
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    for (pod, info) in &matched {
        if let Some(why) = not_ready(pod, info).filter(|_| !publish) {
            out.push(format!(
                "Pod {ns}/{} matches the selector but is not ready: {why}",
                info.name
            ));
        }
    }
    for port in spec.ports.iter().flatten() {
        let Some(IntOrString::String(name)) = &port.target_port else {
            continue;
        };
        if name.parse::<i32>().is_ok() {
            continue;
        }
        let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
        let lacking: Vec<&str> = matched
            .iter()
            .filter(|(_, i)| {
                !i.named_ports
                    .iter()
                    .any(|(n, p, _)| n == name && *p == protocol)
            })
            .map(|(_, i)| i.name.as_str())
            .collect();
        let label = port
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| port.port.to_string());
        if lacking.len() == matched.len() {
            out.push(format!(
                "port {label} ({}/{protocol}): targetPort {name:?} is a name no matching Pod declares (no container port of that name and protocol), so the port has no endpoints",
                port.port
            ));
        } else if !lacking.is_empty() {
            out.push(format!(
                "port {label} ({}/{protocol}): targetPort {name:?} is not declared by Pods {}, which get no endpoint for it",
                port.port,
                lacking.join(", ")
            ));
        }
    }
}

/// Why a pod is not ready, or `None` when it is.
fn not_ready(pod: &Pod, info: &PodInfo) -> Option<String> {
    if info.terminating {
        return Some("it is terminating (it has a deletionTimestamp)".into());
    }
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
    if info.finished {
        return Some(format!("its phase is {phase}: it has finished"));
    }
    if info.ips.is_empty() {
        return Some(format!("it has no IP yet (phase {phase})"));
    }
    if info.ready {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    Some(match ready {
        Some(c) => {
            let reason = c.reason.clone().unwrap_or_default();
            let message = c.message.clone().unwrap_or_default();
            let detail = [reason, message]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            if detail.is_empty() {
                format!("its Ready condition is {} (phase {phase})", c.status)
            } else {
                format!("its Ready condition is {} ({detail})", c.status)
            }
        }
        None => format!("it has no Ready condition (phase {phase})"),
    })
}

fn has_local_endpoint(endpoints: &[EndpointView], node: &str) -> bool {
    endpoints
        .iter()
        .any(|e| e.ready && e.node.as_deref() == Some(node))
}

/// The traffic policies, for this node and this source.
fn policies(f: &Facts<'_>, spec: &ServiceSpec, type_: &str, out: &mut Vec<String>) {
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    if external_local
        && matches!(type_, "NodePort" | "LoadBalancer")
        && !has_local_endpoint(f.endpoints, f.node)
    {
        out.push(format!(
            "externalTrafficPolicy is Local and node {} has no ready endpoint of the Service: traffic from outside the cluster to its NodePort or LoadBalancer address on this node is dropped",
            f.node
        ));
    }
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let from = f.source.node.as_deref().unwrap_or(f.node);
    if internal_local && !has_local_endpoint(f.endpoints, from) {
        out.push(format!(
            "internalTrafficPolicy is Local and node {from} has no ready endpoint of the Service: traffic from that node to its ClusterIP is dropped"
        ));
    }
}

/// `loadBalancerSourceRanges` that leave the source out.
fn source_ranges(f: &Facts<'_>, spec: &ServiceSpec, out: &mut Vec<String>) {
    let ranges = spec.load_balancer_source_ranges.clone().unwrap_or_default();
    if ranges.is_empty() || spec.type_.as_deref() != Some("LoadBalancer") {
        return;
    }
    let nets: Vec<ipnet::IpNet> = ranges
        .iter()
        .filter_map(|r| {
            r.trim()
                .parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| r.trim().parse::<IpAddr>().ok().map(ipnet::IpNet::from))
        })
        .collect();
    let same_family: Vec<&ipnet::IpNet> = nets
        .iter()
        .filter(|n| n.addr().is_ipv4() == f.source.ip.is_ipv4())
        .collect();
    if !same_family.iter().any(|n| n.contains(&f.source.ip)) {
        out.push(format!(
            "loadBalancerSourceRanges ({}) do not include the source {}: its packets to the LoadBalancer address are dropped",
            ranges.join(", "),
            f.source.ip
        ));
    }
}
