//! Builders of the Kubernetes objects tests make again and again:
//! `node("n1").ready(true).address("InternalIP", "192.168.56.31").build()`.

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeCondition, NodeStatus, Service,
    ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

fn add_label(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

/// A Node.
#[derive(Clone, Debug)]
pub struct NodeBuilder(Node);

/// A Node named `name`, with nothing else.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(Node {
        metadata: meta(None, name),
        ..Default::default()
    })
}

impl NodeBuilder {
    /// A label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
        self
    }

    /// An address (`InternalIP`, `ExternalIP`, `Hostname`).
    pub fn address(mut self, type_: &str, address: &str) -> Self {
        let status = self.0.status.get_or_insert_with(NodeStatus::default);
        status
            .addresses
            .get_or_insert_with(Vec::new)
            .push(NodeAddress {
                type_: type_.to_owned(),
                address: address.to_owned(),
            });
        self
    }

    /// The `Ready` condition.
    pub fn ready(mut self, ready: bool) -> Self {
        let status = self.0.status.get_or_insert_with(NodeStatus::default);
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            });
        self
    }

    /// The Node.
    pub fn build(self) -> Node {
        self.0
    }
}

/// A Service.
#[derive(Clone, Debug)]
pub struct ServiceBuilder(Service);

/// A Service `namespace/name` with an empty spec (type ClusterIP).
pub fn service(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder(Service {
        metadata: meta(Some(namespace), name),
        spec: Some(ServiceSpec::default()),
        status: None,
    })
}

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(ServiceSpec::default)
    }

    /// A label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
        self
    }

    /// `metadata.uid`.
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.to_owned());
        self
    }

    /// `spec.type`.
    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.to_owned());
        self
    }

    /// `spec.clusterIP` (and `clusterIPs`).
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.spec().cluster_ip = Some(ip.to_owned());
        self.spec().cluster_ips = Some(vec![ip.to_owned()]);
        self
    }

    /// A port (`protocol` defaults to TCP in the API; given here).
    pub fn port(mut self, port: i32, protocol: &str) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                port,
                protocol: Some(protocol.to_owned()),
                ..Default::default()
            });
        self
    }

    /// The node port of the last port.
    pub fn node_port(mut self, node_port: i32) -> Self {
        if let Some(p) = self.spec().ports.as_mut().and_then(|p| p.last_mut()) {
            p.node_port = Some(node_port);
        }
        self
    }

    /// `spec.externalTrafficPolicy: Local` (or `Cluster`).
    pub fn external_traffic_local(mut self, local: bool) -> Self {
        self.spec().external_traffic_policy =
            Some(if local { "Local" } else { "Cluster" }.to_owned());
        self
    }

    /// A LoadBalancer ingress address in the status.
    pub fn ingress(mut self, ip: &str) -> Self {
        let status = self.0.status.get_or_insert_with(ServiceStatus::default);
        status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default)
            .ingress
            .get_or_insert_with(Vec::new)
            .push(LoadBalancerIngress {
                ip: Some(ip.to_owned()),
                ..Default::default()
            });
        self
    }

    /// The Service.
    pub fn build(self) -> Service {
        self.0
    }
}

/// An EndpointSlice.
#[derive(Clone, Debug)]
pub struct SliceBuilder(EndpointSlice);

/// An IPv4 EndpointSlice `namespace/name` of Service `service`, without
/// endpoints or ports.
pub fn slice(namespace: &str, name: &str, service: &str) -> SliceBuilder {
    let mut metadata = meta(Some(namespace), name);
    add_label(&mut metadata, "kubernetes.io/service-name", service);
    SliceBuilder(EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: Vec::new(),
        ports: None,
    })
}

impl SliceBuilder {
    /// An endpoint at `address`, on `node` if given, ready or not (a ready
    /// endpoint serves and does not terminate).
    pub fn endpoint(mut self, address: &str, node: Option<&str>, ready: Option<bool>) -> Self {
        self.0.endpoints.push(Endpoint {
            addresses: vec![address.to_owned()],
            node_name: node.map(str::to_owned),
            conditions: ready.map(|r| EndpointConditions {
                ready: Some(r),
                ..Default::default()
            }),
            ..Default::default()
        });
        self
    }

    /// A port (number only).
    pub fn port(mut self, port: i32) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                port: Some(port),
                ..Default::default()
            });
        self
    }

    /// The EndpointSlice.
    pub fn build(self) -> EndpointSlice {
        self.0
    }
}
