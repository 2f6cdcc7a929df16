//! Names are data: the table, every static chain, set and map, the base
//! chains as a table of structs, and the generated names (pick chains and
//! per-Service chains). `README.md` explains what each one is for.

use portico_catalog::Protocol;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// The table Portico owns, once per family (`ip portico`, `ip6 portico`).
pub const TABLE: &str = "portico";

/// The comment on each table.
pub const TABLE_COMMENT: &str = "Portico node dataplane: Service NAT (see dataplane/README.md)";

/// The bit of the packet mark that asks `masquerading` to SNAT a packet.
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Local-endpoint slots of a key start here in the backends maps (the
/// cluster-wide slots start at 0).
pub const LOCAL_SLOT_OFFSET: u32 = 1_000_000;

// ---- static chains ------------------------------------------------------

/// Dispatch: `service-ips` and `service-nodeports` verdict maps.
pub const SERVICES: &str = "services";
/// Sets the masquerade bit.
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
/// SNATs marked (and hairpin) packets.
pub const MASQUERADING: &str = "masquerading";
/// Rejects or drops traffic to Service ports without endpoints.
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
/// Drops sources outside `loadBalancerSourceRanges`.
pub const FIREWALL_CHECK: &str = "firewall-check";
/// After DNAT: rejects unknown ports of ClusterIPs, drops the rest of the
/// service range.
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
/// Answers with a TCP reset or an ICMP port unreachable.
pub const REJECT_CHAIN: &str = "reject-chain";

/// Every regular static chain, in the order they are written.
pub const STATIC_CHAINS: [&str; 7] = [
    SERVICES,
    MARK_FOR_MASQUERADE,
    MASQUERADING,
    SERVICE_ENDPOINTS_CHECK,
    FIREWALL_CHECK,
    CLUSTER_IPS_CHECK,
    REJECT_CHAIN,
];

// ---- static sets and maps ------------------------------------------------

/// Set: every ClusterIP.
pub const CLUSTER_IPS: &str = "cluster-ips";
/// Set (intervals): the addresses NodePorts answer on.
pub const NODEPORT_IPS: &str = "nodeport-ips";
/// Verdict map: `addr . proto . port` of ClusterIPs, externalIPs and
/// LoadBalancer addresses with endpoints.
pub const SERVICE_IPS: &str = "service-ips";
/// Verdict map: `proto . port` of NodePorts with endpoints.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Verdict map: `addr . proto . port` of Service addresses without
/// endpoints (reject, or drop under a Local policy).
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Verdict map: `proto . port` of NodePorts without endpoints.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Set: `addr . proto . port` of LoadBalancer addresses with source ranges.
pub const FIREWALL_IPS: &str = "firewall-ips";
/// Set (intervals): `addr . proto . port . source range` that may connect.
pub const FIREWALL_ALLOW: &str = "firewall-allow";
/// Set: `addr . addr` of endpoints that may reach themselves (hairpin).
pub const HAIRPIN: &str = "hairpin";

/// Data map: `addr . port . slot` of a Service address to an endpoint's
/// address.
pub fn service_backends(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "service-backends-tcp",
        Protocol::Udp => "service-backends-udp",
        Protocol::Sctp => "service-backends-sctp",
    }
}

/// Data map: `addr . port` of a Service address to its endpoints' port.
pub fn service_ports(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "service-ports-tcp",
        Protocol::Udp => "service-ports-udp",
        Protocol::Sctp => "service-ports-sctp",
    }
}

/// Data map: `nodeport . slot` to an endpoint's address.
pub fn nodeport_backends(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "nodeport-backends-tcp",
        Protocol::Udp => "nodeport-backends-udp",
        Protocol::Sctp => "nodeport-backends-sctp",
    }
}

/// Data map: `nodeport` to its endpoints' port.
pub fn nodeport_ports(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "nodeport-ports-tcp",
        Protocol::Udp => "nodeport-ports-udp",
        Protocol::Sctp => "nodeport-ports-sctp",
    }
}

/// Every protocol, in the order rules are written.
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// `tcp`, `udp`, `sctp`: the nft keyword of a protocol.
pub fn proto(p: Protocol) -> &'static str {
    p.srv_label()
}

// ---- families -------------------------------------------------------------

/// An address family, with its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `ip portico`.
    Ipv4,
    /// `ip6 portico`.
    Ipv6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// The nft family keyword, also the address expression's prefix
    /// (`ip daddr`, `ip6 daddr`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    /// The nft address type.
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4_addr",
            Family::Ipv6 => "ipv6_addr",
        }
    }

    /// Whether an address is of this family.
    pub fn contains(self, addr: &IpAddr) -> bool {
        Family::of(addr) == self
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft())
    }
}

// ---- base chains ----------------------------------------------------------

/// The type of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
}

/// A netfilter hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `prerouting`.
    Prerouting,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

/// `dstnat` (-100): where DNAT happens in prerouting and output.
pub const PRIORITY_DSTNAT: i32 = -100;
/// `srcnat` (100): where SNAT happens in postrouting.
pub const PRIORITY_SRCNAT: i32 = 100;

/// A chain attached to a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// Its name.
    pub name: &'static str,
    /// `filter` or `nat`.
    pub type_: ChainType,
    /// Where it is attached.
    pub hook: Hook,
    /// Its priority (numeric: nft 1.0.6 does not accept `dstnat` in the
    /// output hook).
    pub priority: i32,
    /// Its rules (static).
    pub rules: &'static [&'static str],
}

impl BaseChain {
    /// The declaration inside `{ … }` of `add chain`.
    pub fn spec(&self) -> String {
        let type_ = match self.type_ {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        };
        let hook = match self.hook {
            Hook::Prerouting => "prerouting",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        };
        format!(
            "type {type_} hook {hook} priority {} ; policy accept ;",
            self.priority
        )
    }
}

/// The words of a base chain's declaration (`type nat hook prerouting
/// priority -100 ; policy accept ;`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseSpec<'a> {
    /// `filter` or `nat`.
    pub type_: &'a str,
    /// `prerouting`, `forward`, …
    pub hook: &'a str,
    /// The priority, as written.
    pub priority: &'a str,
    /// `accept` or `drop`, when given.
    pub policy: Option<&'a str>,
}

/// Parses a base chain's declaration.
pub fn parse_base(spec: &str) -> Option<BaseSpec<'_>> {
    let words: Vec<&str> = spec
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let after = |w: &str| {
        words
            .iter()
            .position(|x| *x == w)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    Some(BaseSpec {
        type_: after("type")?,
        hook: after("hook")?,
        priority: after("priority")?,
        policy: after("policy"),
    })
}

/// `type hook priority` of a base chain's declaration (`type nat hook
/// prerouting priority -100 ; …` gives `nat prerouting -100`), to compare
/// what is wanted with what nft lists.
pub fn hook_key(spec: &str) -> Option<String> {
    let b = parse_base(spec)?;
    Some(format!("{} {} {}", b.type_, b.hook, b.priority))
}

/// Every base chain. Filter checks run before DNAT (the destination is
/// still the Service address), the ClusterIP check after it (a ClusterIP
/// still there means no Service port matched).
pub const BASE_CHAINS: [BaseChain; 7] = [
    BaseChain {
        name: "filter-prerouting",
        type_: ChainType::Filter,
        hook: Hook::Prerouting,
        priority: PRIORITY_DSTNAT - 10,
        rules: &[
            "ct state new jump firewall-check",
            "ct state new jump service-endpoints-check",
        ],
    },
    BaseChain {
        name: "filter-output",
        type_: ChainType::Filter,
        hook: Hook::Output,
        priority: PRIORITY_DSTNAT - 10,
        rules: &[
            "ct state new jump firewall-check",
            "ct state new jump service-endpoints-check",
        ],
    },
    BaseChain {
        name: "filter-forward",
        type_: ChainType::Filter,
        hook: Hook::Forward,
        priority: PRIORITY_DSTNAT - 10,
        rules: &["ct state new jump cluster-ips-check"],
    },
    BaseChain {
        name: "filter-output-post-dnat",
        type_: ChainType::Filter,
        hook: Hook::Output,
        priority: PRIORITY_DSTNAT + 10,
        rules: &["ct state new jump cluster-ips-check"],
    },
    BaseChain {
        name: "nat-prerouting",
        type_: ChainType::Nat,
        hook: Hook::Prerouting,
        priority: PRIORITY_DSTNAT,
        rules: &["jump services"],
    },
    BaseChain {
        name: "nat-output",
        type_: ChainType::Nat,
        hook: Hook::Output,
        priority: PRIORITY_DSTNAT,
        rules: &["jump services"],
    },
    BaseChain {
        name: "nat-postrouting",
        type_: ChainType::Nat,
        hook: Hook::Postrouting,
        priority: PRIORITY_SRCNAT,
        rules: &["jump masquerading"],
    },
];

/// Whether a chain name is one of the static ones (base or regular).
pub fn is_static_chain(name: &str) -> bool {
    STATIC_CHAINS.contains(&name) || BASE_CHAINS.iter().any(|b| b.name == name)
}

// ---- pick chains ----------------------------------------------------------

/// Where a pick chain's key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PickEntry {
    /// A Service address: the key is `daddr . dport . slot` in
    /// `service-backends-*`, the port comes from `service-ports-*`.
    Address,
    /// A NodePort: the key is `dport . slot` in `nodeport-backends-*`,
    /// the port comes from `nodeport-ports-*`.
    NodePort,
}

/// Which slots a pick chain draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PickSlots {
    /// Every usable endpoint (slots from 0).
    Cluster,
    /// Node-local endpoints (slots from [`LOCAL_SLOT_OFFSET`]).
    Local,
    /// Every usable endpoint, masqueraded (external traffic under
    /// `externalTrafficPolicy: Cluster`).
    Masquerade,
}

/// A pick chain: DNATs to one of `n` slots at random. Its rules depend on
/// its name only, so Services with the same number of endpoints share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pick {
    /// The key's shape.
    pub entry: PickEntry,
    /// The slots.
    pub slots: PickSlots,
    /// The number of endpoints (at least 1).
    pub n: usize,
}

impl Pick {
    /// `pick-3`, `pick-local-3`, `pick-masq-3`, `nodeport-pick-3`, …
    pub fn name(&self) -> String {
        let entry = match self.entry {
            PickEntry::Address => "",
            PickEntry::NodePort => "nodeport-",
        };
        let slots = match self.slots {
            PickSlots::Cluster => "",
            PickSlots::Local => "local-",
            PickSlots::Masquerade => "masq-",
        };
        format!("{entry}pick-{slots}{}", self.n)
    }

    /// The pick chain a name denotes, if any.
    pub fn parse(name: &str) -> Option<Pick> {
        let (entry, rest) = match name.strip_prefix("nodeport-") {
            Some(r) => (PickEntry::NodePort, r),
            None => (PickEntry::Address, name),
        };
        let rest = rest.strip_prefix("pick-")?;
        let (slots, n) = if let Some(n) = rest.strip_prefix("local-") {
            (PickSlots::Local, n)
        } else if let Some(n) = rest.strip_prefix("masq-") {
            (PickSlots::Masquerade, n)
        } else {
            (PickSlots::Cluster, rest)
        };
        if n.starts_with('0') {
            return None;
        }
        let n: usize = n.parse().ok()?;
        Some(Pick { entry, slots, n })
    }

    /// The rules of this chain in a family.
    pub fn rules(&self, family: Family) -> Vec<String> {
        let f = family.nft();
        if self.slots == PickSlots::Masquerade {
            let target = Pick {
                slots: PickSlots::Cluster,
                ..*self
            };
            return vec![
                format!("jump {MARK_FOR_MASQUERADE}"),
                format!("goto {}", target.name()),
            ];
        }
        let offset = match self.slots {
            PickSlots::Local => format!(" offset {LOCAL_SLOT_OFFSET}"),
            _ => String::new(),
        };
        PROTOCOLS
            .iter()
            .map(|&p| {
                let pr = proto(p);
                let (key, map, ports) = match self.entry {
                    PickEntry::Address => (
                        format!("{f} daddr . {pr} dport"),
                        service_backends(p),
                        service_ports(p),
                    ),
                    PickEntry::NodePort => {
                        (format!("{pr} dport"), nodeport_backends(p), nodeport_ports(p))
                    }
                };
                format!(
                    "meta l4proto {pr} dnat {f} to {key} . numgen random mod {}{offset} map @{map} : {key} map @{ports}",
                    self.n
                )
            })
            .collect()
    }
}

// ---- per-Service names ----------------------------------------------------

/// A Service port, as generated names spell it: `ns/name/proto/port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: u16,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            proto(self.protocol),
            self.port
        )
    }
}

/// The kinds of per-Service chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceChain {
    /// `service-…`: picks among every usable endpoint (session affinity).
    Service,
    /// `local-…`: picks among node-local endpoints (session affinity).
    Local,
    /// `external-…`: external traffic of a Service address (ETP Local, or
    /// any external traffic with session affinity).
    External,
    /// `nodeport-…`: NodePort traffic under ETP Local.
    NodePort,
}

impl ServiceChain {
    fn prefix(self) -> &'static str {
        match self {
            ServiceChain::Service => "service",
            ServiceChain::Local => "local",
            ServiceChain::External => "external",
            ServiceChain::NodePort => "nodeport",
        }
    }
}

/// `service-HASH-ns/name/tcp/80` and its kin. The hash of the name makes
/// truncated names unique; `/` marks a name as generated per Service.
pub fn service_chain(kind: ServiceChain, spn: &ServicePortName) -> String {
    let suffix = spn.to_string();
    format!("{}-{}-{suffix}", kind.prefix(), hash(&suffix))
}

/// `endpoint-HASH-ns/name/tcp/80__10.244.1.5/8080`; IPv6 addresses are
/// written with `.` for `:`, which nft names cannot hold.
pub fn endpoint_chain(spn: &ServicePortName, addr: IpAddr, port: u16) -> String {
    let suffix = endpoint_suffix(spn, addr, port);
    format!("endpoint-{}-{suffix}", hash(&suffix))
}

/// `affinity-HASH-ns/name/tcp/80__10.244.1.5/8080`: the clients that
/// recently reached this endpoint. The hash covers the timeout too: a set's
/// timeout cannot change, so a new timeout is a new set (the old one goes
/// with the chains that used it).
pub fn affinity_set(spn: &ServicePortName, addr: IpAddr, port: u16, timeout: Duration) -> String {
    let suffix = endpoint_suffix(spn, addr, port);
    format!(
        "affinity-{}-{suffix}",
        hash(&format!("{suffix}@{}", timeout.as_secs()))
    )
}

fn endpoint_suffix(spn: &ServicePortName, addr: IpAddr, port: u16) -> String {
    format!("{spn}__{}/{port}", addr.to_string().replace(':', "."))
}

/// 8 characters of base32 of the FNV-1a hash of a name.
pub fn hash(name: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..8)
        .map(|i| ALPHABET[((h >> (59 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// The longest chain or set name the kernel takes (NFT_NAME_MAXLEN - 1).
pub const MAX_NAME_LEN: usize = 255;

/// Whether nft's scanner reads `name` as one identifier:
/// `[A-Za-z_.][A-Za-z0-9/\-_.]*`, at most [`MAX_NAME_LEN`] bytes.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= MAX_NAME_LEN
        && (first.is_ascii_alphabetic() || first == '_' || first == '.')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
}

/// `10800s`: a timeout as nft writes it.
pub fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spn() -> ServicePortName {
        ServicePortName {
            namespace: "default".into(),
            name: "web".into(),
            protocol: Protocol::Tcp,
            port: 80,
        }
    }

    #[test]
    fn pick_names_round_trip() {
        for entry in [PickEntry::Address, PickEntry::NodePort] {
            for slots in [PickSlots::Cluster, PickSlots::Local, PickSlots::Masquerade] {
                for n in [1, 7, 120] {
                    let p = Pick { entry, slots, n };
                    assert_eq!(Pick::parse(&p.name()), Some(p), "{}", p.name());
                }
            }
        }
        assert_eq!(Pick::parse("pick-0"), None);
        assert_eq!(Pick::parse("pick-07"), None);
        assert_eq!(Pick::parse("services"), None);
        assert_eq!(Pick::parse("pick-x"), None);
    }

    #[test]
    fn generated_names_are_valid_and_distinct() {
        let v4 = endpoint_chain(&spn(), "10.244.1.5".parse().unwrap(), 8080);
        let v6 = endpoint_chain(&spn(), "fd00::1".parse().unwrap(), 8080);
        assert!(v4.ends_with("-default/web/tcp/80__10.244.1.5/8080"), "{v4}");
        assert!(v6.ends_with("-default/web/tcp/80__fd00..1/8080"), "{v6}");
        for name in [
            v4,
            v6,
            service_chain(ServiceChain::Service, &spn()),
            affinity_set(
                &spn(),
                "10.244.1.5".parse().unwrap(),
                8080,
                Duration::from_secs(10800),
            ),
        ] {
            assert!(is_valid_name(&name), "{name}");
            assert!(name.contains('/'));
        }
        assert_ne!(
            service_chain(ServiceChain::Service, &spn()),
            service_chain(ServiceChain::Local, &spn())
        );
        assert_eq!(hash("default/web/tcp/80").len(), 8);
        assert_ne!(hash("default/web/tcp/80"), hash("default/web/tcp/81"));
    }

    #[test]
    fn static_names_are_valid_and_not_generated() {
        for name in STATIC_CHAINS
            .iter()
            .chain(BASE_CHAINS.iter().map(|b| &b.name))
        {
            assert!(is_valid_name(name), "{name}");
            assert!(!name.contains('/'));
            assert!(Pick::parse(name).is_none());
        }
        assert!(!is_valid_name("a:b"));
        assert!(!is_valid_name("1abc"));
        assert!(!is_valid_name(""));
    }
}
