//! The rendered rulesets applied with the real `nft`, in a fresh network
//! namespace: what the golden tests check on the fake, the kernel must
//! accept too (syntax, ordering, object lifetimes). Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use portico_catalog::Catalog;
use portico_dataplane::names::Family;
use portico_dataplane::{Backend, MemoryNft, Proxier, RecordingConntrack, SyncKind};
use support::lab::Lab;
use support::*;

#[test]
fn the_showcase_applies_twice_changes_partially_and_cleans_up() {
    if !root_or_skip("the_showcase_applies_twice_changes_partially_and_cleans_up") {
        return;
    }
    let lab = Lab::new(0);
    let (services, mut slices) = showcase();
    let mut catalog = catalog(&services, &slices);
    let mut p = Proxier::new(config(), lab.nft(), RecordingConntrack::default());
    let mut fake = Proxier::new(config(), MemoryNft::new(), RecordingConntrack::default());
    p.full_sync(&catalog).unwrap();
    fake.full_sync(&catalog).unwrap();
    let dump = lab.nft().dump().unwrap();
    assert!(dump.contains("table ip portico"), "{dump}");
    assert!(dump.contains("table ip6 portico"), "{dump}");

    // A second full sync over the installed ruleset (affinity sets kept)
    // finds every chain as it wants it: nothing to replace or delete.
    let mut existing = std::collections::BTreeMap::new();
    for family in Family::ALL {
        existing.insert(family, lab.nft().list(family).unwrap());
    }
    let script = portico_dataplane::model::Model::build(&config(), &catalog)
        .full_transaction(
            &config(),
            &existing,
            portico_dataplane::model::StaticSets::Keep,
        )
        .to_string();
    assert!(
        !script.lines().any(|l| l.starts_with("delete chain")),
        "{script}"
    );
    let again = p.full_sync(&catalog).unwrap();
    assert_eq!(again.kind, SyncKind::Full);

    // Partial syncs: change endpoints, delete Services with chains of
    // their own, add one back.
    slices[0] = slice(
        "default",
        "web-1",
        "web",
        &[("http", "TCP", 8080)],
        &[ep("10.244.1.2")],
    );
    catalog.apply_slice(&slices[0]);
    for name in ["sticky", "local"] {
        let s = services
            .iter()
            .find(|s| s.0.metadata.name.as_deref() == Some(name))
            .unwrap();
        catalog.delete_service(&s.0);
    }
    let changes = catalog.take_changes();
    assert_eq!(p.sync(&catalog, &changes).unwrap().kind, SyncKind::Partial);
    fake.sync(&catalog, &changes).unwrap();
    for s in &services {
        catalog.apply_service(&s.0);
    }
    let changes = catalog.take_changes();
    p.sync(&catalog, &changes).unwrap();
    fake.sync(&catalog, &changes).unwrap();
    // A new affinity timeout means new affinity sets.
    catalog.apply_service(
        &svc("default", "sticky", "10.96.0.50")
            .port("http", "TCP", 80)
            .affinity(900)
            .0,
    );
    let changes = catalog.take_changes();
    p.sync(&catalog, &changes).unwrap();
    fake.sync(&catalog, &changes).unwrap();

    // The kernel holds what the fake holds.
    for family in Family::ALL {
        let mut listed = lab.nft().clone().list(family).unwrap();
        // The kernel gives the affinity sets (dynamic, declared without
        // a size) a size of its own.
        listed
            .sizes
            .retain(|name, _| !name.starts_with("affinity-"));
        let expected = fake.backend_mut().list(family).unwrap();
        assert_eq!(listed, expected, "{family}");
    }

    // A restarted proxier over a smaller catalog deletes the stale chains.
    let mut restarted = Proxier::new(config(), lab.nft(), RecordingConntrack::default());
    restarted.full_sync(&Catalog::new()).unwrap();
    let dump = lab.nft().dump().unwrap();
    assert!(!dump.contains("default/"), "{dump}");

    lab.nft().cleanup().unwrap();
    assert_eq!(lab.nft().dump().unwrap(), "");
    // Cleaning up twice is fine.
    lab.nft().cleanup().unwrap();
}

#[test]
fn a_refused_transaction_says_why_and_changes_nothing() {
    if !root_or_skip("a_refused_transaction_says_why_and_changes_nothing") {
        return;
    }
    let lab = Lab::new(0);
    let mut nft = lab.nft();
    let mut tx = portico_dataplane::Transaction::new();
    tx.add_table(Family::Ipv4);
    tx.add_chain(Family::Ipv4, "services", None);
    nft.apply(&tx).unwrap();
    // Small transactions go through the long-lived session: a refused
    // one reports nft's error, applies nothing, and the session goes on.
    for _ in 0..3 {
        let mut bad = portico_dataplane::Transaction::new();
        bad.add_chain(Family::Ipv4, "new-chain", None);
        bad.add_rule(Family::Ipv4, "services", "goto no-such-chain");
        let err = nft.apply(&bad).unwrap_err().to_string();
        assert!(err.contains("Error"), "{err}");
        assert!(!nft.list(Family::Ipv4).unwrap().chains.contains("new-chain"));
    }
    let mut good = portico_dataplane::Transaction::new();
    good.add_chain(Family::Ipv4, "new-chain", None);
    nft.apply(&good).unwrap();
    assert!(nft.list(Family::Ipv4).unwrap().chains.contains("new-chain"));
}

#[test]
fn without_an_interactive_nft_every_transaction_runs_a_fresh_one() {
    if !root_or_skip("without_an_interactive_nft_every_transaction_runs_a_fresh_one") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let lab = Lab::new(0);
    let wrapper = std::env::temp_dir().join(format!("nft-no-cli-{}", lab.node));
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nif [ \"$1\" = \"-i\" ]; then echo 'Error: no interactive CLI' >&2; exit 1; fi\nexec nft \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut nft = lab.nft().with_program(&wrapper);
    for i in 0..5 {
        let mut tx = portico_dataplane::Transaction::new();
        tx.add_table(Family::Ipv4);
        tx.add_chain(Family::Ipv4, &format!("c{i}"), None);
        nft.apply(&tx).unwrap();
    }
    assert_eq!(nft.list(Family::Ipv4).unwrap().chains.len(), 5);
    let _ = std::fs::remove_file(&wrapper);
}

#[test]
fn a_base_chain_on_another_hook_is_replaced_by_a_full_sync() {
    if !root_or_skip("a_base_chain_on_another_hook_is_replaced_by_a_full_sync") {
        return;
    }
    let lab = Lab::new(0);
    // As an earlier version might have left it: another priority, a rule.
    lab.nft()
        .run(
            &["-f", "-"],
            Some(
                "add table ip portico\n\
                 add chain ip portico nat-prerouting { type nat hook prerouting priority -50 ; }\n\
                 add rule ip portico nat-prerouting counter\n",
            ),
        )
        .unwrap();
    let mut p = Proxier::new(config(), lab.nft(), RecordingConntrack::default());
    p.full_sync(&Catalog::new()).unwrap();
    let listed = lab
        .nft()
        .run(&["list", "chain", "ip", "portico", "nat-prerouting"], None)
        .unwrap();
    assert!(listed.contains("priority dstnat;"), "{listed}");
    assert!(!listed.contains("counter"), "{listed}");
}
