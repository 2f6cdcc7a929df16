//! Test fixtures: small builders for the API objects the catalog reads.
//! Shared by the unit tests and (through `#[path]`) the socket tests.
//!
//! Address conventions: ClusterIPs in 10.96.0.0/12 and fd00:96::/64, pods
//! and endpoints in 10.244.0.0/16 and fd00:244::/64.

#![allow(dead_code)]

use k8s_openapi::api::core::v1::{Pod, PodIP, PodStatus, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn ports(ports: &[(&str, &str, i32)]) -> Vec<ServicePort> {
    ports
        .iter()
        .map(|(n, p, port)| ServicePort {
            name: (!n.is_empty()).then(|| (*n).to_owned()),
            protocol: Some((*p).into()),
            port: *port,
            ..Default::default()
        })
        .collect()
}

/// A ClusterIP Service with `ips` (comma-separated) and `(name, protocol, port)` ports.
pub fn mk_svc(ns: &str, name: &str, ips: &str, p: &[(&str, &str, i32)]) -> Service {
    let ips: Vec<String> = ips.split(',').map(str::to_owned).collect();
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: ips.first().cloned(),
            cluster_ips: Some(ips),
            ports: Some(ports(p)),
            ..Default::default()
        }),
        status: None,
    }
}

/// A headless Service.
pub fn mk_headless(ns: &str, name: &str, p: &[(&str, &str, i32)]) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            ports: Some(ports(p)),
            ..Default::default()
        }),
        status: None,
    }
}

/// An ExternalName Service.
pub fn mk_external(ns: &str, name: &str, target: &str) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(target.into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// An endpoint: address, hostname, ready.
pub fn mk_ep(ip: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        hostname: hostname.map(Into::into),
        ..Default::default()
    }
}

/// A slice of `svc` with endpoints and `(name, protocol, port)` ports; the
/// address type follows the first endpoint.
pub fn mk_slice(
    ns: &str,
    name: &str,
    svc: &str,
    eps: Vec<Endpoint>,
    p: &[(&str, &str, i32)],
) -> EndpointSlice {
    let mut m = meta(ns, name);
    m.labels = Some(
        [(
            portico_catalog::labels::SERVICE_NAME.to_owned(),
            svc.to_owned(),
        )]
        .into(),
    );
    let v6 = eps
        .first()
        .is_some_and(|e| e.addresses.first().is_some_and(|a| a.contains(':')));
    EndpointSlice {
        metadata: m,
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: eps,
        ports: Some(
            p.iter()
                .map(|(n, proto, port)| EndpointPort {
                    name: Some((*n).into()),
                    protocol: Some((*proto).into()),
                    port: Some(*port),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// A running Pod with addresses.
pub fn mk_pod(ns: &str, name: &str, ips: &[&str]) -> Pod {
    Pod {
        metadata: meta(ns, name),
        spec: None,
        status: Some(PodStatus {
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).into() }).collect()),
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}
