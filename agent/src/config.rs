//! The dataplane configuration of one node, from its Node object and the
//! agent's settings.

use ipnet::IpNet;
use portico_catalog::labels;
use portico_controllers::NetworkConfig;
use portico_controllers::k8s::Node;
use portico_dataplane::Config;
use std::net::IpAddr;

/// What the node dataplane programs beyond the networks (the flags of
/// `portico node` and `portico local --dataplane`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `--nodeport-addresses`: CIDRs (or addresses) where NodePorts
    /// answer; empty or `primary`: the node's primary addresses.
    pub nodeport_addresses: Vec<String>,
    /// `--service-proxy-name`: program only the Services labelled with it.
    pub service_proxy_name: Option<String>,
    /// `--masquerade-all`: masquerade every connection to a ClusterIP.
    pub masquerade_all: bool,
}

/// The NodePort addresses by default: the node's first InternalIP of each
/// family (its ExternalIP when it has no InternalIP of that family), as
/// host routes.
pub fn primary_addresses(node: &Node) -> Vec<IpNet> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out: Vec<IpNet> = Vec::new();
    for kind in ["InternalIP", "ExternalIP"] {
        for a in addresses.iter().filter(|a| a.type_ == kind) {
            if let Ok(ip) = a.address.parse::<IpAddr>()
                && !out.iter().any(|n| n.addr().is_ipv4() == ip.is_ipv4())
            {
                out.push(IpNet::from(ip));
            }
        }
    }
    out
}

/// The dataplane configuration of a node: its networks, and where its
/// NodePorts answer (the given CIDRs, else the node's primary addresses).
pub fn dataplane_config(
    net: &NetworkConfig,
    node_name: &str,
    settings: &Settings,
    node: Option<&Node>,
) -> anyhow::Result<Config> {
    let primary = node.map(primary_addresses).unwrap_or_default();
    let only_primary = match settings.nodeport_addresses.as_slice() {
        [] => true,
        [one] => one.trim() == "primary",
        many => {
            if many.iter().any(|s| s.trim() == "primary") {
                anyhow::bail!("--nodeport-addresses: \"primary\" cannot be combined with CIDRs");
            }
            false
        }
    };
    let nodeport_addresses = if only_primary {
        primary.clone()
    } else {
        settings
            .nodeport_addresses
            .iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| anyhow::anyhow!("--nodeport-addresses: {s:?} is not a CIDR"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    Ok(Config {
        node_name: node_name.to_owned(),
        cluster_cidrs: net.cluster_cidrs.clone(),
        service_cidrs: net.service_ranges.clone(),
        nodeport_addresses,
        node_ips: primary.iter().map(IpNet::addr).collect(),
        zone: node
            .and_then(|n| n.metadata.labels.as_ref()?.get(labels::ZONE).cloned())
            .filter(|z| !z.is_empty()),
        service_proxy_name: settings.service_proxy_name.clone(),
        masquerade_all: settings.masquerade_all,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
        addresses
            .iter()
            .fold(portico_testkit::objects::node(name), |n, (t, a)| {
                n.address(t, a)
            })
            .build()
    }

    #[test]
    fn node_ports_answer_on_the_primary_addresses_unless_told_otherwise() {
        let n = node(
            "n1",
            &[
                ("Hostname", "n1"),
                ("ExternalIP", "203.0.113.5"),
                ("InternalIP", "192.168.56.31"),
                ("InternalIP", "192.168.56.99"),
                ("InternalIP", "fd00::31"),
            ],
        );
        assert_eq!(
            primary_addresses(&n),
            vec![
                "192.168.56.31/32".parse::<IpNet>().unwrap(),
                "fd00::31/128".parse().unwrap()
            ]
        );
        let net = NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap();
        let c = dataplane_config(&net, "n1", &Settings::default(), Some(&n)).unwrap();
        assert_eq!(c.nodeport_addresses.len(), 2);
        let addresses = |a: &[&str]| Settings {
            nodeport_addresses: a.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let c = dataplane_config(
            &net,
            "n1",
            &addresses(&["10.0.0.0/8", "192.168.1.1"]),
            Some(&n),
        )
        .unwrap();
        assert_eq!(
            c.nodeport_addresses,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.168.1.1/32".parse().unwrap()
            ]
        );
        assert_eq!(
            c.node_ips,
            vec![
                "192.168.56.31".parse::<IpAddr>().unwrap(),
                "fd00::31".parse().unwrap()
            ],
            "the primary addresses, whatever --nodeport-addresses says"
        );
        assert!(dataplane_config(&net, "n1", &addresses(&["nope"]), None).is_err());
        assert_eq!(c.zone, None);
        let zoned = portico_testkit::objects::node("n1")
            .label(labels::ZONE, "zone-a")
            .build();
        let c = dataplane_config(&net, "n1", &Settings::default(), Some(&zoned)).unwrap();
        assert_eq!(c.zone.as_deref(), Some("zone-a"));
        // kube-proxy's `primary`: the default, said out loud; alone only.
        let c = dataplane_config(&net, "n1", &addresses(&["primary"]), Some(&n)).unwrap();
        assert_eq!(c.nodeport_addresses, primary_addresses(&n));
        let err = dataplane_config(&net, "n1", &addresses(&["primary", "10.0.0.0/8"]), Some(&n))
            .unwrap_err();
        assert!(err.to_string().contains("cannot be combined"), "{err}");
    }
}
