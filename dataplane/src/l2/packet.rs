//! The frames of L2 announcement, parsed and built as plain bytes: ARP
//! (RFC 826) requests and replies, gratuitous ARP (RFC 5227), and IPv6
//! neighbour solicitations and advertisements (RFC 4861), all in Ethernet
//! II frames. Fixed layouts, so pure functions tested on byte fixtures.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An Ethernet address.
pub type Mac = [u8; 6];

/// The Ethernet broadcast address.
pub const BROADCAST: Mac = [0xff; 6];

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OPTION_SOURCE_LINK_ADDRESS: u8 = 1;
const OPTION_TARGET_LINK_ADDRESS: u8 = 2;

/// All-nodes multicast, where unsolicited advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A request for an address that an announcing node answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// An ARP request: who has `target`? Tell `sender_ip` at `sender_mac`.
    Arp {
        /// The asker's link address (from the ARP payload).
        sender_mac: Mac,
        /// The asker's address (0.0.0.0 for a probe).
        sender_ip: Ipv4Addr,
        /// The address asked for.
        target: Ipv4Addr,
    },
    /// A neighbour solicitation for `target`.
    Solicitation {
        /// The frame's source link address.
        source_mac: Mac,
        /// The IPv6 source (`::` for duplicate address detection).
        source_ip: Ipv6Addr,
        /// The address asked for.
        target: Ipv6Addr,
    },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac_at(b: &[u8], at: usize) -> Option<Mac> {
    b.get(at..at + 6)?.try_into().ok()
}

/// The request in an Ethernet frame, if it is an ARP request or a valid
/// neighbour solicitation (hop limit 255, code 0, correct checksum).
pub fn parse(frame: &[u8]) -> Option<Request> {
    let source_mac = mac_at(frame, 6)?;
    let payload = frame.get(14..)?;
    match u16_at(frame, 12)? {
        ETHERTYPE_ARP => {
            // Ethernet / IPv4, request.
            if u16_at(payload, 0)? != 1
                || u16_at(payload, 2)? != ETHERTYPE_IPV4
                || payload.get(4..6)? != [6, 4]
                || u16_at(payload, 6)? != 1
            {
                return None;
            }
            let ip = |at: usize| -> Option<Ipv4Addr> {
                let b: [u8; 4] = payload.get(at..at + 4)?.try_into().ok()?;
                Some(Ipv4Addr::from(b))
            };
            Some(Request::Arp {
                sender_mac: mac_at(payload, 8)?,
                sender_ip: ip(14)?,
                target: ip(24)?,
            })
        }
        ETHERTYPE_IPV6 => {
            let ip = |at: usize| -> Option<Ipv6Addr> {
                let b: [u8; 16] = payload.get(at..at + 16)?.try_into().ok()?;
                Some(Ipv6Addr::from(b))
            };
            if payload.first()? >> 4 != 6 || *payload.get(6)? != ICMPV6 || *payload.get(7)? != 255 {
                return None;
            }
            let len = usize::from(u16_at(payload, 4)?);
            let icmp = payload.get(40..40 + len)?;
            let (source_ip, destination) = (ip(8)?, ip(24)?);
            if icmp.len() < 24
                || icmp[0] != NEIGHBOR_SOLICITATION
                || icmp[1] != 0
                || checksum(&source_ip, &destination, icmp) != 0
            {
                return None;
            }
            let b: [u8; 16] = icmp.get(8..24)?.try_into().ok()?;
            let target = Ipv6Addr::from(b);
            if target.is_multicast() {
                return None;
            }
            Some(Request::Solicitation {
                source_mac,
                source_ip,
                target,
            })
        }
        _ => None,
    }
}

fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload_len.max(46));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn arp(op: u16, dst: Mac, mac: Mac, ip: Ipv4Addr, target_mac: Mac, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(dst, mac, ETHERTYPE_ARP, 28);
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip.octets());
    // Pad to the Ethernet minimum (60 bytes without the FCS).
    f.resize(60, 0);
    f
}

/// The ARP reply that says `ip` is at `mac`, to the asker.
pub fn arp_reply(mac: Mac, ip: Ipv4Addr, to_mac: Mac, to_ip: Ipv4Addr) -> Vec<u8> {
    arp(2, to_mac, mac, ip, to_mac, to_ip)
}

/// Gratuitous ARP for `ip` at `mac`, broadcast: a request (what most
/// hosts and switches act on) and a reply (what some older ones want),
/// as `arping -U` and `arping -A` send them.
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> [Vec<u8>; 2] {
    [
        arp(1, BROADCAST, mac, ip, [0; 6], ip),
        arp(2, BROADCAST, mac, ip, BROADCAST, ip),
    ]
}

/// The Ethernet address of an IPv6 multicast group (RFC 2464).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast group of an address (RFC 4291), where
/// solicitations for it are sent.
pub fn solicited_node(address: Ipv6Addr) -> Ipv6Addr {
    let o = address.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// The ICMPv6 checksum of `icmp` (its checksum field included: 0 when it
/// is right).
pub fn checksum(source: &Ipv6Addr, destination: &Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&source.octets());
    add(&destination.octets());
    let len = u32::try_from(icmp.len()).unwrap_or(u32::MAX);
    add(&len.to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A neighbour advertisement that says `target` is at `mac` (override
/// set), from `source` (an address of the interface, or the target), to
/// `to_ip` at `to_mac`; `solicited` when it answers a solicitation.
pub fn neighbor_advertisement(
    mac: Mac,
    source: Ipv6Addr,
    target: Ipv6Addr,
    to_mac: Mac,
    to_ip: Ipv6Addr,
    solicited: bool,
) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[NEIGHBOR_ADVERTISEMENT, 0, 0, 0]);
    // Flags: router 0, solicited, override.
    icmp.push(if solicited { 0x60 } else { 0x20 });
    icmp.extend_from_slice(&[0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[OPTION_TARGET_LINK_ADDRESS, 1]);
    icmp.extend_from_slice(&mac);
    let sum = checksum(&source, &to_ip, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = ethernet(to_mac, mac, ETHERTYPE_IPV6, 40 + icmp.len());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(icmp.len()).unwrap_or(0).to_be_bytes());
    f.extend_from_slice(&[ICMPV6, 255]);
    f.extend_from_slice(&source.octets());
    f.extend_from_slice(&to_ip.octets());
    f.extend_from_slice(&icmp);
    f
}

/// An unsolicited neighbour advertisement for `target` to all nodes.
pub fn unsolicited_advertisement(mac: Mac, source: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    neighbor_advertisement(
        mac,
        source,
        target,
        multicast_mac(ALL_NODES),
        ALL_NODES,
        false,
    )
}

/// A neighbour solicitation for `target` from `source` at `mac`, to the
/// target's solicited-node group, with the source link address option:
/// what a host sends to resolve an address (tests and tools use it).
pub fn neighbor_solicitation(mac: Mac, source: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(target);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[NEIGHBOR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[OPTION_SOURCE_LINK_ADDRESS, 1]);
    icmp.extend_from_slice(&mac);
    let sum = checksum(&source, &group, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet(multicast_mac(group), mac, ETHERTYPE_IPV6, 40 + icmp.len());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(icmp.len()).unwrap_or(0).to_be_bytes());
    f.extend_from_slice(&[ICMPV6, 255]);
    f.extend_from_slice(&source.octets());
    f.extend_from_slice(&group.octets());
    f.extend_from_slice(&icmp);
    f
}

/// An ARP request for `target` from `ip` at `mac`, broadcast.
pub fn arp_request(mac: Mac, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp(1, BROADCAST, mac, ip, [0; 6], target)
}

/// What an announcement frame says: `(address, link address)` of an ARP
/// reply or neighbour advertisement, solicited or not. Used to check what
/// was sent.
pub fn parse_announcement(frame: &[u8]) -> Option<(std::net::IpAddr, Mac)> {
    let payload = frame.get(14..)?;
    match u16_at(frame, 12)? {
        ETHERTYPE_ARP => {
            let sender: [u8; 4] = payload.get(14..18)?.try_into().ok()?;
            let target: [u8; 4] = payload.get(24..28)?.try_into().ok()?;
            // A reply, or a gratuitous request (sender = target).
            if u16_at(payload, 6)? == 2 || sender == target {
                Some((Ipv4Addr::from(sender).into(), mac_at(payload, 8)?))
            } else {
                None
            }
        }
        ETHERTYPE_IPV6 => {
            let icmp = payload.get(40..)?;
            if *payload.get(6)? != ICMPV6 || *icmp.first()? != NEIGHBOR_ADVERTISEMENT {
                return None;
            }
            let b: [u8; 16] = icmp.get(8..24)?.try_into().ok()?;
            let opt = icmp.get(24..32)?;
            if opt[0] != OPTION_TARGET_LINK_ADDRESS {
                return None;
            }
            Some((Ipv6Addr::from(b).into(), mac_at(opt, 2)?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CLIENT: Mac = [0x02, 0, 0, 0, 0, 0x02];
    const NODE: Mac = [0x02, 0, 0, 0, 0, 0x31];

    #[test]
    fn an_arp_request_parses_and_its_reply_says_the_node_has_the_address() {
        let lb: Ipv4Addr = "192.168.56.60".parse().unwrap();
        let client: Ipv4Addr = "192.168.56.2".parse().unwrap();
        let req = arp_request(CLIENT, client, lb);
        // What tcpdump shows: broadcast, ARP, request, padded to 60 bytes.
        assert_eq!(req.len(), 60);
        assert_eq!(&req[..6], &BROADCAST);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!(
            parse(&req),
            Some(Request::Arp {
                sender_mac: CLIENT,
                sender_ip: client,
                target: lb
            })
        );
        let reply = arp_reply(NODE, lb, CLIENT, client);
        assert_eq!(&reply[..6], &CLIENT);
        assert_eq!(&reply[20..22], &[0, 2], "operation: reply");
        assert_eq!(parse(&reply), None, "a reply is not a request");
        assert_eq!(parse_announcement(&reply), Some((lb.into(), NODE)));
        assert_eq!(parse_announcement(&req), None);
    }

    #[test]
    fn gratuitous_arp_is_a_broadcast_request_and_reply_for_the_address_itself() {
        let lb: Ipv4Addr = "192.168.56.60".parse().unwrap();
        for f in gratuitous_arp(NODE, lb) {
            assert_eq!(&f[..6], &BROADCAST);
            assert_eq!(&f[28..32], &lb.octets(), "sender address");
            assert_eq!(&f[38..42], &lb.octets(), "target address");
            assert_eq!(parse_announcement(&f), Some((lb.into(), NODE)));
        }
    }

    #[test]
    fn a_neighbor_solicitation_parses_and_the_advertisement_checksums() {
        let lb: Ipv6Addr = "fd00:56::60".parse().unwrap();
        let client: Ipv6Addr = "fd00:56::2".parse().unwrap();
        let ns = neighbor_solicitation(CLIENT, client, lb);
        assert_eq!(&ns[..6], &[0x33, 0x33, 0xff, 0, 0, 0x60]);
        assert_eq!(
            solicited_node(lb),
            "ff02::1:ff00:60".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            parse(&ns),
            Some(Request::Solicitation {
                source_mac: CLIENT,
                source_ip: client,
                target: lb
            })
        );
        // A corrupted checksum, or a hop limit below 255 (routed from
        // elsewhere), is not a solicitation.
        let mut bad = ns.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&bad), None);
        let mut routed = ns.clone();
        routed[14 + 7] = 64;
        assert_eq!(parse(&routed), None);

        let na = neighbor_advertisement(NODE, lb, lb, CLIENT, client, true);
        let icmp = &na[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x60, "solicited and override");
        assert_eq!(checksum(&lb, &client, icmp), 0);
        assert_eq!(parse_announcement(&na), Some((lb.into(), NODE)));

        let un = unsolicited_advertisement(NODE, lb, lb);
        assert_eq!(&un[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(un[54 + 4], 0x20, "override only");
        assert_eq!(checksum(&lb, &ALL_NODES, &un[54..]), 0);
    }

    #[test]
    fn short_and_foreign_frames_are_ignored() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0; 13]), None);
        let mut ipv4 = arp_request(CLIENT, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(parse(&ipv4), None);
        let req = arp_request(CLIENT, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
        assert_eq!(parse(&req[..30]), None);
    }
}
