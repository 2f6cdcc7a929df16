//! A full sync must never break traffic: datagrams to a NodePort and a
//! ClusterIP, each the first of its flow, all come back while full syncs
//! rewrite 20,000 Services (growing the sets, then keeping them), and an
//! agent killed while it hands a script to nft leaves the old ruleset or
//! the new one, never a part. Needs root (see `support/lab.rs` for the
//! addresses).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use portico_catalog::Catalog;
use portico_dataplane::{ConntrackTool, Kernel, Nft, Proxier, RecordingConntrack};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::lab::{Lab, TIMEOUT, in_netns};
use support::*;

/// Services in the catalog besides the probed one.
const SERVICES: usize = 20_000;
/// Full syncs under the probe.
const SYNCS: usize = 3;
/// The pod's echo port.
const ECHO: u16 = 9000;
/// The probed Service: UDP 53 on a ClusterIP and NodePort 30053.
const TARGETS: [&str; 2] = ["192.168.77.1:30053", "10.96.250.1:53"];
/// Datagrams a second, alternately to each target. A lookup that misses
/// for a millisecond loses a few of them.
const RATE: u32 = 4_000;
/// At most this many datagrams: each is a flow of its own (the NAT chains
/// only see the first datagram of a flow), from source port
/// `FIRST_SOURCE_PORT + seq / 2`, and every flow takes a masquerade port
/// of the node's address towards the pod for 30 s, of which there are
/// about 64,000.
const MAX_PROBES: usize = 40_000;
const FIRST_SOURCE_PORT: usize = 10_000;

/// `bulk` ClusterIP Services with two endpoints elsewhere, and the probed
/// one, served by pod 1.
fn catalog_of(bulk: usize) -> Catalog {
    let mut c = Catalog::new();
    for i in 0..bulk {
        c.apply_service(&bulk_service("bulk", i).0);
        c.apply_slice(&bulk_slice("bulk", i, 2, 2));
    }
    c.apply_service(
        &svc("default", "probe", "10.96.250.1")
            .port("dns", "UDP", 53)
            .node_ports(&[30053])
            .0,
    );
    c.apply_slice(&slice(
        "default",
        "probe-1",
        "probe",
        &[("dns", "UDP", i32::from(ECHO))],
        &[ep("10.244.1.2")],
    ));
    c.take_changes();
    c
}

/// A UDP socket bound to `port` with `SO_REUSEADDR`: a closed socket can
/// stay bound for a moment while another thread starts a process (nft),
/// until that one execs.
fn udp_socket(port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    Ok(s.into())
}

/// Sends one numbered datagram from `port` and waits for it to come back.
fn echo(port: u16, dst: SocketAddr, seq: usize) -> Result<(), String> {
    let answer = (|| {
        let s = udp_socket(port)?;
        s.connect(dst)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send(seq.to_string().as_bytes())?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf)?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    })();
    match answer {
        Ok(a) if a == seq.to_string() => Ok(()),
        Ok(a) => Err(format!("answered {a:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The probe's counters, shared with the test.
#[derive(Default)]
struct Probe {
    sent: AtomicUsize,
    stop: AtomicBool,
}

/// What did not come back: sequence number, destination, why.
type Lost = Vec<(usize, SocketAddr, String)>;

/// Sends numbered datagrams from the client at `RATE`, alternately to each
/// target, one at a time, until told to stop (or `MAX_PROBES`); `tried`
/// gets a word once each target was tried.
fn start_probe(
    lab: &Lab,
    probe: Arc<Probe>,
    tried: mpsc::Sender<()>,
) -> std::thread::JoinHandle<Lost> {
    let client = lab.client.clone();
    std::thread::spawn(move || {
        in_netns(&client, move || {
            let targets: Vec<SocketAddr> = TARGETS.iter().map(|t| t.parse().unwrap()).collect();
            let interval = Duration::from_secs(1) / RATE;
            let mut next = Instant::now();
            let mut lost = Vec::new();
            for seq in 0..MAX_PROBES {
                if probe.stop.load(Ordering::Relaxed) {
                    break;
                }
                // At the rate; after a late answer, the next ones keep
                // the rate rather than catch up.
                next += interval;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
                let dst = targets[seq % targets.len()];
                let port = u16::try_from(FIRST_SOURCE_PORT + seq / targets.len()).unwrap();
                if let Err(why) = echo(port, dst, seq) {
                    lost.push((seq, dst, why));
                }
                probe.sent.fetch_add(1, Ordering::Relaxed);
                if seq + 1 == targets.len() {
                    let _ = tried.send(());
                }
            }
            lost
        })
    })
}

fn proxier(lab: &Lab) -> Proxier<Kernel, ConntrackTool> {
    Proxier::new(config(), lab.kernel(), lab.conntrack())
}

/// Runs `step` `SYNCS` times while the probe runs, and checks that no
/// datagram was lost and that the probe ran through every step.
fn probed(lab: &Lab, what: &str, mut step: impl FnMut()) {
    let probe = Arc::new(Probe::default());
    let (tried, tried_rx) = mpsc::channel();
    let probing = start_probe(lab, probe.clone(), tried);
    tried_rx.recv().unwrap();
    let mut during = Vec::new();
    for _ in 0..SYNCS {
        let before = probe.sent.load(Ordering::Relaxed);
        step();
        during.push(probe.sent.load(Ordering::Relaxed) - before);
    }
    probe.stop.store(true, Ordering::Relaxed);
    let lost = probing.join().unwrap();
    let sent = probe.sent.load(Ordering::Relaxed);
    assert!(
        lost.is_empty(),
        "{} of {sent} datagrams lost (sent during each {what}: {during:?}); the first: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        during.iter().all(|&n| n >= 100) && sent < MAX_PROBES,
        "the probe must run through every {what}: {during:?} datagrams during them, {sent} in all"
    );
    eprintln!(
        "{SYNCS} {what}s at {SERVICES} Services: {sent} datagrams, {during:?} during them, none lost"
    );
}

#[test]
fn full_syncs_of_20000_services_lose_no_nodeport_or_cluster_ip_datagram() {
    if !root_or_skip("full_syncs_of_20000_services_lose_no_nodeport_or_cluster_ip_datagram") {
        return;
    }
    let mut lab = Lab::new(1);
    lab.echo(1, ECHO);
    let mut p = proxier(&lab);
    // Installed with few Services: the hash sets have their smallest size.
    p.full_sync(&catalog_of(0)).unwrap();
    let catalog = catalog_of(SERVICES);
    // The first sync outgrows the hash sets, which are recreated larger;
    // the next ones keep every set.
    probed(&lab, "full sync", || {
        p.full_sync(&catalog).unwrap();
    });
}

#[test]
fn a_restarted_agent_adopts_the_installed_rules_and_loses_no_datagram() {
    if !root_or_skip("a_restarted_agent_adopts_the_installed_rules_and_loses_no_datagram") {
        return;
    }
    let mut lab = Lab::new(1);
    lab.echo(1, ECHO);
    let catalog = catalog_of(SERVICES);
    proxier(&lab).full_sync(&catalog).unwrap();
    // Each restart: the old agent is gone (its rules stay), a new one
    // starts with nothing in memory and makes its first, full, sync over
    // what is installed, as `portico node` does after a restart.
    probed(&lab, "restart", || {
        let mut restarted = proxier(&lab);
        assert!(restarted.needs_full_sync());
        restarted.sync(&catalog, &Default::default()).unwrap();
    });
}

// ---- a killed agent ---------------------------------------------------------

/// The Services of the ruleset installed before, and of the one the killed
/// agent hands over (a script of about 300 KB).
const OLD: usize = 500;
const NEW: usize = 2_000;
/// The agent is killed once nft has read this much of the script.
const CUT: usize = 100_000;
const AGENT: &str = "an_agent_hands_a_full_sync_to_nft_here_and_is_killed";

/// Chain count and the element count of every set and map of the IPv4
/// table, as the kernel lists them.
fn ruleset(lab: &Lab) -> BTreeMap<String, usize> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &lab.node, "nft", "-j", "list", "table", "ip", "portico",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut counts = BTreeMap::new();
    for item in json["nftables"].as_array().unwrap() {
        if item.get("chain").is_some() {
            *counts.entry("chains".to_owned()).or_default() += 1;
        }
        for kind in ["set", "map"] {
            if let Some(set) = item.get(kind) {
                let n = set
                    .get("elem")
                    .and_then(|e| e.as_array())
                    .map_or(0, Vec::len);
                counts.insert(format!("{kind} {}", set["name"].as_str().unwrap()), n);
            }
        }
    }
    counts
}

/// nft, but for a script on standard input (`-f -`) it reads `CUT` bytes,
/// kills the agent that started it (only the one this test started), reads
/// what is left, and runs all of that up to its last whole line: what nft
/// would commit if the agent died right after writing a line.
fn write_nft_wrapper(dir: &Path) {
    let script = format!(
        r#"#!/bin/sh
[ "$1" = "-f" ] || exec nft "$@"
agent=$PPID
if [ "$(cut -d' ' -f4 /proc/$agent/stat)" != "$PORTICO_TEST_PARENT" ]; then
    echo "not the agent of the test" > "$PORTICO_TEST_DIR/done"
    exit 1
fi
dd bs={CUT} count=1 iflag=fullblock status=none > "$PORTICO_TEST_DIR/read"
kill -9 $agent
cat >> "$PORTICO_TEST_DIR/read"
[ -z "$(tail -c 1 "$PORTICO_TEST_DIR/read")" ] || sed -i '$d' "$PORTICO_TEST_DIR/read"
nft "$@" < "$PORTICO_TEST_DIR/read" 2> "$PORTICO_TEST_DIR/stderr"
echo "nft read $(wc -c < "$PORTICO_TEST_DIR/read") bytes and exited with $?" > "$PORTICO_TEST_DIR/done"
"#
    );
    let path = dir.join("nft");
    std::fs::write(&path, script).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&path)
        .status()
        .unwrap();
    let fifo = Command::new("mkfifo")
        .arg(dir.join("done"))
        .status()
        .unwrap();
    assert!(fifo.success());
}

/// Not a test of its own: the agent that `an_agent_killed_…` starts, a
/// full sync by the real backend with the nft of `write_nft_wrapper`.
#[test]
#[ignore = "the agent process of an_agent_killed_while_it_hands_a_full_sync_to_nft_leaves_a_whole_ruleset"]
fn an_agent_hands_a_full_sync_to_nft_here_and_is_killed() {
    let (Ok(netns), Ok(dir)) = (
        std::env::var("PORTICO_TEST_NETNS"),
        std::env::var("PORTICO_TEST_DIR"),
    ) else {
        return;
    };
    let nft = Nft::in_netns(&netns).with_program(Path::new(&dir).join("nft"));
    let mut p = Proxier::new(config(), nft, RecordingConntrack::default());
    let r = p.full_sync(&catalog_of(NEW));
    panic!("the agent was not killed: {r:?}");
}

#[test]
fn an_agent_killed_while_it_hands_a_full_sync_to_nft_leaves_a_whole_ruleset() {
    if !root_or_skip("an_agent_killed_while_it_hands_a_full_sync_to_nft_leaves_a_whole_ruleset") {
        return;
    }
    let lab = Lab::new(0);
    let mut p = Proxier::new(config(), lab.nft(), RecordingConntrack::default());
    p.full_sync(&catalog_of(OLD)).unwrap();
    let old = ruleset(&lab);

    let dir = tempfile::tempdir().unwrap();
    write_nft_wrapper(dir.path());
    let agent = Command::new(std::env::current_exe().unwrap())
        .args([AGENT, "--exact", "--ignored", "--nocapture"])
        .env("PORTICO_TEST_NETNS", &lab.node)
        .env("PORTICO_TEST_DIR", dir.path())
        .env("PORTICO_TEST_PARENT", std::process::id().to_string())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    // nft goes on alone; it says when it is done.
    let (done, done_rx) = mpsc::channel();
    let fifo = dir.path().join("done");
    std::thread::spawn(move || done.send(std::fs::read_to_string(fifo)));
    let nft = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the nft wrapper never finished")
        .unwrap();
    assert_eq!(
        agent.status.signal(),
        Some(9),
        "the agent was to be killed while nft read its script: {}; {}",
        nft.trim(),
        String::from_utf8_lossy(&agent.stderr)
    );
    let after = ruleset(&lab);
    p.full_sync(&catalog_of(NEW)).unwrap();
    let new = ruleset(&lab);
    assert_ne!(old, new);
    let differs = |other: &BTreeMap<String, usize>| -> Vec<String> {
        after
            .iter()
            .filter(|(k, v)| other.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {v} (old {:?}, new {:?})", old.get(k), new.get(k)))
            .collect()
    };
    assert!(
        after == old || after == new,
        "a part of the new ruleset was committed ({}): {:?}",
        nft.trim(),
        differs(&new)
    );
}

/// What the `nft -i` session relies on (`backend/session.rs`): a line
/// that includes a script runs it whole, and any part of that line runs
/// nothing, even at the end of the input (where nft runs what it has).
#[test]
fn nft_runs_an_include_line_whole_or_not_at_all_wherever_it_is_cut() {
    if !root_or_skip("nft_runs_an_include_line_whole_or_not_at_all_wherever_it_is_cut") {
        return;
    }
    let lab = Lab::new(0);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tx.nft");
    std::fs::write(
        &script,
        "add table ip cut\nadd chain ip cut a\nadd chain ip cut b\n",
    )
    .unwrap();
    let line = format!("include \"{}\"\n", script.display());
    let nft = |args: &[&str], stdin: &str| {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.node, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut pipe, stdin.as_bytes()).unwrap();
        drop(pipe);
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    for cut in 0..=line.len() {
        nft(&["-i"], &line[..cut]);
        let chains = nft(&["list", "chains", "ip"], "");
        let whole = chains.contains("chain a") && chains.contains("chain b");
        let nothing = !chains.contains("table ip cut");
        assert!(
            if cut + 1 >= line.len() {
                whole
            } else {
                nothing
            },
            "{:?}: {chains}",
            &line[..cut]
        );
        if whole {
            nft(&["delete", "table", "ip", "cut"], "");
        }
    }
}
