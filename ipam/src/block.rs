//! Address families and address blocks (CIDRs and inclusive ranges).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// An IP address family.
///
/// Ordered with IPv4 first, which is the order pools list their families in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The number of bits of an address of this family (32 or 128).
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as a number, with its family.
pub(crate) fn to_num(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(a) => (Family::V4, u128::from(u32::from(a))),
        IpAddr::V6(a) => (Family::V6, u128::from(a)),
    }
}

/// The address of a number in a family (the number must fit the family).
pub(crate) fn from_num(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// A contiguous block of addresses of one family: a CIDR (`10.96.0.0/12`,
/// `fd00::/64`), an inclusive range (`192.168.56.60-192.168.56.70`) or a
/// single address (`192.168.56.80`).
///
/// Parse one with [`str::parse`]; [`Display`](fmt::Display) writes the same
/// notation back (a range of one address is written as that address).
///
/// Whether a block is a CIDR matters to a [`Pool`](crate::Pool): network and
/// broadcast addresses, the first address of a service range and the static
/// band of KEP-3070 are CIDR notions, so ranges have none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    first: IpAddr,
    last: IpAddr,
    cidr: Option<IpNet>,
}

impl Block {
    /// A block for a CIDR; fails when host bits are set (`10.96.0.1/12`).
    pub fn from_cidr(net: IpNet) -> Result<Block, BlockError> {
        let trunc = net.trunc();
        if trunc != net {
            return Err(BlockError::HostBitsSet {
                input: net.to_string(),
                suggestion: trunc,
            });
        }
        Ok(Block {
            first: net.network(),
            last: net.broadcast(),
            cidr: Some(net),
        })
    }

    /// A block for the inclusive range `first..=last`; fails when the ends
    /// are of different families or `first > last`.
    pub fn from_range(first: IpAddr, last: IpAddr) -> Result<Block, BlockError> {
        let input = || format!("{first}-{last}");
        if Family::of(first) != Family::of(last) {
            return Err(BlockError::MixedFamilies {
                input: input(),
                start: first,
                end: last,
            });
        }
        if first > last {
            return Err(BlockError::StartAfterEnd { input: input() });
        }
        Ok(Block {
            first,
            last,
            cidr: None,
        })
    }

    /// A block of one address (a range, not a `/32` or `/128` CIDR).
    pub fn single(ip: IpAddr) -> Block {
        Block {
            first: ip,
            last: ip,
            cidr: None,
        }
    }

    /// The lowest address of the block (the network address of a CIDR).
    pub fn first(&self) -> IpAddr {
        self.first
    }

    /// The highest address of the block (the broadcast address of an IPv4 CIDR).
    pub fn last(&self) -> IpAddr {
        self.last
    }

    /// The CIDR, when the block was given as one.
    pub fn cidr(&self) -> Option<IpNet> {
        self.cidr
    }

    /// The family of the block's addresses.
    pub fn family(&self) -> Family {
        Family::of(self.first)
    }

    /// The number of addresses in the block, network and broadcast included.
    ///
    /// Saturates at `u128::MAX` for `::/0`, whose 2^128 addresses do not fit.
    pub fn len(&self) -> u128 {
        self.span().saturating_add(1)
    }

    /// Always false: a block has at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the address is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family() && self.first <= ip && ip <= self.last
    }

    /// Whether the two blocks share at least one address.
    pub fn overlaps(&self, other: &Block) -> bool {
        blocks_overlap(self, other)
    }

    /// `last - first` as a number (the highest offset in the block).
    pub(crate) fn span(&self) -> u128 {
        to_num(self.last).1 - to_num(self.first).1
    }
}

/// Whether two blocks share at least one address (always false for blocks of
/// different families).
///
/// Use it to check that a service range and a pod CIDR, or two
/// LoadBalancer pools, are disjoint.
pub fn blocks_overlap(a: &Block, b: &Block) -> bool {
    a.family() == b.family() && a.first <= b.last && b.first <= a.last
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cidr {
            Some(net) => write!(f, "{net}"),
            None if self.first == self.last => write!(f, "{}", self.first),
            None => write!(f, "{}-{}", self.first, self.last),
        }
    }
}

impl FromStr for Block {
    type Err = BlockError;

    fn from_str(input: &str) -> Result<Block, BlockError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(BlockError::Empty {
                input: input.to_owned(),
            });
        }
        if let Some((addr, prefix)) = s.split_once('/') {
            return parse_cidr(input, addr.trim(), prefix.trim());
        }
        if let Some((start, end)) = s.split_once('-') {
            let parse = |part: &str| {
                part.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| BlockError::RangeAddress {
                        input: input.to_owned(),
                        part: part.trim().to_owned(),
                    })
            };
            let (start, end) = (parse(start)?, parse(end)?);
            return Block::from_range(start, end).map_err(|e| match e {
                BlockError::MixedFamilies { start, end, .. } => BlockError::MixedFamilies {
                    input: input.to_owned(),
                    start,
                    end,
                },
                _ => BlockError::StartAfterEnd {
                    input: input.to_owned(),
                },
            });
        }
        s.parse::<IpAddr>()
            .map(Block::single)
            .map_err(|_| BlockError::Unrecognized {
                input: input.to_owned(),
            })
    }
}

fn parse_cidr(input: &str, addr: &str, prefix: &str) -> Result<Block, BlockError> {
    let ip: IpAddr = addr.parse().map_err(|_| BlockError::CidrAddress {
        input: input.to_owned(),
        part: addr.to_owned(),
    })?;
    let max = Family::of(ip).bits();
    let bad_prefix = || BlockError::CidrPrefix {
        input: input.to_owned(),
        part: prefix.to_owned(),
        max,
    };
    // `u8::from_str` accepts a leading `+`; a prefix length is plain digits.
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_prefix());
    }
    let len: u8 = prefix.parse().map_err(|_| bad_prefix())?;
    let net = IpNet::new(ip, len).map_err(|_| bad_prefix())?;
    Block::from_cidr(net).map_err(|e| match e {
        BlockError::HostBitsSet { suggestion, .. } => BlockError::HostBitsSet {
            input: input.to_owned(),
            suggestion,
        },
        other => other,
    })
}

/// Why a block specification such as `10.96.0.0/12` or
/// `192.168.56.60-192.168.56.70` was rejected.
///
/// Every variant carries the offending input, and the message says what is
/// wrong with it, e.g.
/// `invalid address range "192.168.56.70-192.168.56.60": start is after end`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The input was empty (or only whitespace).
    #[error("invalid address block {input:?}: it is empty")]
    Empty {
        /// The input as given.
        input: String,
    },
    /// The input is neither a CIDR, a range nor an address.
    #[error(
        "invalid address block {input:?}: expected a CIDR (10.96.0.0/12), \
         a range (192.168.56.60-192.168.56.70) or a single address"
    )]
    Unrecognized {
        /// The input as given.
        input: String,
    },
    /// The address part of a CIDR is not an IP address.
    #[error("invalid CIDR {input:?}: {part:?} is not an IP address")]
    CidrAddress {
        /// The input as given.
        input: String,
        /// The part before the `/`.
        part: String,
    },
    /// The prefix length of a CIDR is not a number or is too long for the
    /// address family.
    #[error("invalid CIDR {input:?}: prefix length {part:?} is not a number from 0 to {max}")]
    CidrPrefix {
        /// The input as given.
        input: String,
        /// The part after the `/`.
        part: String,
        /// The longest prefix of the address family (32 or 128).
        max: u8,
    },
    /// A CIDR has bits set beyond its prefix, e.g. `10.96.0.1/12`.
    #[error("invalid CIDR {input:?}: host bits are set, did you mean \"{suggestion}\"?")]
    HostBitsSet {
        /// The input as given.
        input: String,
        /// The same prefix with the host bits cleared.
        suggestion: IpNet,
    },
    /// One end of a range is not an IP address.
    #[error("invalid address range {input:?}: {part:?} is not an IP address")]
    RangeAddress {
        /// The input as given.
        input: String,
        /// The end that did not parse.
        part: String,
    },
    /// The ends of a range are of different families.
    #[error(
        "invalid address range {input:?}: start {start} is {} but end {end} is {}",
        Family::of(*start),
        Family::of(*end)
    )]
    MixedFamilies {
        /// The input as given.
        input: String,
        /// The first address.
        start: IpAddr,
        /// The last address.
        end: IpAddr,
    },
    /// The start of a range is after its end.
    #[error("invalid address range {input:?}: start is after end")]
    StartAfterEnd {
        /// The input as given.
        input: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn err(s: &str) -> String {
        s.parse::<Block>().unwrap_err().to_string()
    }

    #[test]
    fn parses_cidrs_ranges_and_addresses() {
        let b: Block = "10.96.0.0/12".parse().unwrap();
        assert_eq!(b.first(), "10.96.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(b.last(), "10.111.255.255".parse::<IpAddr>().unwrap());
        assert_eq!(b.len(), 1 << 20);
        assert_eq!(b.family(), Family::V4);
        assert!(b.cidr().is_some());

        let r: Block = "192.168.56.60-192.168.56.70".parse().unwrap();
        assert_eq!(r.len(), 11);
        assert!(r.cidr().is_none());
        assert!(r.contains("192.168.56.60".parse().unwrap()));
        assert!(r.contains("192.168.56.70".parse().unwrap()));
        assert!(!r.contains("192.168.56.71".parse().unwrap()));
        assert!(!r.contains("fd00::1".parse().unwrap()));

        let v6: Block = "fd00:10:96::/108".parse().unwrap();
        assert_eq!(v6.len(), 1 << 20);
        assert_eq!(v6.family(), Family::V6);
        let v64: Block = "fd00::/64".parse().unwrap();
        assert_eq!(v64.len(), 1 << 64);

        let one: Block = " 192.168.56.80 ".parse().unwrap();
        assert_eq!(one.len(), 1);
        assert!(!one.is_empty());

        let spaced: Block = "fd00::1 - fd00::10".parse().unwrap();
        assert_eq!(spaced.len(), 16);

        let all: Block = "::/0".parse().unwrap();
        assert_eq!(all.len(), u128::MAX);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "10.96.0.0/12",
            "192.168.56.60-192.168.56.70",
            "fd00:10:96::/108",
            "fd00::/64",
            "fd00::1-fd00::ff",
            "192.168.56.80",
            "10.0.0.7/32",
        ] {
            let b: Block = s.parse().unwrap();
            assert_eq!(b.to_string(), s);
            assert_eq!(b.to_string().parse::<Block>().unwrap(), b);
        }
        let b: Block = "10.0.0.5-10.0.0.5".parse().unwrap();
        assert_eq!(b.to_string(), "10.0.0.5");
    }

    #[test]
    fn range_start_after_end() {
        assert_eq!(
            err("192.168.56.70-192.168.56.60"),
            r#"invalid address range "192.168.56.70-192.168.56.60": start is after end"#
        );
        assert!(matches!(
            "192.168.56.70-192.168.56.60".parse::<Block>(),
            Err(BlockError::StartAfterEnd { .. })
        ));
    }

    #[test]
    fn range_mixed_families() {
        assert_eq!(
            err("10.0.0.1-fd00::1"),
            r#"invalid address range "10.0.0.1-fd00::1": start 10.0.0.1 is IPv4 but end fd00::1 is IPv6"#
        );
        assert!(matches!(
            "10.0.0.1-fd00::1".parse::<Block>(),
            Err(BlockError::MixedFamilies { .. })
        ));
    }

    #[test]
    fn range_bad_address() {
        assert_eq!(
            err("10.0.0.1-10.0.0.300"),
            r#"invalid address range "10.0.0.1-10.0.0.300": "10.0.0.300" is not an IP address"#
        );
        assert_eq!(
            err("-10.0.0.1"),
            r#"invalid address range "-10.0.0.1": "" is not an IP address"#
        );
    }

    #[test]
    fn cidr_host_bits_set_suggests_network() {
        assert_eq!(
            err("10.96.0.1/12"),
            r#"invalid CIDR "10.96.0.1/12": host bits are set, did you mean "10.96.0.0/12"?"#
        );
        match "fd00:10:96::1/108".parse::<Block>() {
            Err(BlockError::HostBitsSet { suggestion, .. }) => {
                assert_eq!(suggestion.to_string(), "fd00:10:96::/108");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cidr_bad_prefix_and_address() {
        assert_eq!(
            err("10.96.0.0/33"),
            r#"invalid CIDR "10.96.0.0/33": prefix length "33" is not a number from 0 to 32"#
        );
        assert_eq!(
            err("fd00::/129"),
            r#"invalid CIDR "fd00::/129": prefix length "129" is not a number from 0 to 128"#
        );
        assert_eq!(
            err("10.96.0.0/+8"),
            r#"invalid CIDR "10.96.0.0/+8": prefix length "+8" is not a number from 0 to 32"#
        );
        assert_eq!(
            err("10.96.0/12"),
            r#"invalid CIDR "10.96.0/12": "10.96.0" is not an IP address"#
        );
    }

    #[test]
    fn garbage_and_empty() {
        assert_eq!(
            err("garbage"),
            r#"invalid address block "garbage": expected a CIDR (10.96.0.0/12), a range (192.168.56.60-192.168.56.70) or a single address"#
        );
        assert_eq!(err("  "), r#"invalid address block "  ": it is empty"#);
    }

    #[test]
    fn constructors() {
        let net: IpNet = "10.96.0.1/12".parse().unwrap();
        assert!(matches!(
            Block::from_cidr(net),
            Err(BlockError::HostBitsSet { .. })
        ));
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            Block::from_range(a, b).unwrap_err().to_string(),
            r#"invalid address range "10.0.0.2-10.0.0.1": start is after end"#
        );
        assert_eq!(Block::single(a).len(), 1);
    }

    #[test]
    fn overlap() {
        let p = |s: &str| s.parse::<Block>().unwrap();
        assert!(blocks_overlap(&p("10.96.0.0/12"), &p("10.100.0.0/16")));
        assert!(blocks_overlap(&p("10.100.0.0/16"), &p("10.96.0.0/12")));
        assert!(!blocks_overlap(&p("10.96.0.0/12"), &p("10.244.0.0/16")));
        assert!(blocks_overlap(
            &p("192.168.56.60-192.168.56.70"),
            &p("192.168.56.70-192.168.56.80")
        ));
        assert!(!blocks_overlap(
            &p("192.168.56.60-192.168.56.70"),
            &p("192.168.56.71-192.168.56.80")
        ));
        assert!(!blocks_overlap(&p("0.0.0.0/0"), &p("::/0")));
        assert!(p("fd00::/64").overlaps(&p("fd00::5")));
    }
}
