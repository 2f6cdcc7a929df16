//! The announcing side on one interface: an AF_PACKET socket (through
//! `pnet_datalink`, which needs only CAP_NET_RAW) that answers ARP requests
//! and neighbour solicitations for the addresses this node announces, and
//! sends gratuitous ARP / unsolicited neighbour advertisements when it
//! takes an address over and every garp interval after.
//!
//! Nothing on the node changes: no address is added to an interface, the
//! socket is not promiscuous. For IPv6 the interface joins each address's
//! solicited-node multicast group through a socket of its own, so that a
//! NIC that filters multicast passes the solicitations up; the memberships
//! go when the socket closes.

use super::packet::{self, Mac, Request};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the responder thread waits for a frame before it looks at its
/// commands again: the delay between a takeover and its gratuitous ARP.
const POLL: Duration = Duration::from_millis(20);

/// Gratuitous announcements are sent this many times at a takeover, this
/// far apart, in case the first is lost.
const TAKEOVER_REPEATS: u32 = 3;
const TAKEOVER_SPACING: Duration = Duration::from_millis(500);

/// An interface of the node, as L2 announcement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its name (`eth0`).
    pub name: String,
    /// Its link address.
    pub mac: Mac,
    /// Its addresses with their prefix lengths: which networks it is on.
    pub networks: Vec<IpNet>,
    /// Up, not loopback, with a link address.
    pub usable: bool,
}

/// The interfaces of the current network namespace.
pub fn links() -> Vec<Link> {
    pnet_datalink::interfaces()
        .into_iter()
        .map(|i| {
            let mac = i.mac.map(|m| m.octets());
            Link {
                usable: i.is_up() && !i.is_loopback() && mac.is_some_and(|m| m != [0; 6]),
                mac: mac.unwrap_or_default(),
                networks: i
                    .ips
                    .iter()
                    .filter_map(|n| IpNet::new(n.ip(), n.prefix()).ok())
                    .collect(),
                name: i.name,
            }
        })
        .collect()
}

/// Whether an interface pattern is valid: a name of at most 15 bytes
/// without `/`, whitespace or NUL, where `*` matches any run of
/// characters.
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= 15
        && !pattern
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c == '\0')
}

/// Whether `name` matches `pattern` (`*` matches any run of characters).
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            // `*` takes as little as it can, then the rest must match.
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| matches(tail, &rest[i..]))
        }
    }
}

/// The interfaces to announce `address` on: those matching one of the
/// patterns, or with none, the interfaces on a network that holds the
/// address (the connected route to it); usable ones only, sorted.
pub fn interfaces_for(address: IpAddr, patterns: &[String], links: &[Link]) -> Vec<String> {
    let mut out: Vec<String> = links
        .iter()
        .filter(|l| l.usable)
        .filter(|l| {
            if patterns.is_empty() {
                l.networks.iter().any(|n| {
                    n.contains(&address)
                        && n.addr() != address
                        && n.prefix_len() < n.max_prefix_len()
                })
            } else {
                patterns.iter().any(|p| matches(p, &l.name))
            }
        })
        .map(|l| l.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Counters of one responder.
#[derive(Debug, Default)]
pub struct Counters {
    /// ARP replies sent.
    pub arp_replies: AtomicU64,
    /// Solicited neighbour advertisements sent.
    pub neighbor_advertisements: AtomicU64,
    /// Gratuitous ARP and unsolicited neighbour advertisement frames sent.
    pub gratuitous: AtomicU64,
    /// Frames that could not be sent.
    pub send_errors: AtomicU64,
}

#[derive(Default)]
struct Shared {
    addresses: Mutex<BTreeSet<IpAddr>>,
    /// Addresses just taken over, to announce at once.
    taken: Mutex<Vec<IpAddr>>,
    stop: AtomicBool,
    counters: Counters,
}

/// Answers for a set of addresses on one interface, from a thread of its
/// own; dropping it stops the thread and closes the sockets.
pub struct Responder {
    link: Link,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Holds the solicited-node multicast memberships.
    groups: Option<socket2::Socket>,
    joined: BTreeSet<Ipv6Addr>,
}

impl Responder {
    /// Opens the AF_PACKET socket on `link` (in the current network
    /// namespace) and starts answering; `garp_interval` is how often every
    /// announced address is announced again (zero: only at takeover).
    pub fn open(link: &Link, garp_interval: Duration) -> io::Result<Responder> {
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == link.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such interface"))?;
        let config = pnet_datalink::Config {
            read_timeout: Some(POLL),
            promiscuous: false,
            ..Default::default()
        };
        let (tx, rx) = match pnet_datalink::channel(&iface, config)? {
            pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "not an Ethernet interface",
                ));
            }
        };
        // Without IPv6 on the node there are no groups to join; IPv4 still
        // works.
        let groups = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .ok();
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            link: link.clone(),
            index: iface.index,
            shared: shared.clone(),
            tx,
            rx,
            garp_interval,
            takeovers: Vec::new(),
            next_periodic: Instant::now() + garp_interval,
        };
        let thread = std::thread::Builder::new()
            .name(format!("l2-{}", link.name))
            .spawn(move || worker.run())?;
        Ok(Responder {
            link: link.clone(),
            shared,
            thread: Some(thread),
            groups,
            joined: BTreeSet::new(),
        })
    }

    /// A responder that keeps the addresses it is given and sends nothing,
    /// with no socket or thread: for dry runs and tests of what decides
    /// the addresses.
    pub fn inert(link: &Link) -> io::Result<Responder> {
        Ok(Responder {
            link: link.clone(),
            shared: Arc::new(Shared::default()),
            thread: None,
            groups: None,
            joined: BTreeSet::new(),
        })
    }

    /// The interface.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// The addresses announced.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        lock(&self.shared.addresses).clone()
    }

    /// Announces exactly `addresses` from now on; the new ones are
    /// announced gratuitously at once.
    pub fn set(&mut self, addresses: &BTreeSet<IpAddr>, index: u32) {
        let new: Vec<IpAddr> = {
            let mut current = lock(&self.shared.addresses);
            let new = addresses.difference(&current).copied().collect();
            *current = addresses.clone();
            new
        };
        lock(&self.shared.taken).extend(&new);
        let wanted: BTreeSet<Ipv6Addr> = addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(packet::solicited_node(*a)),
                IpAddr::V4(_) => None,
            })
            .collect();
        if let Some(s) = &self.groups {
            for g in wanted.difference(&self.joined) {
                if let Err(e) = s.join_multicast_v6(g, index) {
                    tracing::debug!(interface = %self.link.name, group = %g, error = %e, "cannot join the solicited-node group");
                }
            }
            for g in self.joined.difference(&wanted) {
                let _ = s.leave_multicast_v6(g, index);
            }
        }
        self.joined = wanted;
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Worker {
    link: Link,
    index: u32,
    shared: Arc<Shared>,
    tx: Box<dyn pnet_datalink::DataLinkSender>,
    rx: Box<dyn pnet_datalink::DataLinkReceiver>,
    garp_interval: Duration,
    /// (address, repeats left, when next).
    takeovers: Vec<(IpAddr, u32, Instant)>,
    next_periodic: Instant,
}

impl Worker {
    fn run(mut self) {
        tracing::debug!(interface = %self.link.name, index = self.index, "L2 responder started");
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let taken: Vec<IpAddr> = std::mem::take(&mut *lock(&self.shared.taken));
            for a in taken {
                self.takeovers.push((a, TAKEOVER_REPEATS, now));
            }
            let announced = lock(&self.shared.addresses).clone();
            let mut due = Vec::new();
            self.takeovers.retain_mut(|(a, left, at)| {
                if !announced.contains(a) {
                    return false;
                }
                if *at <= now {
                    due.push(*a);
                    *left -= 1;
                    *at = now + TAKEOVER_SPACING;
                }
                *left > 0
            });
            if !self.garp_interval.is_zero() && now >= self.next_periodic {
                self.next_periodic = now + self.garp_interval;
                due.extend(announced.iter().copied());
            }
            for a in due {
                self.gratuitous(a);
            }
            match self.rx.next() {
                Ok(frame) => {
                    // The set as it is now, not as it was when the wait began.
                    let reply = packet::parse(frame)
                        .and_then(|_| answer(&self.link, &lock(&self.shared.addresses), frame));
                    if let Some((frame, address)) = reply
                        && self.send(&frame)
                    {
                        let c = &self.shared.counters;
                        match address {
                            IpAddr::V4(_) => &c.arp_replies,
                            IpAddr::V6(_) => &c.neighbor_advertisements,
                        }
                        .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => {
                    tracing::warn!(interface = %self.link.name, error = %e, "reading frames");
                    std::thread::sleep(POLL);
                }
            }
        }
        tracing::debug!(interface = %self.link.name, "L2 responder stopped");
    }

    fn gratuitous(&mut self, address: IpAddr) {
        let frames = match address {
            IpAddr::V4(a) => packet::gratuitous_arp(self.link.mac, a).to_vec(),
            IpAddr::V6(a) => vec![packet::unsolicited_advertisement(self.link.mac, a, a)],
        };
        for f in frames {
            if self.send(&f) {
                self.shared
                    .counters
                    .gratuitous
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        match self.tx.send_to(frame, None) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                self.shared
                    .counters
                    .send_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(interface = %self.link.name, error = %e, "sending a frame");
                false
            }
            None => false,
        }
    }
}

/// The reply to a received frame, if it asks for an announced address:
/// the frame to send and the address it is for. Frames this node sent
/// itself are ignored.
pub fn answer(
    link: &Link,
    announced: &BTreeSet<IpAddr>,
    frame: &[u8],
) -> Option<(Vec<u8>, IpAddr)> {
    match packet::parse(frame)? {
        Request::Arp {
            sender_mac,
            sender_ip,
            target,
        } => {
            if sender_mac == link.mac || !announced.contains(&IpAddr::V4(target)) {
                return None;
            }
            Some((
                packet::arp_reply(link.mac, target, sender_mac, sender_ip),
                target.into(),
            ))
        }
        Request::Solicitation {
            source_mac,
            source_ip,
            target,
        } => {
            if source_mac == link.mac || !announced.contains(&IpAddr::V6(target)) {
                return None;
            }
            // From the target address itself, as Linux answers for its own
            // addresses (tools such as ndisc6 expect it).
            let source = target;
            let reply = if source_ip.is_unspecified() {
                // Duplicate address detection: tell everyone (RFC 4861 7.2.4).
                packet::unsolicited_advertisement(link.mac, source, target)
            } else {
                packet::neighbor_advertisement(
                    link.mac, source, target, source_mac, source_ip, true,
                )
            };
            Some((reply, target.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn link(name: &str, networks: &[&str], usable: bool) -> Link {
        Link {
            name: name.into(),
            mac: [2, 0, 0, 0, 0, 0x31],
            networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
            usable,
        }
    }

    #[test]
    fn interface_patterns_match_names_with_stars() {
        assert!(matches("eth0", "eth0"));
        assert!(!matches("eth0", "eth01"));
        assert!(matches("eth*", "eth0"));
        assert!(matches("eth*", "eth"));
        assert!(matches("enp*s0", "enp3s0"));
        assert!(!matches("enp*s0", "enp3s0f1"));
        assert!(matches("*", "anything"));
        assert!(matches("*.56", "vlan.56"));
        assert!(!matches("eth*", "veth0"));
        assert!(valid_pattern("enp*s0"));
        assert!(!valid_pattern(""));
        assert!(!valid_pattern("a/b"));
        assert!(!valid_pattern("much-too-long-name0"));
    }

    #[test]
    fn without_patterns_the_interface_on_the_address_network_announces() {
        let links = [
            link("lo", &["127.0.0.1/8"], false),
            link("eth0", &["10.0.0.5/24", "fe80::1/64"], true),
            link("eth1", &["192.168.56.31/24", "fd00:56::31/64"], true),
            link("eth2", &["192.168.56.60/32"], true),
            link("down0", &["192.168.56.32/24"], false),
        ];
        let lb = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(interfaces_for(lb("192.168.56.60"), &[], &links), ["eth1"]);
        assert_eq!(interfaces_for(lb("fd00:56::60"), &[], &links), ["eth1"]);
        assert!(interfaces_for(lb("203.0.113.9"), &[], &links).is_empty());
        assert_eq!(
            interfaces_for(lb("203.0.113.9"), &["eth*".into()], &links),
            ["eth0", "eth1", "eth2"]
        );
    }

    #[test]
    fn only_requests_for_announced_addresses_from_others_are_answered() {
        let l = link("eth1", &["192.168.56.31/24", "fe80::31/64"], true);
        let client = [2, 0, 0, 0, 0, 2];
        let lb4: std::net::Ipv4Addr = "192.168.56.60".parse().unwrap();
        let lb6: Ipv6Addr = "fd00:56::60".parse().unwrap();
        let announced: BTreeSet<IpAddr> = [lb4.into(), lb6.into()].into();
        let c4 = "192.168.56.2".parse().unwrap();
        let (reply, a) = answer(&l, &announced, &packet::arp_request(client, c4, lb4)).unwrap();
        assert_eq!(a, IpAddr::V4(lb4));
        assert_eq!(
            packet::parse_announcement(&reply),
            Some((lb4.into(), l.mac))
        );
        assert_eq!(&reply[..6], &client);
        // Another address, and our own request, get nothing.
        assert!(
            answer(
                &l,
                &announced,
                &packet::arp_request(client, c4, "192.168.56.61".parse().unwrap())
            )
            .is_none()
        );
        assert!(answer(&l, &announced, &packet::arp_request(l.mac, c4, lb4)).is_none());

        let c6: Ipv6Addr = "fd00:56::2".parse().unwrap();
        let (reply, _) = answer(
            &l,
            &announced,
            &packet::neighbor_solicitation(client, c6, lb6),
        )
        .unwrap();
        assert_eq!(&reply[..6], &client);
        // Sent from the address itself.
        assert_eq!(&reply[14 + 8..14 + 24], &lb6.octets());
        let (dad, _) = answer(
            &l,
            &announced,
            &packet::neighbor_solicitation(client, Ipv6Addr::UNSPECIFIED, lb6),
        )
        .unwrap();
        assert_eq!(&dad[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    }
}
