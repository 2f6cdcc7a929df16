//! The chains, sets and maps of a table that do not depend on Services:
//! the base chains on their hooks, dispatch, the fixed sets.

use super::*;

/// The static part of one family's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRules {
    /// Base and regular chains with their rules.
    pub chains: Vec<Chain>,
    /// Sets and maps.
    pub sets: Vec<(&'static str, SetDecl)>,
    /// Elements that depend on the configuration only (`nodeport-ips`).
    pub elements: Vec<Element>,
}

/// The chains, sets and maps of a family that do not depend on Services.
pub fn render_static(cfg: &Config, family: Family) -> StaticRules {
    let f = family.nft();
    let a = family.addr_type();
    let mut sets = vec![
        (
            CLUSTER_IPS,
            SetDecl::set(format!("type {a}")).comment("ClusterIPs"),
        ),
        (
            NODEPORT_IPS,
            SetDecl::set(format!("type {a}"))
                .flags(&["interval"])
                .comment("addresses NodePorts answer on"),
        ),
        (
            SERVICE_IPS,
            SetDecl::map(format!("type {a} . inet_proto . inet_service : verdict"))
                .comment("Service addresses and ports with endpoints"),
        ),
        (
            SERVICE_NODEPORTS,
            SetDecl::map("type inet_proto . inet_service : verdict")
                .comment("NodePorts with endpoints"),
        ),
        (
            NO_ENDPOINT_SERVICES,
            SetDecl::map(format!("type {a} . inet_proto . inet_service : verdict"))
                .comment("Service addresses and ports without endpoints"),
        ),
        (
            NO_ENDPOINT_NODEPORTS,
            SetDecl::map("type inet_proto . inet_service : verdict")
                .comment("NodePorts without endpoints"),
        ),
        (
            FIREWALL_IPS,
            SetDecl::set(format!("type {a} . inet_proto . inet_service"))
                .comment("LoadBalancer addresses with loadBalancerSourceRanges"),
        ),
        (
            FIREWALL_ALLOW,
            SetDecl::set(format!("type {a} . inet_proto . inet_service . {a}"))
                .flags(&["interval"])
                .comment("sources allowed by loadBalancerSourceRanges"),
        ),
        (
            HAIRPIN,
            SetDecl::set(format!("type {a} . {a}"))
                .comment("endpoints that may reach themselves through a Service"),
        ),
    ];
    for p in PROTOCOLS {
        let pr = proto(p);
        sets.push((
            service_backends(p),
            SetDecl::map(format!(
                "typeof {f} daddr . {pr} dport . numgen random mod 1 : {f} daddr"
            ))
            .comment("endpoint slots of Service addresses"),
        ));
        sets.push((
            service_ports(p),
            SetDecl::map(format!("typeof {f} daddr . {pr} dport : {pr} dport"))
                .comment("endpoint port of Service addresses"),
        ));
        sets.push((
            nodeport_backends(p),
            SetDecl::map(format!(
                "typeof {pr} dport . numgen random mod 1 : {f} daddr"
            ))
            .comment("endpoint slots of NodePorts"),
        ));
        sets.push((
            nodeport_ports(p),
            SetDecl::map(format!("typeof {pr} dport : {pr} dport"))
                .comment("endpoint port of NodePorts"),
        ));
    }

    let mut chains: Vec<Chain> = BASE_CHAINS
        .iter()
        .map(|b| Chain {
            family,
            name: b.name.to_owned(),
            base: Some(b.spec()),
            rules: b.rules.iter().map(|r| (*r).to_owned()).collect(),
        })
        .collect();
    let cluster = cfg.cluster_cidrs(family);
    let off_cluster = if cluster.is_empty() || cfg.masquerade_all {
        String::new()
    } else {
        format!(" {f} saddr != {}", net_list(&cluster))
    };
    let mark = format!("0x{MASQUERADE_MARK:08x}");
    let service_cidrs = cfg.service_cidrs(family);
    let mut cluster_ips_check = vec![format!("{f} daddr @{CLUSTER_IPS} reject")];
    if !service_cidrs.is_empty() {
        cluster_ips_check.push(format!("{f} daddr {} drop", net_list(&service_cidrs)));
    }
    let rules: [(&str, Vec<String>); 7] = [
        (
            SERVICES,
            vec![
                format!("{f} daddr @{CLUSTER_IPS}{off_cluster} jump {MARK_FOR_MASQUERADE}"),
                format!("{f} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
                format!(
                    "{f} daddr @{NODEPORT_IPS} fib daddr type local meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"
                ),
            ],
        ),
        (
            MARK_FOR_MASQUERADE,
            vec![format!("meta mark set meta mark | {mark}")],
        ),
        (
            MASQUERADING,
            vec![
                format!(
                    "ct status dnat {f} saddr . {f} daddr @{HAIRPIN} jump {MARK_FOR_MASQUERADE}"
                ),
                format!("meta mark & {mark} == 0x00000000 return"),
                format!("meta mark set meta mark ^ {mark}"),
                "masquerade fully-random".to_owned(),
            ],
        ),
        (
            SERVICE_ENDPOINTS_CHECK,
            vec![
                format!("{f} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
                format!(
                    "{f} daddr @{NODEPORT_IPS} fib daddr type local meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
                ),
            ],
        ),
        (
            FIREWALL_CHECK,
            vec![format!(
                "{f} daddr . meta l4proto . th dport @{FIREWALL_IPS} {f} daddr . meta l4proto . th dport . {f} saddr != @{FIREWALL_ALLOW} drop"
            )],
        ),
        (CLUSTER_IPS_CHECK, cluster_ips_check),
        (
            REJECT_CHAIN,
            vec![
                "meta l4proto tcp reject with tcp reset".to_owned(),
                "reject".to_owned(),
            ],
        ),
    ];
    chains.extend(rules.into_iter().map(|(name, rules)| Chain {
        family,
        name: name.to_owned(),
        base: None,
        rules,
    }));
    let elements = cfg
        .nodeport_addresses(family)
        .iter()
        .map(|n| Element {
            family,
            set: NODEPORT_IPS,
            key: net(n).into(),
            value: None,
        })
        .collect();
    StaticRules {
        chains,
        sets,
        elements,
    }
}
