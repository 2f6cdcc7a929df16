//! What the explain tests share: the network flags, and one call of
//! `explain` over a world.

#![allow(dead_code, clippy::unwrap_used)]

use portico_controllers::NetworkConfig;
use portico_explain::{Cluster, Error, Explanation, LiveRules, Request, Source, Target};
use portico_local::World;
use std::net::IpAddr;

/// Services 10.96.0.0/12, pods 10.244.0.0/16.
pub fn net() -> NetworkConfig {
    NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap()
}

/// A resolver for which nothing outside the cluster resolves.
pub fn nowhere(name: &str) -> Result<Vec<IpAddr>, String> {
    Err(format!("{name}: NXDOMAIN"))
}

/// `explain` of `target` over `world` (the default agent flags and zone),
/// the node's rules from `live` when given.
pub fn explain_with(
    world: &World,
    live: Option<LiveRules<'_>>,
    target: &str,
    from: Source,
    node: Option<&str>,
) -> Result<Explanation, Error> {
    let net = net();
    let cluster = Cluster {
        live,
        world,
        net: &net,
        settings: portico_agent::Settings::default(),
        zone: "cluster.local".into(),
    };
    let request = Request {
        target: target.parse::<Target>()?,
        node: node.map(str::to_owned),
        from,
    };
    portico_explain::explain(&cluster, &request, &nowhere)
}
