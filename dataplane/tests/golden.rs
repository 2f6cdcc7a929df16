//! The rendered ruleset of representative Services (golden files under
//! `tests/golden/`, rewritten with `UPDATE_GOLDEN=1`), and partial syncs
//! that must hold only what changed. Everything runs on the in-memory
//! backend; `nft.rs` applies the same rulesets with the real `nft`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use portico_catalog::{Catalog, Key};
use portico_dataplane::model::{MIN_SET_SIZE, set_size};
use portico_dataplane::names::Pick;
use portico_dataplane::render::ConntrackTarget;
use portico_dataplane::{MemoryNft, Proxier, RecordingConntrack, SyncKind};
use std::path::PathBuf;
use support::*;

const HTTP: [(&str, &str, i32); 1] = [("http", "TCP", 8080)];

fn proxier() -> Proxier<MemoryNft, RecordingConntrack> {
    Proxier::new(config(), MemoryNft::new(), RecordingConntrack::default())
}

#[track_caller]
fn assert_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(10)
            .map(|(i, (e, a))| format!("line {}:\n  expected: {e}\n  actual:   {a}", i + 1))
            .collect();
        panic!(
            "{} differs ({} vs {} lines; UPDATE_GOLDEN=1 rewrites it):\n{}",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

/// The lines of the last transaction.
fn script(p: &Proxier<MemoryNft, RecordingConntrack>) -> Vec<String> {
    p.backend()
        .last()
        .map(|tx| tx.to_string().lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn key(ns: &str, name: &str) -> Key {
    Key::new(ns, name)
}

#[test]
fn the_showcase_ruleset_matches_its_golden_file() {
    let (services, slices) = showcase();
    let catalog = catalog(&services, &slices);
    let mut p = proxier();
    let report = p.full_sync(&catalog).unwrap();
    assert_eq!(report.kind, SyncKind::Full);
    assert_golden("showcase.txt", &p.backend().dump());
    assert_golden("showcase.nft", &script(&p).join("\n"));
}

#[test]
fn an_empty_catalog_installs_the_static_ruleset_only() {
    let mut p = proxier();
    p.full_sync(&Catalog::new()).unwrap();
    assert_golden("empty.txt", &p.backend().dump());
}

#[test]
fn a_second_full_sync_changes_nothing() {
    let (services, slices) = showcase();
    let catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    let first = p.backend().dump();
    p.full_sync(&catalog).unwrap();
    assert_eq!(p.backend().dump(), first);
    // Nothing is deleted: static sets are flushed and refilled.
    let s = script(&p);
    let deleted: Vec<&String> = s.iter().filter(|l| l.starts_with("delete")).collect();
    assert!(deleted.is_empty(), "nothing is stale: {deleted:?}");
    for kept in [
        "flush set ip portico cluster-ips",
        "flush set ip portico nodeport-ips",
        "flush map ip6 portico service-ips",
        "flush set ip portico firewall-allow",
        "flush map ip portico service-backends-udp",
    ] {
        assert!(s.iter().any(|l| l == kept), "{kept}");
    }
    // Pick chains, whose rules follow from their names, are kept as they
    // are; the other chains are written again.
    assert!(s.contains(&"flush chain ip portico services".to_owned()));
    assert!(
        !s.iter()
            .any(|l| l.starts_with("flush chain ip portico pick-")
                || l.starts_with("add rule ip portico pick-"))
    );
}

#[test]
fn after_a_failed_full_sync_the_next_one_recreates_the_static_sets() {
    let (services, slices) = showcase();
    let catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    let first = p.backend().dump();
    p.backend_mut().fail_next("injected");
    assert!(p.full_sync(&catalog).is_err());
    p.full_sync(&catalog).unwrap();
    assert_eq!(p.backend().dump(), first);
    let s = script(&p);
    for recreated in [
        "delete set ip portico nodeport-ips",
        "delete map ip6 portico service-ips",
    ] {
        assert!(s.iter().any(|l| l == recreated), "{recreated}");
    }
    assert!(!s.iter().any(|l| l.starts_with("flush set")), "{s:?}");
    assert!(s.contains(&"flush chain ip portico pick-2".to_owned()));
    // Then they are kept again.
    p.full_sync(&catalog).unwrap();
    assert!(!script(&p).iter().any(|l| l.starts_with("delete")));
}

#[test]
fn a_set_of_another_declaration_fails_one_full_sync_and_is_recreated_by_the_next() {
    use portico_dataplane::names::Family;
    use portico_dataplane::tx::{SetDecl, Transaction};
    // Left by another version: the same name, another type.
    let mut fake = MemoryNft::new();
    let mut tx = Transaction::new();
    tx.add_table(Family::Ipv4);
    tx.add_set(
        Family::Ipv4,
        "cluster-ips",
        SetDecl::set("type ipv6_addr").size(1024),
    );
    portico_dataplane::Backend::apply(&mut fake, &tx).unwrap();
    let mut p = Proxier::new(config(), fake, RecordingConntrack::default());
    let (services, slices) = showcase();
    let catalog = catalog(&services, &slices);
    let e = p.full_sync(&catalog).unwrap_err();
    assert!(e.to_string().contains("another declaration"), "{e}");
    p.full_sync(&catalog).unwrap();
    assert_partial_equals_full(&p, &catalog);
}

/// Partial syncs of a catalog that changes step by step end where a full
/// sync of the final catalog starts.
/// Pick chains that partial syncs created and no longer use stay until
/// the next full sync, and set sizes follow the element count of the
/// last full sync; both are left out of the comparison.
#[track_caller]
fn assert_partial_equals_full(p: &Proxier<MemoryNft, RecordingConntrack>, catalog: &Catalog) {
    let mut fresh = proxier();
    fresh.full_sync(catalog).unwrap();
    let full = without_sizes(&fresh.backend().dump());
    let partial = without_extra_picks(&without_sizes(&p.backend().dump()), &full);
    if partial != full {
        let diff: Vec<String> = diff_lines(&full, &partial);
        panic!(
            "partial syncs and a full sync disagree:\n{}",
            diff.join("\n")
        );
    }
    assert_eq!(p.model().element_count(), fresh.model().element_count());
}

/// A dump without the ` size N ;` of set declarations.
fn without_sizes(dump: &str) -> String {
    dump.lines()
        .map(|l| match l.find(" size ") {
            Some(i) => {
                let end = l[i + 6..].find(" ;").map_or(l.len(), |j| i + 6 + j + 2);
                format!("{}{}\n", &l[..i], &l[end..])
            }
            None => format!("{l}\n"),
        })
        .collect()
}

fn diff_lines(full: &str, partial: &str) -> Vec<String> {
    let f: std::collections::BTreeSet<&str> = full.lines().collect();
    let q: std::collections::BTreeSet<&str> = partial.lines().collect();
    f.difference(&q)
        .map(|l| format!("- {l}"))
        .chain(q.difference(&f).map(|l| format!("+ {l}")))
        .take(20)
        .collect()
}

fn without_extra_picks(partial: &str, full: &str) -> String {
    fn chain_name(l: &str) -> Option<&str> {
        l.strip_prefix("  chain ").and_then(|r| r.split(' ').next())
    }
    let in_full: std::collections::HashSet<&str> = full.lines().filter_map(chain_name).collect();
    let mut out = String::new();
    let mut skip = false;
    for l in partial.lines() {
        if let Some(name) = chain_name(l) {
            skip = Pick::parse(name).is_some() && !in_full.contains(name);
        } else if !l.starts_with("    ") {
            skip = false;
        }
        if !skip {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn removing_an_endpoint_rewrites_only_that_service() {
    let (services, mut slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();

    slices[0] = slice(
        "default",
        "web-1",
        "web",
        &[("http", "TCP", 8080)],
        &[ep("10.244.1.2")],
    );
    catalog.apply_slice(&slices[0]);
    let changes = catalog.take_changes();
    let report = p.sync(&catalog, &changes).unwrap();
    assert_eq!(report.kind, SyncKind::Partial);
    assert_eq!(
        script(&p),
        vec![
            "delete element ip portico service-backends-tcp { 10.96.0.10 . 80 . 1 }",
            "delete element ip portico service-ips { 10.96.0.10 . tcp . 80 }",
            "add element ip portico service-ips { 10.96.0.10 . tcp . 80 : goto pick-1 }",
        ]
    );
    assert_partial_equals_full(&p, &catalog);
}

#[test]
fn a_new_endpoint_count_creates_its_pick_chain_once() {
    let (services, mut slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    slices[0] = slice(
        "default",
        "web-1",
        "web",
        &[("http", "TCP", 8080)],
        &(0..17)
            .map(|i| ep(&format!("10.244.{}.2", i + 1)))
            .collect::<Vec<_>>(),
    );
    catalog.apply_slice(&slices[0]);
    let changes = catalog.take_changes();
    p.sync(&catalog, &changes).unwrap();
    let s = script(&p);
    assert_eq!(s[0], "add chain ip portico pick-17");
    assert_eq!(s.iter().filter(|l| l.starts_with("add rule")).count(), 3);
    assert_partial_equals_full(&p, &catalog);

    // Back to 16 and up to 17 again: the chain is still there.
    for n in [16, 17] {
        catalog.apply_slice(&slice(
            "default",
            "web-1",
            "web",
            &[("http", "TCP", 8080)],
            &(0..n)
                .map(|i| ep(&format!("10.244.{}.2", i + 1)))
                .collect::<Vec<_>>(),
        ));
        let changes = catalog.take_changes();
        p.sync(&catalog, &changes).unwrap();
        assert!(
            !script(&p).iter().any(|l| l.contains("chain")),
            "{:?}",
            script(&p)
        );
    }
}

#[test]
fn an_unchanged_service_costs_no_transaction() {
    let (services, slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    let applied = p.backend().applied();
    let mut changes = catalog.take_changes();
    changes.services.insert(key("default", "web"));
    let report = p.sync(&catalog, &changes).unwrap();
    assert_eq!(report.operations, 0);
    assert_eq!(p.backend().applied(), applied);
}

#[test]
fn a_deleted_service_takes_its_elements_and_chains_with_it() {
    let (services, slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    for name in ["sticky", "local"] {
        let s = services
            .iter()
            .find(|s| s.0.metadata.name.as_deref() == Some(name))
            .unwrap();
        catalog.delete_service(&s.0);
    }
    let changes = catalog.take_changes();
    p.sync(&catalog, &changes).unwrap();
    let s = script(&p);
    assert!(
        s.iter()
            .all(|l| l.starts_with("delete") || l.starts_with("flush")),
        "{s:#?}"
    );
    assert!(
        s.iter()
            .any(|l| l.starts_with("delete chain") && l.contains("default/sticky/tcp/80"))
    );
    assert!(
        s.iter()
            .any(|l| l.starts_with("delete set") && l.contains("affinity-"))
    );
    assert!(
        s.iter()
            .any(|l| l.starts_with("delete chain") && l.contains("default/local/tcp/80"))
    );
    // The shared hairpin elements stay: other Services use those endpoints.
    assert!(!s.iter().any(|l| l.contains("hairpin")));
    assert_partial_equals_full(&p, &catalog);
}

#[test]
fn a_new_service_adds_only_its_own_objects() {
    let (services, slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    catalog.apply_service(&svc("team", "api", "10.96.1.1").port("http", "TCP", 80).0);
    catalog.apply_slice(&slice(
        "team",
        "api-1",
        "api",
        &[("http", "TCP", 8080)],
        &[ep("10.244.9.2")],
    ));
    let changes = catalog.take_changes();
    p.sync(&catalog, &changes).unwrap();
    assert_eq!(
        script(&p),
        vec![
            "add element ip portico service-backends-tcp { 10.96.1.1 . 80 . 0 : 10.244.9.2 }",
            "add element ip portico service-ports-tcp { 10.96.1.1 . 80 : 8080 }",
            "add element ip portico service-ips { 10.96.1.1 . tcp . 80 : goto pick-1 }",
            "add element ip portico cluster-ips { 10.96.1.1 }",
            "add element ip portico hairpin { 10.244.9.2 . 10.244.9.2 }",
        ]
    );
    assert_partial_equals_full(&p, &catalog);
}

#[test]
fn a_partial_transaction_does_not_grow_with_the_number_of_services() {
    let mut sizes = Vec::new();
    for n in [10, 1000] {
        let services: Vec<Svc> = (0..n)
            .map(|i| {
                svc(
                    "bulk",
                    &format!("s{i}"),
                    &format!("10.96.{}.{}", 100 + i / 250, i % 250 + 1),
                )
                .port("http", "TCP", 80)
            })
            .collect();
        let mut slices: Vec<_> = (0..n)
            .map(|i| {
                slice(
                    "bulk",
                    &format!("s{i}-1"),
                    &format!("s{i}"),
                    &[("http", "TCP", 8080)],
                    &[
                        ep(&format!("10.245.{}.{}", i / 250, i % 250 + 1)).on(OTHER_NODE),
                        ep("10.244.1.2"),
                    ],
                )
            })
            .collect();
        let mut catalog = catalog(&services, &slices);
        let mut p = proxier();
        p.full_sync(&catalog).unwrap();
        slices[3] = slice(
            "bulk",
            "s3-1",
            "s3",
            &[("http", "TCP", 8080)],
            &[ep("10.244.1.2")],
        );
        catalog.apply_slice(&slices[3]);
        let changes = catalog.take_changes();
        let report = p.sync(&catalog, &changes).unwrap();
        sizes.push(report.operations);
    }
    assert_eq!(sizes[0], sizes[1], "{sizes:?}");
}

#[test]
fn a_failed_sync_makes_the_next_one_full() {
    let (services, mut slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    slices[0] = slice(
        "default",
        "web-1",
        "web",
        &[("http", "TCP", 8080)],
        &[ep("10.244.1.2")],
    );
    catalog.apply_slice(&slices[0]);
    let changes = catalog.take_changes();
    p.backend_mut().fail_next("injected");
    assert!(p.sync(&catalog, &changes).is_err());
    assert!(p.needs_full_sync());
    let report = p.sync(&catalog, &Default::default()).unwrap();
    assert_eq!(report.kind, SyncKind::Full);
    assert_partial_equals_full(&p, &catalog);
}

#[test]
fn a_full_sync_after_a_restart_deletes_what_is_stale() {
    let (services, slices) = showcase();
    let full = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&full).unwrap();
    // A new process finds the old ruleset; the sticky and local Services
    // (with chains and sets of their own) are gone meanwhile.
    let kept: Vec<Svc> = services
        .iter()
        .filter(|s| {
            !matches!(
                s.0.metadata.name.as_deref(),
                Some("sticky" | "local" | "web")
            )
        })
        .cloned()
        .collect();
    let smaller = catalog(&kept, &slices);
    let mut restarted = Proxier::new(config(), p.backend().clone(), RecordingConntrack::default());
    restarted.full_sync(&smaller).unwrap();
    let s = script(&restarted);
    assert!(
        s.iter()
            .any(|l| l.starts_with("delete chain") && l.contains("default/sticky"))
    );
    assert!(
        s.iter()
            .any(|l| l.starts_with("delete set") && l.contains("affinity-"))
    );
    assert!(
        s.iter()
            .any(|l| l.starts_with("delete chain ip portico pick-local-1"))
    );
    assert_partial_equals_full(&restarted, &smaller);
}

#[test]
fn removed_udp_endpoints_lose_their_conntrack_entries() {
    let (services, mut slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    slices[1] = dns_slice(5353, &[ep("10.244.3.2")]);
    catalog.apply_slice(&slices[1]);
    let changes = catalog.take_changes();
    p.sync(&catalog, &changes).unwrap();
    assert_eq!(
        p.conntrack().deleted,
        vec![(
            ConntrackTarget::Address("10.96.0.53".parse().unwrap()),
            "10.244.4.2:5353".parse().unwrap()
        )]
    );
}

/// The showcase's IPv4 DNS slice (UDP and TCP on `port`) with `eps`.
fn dns_slice(port: i32, eps: &[Ep]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    slice(
        "kube-system",
        "dns-v4",
        "dns",
        &[("dns", "UDP", port), ("dns-tcp", "TCP", port)],
        eps,
    )
}

/// What one sync of the catalog's changes asked of conntrack.
fn conntrack_of_a_sync(
    catalog: &mut Catalog,
    p: &mut Proxier<MemoryNft, RecordingConntrack>,
) -> RecordingConntrack {
    let before = p.conntrack().clone();
    let changes = catalog.take_changes();
    p.sync(catalog, &changes).unwrap();
    let after = p.conntrack();
    RecordingConntrack {
        deleted: after.deleted[before.deleted.len()..].to_vec(),
        untranslated: after.untranslated[before.untranslated.len()..].to_vec(),
    }
}

/// kube-proxy's `testOldEndpointPort`: an endpoint renumbered on the same
/// address loses the flows of its old port.
#[test]
fn a_udp_endpoint_renumbered_on_its_address_loses_its_old_flows() {
    let (services, mut slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    slices[1] = dns_slice(5354, &[ep("10.244.3.2"), ep("10.244.4.2").on(OTHER_NODE)]);
    catalog.apply_slice(&slices[1]);
    let dns = ConntrackTarget::Address("10.96.0.53".parse().unwrap());
    assert_eq!(
        conntrack_of_a_sync(&mut catalog, &mut p).deleted,
        vec![
            (dns, "10.244.3.2:5353".parse().unwrap()),
            (dns, "10.244.4.2:5353".parse().unwrap())
        ]
    );
}

/// A UDP entry point that gets its first serving endpoint (and every one at
/// the first sync) has its untranslated flows deleted; one that keeps
/// serving does not.
#[test]
fn udp_entry_points_that_start_serving_lose_their_untranslated_flows() {
    let (services, mut slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    let dns_v4 = ConntrackTarget::Address("10.96.0.53".parse().unwrap());
    let dns_v6 = ConntrackTarget::Address("fd96::53".parse().unwrap());
    assert_eq!(p.conntrack().untranslated, vec![dns_v4, dns_v6]);
    let dns = |eps: &[Ep]| dns_slice(5353, eps);
    let resync = |c: &mut Catalog, p: &mut _| conntrack_of_a_sync(c, p).untranslated;
    // Still serving: nothing.
    slices[1] = dns(&[ep("10.244.3.2")]);
    catalog.apply_slice(&slices[1]);
    assert_eq!(resync(&mut catalog, &mut p), vec![]);
    // No endpoint, then one again.
    slices[1] = dns(&[]);
    catalog.apply_slice(&slices[1]);
    assert_eq!(resync(&mut catalog, &mut p), vec![]);
    slices[1] = dns(&[ep("10.244.3.2")]);
    catalog.apply_slice(&slices[1]);
    assert_eq!(resync(&mut catalog, &mut p), vec![dns_v4]);
}

/// kube-proxy's conntrack cleanup keeps every flow whose endpoint still
/// serves: terminating ones, and those a traffic policy no longer picks.
#[test]
fn udp_flows_to_serving_endpoints_are_kept() {
    let dns = |eps: &[Ep]| dns_slice(5353, eps);
    let (services, mut slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    let resync = |c: &mut Catalog, p: &mut _| conntrack_of_a_sync(c, p).deleted;
    // 10.244.4.2 drains: terminating but serving; no new connections, but
    // its flows stay.
    slices[1] = dns(&[
        ep("10.244.3.2"),
        ep("10.244.4.2").on(OTHER_NODE).terminating(),
    ]);
    catalog.apply_slice(&slices[1]);
    assert_eq!(resync(&mut catalog, &mut p), vec![]);
    // internalTrafficPolicy Local: the remote endpoint is not picked any
    // more, and its flows stay too.
    catalog.apply_service(&services[1].clone().itp_local().0);
    assert_eq!(resync(&mut catalog, &mut p), vec![]);
    // It stops serving: its flows go, from every entry point.
    slices[1] = dns(&[
        ep("10.244.3.2"),
        ep("10.244.4.2").on(OTHER_NODE).not_ready(),
    ]);
    catalog.apply_slice(&slices[1]);
    assert_eq!(
        resync(&mut catalog, &mut p),
        vec![(
            ConntrackTarget::Address("10.96.0.53".parse().unwrap()),
            "10.244.4.2:5353".parse().unwrap()
        )]
    );
}

#[test]
fn two_services_claiming_one_address_and_port_get_one_winner() {
    let a = svc("default", "a", "10.96.0.100")
        .port("http", "TCP", 80)
        .external_ip("203.0.113.50");
    let b = svc("default", "b", "10.96.0.101")
        .port("http", "TCP", 80)
        .external_ip("203.0.113.50");
    let http = [("http", "TCP", 8080)];
    let slices = vec![
        slice("default", "a-1", "a", &http, &[ep("10.244.1.2")]),
        slice(
            "default",
            "b-1",
            "b",
            &http,
            &[ep("10.244.2.2"), ep("10.244.3.2")],
        ),
    ];
    let mut catalog = catalog(&[a.clone(), b], &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    let dispatch = |p: &Proxier<MemoryNft, RecordingConntrack>| {
        p.backend()
            .elements(portico_dataplane::names::Family::Ipv4, "service-ips")
            .unwrap()
            .get("203.0.113.50 . tcp . 80")
            .cloned()
            .flatten()
    };
    assert_eq!(dispatch(&p).as_deref(), Some("goto pick-masq-1"));
    assert_eq!(p.model().conflicts().len(), 1);
    catalog.delete_service(&a.0);
    let changes = catalog.take_changes();
    p.sync(&catalog, &changes).unwrap();
    assert_eq!(dispatch(&p).as_deref(), Some("goto pick-masq-2"));
    assert_partial_equals_full(&p, &catalog);
}

/// A long random walk of changes, each applied by a partial sync, always
/// matches a full sync of the same catalog.
#[test]
fn random_changes_by_partial_syncs_match_full_syncs() {
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let shapes = |i: u64, v: u64| -> Svc {
        let base = svc("walk", &format!("s{i}"), &format!("10.96.2.{}", i + 1));
        match v % 6 {
            0 => base.port("http", "TCP", 80),
            1 => base.port("dns", "UDP", 53).node_ports(&[31000 + i as i32]),
            2 => base
                .port("http", "TCP", 80)
                .load_balancer(&format!("192.168.56.{}", 100 + i), &[31100 + i as i32])
                .etp_local(32000 + i as i32),
            3 => base.port("http", "TCP", 80).affinity(30 + v as i32),
            4 => base.port("http", "TCP", 80).itp_local(),
            _ => base
                .port("http", "TCP", 80)
                .external_ip("203.0.113.77")
                .affinity(60)
                .etp_local(32100 + i as i32)
                .node_ports(&[31200 + i as i32]),
        }
    };
    let mut catalog = Catalog::new();
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    for step in 0..300 {
        let i = next(8);
        match next(4) {
            0 => catalog.apply_service(&shapes(i, next(6)).0),
            1 => catalog.delete_service(&shapes(i, 0).0),
            _ => {
                let n = next(4);
                let eps: Vec<Ep> = (0..n)
                    .map(|k| {
                        let e = ep(&format!("10.244.{}.{}", k + 1, 2 + next(3)));
                        match next(4) {
                            0 => e.on(OTHER_NODE),
                            1 => e.terminating(),
                            2 => e.not_ready(),
                            _ => e,
                        }
                    })
                    .collect();
                let proto = if next(2) == 0 { "TCP" } else { "UDP" };
                catalog.apply_slice(&slice(
                    "walk",
                    &format!("s{i}-1"),
                    &format!("s{i}"),
                    &[("http", "TCP", 8080), ("dns", proto, 5353)],
                    &eps,
                ));
                // Sometimes a pod that serves the named port on another
                // number (per-Service chains), sometimes none.
                let other = slice(
                    "walk",
                    &format!("s{i}-2"),
                    &format!("s{i}"),
                    &[("http", "TCP", 9090)],
                    &[ep(&format!("10.244.9.{}", 2 + next(2)))],
                );
                if next(3) == 0 {
                    catalog.apply_slice(&other);
                } else {
                    catalog.delete_slice(&other);
                }
            }
        }
        let changes = catalog.take_changes();
        p.sync(&catalog, &changes)
            .unwrap_or_else(|e| panic!("step {step}: {e}\n{}", p.backend().last().unwrap()));
        if step % 10 == 9 {
            assert_partial_equals_full(&p, &catalog);
        }
    }
}

#[test]
fn a_new_affinity_timeout_replaces_the_affinity_sets() {
    let (services, slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    catalog.apply_service(
        &svc("default", "sticky", "10.96.0.50")
            .port("http", "TCP", 80)
            .affinity(900)
            .0,
    );
    let changes = catalog.take_changes();
    p.sync(&catalog, &changes).unwrap();
    let s = script(&p);
    assert_eq!(
        s.iter().filter(|l| l.starts_with("add set")).count(),
        2,
        "{s:#?}"
    );
    assert_eq!(
        s.iter().filter(|l| l.starts_with("delete set")).count(),
        2,
        "{s:#?}"
    );
    assert!(s.iter().any(|l| l.contains("timeout 900s")));
    assert_partial_equals_full(&p, &catalog);
}

#[test]
fn affinity_with_only_a_terminating_local_endpoint_gets_its_chain() {
    // Cluster-wide a ready endpoint elsewhere; on this node only a
    // serving, terminating one, which the local chain falls back to.
    let catalog = catalog(
        &[svc("default", "sticky", "10.96.0.50")
            .port("http", "TCP", 80)
            .load_balancer("192.168.56.62", &[30085])
            .etp_local(30901)
            .affinity(60)],
        &[slice(
            "default",
            "sticky-1",
            "sticky",
            &[("http", "TCP", 8080)],
            &[
                ep("10.244.2.2").on(OTHER_NODE),
                ep("10.244.1.2").terminating(),
            ],
        )],
    );
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    let chains = p.backend().chains(portico_dataplane::names::Family::Ipv4);
    assert!(
        chains
            .iter()
            .any(|c| c.starts_with("endpoint-") && c.ends_with("__10.244.1.2/8080")),
        "{chains:?}"
    );
}

#[test]
fn a_partial_sync_that_would_outgrow_a_set_is_done_as_a_full_one() {
    let mut catalog = Catalog::new();
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    assert!(
        p.backend()
            .dump()
            .contains(&format!("size {MIN_SET_SIZE} ;"))
    );

    let n = MIN_SET_SIZE as usize + 1;
    let eps: Vec<Ep> = (0..n)
        .map(|i| ep(&format!("10.244.{}.{}", 1 + i / 200, 2 + i % 200)).on(OTHER_NODE))
        .collect();
    catalog.apply_service(
        &svc("default", "big", "10.96.0.10")
            .port("http", "TCP", 80)
            .0,
    );
    catalog.apply_slice(&slice("default", "big-1", "big", &HTTP, &eps));
    let changes = catalog.take_changes();
    let report = p.sync(&catalog, &changes).unwrap();
    assert_eq!(report.kind, SyncKind::Full);
    assert_eq!(set_size(n), 4 * MIN_SET_SIZE);
    assert!(
        p.backend()
            .dump()
            .contains(&format!("size {} ;", set_size(n)))
    );
    // Only the set that outgrew its size is recreated (larger); the
    // others keep theirs and are refilled.
    let s = script(&p);
    let deleted: Vec<&String> = s.iter().filter(|l| l.starts_with("delete")).collect();
    assert_eq!(
        deleted,
        ["delete map ip portico service-backends-tcp"],
        "{s:?}"
    );
    assert!(s.contains(&"flush set ip portico cluster-ips".to_owned()));
    // The pick chains that read it are written again; the others kept.
    assert!(s.contains(&"flush chain ip portico pick-1".to_owned()));
    assert!(!s.contains(&"flush chain ip portico nodeport-pick-1".to_owned()));

    // Room again: the next change is partial.
    catalog.apply_slice(&slice("default", "big-1", "big", &HTTP, &eps[1..]));
    let changes = catalog.take_changes();
    assert_eq!(p.sync(&catalog, &changes).unwrap().kind, SyncKind::Partial);
    assert_partial_equals_full(&p, &catalog);
}

#[test]
fn a_full_sync_reuses_the_rules_of_services_that_did_not_change() {
    let (services, mut slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = proxier();
    p.full_sync(&catalog).unwrap();
    let web = key("default", "web");
    let lb = key("default", "lb");
    let ptr = |p: &Proxier<MemoryNft, RecordingConntrack>, k: &Key| {
        std::ptr::from_ref(p.model().service(k).unwrap())
    };
    let (web_before, lb_before) = (ptr(&p, &web), ptr(&p, &lb));

    // web's endpoints change (no sync in between); lb does not.
    slices[0] = slice("default", "web-1", "web", &HTTP, &[ep("10.244.1.2")]);
    catalog.apply_slice(&slices[0]);
    catalog.take_changes();
    p.full_sync(&catalog).unwrap();
    assert_ne!(ptr(&p, &web), web_before);
    assert_eq!(ptr(&p, &lb), lb_before);
    assert_partial_equals_full(&p, &catalog);

    // A Service changed by a partial sync is rendered again by the next
    // full sync; another configuration renders everything again.
    slices[0] = slice("default", "web-1", "web", &HTTP, &[ep("10.244.2.2")]);
    catalog.apply_slice(&slices[0]);
    let changes = catalog.take_changes();
    p.sync(&catalog, &changes).unwrap();
    let web_partial = ptr(&p, &web);
    p.full_sync(&catalog).unwrap();
    assert_ne!(ptr(&p, &web), web_partial);
    assert_eq!(ptr(&p, &lb), lb_before);
    let mut cfg = config();
    cfg.cluster_cidrs.pop();
    p.set_config(cfg);
    p.full_sync(&catalog).unwrap();
    assert_ne!(ptr(&p, &lb), lb_before);
}
