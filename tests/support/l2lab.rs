//! The L2 lab: three `portico local --dataplane` agents, each in a node
//! namespace, a client and a backend on one Linux bridge. Shared by the
//! end-to-end tests (`tests/l2.rs`) and the failover benchmark
//! (`benches/failover.rs`).
//!
//! ```text
//!   client  192.168.56.2  ─┐
//!   backend 192.168.56.50 ─┤  (the Service's pod, port 8080)
//!   n1      192.168.56.31 ─┼─ br0 (namespace sw)      LoadBalancer 192.168.56.60:80
//!   n2      192.168.56.32 ─┤
//!   n3      192.168.56.33 ─┘  gossip on <node>:7946
//! ```

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use portico_dataplane::l2::packet::{self, Mac};
use portico_testkit::netns::run;
use portico_testkit::{Netns, in_netns};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const LB: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 60);
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// How long a test waits for an outcome before it fails (a deadline
/// against a hang; the failover time itself is benchmarked).
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn octet(host: &str) -> u8 {
    match host {
        "client" => 2,
        "backend" => 50,
        n => 30 + n[1..].parse::<u8>().unwrap(),
    }
}

pub fn mac_of(host: &str) -> Mac {
    [2, 0, 0, 0, 0x56, octet(host)]
}

pub fn mac_text(m: Mac) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

pub fn manifest(not_ready: &[&str]) -> String {
    let mut m = String::new();
    for n in NODES {
        let ready = if not_ready.contains(&n) {
            "False"
        } else {
            "True"
        };
        m.push_str(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\nstatus:\n  addresses: [{{type: InternalIP, address: 192.168.56.{}}}]\n  conditions: [{{type: Ready, status: \"{ready}\"}}]\n---\n",
            octet(n)
        ));
    }
    m.push_str(
        r#"apiVersion: portico.dev/v1alpha1
kind: IPPool
metadata: {name: lab}
spec: {addresses: ["192.168.56.60-192.168.56.70"]}
---
apiVersion: portico.dev/v1alpha1
kind: L2Announcement
metadata: {name: lab}
spec: {ipPools: [lab]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, labels: {app: web}}
spec:
  nodeName: n3
  containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]
status:
  phase: Running
  podIP: 192.168.56.50
  podIPs: [{ip: 192.168.56.50}]
  conditions: [{type: Ready, status: "True"}]
"#,
    );
    m
}

/// The namespaces, the backend server and the agents; all gone on drop.
pub struct Lab {
    prefix: String,
    /// Deleted on drop, after the agents stop.
    namespaces: Vec<Netns>,
    dir: tempfile::TempDir,
    agents: Vec<(String, Child)>,
    stop: Arc<AtomicBool>,
    gossip: bool,
    /// Agents suspect a silent peer for a minute before it counts as dead:
    /// an address can then only move that fast because of a goodbye.
    pub patient: bool,
}

impl Lab {
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("lab.yaml")
    }

    /// `None` when the test must skip (not root, tools missing).
    pub fn new(gossip: bool) -> Option<Lab> {
        if !portico_testkit::ready_or_skip("the L2 lab", &["ip", "nft"]) {
            return None;
        }
        static N: AtomicUsize = AtomicUsize::new(0);
        let mut lab = Lab {
            prefix: format!(
                "ptq{}x{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            namespaces: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            agents: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            gossip,
            patient: false,
        };
        let sw = lab.ns("sw");
        lab.namespaces.push(Netns::named(sw.clone()));
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for host in ["client", "backend", "n1", "n2", "n3"] {
            let ns = lab.ns(host);
            lab.namespaces.push(Netns::named(ns.clone()));
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
                &mac_text(mac_of(host)),
            ]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("192.168.56.{}/24", octet(host)),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            if host.starts_with('n')
                && let Some(netns) = lab.namespaces.last()
            {
                netns.sysctl(&[
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.all.send_redirects=0",
                    "net.ipv4.conf.eth0.send_redirects=0",
                ]);
            }
        }
        // The backend answers each connection with the address it came from
        // (the masquerading node's).
        let listener = in_netns(&lab.ns("backend"), || {
            TcpListener::bind("192.168.56.50:8080").unwrap()
        });
        listener.set_nonblocking(true).unwrap();
        let stop = lab.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "web {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        std::fs::write(lab.manifest_path(), manifest(&[])).unwrap();
        Some(lab)
    }

    pub fn start(&mut self, node: &str) {
        let ns = self.ns(node);
        let path = self.manifest_path();
        let log = std::fs::File::create(self.dir.path().join(format!("{node}.log"))).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &ns,
            env!("CARGO_BIN_EXE_portico"),
            "local",
            "-f",
        ])
        .arg(&path)
        .args([
            "--watch",
            "--watch-interval",
            "200ms",
            "--service-cluster-ip-range",
            "10.96.0.0/12",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--dataplane",
            "--node-name",
            node,
            "-o",
            "yaml",
        ]);
        if self.gossip {
            let peers: Vec<String> = NODES
                .iter()
                .map(|n| format!("192.168.56.{}:7946", octet(n)))
                .collect();
            cmd.args([
                "--gossip-listen",
                &format!("192.168.56.{}:7946", octet(node)),
                "--gossip-join",
                &peers.join(","),
            ]);
            if self.patient {
                cmd.args(["--gossip-suspect-timeout", "60s"]);
            }
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.agents.push((node.to_owned(), child));
    }

    /// Stops a node's agent as an orderly shutdown does (SIGTERM: it
    /// leaves the gossip).
    pub fn terminate(&mut self, node: &str) {
        let i = self.agents.iter().position(|(n, _)| n == node).unwrap();
        let (_, mut child) = self.agents.remove(i);
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "{node} exited with {status}\n{}",
            self.logs()
        );
    }

    /// Kills a node's agent (SIGKILL: no goodbye).
    pub fn kill(&mut self, node: &str) {
        let i = self.agents.iter().position(|(n, _)| n == node).unwrap();
        let (_, mut child) = self.agents.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The node that answers once one does and the gossip has settled
    /// (every agent sees every other).
    pub fn settled_owner(&self) -> String {
        let (first, _) = self
            .owner(None, DEADLINE)
            .unwrap_or_else(|| panic!("nobody announces\n{}", self.logs()));
        self.settle(DEADLINE);
        self.owner(None, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("nobody announces after {first}\n{}", self.logs()))
            .0
    }

    /// Waits until every running agent's gossip sees every running agent
    /// (each says so in its log when its live set changes).
    pub fn settle(&self, within: Duration) {
        let mut running: Vec<&str> = self.agents.iter().map(|(n, _)| n.as_str()).collect();
        running.sort_unstable();
        let want = format!("gossip: live agents {}", running.join(", "));
        // Looked at every 50 ms, as many times as fit in `within`: the
        // outcome is what is checked, not how long it took.
        let looks = within.as_millis() / 50;
        for _ in 0..looks {
            let settled = running.iter().all(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                    .unwrap_or_default()
                    .lines()
                    .rfind(|l| l.starts_with("gossip: live agents"))
                    == Some(want.as_str())
            });
            if settled {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the gossip did not settle on {running:?}\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        NODES
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                    .unwrap_or_default();
                format!("--- {n}\n{log}")
            })
            .collect()
    }

    /// One ARP request for the LoadBalancer address from the client; the
    /// nodes that answer within `wait`.
    pub fn ask(&self, wait: Duration) -> BTreeSet<String> {
        in_netns(&self.ns("client"), move || {
            let iface = pnet_datalink::interfaces()
                .into_iter()
                .find(|i| i.name == "eth0")
                .unwrap();
            let config = pnet_datalink::Config {
                read_timeout: Some(Duration::from_millis(20)),
                promiscuous: false,
                ..Default::default()
            };
            let pnet_datalink::Channel::Ethernet(mut tx, mut rx) =
                pnet_datalink::channel(&iface, config).unwrap()
            else {
                panic!("not Ethernet")
            };
            let me = mac_of("client");
            let req = packet::arp_request(me, Ipv4Addr::new(192, 168, 56, 2), LB);
            tx.send_to(&req, None).unwrap().unwrap();
            let mut seen = BTreeSet::new();
            let end = Instant::now() + wait;
            while Instant::now() < end {
                if let Ok(f) = rx.next()
                    && f[..6] == me
                    && let Some((a, mac)) = packet::parse_announcement(f)
                    && a == std::net::IpAddr::V4(LB)
                {
                    seen.insert(mac);
                }
            }
            seen.into_iter()
                .map(|m| {
                    NODES
                        .iter()
                        .find(|n| mac_of(n) == m)
                        .map(|n| (*n).to_owned())
                        .unwrap_or_else(|| mac_text(m))
                })
                .collect()
        })
    }

    /// Waits until exactly one node answers, other than `not`; returns it
    /// and how long it took.
    pub fn owner(&self, not: Option<&str>, within: Duration) -> Option<(String, Duration)> {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            let seen = self.ask(Duration::from_millis(60));
            if seen.len() == 1 {
                let n = seen.into_iter().next().unwrap();
                if Some(n.as_str()) != not {
                    return Some((n, t0.elapsed()));
                }
            }
        }
        None
    }

    /// A TCP connection from the client to the Service: the backend's line
    /// (`web <node address>`).
    pub fn connect(&self) -> std::io::Result<String> {
        in_netns(&self.ns("client"), || {
            let dst = SocketAddr::from((LB, 80));
            let s = TcpStream::connect_timeout(&dst, Duration::from_millis(300))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(line.trim().to_owned())
        })
    }

    /// Connection attempts every 100 ms until one succeeds through `node`.
    pub fn connects_through(&self, node: &str, within: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let want = format!("web 192.168.56.{}", octet(node));
        let mut last = String::new();
        while t0.elapsed() < within {
            match self.connect() {
                Ok(line) if line == want => return Ok(t0.elapsed()),
                Ok(line) => last = line,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the agents with gossip; once one node answers, kills its agent
/// and measures until another one does. Returns the time.
pub fn one_kill(lab: &mut Lab) -> (String, String, Duration) {
    let first = lab.settled_owner();
    lab.kill(&first);
    let (second, took) = lab
        .owner(Some(&first), DEADLINE)
        .unwrap_or_else(|| panic!("no takeover after {first} died\n{}", lab.logs()));
    (first, second, took)
}
