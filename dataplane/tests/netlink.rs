//! The netlink encoding against nft's own: the same operations, as
//! `Transaction` text through `nft --debug=mnl -c` (nft 1.0.6 prints every
//! message it would send) and through our encoder, give the same bytes,
//! message by message. Root (nft talks to the kernel; in a network
//! namespace of its own), in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use portico_dataplane::backend::netlink::encode::Encoder;
use portico_dataplane::backend::netlink::wire;
use portico_dataplane::names::{BASE_CHAINS, Family};
use portico_dataplane::tx::{Op, SetDecl, SetKind, Transaction};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// The messages nft would send for `script`, after the batch's begin:
/// (type, bytes after the netlink header), rebuilt from its mnl dump.
fn nft_messages(script: &str) -> Vec<(u16, Vec<u8>)> {
    let mut child = Command::new("unshare")
        .args(["-n", "nft", "--debug=mnl", "-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}\n{text}");
    let mut messages: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut in_batch = false;
    let clean = |l: &str| {
        let mut s = String::new();
        let mut esc = false;
        for c in l.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => s.push(c),
            }
        }
        s
    };
    for line in text.lines().map(clean) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if line.contains("|  type | flags  |") {
            let type_: u16 = cells[1].parse().unwrap();
            if type_ == wire::BATCH_BEGIN {
                in_batch = true;
                continue;
            }
            if in_batch {
                messages.push((type_, Vec::new()));
            }
        } else if !in_batch || messages.is_empty() {
            continue;
        } else if line.contains("|len |flags| type|") {
            let len: u16 = cells[1].parse().unwrap();
            let mut type_: u16 = cells[3].parse().unwrap();
            if cells[2].contains('N') {
                type_ |= wire::NESTED;
            }
            let m = &mut messages.last_mut().unwrap().1;
            m.extend_from_slice(&len.to_ne_bytes());
            m.extend_from_slice(&type_.to_ne_bytes());
        } else if line.contains("|      data      |") || line.contains("|  extra header  |") {
            let m = &mut messages.last_mut().unwrap().1;
            for b in cells[1].split_whitespace() {
                m.push(u8::from_str_radix(b, 16).unwrap());
            }
        }
    }
    messages
}

/// Ours, for the same operations.
fn our_messages(ops: &[Op]) -> Vec<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    Encoder::default().encode(&mut buf, ops, 1).unwrap();
    wire::messages(&buf)
        .unwrap()
        .into_iter()
        .map(|m| (m.type_, m.payload.to_vec()))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.chunks(4)
        .map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn tables_chains_sets_and_elements_are_encoded_as_nft_encodes_them() {
    if !support::root_or_skip("tables_chains_sets_and_elements_are_encoded_as_nft_encodes_them") {
        return;
    }
    let mut tx = Transaction::new();
    for family in Family::ALL {
        let a = family.addr_type();
        let one = if family == Family::Ipv4 {
            "10.96.0.10"
        } else {
            "fd96::10"
        };
        let other = if family == Family::Ipv4 {
            "10.244.1.2"
        } else {
            "fd44::2"
        };
        tx.add_table(family);
        for b in BASE_CHAINS {
            tx.add_chain(family, b.name, Some(b.spec()));
        }
        tx.add_chain(family, "services", None);
        let sets = [
            (
                "cluster-ips",
                SetDecl::set(format!("type {a}"))
                    .size(1024)
                    .comment("ClusterIPs"),
            ),
            (
                "service-ips",
                SetDecl::map(format!("type {a} . inet_proto . inet_service : verdict"))
                    .size(1024)
                    .comment("Service addresses and ports with endpoints"),
            ),
            (
                "service-nodeports",
                SetDecl::map("type inet_proto . inet_service : verdict")
                    .comment("NodePorts with endpoints"),
            ),
            (
                "firewall-ips",
                SetDecl::set(format!("type {a} . inet_proto . inet_service")),
            ),
            (
                "hairpin",
                SetDecl::set(format!("type {a} . {a}")).size(1024),
            ),
        ];
        for (name, decl) in sets {
            tx.add_set(family, name, decl);
        }
        tx.add_element(family, "cluster-ips", one, None);
        tx.add_element(family, "cluster-ips", other, None);
        tx.add_element(
            family,
            "service-ips",
            &format!("{one} . tcp . 80"),
            Some("goto services"),
        );
        tx.add_element(
            family,
            "service-ips",
            &format!("{one} . udp . 53"),
            Some("drop"),
        );
        tx.add_element(
            family,
            "service-nodeports",
            "sctp . 30080",
            Some("jump services"),
        );
        tx.add_element(family, "firewall-ips", &format!("{one} . tcp . 443"), None);
        tx.add_element(family, "hairpin", &format!("{other} . {other}"), None);
        tx.delete_element(family, "cluster-ips", other);
        tx.flush_set(family, "hairpin", SetKind::Set);
        tx.flush_chain(family, "services");
        tx.delete_set(family, "hairpin", SetKind::Set);
        tx.add_chain(family, "spare", None);
        tx.delete_chain(family, "spare");
    }
    tx.delete_table(Family::Ipv6);
    let ops = tx.ops().to_vec();
    let script = tx.to_string();
    let theirs = nft_messages(&script);
    let ours = our_messages(&ops);
    assert_eq!(ours.len(), theirs.len(), "{script}");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a.0, b.0, "message {i}: type");
        assert_eq!(
            hex(&a.1),
            hex(&b.1),
            "message {i} (type {:#x}) of\n{script}",
            a.0
        );
    }
    eprintln!("{} messages, byte for byte as nft's", ours.len());
}

/// Compares the messages of `tx` as nft and our encoder write them.
fn assert_same_messages(tx: &Transaction) -> usize {
    assert_same_messages_but_ranges(tx, &[])
}

/// The set an element message is for.
fn element_set(m: &(u16, Vec<u8>)) -> Option<String> {
    let ty = m.0 & 0xff;
    if ty != 12 && ty != 14 {
        return None;
    }
    let a = wire::attrs(&m.1[4..]);
    wire::find(&a, 2).map(wire::text)
}

/// The same, but for the elements of the interval sets `ranges`: nft
/// 1.0.6 writes those of a set made in the same batch twice, with a
/// leading end element the first time; ours are written once, as
/// ranges, and checked against the kernel (below).
fn assert_same_messages_but_ranges(tx: &Transaction, ranges: &[&str]) -> usize {
    let script = tx.to_string();
    let keep = |m: &(u16, Vec<u8>)| !element_set(m).is_some_and(|s| ranges.contains(&s.as_str()));
    let theirs: Vec<_> = nft_messages(&script).into_iter().filter(keep).collect();
    let ours: Vec<_> = our_messages(tx.ops()).into_iter().filter(keep).collect();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a.0, b.0, "message {i}: type, in\n{script}");
        assert_eq!(
            hex(&a.1),
            hex(&b.1),
            "message {i} (type {:#x}) of\n{script}",
            a.0
        );
    }
    assert_eq!(ours.len(), theirs.len(), "{script}");
    ours.len()
}

#[test]
fn every_rule_shape_of_the_renderer_is_encoded_as_nft_encodes_it() {
    if !support::root_or_skip("every_rule_shape_of_the_renderer_is_encoded_as_nft_encodes_it") {
        return;
    }
    let mut tx = Transaction::new();
    for family in Family::ALL {
        let f = family.nft();
        let a = family.addr_type();
        let (pods, services, narrow, endpoint) = match family {
            Family::Ipv4 => (
                "10.244.0.0/16",
                "10.96.0.0/16",
                "10.96.0.0/12",
                "10.244.2.2:9090",
            ),
            Family::Ipv6 => ("fd44::/32", "fd96::/112", "fd96::/108", "[fd44::2]:9090"),
        };
        tx.add_table(family);
        for chain in ["c", "mark-for-masquerade"] {
            tx.add_chain(family, chain, None);
        }
        tx.add_set(family, "cluster-ips", SetDecl::set(format!("type {a}")));
        tx.add_set(family, "nodeport-ips", SetDecl::set(format!("type {a}")));
        tx.add_set(family, "hairpin", SetDecl::set(format!("type {a} . {a}")));
        tx.add_set(
            family,
            "service-ips",
            SetDecl::map(format!("type {a} . inet_proto . inet_service : verdict")),
        );
        tx.add_set(
            family,
            "service-nodeports",
            SetDecl::map("type inet_proto . inet_service : verdict"),
        );
        tx.add_set(
            family,
            "aff",
            SetDecl::set(format!("type {a}"))
                .flags(&["dynamic", "timeout"])
                .timeout(std::time::Duration::from_secs(10800)),
        );
        let m = "mark-for-masquerade";
        for rule in [
            format!("ct state new jump {m}"),
            format!("{f} daddr @cluster-ips {f} saddr != {pods} jump {m}"),
            format!("{f} daddr . meta l4proto . th dport vmap @service-ips"),
            format!(
                "{f} daddr @nodeport-ips fib daddr type local meta l4proto . th dport vmap @service-nodeports"
            ),
            "meta mark set meta mark | 0x00004000".to_owned(),
            format!("ct status dnat {f} saddr . {f} daddr @hairpin jump {m}"),
            "meta mark & 0x00004000 == 0x00000000 return".to_owned(),
            "meta mark set meta mark ^ 0x00004000".to_owned(),
            "masquerade fully-random".to_owned(),
            format!("{f} daddr @cluster-ips reject"),
            format!("{f} daddr {services} drop"),
            format!("{f} daddr {narrow} drop"),
            "meta l4proto tcp reject with tcp reset".to_owned(),
            "reject".to_owned(),
            format!("jump {m}"),
            format!("goto {m}"),
            "drop".to_owned(),
            format!("meta l4proto tcp dnat {f} to {endpoint}"),
            format!("fib saddr type local jump {m}"),
            format!("{f} saddr {pods} goto {m}"),
            format!("numgen random mod 2 vmap {{ 0 : goto c, 1 : goto {m} }}"),
            format!("update @aff {{ {f} saddr }}"),
            format!("{f} saddr @aff goto {m}"),
        ] {
            tx.add_rule(family, "c", rule);
        }
    }
    let n = assert_same_messages(&tx);
    eprintln!("{n} messages, byte for byte as nft's");
}

/// The showcase's full sync (every static set, map and chain, and every
/// kind of Service the renderer knows), and a partial sync after it.
#[test]
fn the_showcase_full_sync_is_encoded_as_nft_encodes_it() {
    if !support::root_or_skip("the_showcase_full_sync_is_encoded_as_nft_encodes_it") {
        return;
    }
    use portico_dataplane::{MemoryNft, Proxier, RecordingConntrack};
    let (services, slices) = support::showcase();
    let c = support::catalog(&services, &slices);
    let mut p = Proxier::new(
        support::config(),
        MemoryNft::new(),
        RecordingConntrack::default(),
    );
    p.full_sync(&c).unwrap();
    let tx = p.backend().last().unwrap().clone();
    let n = assert_same_messages_but_ranges(&tx, &["nodeport-ips", "firewall-allow"]);
    eprintln!("showcase full sync: {n} messages, byte for byte as nft's");
}

#[test]
fn typeof_maps_and_pick_rules_are_encoded_as_nft_encodes_them() {
    if !support::root_or_skip("typeof_maps_and_pick_rules_are_encoded_as_nft_encodes_them") {
        return;
    }
    use portico_dataplane::names::{Pick, PickEntry, PickSlots};
    let mut tx = Transaction::new();
    for family in Family::ALL {
        let f = family.nft();
        tx.add_table(family);
        tx.add_chain(family, "mark-for-masquerade", None);
        for pr in ["tcp", "udp", "sctp"] {
            for (name, decl) in [
                (
                    format!("service-backends-{pr}"),
                    format!("typeof {f} daddr . {pr} dport . numgen random mod 1 : {f} daddr"),
                ),
                (
                    format!("service-ports-{pr}"),
                    format!("typeof {f} daddr . {pr} dport : {pr} dport"),
                ),
                (
                    format!("nodeport-backends-{pr}"),
                    format!("typeof {pr} dport . numgen random mod 1 : {f} daddr"),
                ),
                (
                    format!("nodeport-ports-{pr}"),
                    format!("typeof {pr} dport : {pr} dport"),
                ),
            ] {
                tx.add_set(
                    family,
                    &name,
                    SetDecl::map(decl).size(1024).comment("endpoint slots"),
                );
            }
        }
        for entry in [PickEntry::Address, PickEntry::NodePort] {
            for slots in [PickSlots::Cluster, PickSlots::Local, PickSlots::Masquerade] {
                for n in [1, 2, 7] {
                    let pick = Pick { entry, slots, n };
                    tx.add_chain(family, &pick.name(), None);
                    for rule in pick.rules(family) {
                        tx.add_rule(family, &pick.name(), rule);
                    }
                }
            }
        }
    }
    let n = assert_same_messages(&tx);
    eprintln!("{n} messages, byte for byte as nft's");
}

// ---- against the kernel ------------------------------------------------

use portico_dataplane::backend::netlink::Netlink;
use portico_dataplane::{ConntrackTool, Nft, Proxier};
use portico_testkit::{Netns, in_netns};

/// `nft list table` of both families in `ns`.
fn listing(ns: &Netns) -> String {
    let mut out = String::new();
    for f in ["ip", "ip6"] {
        let o = ns
            .command("nft")
            .args(["list", "table", f, "portico"])
            .output()
            .unwrap();
        out.push_str(&String::from_utf8_lossy(&o.stdout));
        out.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    out
}

fn netlink_in(ns: &Netns) -> Netlink {
    in_netns(ns.name(), || Netlink::new().unwrap())
}

/// A proxier writing through netlink in `a`, and one through nft in `b`.
fn proxiers(
    a: &Netns,
    b: &Netns,
) -> (Proxier<Netlink, ConntrackTool>, Proxier<Nft, ConntrackTool>) {
    (
        Proxier::new(
            support::config(),
            netlink_in(a),
            ConntrackTool::in_netns(a.name()),
        ),
        Proxier::new(
            support::config(),
            Nft::in_netns(b.name()),
            ConntrackTool::in_netns(b.name()),
        ),
    )
}

/// The showcase through netlink and through nft, in two namespaces: the
/// kernel lists the same tables after a full sync, after a partial one,
/// and after a second full sync.
#[test]
fn the_showcase_through_netlink_lists_as_through_nft() {
    if !support::root_or_skip("the_showcase_through_netlink_lists_as_through_nft") {
        return;
    }
    let (a, b) = (Netns::new("ptcnl", "a"), Netns::new("ptcnl", "b"));
    let (services, slices) = support::showcase();
    let mut c = support::catalog(&services, &slices);
    let (mut by_netlink, mut by_nft) = proxiers(&a, &b);
    by_netlink.full_sync(&c).unwrap();
    by_nft.full_sync(&c).unwrap();
    // Read back over netlink, the kernel holds what each proxier says it
    // installed, whoever wrote it.
    let read = |ns: &Netns| {
        let mut nl = netlink_in(ns);
        nl.read().unwrap()
    };
    assert_eq!(read(&a), by_netlink.installed().unwrap().view());
    assert_eq!(read(&b), by_nft.installed().unwrap().view());
    let first = listing(&b);
    assert!(first.contains("chain services"), "{first}");
    assert_eq!(listing(&a), first, "after a full sync");
    // A partial sync: a Service goes, another loses its endpoints.
    support::showcase_change(&mut c, &services);
    let changes = c.take_changes();
    by_netlink.sync(&c, &changes).unwrap();
    by_nft.sync(&c, &changes).unwrap();
    assert_eq!(listing(&a), listing(&b), "after a partial sync");
    // Another: a LoadBalancer's source ranges change (elements of a
    // concatenated interval set go and come).
    let lb = services
        .iter()
        .find(|s| s.0.metadata.name.as_deref() == Some("lb"))
        .unwrap()
        .clone()
        .source_ranges(&["10.0.0.0/8", "198.51.100.7"]);
    c.apply_service(&lb.0);
    let changes = c.take_changes();
    by_netlink.sync(&c, &changes).unwrap();
    by_nft.sync(&c, &changes).unwrap();
    let ranged = listing(&b);
    assert!(ranged.contains("10.0.0.0/8"), "{ranged}");
    assert!(!ranged.contains("192.168.56.0/24"), "{ranged}");
    assert_eq!(listing(&a), ranged, "after the source ranges changed");
    assert_eq!(read(&a), by_netlink.installed().unwrap().view());
    assert_eq!(read(&b), by_nft.installed().unwrap().view());
    by_netlink.full_sync(&c).unwrap();
    by_nft.full_sync(&c).unwrap();
    assert_eq!(listing(&a), listing(&b), "after a second full sync");
}

/// A batch the kernel refuses changes nothing, and the error names the
/// operation it failed on.
#[test]
fn a_refused_batch_names_its_operation_and_changes_nothing() {
    if !support::root_or_skip("a_refused_batch_names_its_operation_and_changes_nothing") {
        return;
    }
    use portico_dataplane::Backend as _;
    let ns = Netns::new("ptcnl", "refused");
    let mut nl = netlink_in(&ns);
    let mut tx = Transaction::new();
    tx.add_table(Family::Ipv4);
    tx.add_chain(Family::Ipv4, "services", None);
    // No such set in the kernel.
    tx.add_element(Family::Ipv4, "cluster-ips", "10.96.0.1", None);
    let e = nl.apply(&tx).unwrap_err().to_string();
    assert!(
        e.contains("add element ip portico cluster-ips { 10.96.0.1 … }: No such file or directory"),
        "{e}"
    );
    assert!(
        listing(&ns).contains("No such file or directory"),
        "nothing was made"
    );
    // The same socket goes on: the table alone is made.
    let mut ok = Transaction::new();
    ok.add_table(Family::Ipv4);
    nl.apply(&ok).unwrap();
    assert!(
        listing(&ns).starts_with("table ip portico"),
        "{}",
        listing(&ns)
    );
    assert!(nl.list(Family::Ipv4).unwrap().chains.is_empty());
}

/// A small deterministic generator (xorshift), so a failing seed can be
/// run again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random catalog: Services of every type, dual-stack ones, named and
/// numbered ports over TCP, UDP and SCTP, node ports, LoadBalancer
/// addresses with and without source ranges, external IPs, affinity,
/// traffic policies, and endpoints local and remote, ready and not.
fn random_catalog(
    seed: u64,
    n: usize,
) -> (
    Vec<support::Svc>,
    Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
) {
    use support::{NODE, OTHER_NODE, ep, slice, svc};
    let mut r = Rng(seed | 1);
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..n {
        let name = format!("s{i}");
        let proto = ["TCP", "UDP", "SCTP"][r.below(3) as usize];
        let port = 80 + r.below(3) as i32;
        let mut s = svc(
            "default",
            &name,
            &format!("10.96.{}.{}", i / 200, i % 200 + 1),
        )
        .port("p", proto, port);
        let dual = r.below(4) == 0;
        if dual {
            s = s.also(&format!("fd96::{:x}", i + 1));
        }
        let node_port = 30000 + i as i32;
        match r.below(5) {
            0 => s = s.node_ports(&[node_port]),
            1 => {
                s = s.load_balancer(&format!("192.168.56.{}", 60 + i % 100), &[node_port]);
                if r.below(2) == 0 {
                    s = s.source_ranges(&["10.0.0.0/8", "198.51.100.7"]);
                }
            }
            2 => s = s.external_ip(&format!("203.0.113.{}", i % 250 + 1)),
            _ => {}
        }
        if r.below(6) == 0
            && matches!(
                s.0.spec.as_ref().and_then(|x| x.type_.as_deref()),
                Some("NodePort" | "LoadBalancer")
            )
        {
            s = s.etp_local(31000 + i as i32);
        }
        if r.below(8) == 0 {
            s = s.affinity(600);
        }
        if r.below(8) == 0 {
            s = s.itp_local();
        }
        let count = r.below(5) as usize;
        let target = 8000 + r.below(2) as i32;
        let mut eps = Vec::new();
        for j in 0..count {
            let mut e = ep(&format!("10.244.{}.{}", i % 250, j + 1)).on(if r.below(2) == 0 {
                NODE
            } else {
                OTHER_NODE
            });
            if r.below(6) == 0 {
                e = e.not_ready();
            }
            eps.push(e);
        }
        slices.push(slice(
            "default",
            &format!("{name}-1"),
            &name,
            &[("p", proto, target)],
            &eps,
        ));
        if dual && count > 0 {
            let eps6: Vec<_> = (0..count)
                .map(|j| ep(&format!("fd44::{:x}:{}", i + 1, j + 1)).on(NODE))
                .collect();
            slices.push(slice(
                "default",
                &format!("{name}-6"),
                &name,
                &[("p", proto, target)],
                &eps6,
            ));
        }
        services.push(s);
    }
    (services, slices)
}

/// Random catalogs through netlink and through nft, in two namespaces:
/// the kernel lists the same, and reads back as installed.
#[test]
fn random_catalogs_through_netlink_list_as_through_nft() {
    if !support::root_or_skip("random_catalogs_through_netlink_list_as_through_nft") {
        return;
    }
    let mut seen = String::new();
    for seed in [1, 7, 42, 1234] {
        let (a, b) = (Netns::new("ptcrnd", "a"), Netns::new("ptcrnd", "b"));
        let (services, slices) = random_catalog(seed, 60);
        let c = support::catalog(&services, &slices);
        let (mut by_netlink, mut by_nft) = proxiers(&a, &b);
        by_netlink
            .full_sync(&c)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        by_nft
            .full_sync(&c)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let listed = listing(&b);
        assert_eq!(listing(&a), listed, "seed {seed}");
        let mut nl = netlink_in(&a);
        assert_eq!(
            nl.read().unwrap(),
            by_netlink.installed().unwrap().view(),
            "seed {seed}"
        );
        seen.push_str(&listed);
    }
    // The catalogs had every kind of shape.
    for shape in [
        "table ip6 portico",
        "@affinity-",
        "198.51.100.7",
        "sctp",
        "pick-local",
        "external-",
        "reject",
    ] {
        assert!(seen.contains(shape), "no {shape:?} in any random catalog");
    }
}
