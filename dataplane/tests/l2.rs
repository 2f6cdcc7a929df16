//! L2 announcement with real frames: a client and three node namespaces on
//! one Ethernet segment (a Linux bridge in a namespace of its own). The
//! client resolves the LoadBalancer address with ARP and NDP (its own raw
//! socket, `arping` and `ndisc6`); exactly the node the ring chooses
//! answers; when that node's responder goes, the next node takes over with
//! gratuitous ARP / unsolicited advertisements the client sees. Needs root.
//!
//! ```text
//!   client 192.168.56.2  fd00:56::2  02:00:00:00:56:02 ─┐
//!   n1     192.168.56.31 fd00:56::31 02:00:00:00:56:31 ─┼─ br0 (namespace sw)
//!   n2     192.168.56.32 fd00:56::32 02:00:00:00:56:32 ─┤
//!   n3     192.168.56.33 fd00:56::33 02:00:00:00:56:33 ─┘
//!   LoadBalancer addresses 192.168.56.60 and fd00:56::60
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use portico_dataplane::l2::packet::{self, Mac};
use portico_dataplane::l2::{Responder, Ring, links};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::lab::in_netns;

const LB4: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 60);
const LB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x56, 0, 0, 0, 0, 0, 0x60);
const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mac_of(host: u8) -> Mac {
    [2, 0, 0, 0, 0x56, host]
}

fn mac_text(m: Mac) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// The namespaces; deleted on drop.
struct Segment {
    prefix: String,
    names: Vec<String>,
}

impl Segment {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn new() -> Segment {
        static N: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "ptl{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut seg = Segment {
            prefix,
            names: Vec::new(),
        };
        let sw = seg.ns("sw");
        run(&["ip", "netns", "add", &sw]);
        seg.names.push(sw.clone());
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for (host, octet) in [("client", 2u8), ("n1", 31), ("n2", 32), ("n3", 33)] {
            let ns = seg.ns(host);
            run(&["ip", "netns", "add", &ns]);
            seg.names.push(ns.clone());
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            run(&[
                "ip", "-n", &sw, "link", "add", host, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            run(&["ip", "-n", &sw, "link", "set", host, "master", "br0", "up"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "link",
                "set",
                "eth0",
                "address",
                &mac_text(mac_of(octet)),
            ]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("192.168.56.{octet}/24"),
                "dev",
                "eth0",
            ]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("fd00:56::{octet:x}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        }
        seg
    }

    /// A responder on eth0 of a node namespace.
    fn responder(&self, host: &str, garp: Duration) -> Responder {
        let ns = self.ns(host);
        in_netns(&ns, move || {
            let link = links().into_iter().find(|l| l.name == "eth0").unwrap();
            Responder::open(&link, garp).unwrap()
        })
    }

    /// Sends one request for `address` from the client and collects the
    /// link addresses that answer within `wait`.
    fn ask(&self, address: IpAddr, wait: Duration) -> BTreeSet<Mac> {
        in_netns(&self.ns("client"), move || {
            let link = links().into_iter().find(|l| l.name == "eth0").unwrap();
            let iface = pnet_datalink_interface("eth0");
            let (mut tx, mut rx) = channel(&iface);
            let frame = match address {
                IpAddr::V4(a) => packet::arp_request(link.mac, Ipv4Addr::new(192, 168, 56, 2), a),
                IpAddr::V6(a) => {
                    packet::neighbor_solicitation(link.mac, "fd00:56::2".parse().unwrap(), a)
                }
            };
            tx.send_to(&frame, None).unwrap().unwrap();
            let mut seen = BTreeSet::new();
            let end = Instant::now() + wait;
            while Instant::now() < end {
                if let Ok(f) = rx.next()
                    && f[..6] == link.mac
                    && let Some((a, mac)) = packet::parse_announcement(f)
                    && a == address
                {
                    seen.insert(mac);
                }
            }
            seen
        })
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn pnet_datalink_interface(name: &str) -> pnet_datalink::NetworkInterface {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .unwrap()
}

type Channel = (
    Box<dyn pnet_datalink::DataLinkSender>,
    Box<dyn pnet_datalink::DataLinkReceiver>,
);

fn channel(iface: &pnet_datalink::NetworkInterface) -> Channel {
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(20)),
        promiscuous: false,
        ..Default::default()
    };
    match pnet_datalink::channel(iface, config).unwrap() {
        pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
        _ => panic!("not Ethernet"),
    }
}

fn ready(test: &str) -> bool {
    portico_testkit::ready_or_skip(test, &["nft", "ip", "conntrack", "arping", "ndisc6"])
}

fn host_octet(node: &str) -> u8 {
    30 + node[1..].parse::<u8>().unwrap()
}

/// What `arping` and `ndisc6` in the client say is at `address`.
fn tools_say(seg: &Segment, address: IpAddr) -> String {
    let args: Vec<String> = match address {
        IpAddr::V4(a) => ["arping", "-c", "1", "-w", "2", "-i", "eth0", &a.to_string()]
            .map(String::from)
            .to_vec(),
        IpAddr::V6(a) => [
            "ndisc6",
            "-1",
            "-r",
            "3",
            "-w",
            "500",
            &a.to_string(),
            "eth0",
        ]
        .map(String::from)
        .to_vec(),
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &seg.ns("client")])
        .args(&args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

#[test]
fn exactly_the_chosen_node_answers_and_the_next_takes_over_with_gratuitous_arp() {
    if !ready("l2 takeover") {
        return;
    }
    let seg = Segment::new();
    let mut responders: BTreeMap<&str, Responder> = NODES
        .iter()
        .map(|n| (*n, seg.responder(n, Duration::from_secs(60))))
        .collect();
    let both: BTreeSet<IpAddr> = [LB4.into(), LB6.into()].into();
    let assign = |responders: &mut BTreeMap<&str, Responder>| {
        let ring = Ring::new(responders.keys().copied());
        let mut per_node: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for a in &both {
            per_node
                .entry(ring.choose(*a).unwrap().to_owned())
                .or_default()
                .insert(*a);
        }
        for (n, r) in responders.iter_mut() {
            r.set(&per_node.get(*n).cloned().unwrap_or_default(), 0);
        }
        per_node
    };
    let plan = assign(&mut responders);
    let owner = |a: IpAddr| plan.iter().find(|(_, s)| s.contains(&a)).unwrap().0.clone();
    let first = owner(LB4.into());
    let first6 = owner(LB6.into());

    // Exactly one node answers, the chosen one, for both families.
    let wait = Duration::from_millis(400);
    assert_eq!(
        seg.ask(LB4.into(), wait),
        [mac_of(host_octet(&first))].into()
    );
    assert_eq!(
        seg.ask(LB6.into(), wait),
        [mac_of(host_octet(&first6))].into()
    );
    let said = tools_say(&seg, LB4.into());
    assert!(
        said.contains(&mac_text(mac_of(host_octet(&first)))),
        "arping: {said}"
    );
    let said = tools_say(&seg, LB6.into());
    assert!(
        said.contains(&mac_text(mac_of(host_octet(&first6)))),
        "ndisc6: {said}"
    );
    let r = &responders[first.as_str()];
    assert!(r.counters().arp_replies.load(Ordering::Relaxed) >= 2);

    // The IPv4 owner's agent dies: the others see it gone and the next
    // node on the ring takes over, announcing itself gratuitously.
    let client = seg.ns("client");
    let listener = std::thread::spawn(move || {
        in_netns(&client, || {
            let (_tx, mut rx) = channel(&pnet_datalink_interface("eth0"));
            let mut seen: Vec<(IpAddr, Mac, Instant)> = Vec::new();
            let end = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < end {
                if let Ok(f) = rx.next()
                    && f[..6] == packet::BROADCAST[..]
                    && let Some((a, mac)) = packet::parse_announcement(f)
                {
                    seen.push((a, mac, Instant::now()));
                }
            }
            seen
        })
    });
    std::thread::sleep(Duration::from_millis(200));
    responders.remove(first.as_str());
    let plan = assign(&mut responders);
    let second = plan
        .iter()
        .find(|(_, s)| s.contains(&IpAddr::from(LB4)))
        .unwrap()
        .0
        .clone();
    assert_ne!(second, first);
    let seen = listener.join().unwrap();
    let garp: Vec<_> = seen
        .iter()
        .filter(|(a, mac, _)| *a == IpAddr::from(LB4) && *mac == mac_of(host_octet(&second)))
        .collect();
    // A request and a reply at the takeover, then again: the new owner
    // tells the segment at once rather than waiting to be asked (how soon
    // is the failover benchmark's business).
    assert!(garp.len() >= 4, "gratuitous ARP seen: {seen:?}");
    assert_eq!(
        seg.ask(LB4.into(), wait),
        [mac_of(host_octet(&second))].into()
    );
}

#[test]
fn gratuitous_announcements_repeat_every_garp_interval() {
    if !ready("l2 garp interval") {
        return;
    }
    let seg = Segment::new();
    let mut r = seg.responder("n1", Duration::from_millis(300));
    r.set(&[IpAddr::from(LB4), IpAddr::from(LB6)].into(), 0);
    // Takeover: 3 rounds of 3 frames (ARP request + reply, one NA); then
    // the periodic rounds: more frames keep coming with nothing changed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while sent < 15 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        sent = r.counters().gratuitous.load(Ordering::Relaxed);
    }
    assert!(sent >= 15, "{sent} gratuitous frames: no periodic rounds");
    // Nothing answered for an address no longer announced.
    r.set(&BTreeSet::new(), 0);
    assert!(seg.ask(LB4.into(), Duration::from_millis(300)).is_empty());
}
