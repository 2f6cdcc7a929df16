//! The cluster's network configuration: service ranges and pod networks.
//!
//! `--service-cluster-ip-range` holds one CIDR per family (comma-separated for
//! dual-stack, the first is the primary family); `--cluster-cidr` the pod
//! networks. Pods and Services must never share addresses, so overlapping
//! values are refused at start-up with a message that names both.

use crate::{Error, Result};
use ipnet::IpNet;
use portico_ipam::Family;

/// Validated service ranges and pod networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Service ranges, primary family first, at most one per family.
    pub service_ranges: Vec<IpNet>,
    /// Pod networks (`--cluster-cidr`), at most one per family.
    pub cluster_cidrs: Vec<IpNet>,
}

impl NetworkConfig {
    /// Parses and checks the two flags.
    pub fn parse(service_cluster_ip_range: &str, cluster_cidr: &str) -> Result<Self> {
        let service_ranges = parse_cidrs("--service-cluster-ip-range", service_cluster_ip_range)?;
        let cluster_cidrs = parse_cidrs("--cluster-cidr", cluster_cidr)?;
        for s in &service_ranges {
            for c in &cluster_cidrs {
                if s.contains(&c.network()) || c.contains(&s.network()) {
                    return Err(Error::Config {
                        flag: "--service-cluster-ip-range",
                        message: format!(
                            "service range {s} overlaps the pod network {c} (--cluster-cidr): \
                             pods and services must never share addresses"
                        ),
                    });
                }
            }
        }
        Ok(NetworkConfig {
            service_ranges,
            cluster_cidrs,
        })
    }

    /// The primary service family (the family of the first service range).
    pub fn primary_family(&self) -> Option<Family> {
        self.service_ranges.first().map(family_of_net)
    }
}

/// The family of a CIDR.
pub fn family_of_net(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

/// Parses a comma-separated list of at most one CIDR per family.
fn parse_cidrs(flag: &'static str, value: &str) -> Result<Vec<IpNet>> {
    let err = |message: String| Error::Config { flag, message };
    let mut nets: Vec<IpNet> = Vec::new();
    for part in value.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(err(format!(
                "{value:?}: expected one CIDR per family, comma-separated (e.g. 10.96.0.0/12,fd00:10:96::/108)"
            )));
        }
        let net: IpNet = part.parse().map_err(|_| {
            err(format!(
                "{part:?} is not a CIDR (expected e.g. 10.96.0.0/12)"
            ))
        })?;
        if net.trunc() != net {
            return Err(err(format!(
                "{part:?} has host bits set; did you mean {}?",
                net.trunc()
            )));
        }
        if nets.iter().any(|n| family_of_net(n) == family_of_net(&net)) {
            return Err(err(format!(
                "{value:?} has two {} CIDRs; give at most one per family",
                family_of_net(&net)
            )));
        }
        nets.push(net);
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_dual_stack_ranges_parse_with_the_primary_first() {
        let c =
            NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.primary_family(), Some(Family::V4));
        let c = NetworkConfig::parse(
            "fd00:10:96::/108, 10.96.0.0/12",
            "10.244.0.0/16,fd00:10:244::/56",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.service_ranges.len(), 2);
        assert_eq!(c.primary_family(), Some(Family::V6));
    }

    #[test]
    fn overlapping_service_and_pod_networks_are_refused_by_name() {
        let e = NetworkConfig::parse("10.96.0.0/12", "10.96.0.0/16").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("10.96.0.0/12") && msg.contains("10.96.0.0/16"),
            "{msg}"
        );
        assert!(msg.contains("overlaps"), "{msg}");
    }

    #[test]
    fn malformed_ranges_say_what_is_wrong() {
        for (value, needle) in [
            ("10.96.0.0/33", "is not a CIDR"),
            ("banana", "is not a CIDR"),
            ("10.96.0.1/12", "did you mean 10.96.0.0/12"),
            ("10.96.0.0/12,10.97.0.0/16", "two IPv4 CIDRs"),
            ("", "one CIDR per family"),
        ] {
            let msg = NetworkConfig::parse(value, "20.96.0.0/12")
                .unwrap_err()
                .to_string();
            assert!(msg.contains(needle), "{value}: {msg}");
            assert!(msg.starts_with("--service-cluster-ip-range"), "{msg}");
        }
        let msg = NetworkConfig::parse("10.96.0.0/12", "nope")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("--cluster-cidr"), "{msg}");
    }
}
