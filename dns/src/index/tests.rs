use super::*;
use crate::fixtures::*;
use crate::wire::name_from_text;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn zone() -> Arc<Zone> {
    Arc::new(Zone::new("cluster.local", 5, PodsMode::Verified, &[]).unwrap())
}

fn writer() -> IndexWriter {
    IndexWriter::new(zone())
}

fn names(w: &IndexWriter) -> BTreeSet<String> {
    w.names
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                wire::name_to_text(e.key()),
                if e.node().is_empty() { " (empty)" } else { "" }
            )
        })
        .collect()
}

/// The names of an empty zone (no name server addresses configured).
const STATIC: [&str; 5] = [
    "cluster.local",
    "dns-version.cluster.local",
    "dns.cluster.local (empty)",
    "ns.dns.cluster.local (empty)",
    "svc.cluster.local (empty)",
];

/// `STATIC` and `more`.
fn with_static(more: &[&str]) -> BTreeSet<String> {
    STATIC.iter().chain(more).map(|s| (*s).to_owned()).collect()
}

fn apply(w: &mut IndexWriter, c: &mut Catalog) {
    let changes = c.take_changes();
    w.apply(c, &changes);
}

#[test]
fn a_service_adds_its_names_and_their_parents() {
    let mut c = Catalog::new();
    let mut w = writer();
    c.apply_service(&mk_svc("ns", "web", "10.96.0.1", &[("http", "TCP", 80)]));
    apply(&mut w, &mut c);
    assert_eq!(
        names(&w),
        with_static(&[
            "_http._tcp.web.ns.svc.cluster.local",
            "_tcp.web.ns.svc.cluster.local (empty)",
            "ns.svc.cluster.local (empty)",
            "web.ns.svc.cluster.local",
        ])
    );
    c.delete_service(&mk_svc("ns", "web", "", &[]));
    apply(&mut w, &mut c);
    assert_eq!(names(&w), with_static(&[]));
    assert!(w.ptrs.is_empty());
}

#[test]
fn an_address_shared_by_two_headless_services_keeps_both_ptr_targets() {
    let mut c = Catalog::new();
    let mut w = writer();
    for svc in ["a", "b"] {
        c.apply_service(&mk_headless("ns", svc, &[]));
        c.apply_slice(&mk_slice(
            "ns",
            &format!("{svc}-1"),
            svc,
            vec![mk_ep("10.244.0.1", Some("pod"), true)],
            &[],
        ));
    }
    apply(&mut w, &mut c);
    let ip: IpAddr = "10.244.0.1".parse().unwrap();
    assert_eq!(
        w.ptrs
            .get(&ip)
            .unwrap()
            .view()
            .rrsets()
            .next()
            .unwrap()
            .count,
        2
    );
    c.delete_service(&mk_headless("ns", "a", &[]));
    apply(&mut w, &mut c);
    assert_eq!(
        w.ptrs
            .get(&ip)
            .unwrap()
            .view()
            .rrsets()
            .next()
            .unwrap()
            .count,
        1
    );
    assert!(
        w.names
            .contains_key(&name_from_text("pod.b.ns.svc.cluster.local").unwrap()[..])
    );
}

#[test]
fn a_snapshot_does_not_change_when_the_writer_does() {
    let mut c = Catalog::new();
    let mut w = writer();
    c.apply_service(&mk_svc("ns", "web", "10.96.0.1", &[]));
    apply(&mut w, &mut c);
    let before = w.snapshot();
    c.delete_service(&mk_svc("ns", "web", "", &[]));
    apply(&mut w, &mut c);
    let key = name_from_text("web.ns.svc.cluster.local").unwrap();
    assert!(before.names.contains_key(&key[..]));
    assert!(!w.snapshot().names.contains_key(&key[..]));
}

#[derive(Debug, Clone)]
enum Op {
    Svc(u8, u8, bool),
    DeleteSvc(u8, u8),
    Slice(u8, u8, Vec<(u8, bool, bool)>),
    DeleteSlice(u8, u8),
    Pod(u8, u8),
    DeletePod(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..2, 0u8..3, any::<bool>()).prop_map(|(n, s, h)| Op::Svc(n, s, h)),
        (0u8..2, 0u8..3).prop_map(|(n, s)| Op::DeleteSvc(n, s)),
        (
            0u8..2,
            0u8..3,
            proptest::collection::vec((0u8..5, any::<bool>(), any::<bool>()), 0..4)
        )
            .prop_map(|(n, s, e)| Op::Slice(n, s, e)),
        (0u8..2, 0u8..3).prop_map(|(n, s)| Op::DeleteSlice(n, s)),
        (0u8..4, 0u8..3).prop_map(|(p, ip)| Op::Pod(p, ip)),
        (0u8..4).prop_map(Op::DeletePod),
    ]
}

fn run(c: &mut Catalog, op: &Op) {
    let ns = |n: u8| format!("ns{n}");
    match op {
        Op::Svc(n, s, headless) => {
            let name = format!("s{s}");
            let svc = if *headless {
                mk_headless(&ns(*n), &name, &[("p", "TCP", 80)])
            } else {
                mk_svc(
                    &ns(*n),
                    &name,
                    &format!("10.96.{n}.{s}"),
                    &[("p", "TCP", 80)],
                )
            };
            c.apply_service(&svc);
        }
        Op::DeleteSvc(n, s) => c.delete_service(&mk_svc(&ns(*n), &format!("s{s}"), "", &[])),
        Op::Slice(n, s, eps) => {
            let eps = eps
                .iter()
                .map(|(a, host, ready)| {
                    mk_ep(
                        &format!("10.244.0.{a}"),
                        host.then(|| format!("h{a}")).as_deref(),
                        *ready,
                    )
                })
                .collect();
            c.apply_slice(&mk_slice(
                &ns(*n),
                &format!("s{s}-x"),
                &format!("s{s}"),
                eps,
                &[("p", "TCP", 8080)],
            ));
        }
        Op::DeleteSlice(n, s) => c.delete_slice(&mk_slice(
            &ns(*n),
            &format!("s{s}-x"),
            &format!("s{s}"),
            vec![],
            &[],
        )),
        Op::Pod(p, ip) => c.apply_pod(&mk_pod(
            "ns0",
            &format!("p{p}"),
            &[&format!("10.244.1.{ip}")],
        )),
        Op::DeletePod(p) => c.delete_pod(&mk_pod("ns0", &format!("p{p}"), &[])),
    }
}

proptest! {
    /// Applying changes one at a time gives the same zone as building it
    /// from scratch.
    #[test]
    fn incremental_updates_equal_a_rebuild(ops in proptest::collection::vec(op(), 1..40)) {
        let mut c = Catalog::new();
        // One zone for both: its SOA serial is the second it was made.
        let zone = zone();
        let mut w = IndexWriter::new(zone.clone());
        for op in &ops {
            run(&mut c, op);
            apply(&mut w, &mut c);
        }
        let mut fresh = IndexWriter::new(zone);
        fresh.reset(&c);
        let a: Vec<_> = w.names.iter().map(|e| (e.key().to_vec(), e.node().0.to_vec())).collect::<BTreeMap<_, _>>().into_iter().collect();
        let b: Vec<_> = fresh.names.iter().map(|e| (e.key().to_vec(), e.node().0.to_vec())).collect::<BTreeMap<_, _>>().into_iter().collect();
        prop_assert_eq!(a, b);
        let pa: BTreeMap<_, _> = w.ptrs.iter().map(|(k, v)| (*k, v.clone())).collect();
        let pb: BTreeMap<_, _> = fresh.ptrs.iter().map(|(k, v)| (*k, v.clone())).collect();
        prop_assert_eq!(pa, pb);
        let ka: BTreeSet<(String, IpAddr)> = w.pods.iter().flat_map(|(ns, s)| s.iter().map(move |ip| (ns.to_string(), *ip))).collect();
        let kb: BTreeSet<(String, IpAddr)> = fresh.pods.iter().flat_map(|(ns, s)| s.iter().map(move |ip| (ns.to_string(), *ip))).collect();
        prop_assert_eq!(ka, kb);
        prop_assert!(w.refs == fresh.refs);
    }
}

#[test]
fn a_namespace_pod_set_grows_and_shrinks_one_shard_at_a_time() {
    let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0AF4_0000 + i));
    let mut set = NsPods::build(vec![ip(0)]);
    for i in 1..2000 {
        set = set.with(ip(i), true).unwrap();
        assert!(set.with(ip(i), true).is_none(), "already there");
    }
    assert_eq!(set.len, 2000);
    assert!(set.shards.len() >= 2000 / (SHARD_TARGET * 4));
    assert!((0..2000).all(|i| set.contains(&ip(i))));
    assert!(!set.contains(&ip(2000)));
    let before = set.clone();
    let after = set.with(ip(7), false).unwrap();
    assert!(!after.contains(&ip(7)) && before.contains(&ip(7)));
    // Only the changed shard is new.
    let shared = before
        .shards
        .iter()
        .zip(after.shards.iter())
        .filter(|(a, b)| Arc::ptr_eq(a, b))
        .count();
    assert_eq!(shared, before.shards.len() - 1);
}
