//! Test fixtures: small builders of Services and EndpointSlices, the
//! root-test gate, (in `lab`) network namespaces with real packets, and
//! (in `rawtcp`) TCP segments sniffed and forged by hand.
//!
//! Address conventions: ClusterIPs in 10.96.0.0/16 (fd96::/112), pods in
//! 10.244.0.0/16 (fd44::/32), the client network 192.168.77.0/24
//! (fd77::/64) with the node at .1, LoadBalancer addresses in
//! 192.168.56.0/24.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod lab;
pub mod rawtcp;

#[allow(unused_imports)]
pub use lab::NodeTools;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_catalog::Catalog;
use portico_dataplane::Config;
use std::collections::BTreeMap;

pub const NODE: &str = "node-a";
pub const OTHER_NODE: &str = "node-b";

/// The configuration every test uses unless it says otherwise.
pub fn config() -> Config {
    Config {
        node_name: NODE.into(),
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd44::/32".parse().unwrap(),
        ],
        service_cidrs: vec![
            "10.96.0.0/16".parse().unwrap(),
            "fd96::/112".parse().unwrap(),
        ],
        nodeport_addresses: vec![
            "192.168.77.1/32".parse().unwrap(),
            "fd77::1/128".parse().unwrap(),
        ],
        node_ips: vec!["192.168.77.1".parse().unwrap(), "fd77::1".parse().unwrap()],
        zone: None,
        masquerade_all: false,
        service_proxy_name: None,
    }
}

/// A Service under construction.
#[derive(Clone)]
pub struct Svc(pub Service);

/// `svc("default", "web", "10.96.0.10")`: a ClusterIP Service without ports.
pub fn svc(ns: &str, name: &str, cluster_ip: &str) -> Svc {
    Svc(Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ..Default::default()
        }),
        status: None,
    })
}

impl Svc {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.as_mut().unwrap()
    }

    /// A second ClusterIP (dual-stack).
    pub fn also(mut self, cluster_ip: &str) -> Self {
        self.spec()
            .cluster_ips
            .as_mut()
            .unwrap()
            .push(cluster_ip.into());
        self
    }

    /// A port (`proto` is `TCP`, `UDP` or `SCTP`).
    pub fn port(mut self, name: &str, proto: &str, port: i32) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: Some(name.into()),
                protocol: Some(proto.into()),
                port,
                ..Default::default()
            });
        self
    }

    /// `type: NodePort` with node ports for the ports, in order.
    pub fn node_ports(mut self, ports: &[i32]) -> Self {
        self.spec().type_ = Some("NodePort".into());
        for (p, np) in self.spec().ports.as_mut().unwrap().iter_mut().zip(ports) {
            p.node_port = Some(*np);
        }
        self
    }

    /// `type: LoadBalancer` with node ports and an ingress address.
    pub fn load_balancer(mut self, ip: &str, node_ports: &[i32]) -> Self {
        self = self.node_ports(node_ports);
        self.spec().type_ = Some("LoadBalancer".into());
        let status = self.0.status.get_or_insert_with(ServiceStatus::default);
        status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default)
            .ingress
            .get_or_insert_with(Vec::new)
            .push(LoadBalancerIngress {
                ip: Some(ip.into()),
                ..Default::default()
            });
        self
    }

    /// `spec.externalIPs`.
    pub fn external_ip(mut self, ip: &str) -> Self {
        self.spec()
            .external_ips
            .get_or_insert_with(Vec::new)
            .push(ip.into());
        self
    }

    /// `externalTrafficPolicy: Local` (with a health check node port).
    pub fn etp_local(mut self, health_check_node_port: i32) -> Self {
        self.spec().external_traffic_policy = Some("Local".into());
        self.spec().health_check_node_port = Some(health_check_node_port);
        self
    }

    /// `internalTrafficPolicy: Local`.
    pub fn itp_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".into());
        self
    }

    /// `sessionAffinity: ClientIP`.
    pub fn affinity(mut self, timeout_seconds: i32) -> Self {
        self.spec().session_affinity = Some("ClientIP".into());
        self.spec().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(timeout_seconds),
            }),
        });
        self
    }

    /// `loadBalancerSourceRanges`.
    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges =
            Some(ranges.iter().map(|r| (*r).to_owned()).collect());
        self
    }

    /// A label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// `creationTimestamp`, in seconds since the epoch.
    pub fn created(mut self, secs: i64) -> Self {
        self.0.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
            ));
        self
    }

    /// `clusterIP: None`.
    pub fn headless(mut self) -> Self {
        self.spec().cluster_ip = Some("None".into());
        self.spec().cluster_ips = Some(vec!["None".into()]);
        self
    }
}

/// An endpoint under construction.
#[derive(Clone)]
pub struct Ep(pub Endpoint);

/// A ready endpoint on this node.
pub fn ep(ip: &str) -> Ep {
    Ep(Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        node_name: Some(NODE.into()),
        ..Default::default()
    })
}

impl Ep {
    /// On another node.
    pub fn on(mut self, node: &str) -> Self {
        self.0.node_name = Some(node.into());
        self
    }

    /// Not ready (and not serving).
    pub fn not_ready(mut self) -> Self {
        self.0.conditions = Some(EndpointConditions {
            ready: Some(false),
            serving: Some(false),
            terminating: Some(false),
        });
        self
    }

    /// In `zone`, hinted for `hint` (`trafficDistribution: PreferClose`
    /// hints an endpoint for its own zone).
    pub fn zoned(mut self, zone: &str, hint: Option<&str>) -> Self {
        self.0.zone = Some(zone.into());
        self.0.hints = hint.map(|h| k8s_openapi::api::discovery::v1::EndpointHints {
            for_zones: Some(vec![k8s_openapi::api::discovery::v1::ForZone {
                name: h.into(),
            }]),
            ..Default::default()
        });
        self
    }

    /// Terminating but still serving.
    pub fn terminating(mut self) -> Self {
        self.0.conditions = Some(EndpointConditions {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
        });
        self
    }
}

/// An EndpointSlice of a Service: ports as (name, protocol, port).
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: &[(&str, &str, i32)],
    eps: &[Ep],
) -> EndpointSlice {
    let v6 = eps
        .first()
        .is_some_and(|e| e.0.addresses.first().is_some_and(|a| a.contains(':')));
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                service.to_owned(),
            )])),
            ..Default::default()
        },
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: eps.iter().map(|e| e.0.clone()).collect(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p, port)| EndpointPort {
                    name: Some((*n).into()),
                    protocol: Some((*p).into()),
                    port: Some(*port),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// The `i`th of many ClusterIP Services in `ns` (scale tests and
/// benchmarks): `svc-{i}` on 10.96.x.y (counting from 10.96.0.1), one TCP
/// port 80.
pub fn bulk_service(ns: &str, i: usize) -> Svc {
    let n = i + 1;
    svc(
        ns,
        &format!("svc-{i}"),
        &format!("10.96.{}.{}", n >> 8, n & 255),
    )
    .port("http", "TCP", 80)
}

/// The slice of [`bulk_service`]`(ns, i)`: `endpoints` ready endpoints on
/// another node serving 8080, at addresses 10.128.0.0/9 numbered from
/// `i * stride` (a stride at least the largest endpoint count keeps every
/// Service's addresses apart).
pub fn bulk_slice(ns: &str, i: usize, endpoints: usize, stride: usize) -> EndpointSlice {
    let eps: Vec<Ep> = (0..endpoints)
        .map(|j| {
            let k = i * stride + j;
            ep(&format!(
                "10.{}.{}.{}",
                128 + (k >> 16),
                (k >> 8) & 255,
                k & 255
            ))
            .on(OTHER_NODE)
        })
        .collect();
    slice(
        ns,
        &format!("svc-{i}-1"),
        &format!("svc-{i}"),
        &[("http", "TCP", 8080)],
        &eps,
    )
}

/// The showcase's partial change: its first Service goes, and `web` loses
/// its endpoints.
pub fn showcase_change(c: &mut Catalog, services: &[Svc]) {
    c.delete_service(&services[0].0);
    c.apply_slice(&slice(
        "default",
        "web-1",
        "web",
        &[("http", "TCP", 8080)],
        &[],
    ));
}

/// A catalog of Services and slices, with its changes taken.
pub fn catalog(services: &[Svc], slices: &[EndpointSlice]) -> Catalog {
    let mut c = Catalog::new();
    for s in services {
        c.apply_service(&s.0);
    }
    for s in slices {
        c.apply_slice(s);
    }
    c.take_changes();
    c
}

/// Tests that need root (network namespaces, nft) run when they can; when
/// `PORTICO_REQUIRE_ROOT_TESTS=1` they must.
pub fn root_or_skip(test: &str) -> bool {
    portico_testkit::ready_or_skip(test, &["nft", "ip", "conntrack"])
}

/// Every shape of Service the renderer knows, in one catalog.
pub fn showcase() -> (Vec<Svc>, Vec<EndpointSlice>) {
    let services = vec![
        svc("default", "web", "10.96.0.10").port("http", "TCP", 80),
        svc("kube-system", "dns", "10.96.0.53")
            .also("fd96::53")
            .port("dns", "UDP", 53)
            .port("dns-tcp", "TCP", 53),
        svc("default", "np", "10.96.0.20")
            .port("http", "TCP", 80)
            .node_ports(&[30080]),
        svc("default", "lb", "10.96.0.30")
            .port("http", "TCP", 80)
            .load_balancer("192.168.56.60", &[30081])
            .external_ip("203.0.113.10")
            .source_ranges(&["192.168.56.0/24", "198.51.100.7"]),
        svc("default", "local", "10.96.0.40")
            .port("http", "TCP", 80)
            .load_balancer("192.168.56.61", &[30082])
            .etp_local(30900),
        svc("default", "sticky", "10.96.0.50")
            .port("http", "TCP", 80)
            .affinity(600),
        svc("default", "empty", "10.96.0.60")
            .port("http", "TCP", 80)
            .node_ports(&[30083]),
        svc("default", "itp", "10.96.0.70")
            .port("http", "TCP", 80)
            .itp_local(),
        svc("default", "draining", "10.96.0.80").port("http", "TCP", 80),
        svc("default", "sctp", "10.96.0.90").port("assoc", "SCTP", 9000),
        svc("default", "named", "10.96.0.100")
            .port("http", "TCP", 80)
            .node_ports(&[30084]),
        svc("default", "db", "None")
            .headless()
            .port("pg", "TCP", 5432),
    ];
    let http = [("http", "TCP", 8080)];
    let slices = vec![
        slice(
            "default",
            "web-1",
            "web",
            &http,
            &[ep("10.244.1.2"), ep("10.244.2.2").on(OTHER_NODE)],
        ),
        slice(
            "kube-system",
            "dns-v4",
            "dns",
            &[("dns", "UDP", 5353), ("dns-tcp", "TCP", 5353)],
            &[ep("10.244.3.2"), ep("10.244.4.2").on(OTHER_NODE)],
        ),
        slice(
            "kube-system",
            "dns-v6",
            "dns",
            &[("dns", "UDP", 5353), ("dns-tcp", "TCP", 5353)],
            &[ep("fd44:0:3::2")],
        ),
        slice("default", "np-1", "np", &http, &[ep("10.244.1.2")]),
        slice(
            "default",
            "lb-1",
            "lb",
            &http,
            &[ep("10.244.1.2"), ep("10.244.2.2").on(OTHER_NODE)],
        ),
        slice(
            "default",
            "local-1",
            "local",
            &http,
            &[ep("10.244.1.2"), ep("10.244.2.2").on(OTHER_NODE)],
        ),
        slice(
            "default",
            "sticky-1",
            "sticky",
            &http,
            &[ep("10.244.1.2"), ep("10.244.2.2").on(OTHER_NODE)],
        ),
        slice(
            "default",
            "empty-1",
            "empty",
            &http,
            &[ep("10.244.5.2").not_ready()],
        ),
        slice(
            "default",
            "itp-1",
            "itp",
            &http,
            &[ep("10.244.2.2").on(OTHER_NODE)],
        ),
        slice(
            "default",
            "draining-1",
            "draining",
            &http,
            &[ep("10.244.1.2").terminating(), ep("10.244.2.2").not_ready()],
        ),
        slice(
            "default",
            "sctp-1",
            "sctp",
            &[("assoc", "SCTP", 9000)],
            &[ep("10.244.1.2")],
        ),
        // One named port, different numbers in different pods.
        slice("default", "named-1", "named", &http, &[ep("10.244.1.2")]),
        slice(
            "default",
            "named-2",
            "named",
            &[("http", "TCP", 9090)],
            &[ep("10.244.2.2").on(OTHER_NODE)],
        ),
    ];
    (services, slices)
}
