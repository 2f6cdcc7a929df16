//! Which node announces an address: consistent hashing over the eligible,
//! live nodes.
//!
//! Every agent computes the same answer from the same inputs without
//! talking to the others. Each node owns [`POINTS_PER_NODE`] points on a
//! 64-bit ring, at fixed hashes of its name; an address sits at a fixed
//! position, and the first node point at or after it (wrapping) announces
//! it. The hashes are written out here (FNV-1a, then MurmurHash3's
//! finaliser) rather than taken from `std`, whose hashers may change
//! between Rust releases: agents built by different compilers must agree.
//!
//! What follows from a ring:
//! - a node that leaves moves only the addresses it announced, each to the
//!   owner of the next point, so they spread over the others;
//! - a node that joins takes addresses only for itself;
//! - a node's share of the ring is even to a few percent (many points per
//!   node), and addresses of a pool sit evenly on it: the low 64 bits of an
//!   address are multiplied by 2^64/φ (Fibonacci hashing), so consecutive
//!   addresses land far apart and fill the ring like a low-discrepancy
//!   sequence, where independent random positions would leave each node's
//!   count off by ±√n (±10% for 100 addresses a node).

use std::net::IpAddr;

/// Points each node owns on the ring: a node's share of the ring is off
/// its fair share by about 1/√points (3%).
pub const POINTS_PER_NODE: u32 = 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// 2^64 / φ, odd: multiplying consecutive integers by it spreads them
/// evenly over the ring (Knuth's multiplicative hashing).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output
/// bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Where an address sits on the ring. IPv4 addresses and the low 64 bits
/// of IPv6 ones are Fibonacci-hashed (consecutive addresses spread evenly);
/// the high 64 bits of an IPv6 address shift the whole sequence, so two
/// prefixes do not line up.
pub fn position(address: IpAddr) -> u64 {
    match address {
        IpAddr::V4(a) => u64::from(u32::from(a)).wrapping_mul(GOLDEN),
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let high = (bits >> 64) as u64;
            let low = bits as u64;
            low.wrapping_mul(GOLDEN)
                .wrapping_add(fmix64(fnv1a(FNV_OFFSET, &high.to_be_bytes())))
        }
    }
}

/// Where the `i`th point of `node` sits on the ring.
pub fn point(node: &str, i: u32) -> u64 {
    let h = fnv1a(FNV_OFFSET, node.as_bytes());
    // A separator that no byte of a node name (UTF-8) can be.
    let h = fnv1a(h, &[0xff]);
    fmix64(fnv1a(h, &i.to_be_bytes()))
}

/// The ring of a set of nodes; build it once per change of the set and
/// ask it for many addresses.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    nodes: Vec<String>,
    /// (position, index into `nodes`), sorted; equal positions by name.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// The ring of `nodes` (order and repetitions do not matter).
    pub fn new<'a>(nodes: impl IntoIterator<Item = &'a str>) -> Ring {
        let mut names: Vec<String> = nodes.into_iter().map(str::to_owned).collect();
        names.sort_unstable();
        names.dedup();
        let mut points = Vec::with_capacity(names.len() * POINTS_PER_NODE as usize);
        for (i, n) in names.iter().enumerate() {
            // More than 2^32 nodes cannot be named in any cluster.
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            points.extend((0..POINTS_PER_NODE).map(|k| (point(n, k), i)));
        }
        // Names are sorted, so index order is name order: ties are broken
        // the same way on every agent.
        points.sort_unstable();
        Ring {
            nodes: names,
            points,
        }
    }

    /// The nodes of the ring, sorted.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The node that announces `address`, or `None` on an empty ring.
    pub fn choose(&self, address: IpAddr) -> Option<&str> {
        let pos = position(address);
        let at = self.points.partition_point(|(p, _)| *p < pos);
        let (_, node) = self.points.get(at).or_else(|| self.points.first())?;
        self.nodes.get(*node as usize).map(String::as_str)
    }
}

/// The node that announces `address` among `nodes` (the eligible, live
/// ones; order and repetitions do not matter), or `None` when there is
/// none. Builds a ring: for many addresses, build a [`Ring`] once.
pub fn choose<'a>(address: IpAddr, nodes: impl IntoIterator<Item = &'a str>) -> Option<String> {
    Ring::new(nodes).choose(address).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node-{i}")).collect()
    }

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(192, 168, 56, 0)) + i,
        ))
    }

    fn v6(i: u32) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(
            u128::from("fd00:56::".parse::<Ipv6Addr>().unwrap()) + u128::from(i),
        ))
    }

    fn winners(addresses: &[IpAddr], nodes: &[String]) -> Vec<String> {
        let ring = Ring::new(nodes.iter().map(String::as_str));
        addresses
            .iter()
            .map(|a| ring.choose(*a).unwrap().to_owned())
            .collect()
    }

    #[test]
    fn no_eligible_node_announces_nothing() {
        assert_eq!(choose(v4(60), []), None);
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_or_repetitions_of_nodes() {
        let mut n = nodes(7);
        let a = v4(60);
        let first = choose(a, n.iter().map(String::as_str)).unwrap().to_owned();
        n.reverse();
        n.extend(nodes(3));
        assert_eq!(choose(a, n.iter().map(String::as_str)).unwrap(), first);
        assert_eq!(Ring::new(n.iter().map(String::as_str)).nodes().len(), 7);
    }

    #[test]
    fn positions_and_points_are_fixed_functions_of_their_inputs() {
        // Pinned values: agents built at different times must agree.
        let pinned = [
            position("192.168.56.60".parse().unwrap()),
            position("fd00:56::60".parse().unwrap()),
            point("k8s-worker1", 0),
            point("k8s-worker1", 1),
        ];
        assert_eq!(pinned, PINNED, "{pinned:#x?}");
        assert_ne!(point("node-1", 0), point("node-2", 0));
    }

    const PINNED: [u64; 4] = [
        0x38d4_8143_4e61_acec,
        0xb58f_5775_33c9_7ff7,
        0x63c2_4106_b7fe_d9e5,
        0x3e8c_9bb9_bbdc_0d58,
    ];

    #[track_caller]
    fn assert_even(addresses: &[IpAddr], nodes: &[String]) {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for w in winners(addresses, nodes) {
            *count.entry(w).or_default() += 1;
        }
        let fair = addresses.len() / nodes.len();
        assert_eq!(count.len(), nodes.len(), "{count:?}");
        for (node, c) in &count {
            assert!(
                c.abs_diff(fair) * 100 <= fair * 20,
                "{node} announces {c} of {} addresses (fair share {fair}): {count:?}",
                addresses.len()
            );
        }
    }

    #[test]
    fn addresses_spread_evenly_over_ten_nodes() {
        // 1,000 addresses over 10 nodes land 84..=114 a node on these three
        // sets. Closer than about ±10% no choice can promise that moves
        // only a leaving node's addresses: that makes it a ranking of the
        // nodes per address, so a node's count is a sum of 1,000 draws
        // (standard deviation √(1000·0.1·0.9) ≈ 9.5). ±20% fails a skewed
        // hash while a fair one passes.
        let n = nodes(10);
        assert_even(&(0..1000).map(v4).collect::<Vec<_>>(), &n);
        assert_even(&(0..1000).map(v6).collect::<Vec<_>>(), &n);
        // Node names with less in common than a counter.
        let named: Vec<String> = [
            "k8s-control-plane",
            "k8s-worker",
            "k8s-worker2",
            "rack1-a",
            "rack1-b",
            "rack2-a",
            "rack2-b",
            "edge-01.example.org",
            "edge-02.example.org",
            "gpu",
        ]
        .map(String::from)
        .to_vec();
        assert_even(&(0..1000).map(v4).collect::<Vec<_>>(), &named);
    }

    #[test]
    fn a_node_that_leaves_moves_only_its_own_addresses() {
        let addresses: Vec<IpAddr> = (0..1000).map(v4).chain((0..1000).map(v6)).collect();
        let all = nodes(10);
        let before = winners(&addresses, &all);
        let gone = "node-4";
        let rest: Vec<String> = all.iter().filter(|n| *n != gone).cloned().collect();
        let after = winners(&addresses, &rest);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b == gone {
                moved += 1;
                assert_ne!(a, gone);
            } else {
                assert_eq!(a, b, "an address of {b} moved to {a}");
            }
        }
        assert!(moved > 150, "node-4 had only {moved} of 2000 addresses");
        // The departed node's addresses spread over the others.
        let mut takers: Vec<&String> = before
            .iter()
            .zip(&after)
            .filter(|(b, _)| *b == gone)
            .map(|(_, a)| a)
            .collect();
        takers.sort();
        takers.dedup();
        assert_eq!(takers.len(), 9);
    }

    #[test]
    fn adding_nodes_moves_addresses_only_to_the_new_nodes() {
        let addresses: Vec<IpAddr> = (0..1000).map(v4).collect();
        let old = nodes(10);
        let before = winners(&addresses, &old);
        let mut more = old.clone();
        more.extend(["node-11".to_owned(), "unrelated".to_owned()]);
        let after = winners(&addresses, &more);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if a != b {
                moved += 1;
                assert!(a == "node-11" || a == "unrelated", "{b} -> {a}");
            }
        }
        // About 2/12 of the addresses go to the two new nodes.
        assert!((100..240).contains(&moved), "{moved} moved");
    }
}
