//! A namespace lab with real packets: a node namespace that routes and
//! carries the rules, a client namespace outside the cluster, and pod
//! namespaces running small TCP/UDP servers.
//!
//! ```text
//!   client 192.168.77.2 ── c0 192.168.77.1 [node] p1 10.244.1.1 ── pod 1 10.244.1.2
//!          fd77::2                fd77::1          p2 10.244.2.1 ── pod 2 10.244.2.2
//!                                                  …  (fd44:0:N::1 ── fd44:0:N::2)
//! ```
//!
//! Namespaces are named after the process and a counter, so tests run in
//! parallel; they are deleted when the lab is dropped. Servers answer each
//! connection or datagram with one line: `<pod name> <peer address>`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub use crate::netns::in_netns;
use crate::netns::{Netns, run};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// How long a client waits for an answer.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// Where a client runs.
#[derive(Clone, Copy, Debug)]
pub enum From {
    /// Outside the cluster (192.168.77.2).
    Client,
    /// The node itself.
    Node,
    /// Pod `n` (1-based).
    Pod(usize),
}

/// See the module documentation.
pub struct Lab {
    /// The node namespace (carries the rules).
    pub node: String,
    /// The client namespace.
    pub client: String,
    /// Pod namespaces, pod 1 first.
    pub pods: Vec<String>,
    namespaces: Vec<Netns>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Lab {
    /// A lab with `pods` pod namespaces.
    pub fn new(pods: usize) -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("ptc{}x{n}", std::process::id());
        let mut lab = Lab {
            node: format!("{prefix}-node"),
            client: format!("{prefix}-client"),
            pods: (1..=pods).map(|i| format!("{prefix}-pod{i}")).collect(),
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        let all: Vec<String> = [lab.node.clone(), lab.client.clone()]
            .into_iter()
            .chain(lab.pods.clone())
            .collect();
        for ns in all {
            lab.namespaces.push(Netns::named(ns));
        }
        let node = lab.node.clone();
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            run(&[
                "ip",
                "netns",
                "exec",
                &node,
                "sysctl",
                "-qw",
                &format!("{k}={v}"),
            ]);
        }
        lab.link(
            "c0",
            &lab.client.clone(),
            ("192.168.77.1/24", "192.168.77.2/24"),
            ("fd77::1/64", "fd77::2/64"),
        );
        // The client network is the node's way out (a real node has a
        // default route; without one, even DNATed traffic finds no route).
        run(&[
            "ip",
            "-n",
            &node,
            "route",
            "add",
            "default",
            "via",
            "192.168.77.2",
        ]);
        run(&[
            "ip", "-n", &node, "-6", "route", "add", "default", "via", "fd77::2",
        ]);
        for i in 1..=pods {
            let ns = lab.pods[i - 1].clone();
            lab.link(
                &format!("p{i}"),
                &ns,
                (&format!("10.244.{i}.1/24"), &format!("10.244.{i}.2/24")),
                (&format!("fd44:0:{i}::1/64"), &format!("fd44:0:{i}::2/64")),
            );
        }
        lab
    }

    /// A veth from the node to `ns` with the node's and the peer's
    /// addresses; the peer routes everything through the node.
    fn link(&self, name: &str, ns: &str, v4: (&str, &str), v6: (&str, &str)) {
        let node = &self.node;
        run(&[
            "ip", "-n", node, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ]);
        run(&["ip", "-n", node, "addr", "add", v4.0, "dev", name]);
        run(&["ip", "-n", node, "addr", "add", v6.0, "dev", name, "nodad"]);
        run(&["ip", "-n", node, "link", "set", name, "up"]);
        run(&["ip", "-n", ns, "addr", "add", v4.1, "dev", "eth0"]);
        run(&["ip", "-n", ns, "addr", "add", v6.1, "dev", "eth0", "nodad"]);
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        let gw4 = v4.0.split('/').next().unwrap();
        let gw6 = v6.0.split('/').next().unwrap();
        run(&["ip", "-n", ns, "route", "add", "default", "via", gw4]);
        run(&["ip", "-n", ns, "-6", "route", "add", "default", "via", gw6]);
    }

    /// Pod `i`'s IPv4 address.
    pub fn pod_ip(i: usize) -> String {
        format!("10.244.{i}.2")
    }

    /// Pod `i`'s IPv6 address.
    pub fn pod_ip6(i: usize) -> String {
        format!("fd44:0:{i}::2")
    }

    /// The pod name servers of pod `i` answer with.
    pub fn pod_name(i: usize) -> String {
        format!("pod{i}")
    }

    fn namespace(&self, from: From) -> &str {
        match from {
            From::Client => &self.client,
            From::Node => &self.node,
            From::Pod(i) => &self.pods[i - 1],
        }
    }

    /// Runs a command in a namespace; returns its standard output.
    pub fn exec(&self, from: From, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", self.namespace(from)])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts TCP and UDP servers on `port` (both families) in pod `i`.
    pub fn serve(&mut self, i: usize, port: u16) {
        let ns = self.pods[i - 1].clone();
        let name = Lab::pod_name(i);
        // Dual-stack sockets: IPv4 peers appear as IPv4-mapped addresses.
        let (tcp, udp) = in_netns(&ns, move || {
            let tcp = TcpListener::bind(("::", port)).unwrap();
            let udp = UdpSocket::bind(("::", port)).unwrap();
            (vec![tcp], vec![udp])
        });
        for l in tcp {
            l.set_nonblocking(true).unwrap();
            let stop = self.stop.clone();
            let name = name.clone();
            self.servers.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = writeln!(s, "{name} {}", peer.ip().to_canonical());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        for u in udp {
            u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let stop = self.stop.clone();
            let name = name.clone();
            self.servers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(
                            format!("{name} {}\n", peer.ip().to_canonical()).as_bytes(),
                            peer,
                        );
                    }
                }
            }));
        }
    }

    /// Starts a UDP server on `port` (both families) in pod `i` that
    /// sends every datagram back as it came.
    pub fn echo(&mut self, i: usize, port: u16) {
        let ns = self.pods[i - 1].clone();
        let udp = in_netns(&ns, move || UdpSocket::bind(("::", port)).unwrap());
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = self.stop.clone();
        self.servers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], peer);
                }
            }
        }));
    }

    /// Connects over TCP from a namespace; returns the server's line.
    pub fn tcp(&self, from: From, dst: &str) -> io::Result<String> {
        let dst: SocketAddr = dst.parse().unwrap();
        in_netns(self.namespace(from), move || {
            let s = TcpStream::connect_timeout(&dst, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(line.trim().to_owned())
        })
    }

    /// Sends one datagram from a namespace (from `src_port` when given);
    /// returns the server's line.
    pub fn udp(&self, from: From, dst: &str, src_port: Option<u16>) -> io::Result<String> {
        let dst: SocketAddr = dst.parse().unwrap();
        in_netns(self.namespace(from), move || {
            let any: IpAddr = if dst.is_ipv4() {
                "0.0.0.0".parse().unwrap()
            } else {
                "::".parse().unwrap()
            };
            let s = UdpSocket::bind(SocketAddr::new(any, src_port.unwrap_or(0)))?;
            s.connect(dst)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.send(b"hello")?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
        })
    }

    /// The conntrack table of the node, one entry per line.
    pub fn conntrack_entries(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node, "conntrack", "-L"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
        // The namespaces go with `namespaces`.
    }
}
