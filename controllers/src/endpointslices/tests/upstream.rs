//! Cases from the upstream EndpointSlice reconciler's tests
//! (`reconciler_test.go`), in Portico's terms.

use super::*;
use crate::k8s::OwnerReference;

#[test]
fn a_slice_owned_by_an_older_service_of_the_same_name_is_replaced() {
    // TestReconcileEndpointSlicesRecreation, "slice owned by other Service
    // UID": one create, one delete, no takeover.
    let mut sim = Sim::new(100);
    let mut old = sim_slice("web-old", "web");
    old.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: "web".into(),
        uid: "uid-of-the-deleted-web".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    old.metadata.resource_version = Some("1".into());
    sim.slices.insert("web-old".into(), old.clone());
    sim.ctrl.apply_slice(Arc::new(old), sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
    let writes = sim.settle();
    assert_eq!(count(&writes), (1, 0, 1));
    let slices = sim.of_service("web");
    assert_eq!(slices.len(), 1);
    assert_ne!(slices[0].metadata.name.as_deref(), Some("web-old"));
    let owner = &slices[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, "uid-web");
    assert_eq!(sim.endpoints("web").len(), 1);
}

#[test]
fn a_service_being_deleted_gets_no_new_slices() {
    // TestReconcilerFinalizeSvcDeletionTimestamp: updates and deletes go on,
    // creates do not.
    let mut sim = Sim::new(1);
    let svc = mk_svc("web", "web");
    sim.ctrl.apply_service(&svc, sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    sim.settle();
    assert_eq!(sim.of_service("web").len(), 1);

    let mut deleting = svc.clone();
    deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    sim.ctrl.apply_service(&deleting, sim.now);
    // A second pod would need a second slice (one endpoint per slice):
    // none is made.
    sim.ctrl.apply_pod(
        &mk_pod("web-2", "web", &["10.244.1.11"], "node-b", true),
        sim.now,
    );
    assert_eq!(count(&sim.settle()), (0, 0, 0));
    // A change to the existing slice is still written.
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", false),
        sim.now,
    );
    let writes = sim.settle();
    assert_eq!(count(&writes).0, 0, "{writes:#?}");
    assert_eq!(sim.of_service("web").len(), 1);
    // The garbage collector deletes the slice: no placeholder comes back.
    let name = sim.of_service("web")[0].metadata.name.clone().unwrap();
    let gone = sim.slices.remove(&name).unwrap();
    sim.ctrl.delete_slice(&gone, sim.now);
    assert_eq!(count(&sim.settle()), (0, 0, 0));
    assert!(sim.of_service("web").is_empty());
}

#[test]
fn a_service_without_a_cluster_ip_gets_the_headless_label() {
    // TestReconcile1Pod: `isServiceIPSet` is false for "" as for "None".
    let mut sim = Sim::new(100);
    for (name, ip) in [
        ("none", Some("None")),
        ("empty", Some("")),
        ("unset", None),
        ("set", Some("10.96.0.10")),
    ] {
        sim.ctrl.apply_service(
            &with_spec(mk_svc(name, "web"), |s| {
                s.cluster_ip = ip.map(str::to_owned)
            }),
            sim.now,
        );
    }
    sim.settle();
    let headless = |svc: &str| {
        sim.of_service(svc)[0]
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(labels::HEADLESS)
    };
    assert!(headless("none"));
    assert!(headless("empty"));
    assert!(headless("unset"));
    assert!(!headless("set"));
}

#[test]
fn a_pod_on_a_node_that_does_not_exist_is_left_out_until_the_node_comes() {
    // TestReconcilerPodMissingNode.
    let mut sim = Sim::new(100);
    sim.ctrl.apply_service(&mk_svc("web", "web"), sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &mk_pod("web-2", "web", &["10.244.9.10"], "node-gone", true),
        sim.now,
    );
    sim.settle();
    assert_eq!(
        sim.endpoints("web").keys().collect::<Vec<_>>(),
        ["10.244.1.10"]
    );
    let (reason, note) = sim.warnings.last().cloned().unwrap();
    assert_eq!(reason, "FailedToUpdateEndpointSlices");
    assert_eq!(
        note,
        "Error updating Endpoint Slices for Service default/web: skipping Pod web-2 for Service default/web: Node node-gone Not Found"
    );
    // The Node comes: the pod is published.
    let node = portico_testkit::objects::node("node-gone").build();
    sim.ctrl.apply_node(&node, sim.now);
    sim.settle();
    assert_eq!(sim.endpoints("web").len(), 2);
    // It goes again: "Update if publishNotReady false and no nodes are
    // present" removes the endpoint.
    sim.ctrl.delete_node(&node, sim.now);
    sim.settle();
    assert_eq!(sim.endpoints("web").len(), 1);

    // publishNotReadyAddresses: kept ("Create and publishNotReady true").
    let publish = with_spec(mk_svc("pub", "web"), |s| {
        s.publish_not_ready_addresses = Some(true)
    });
    sim.ctrl.apply_service(&publish, sim.now);
    sim.settle();
    assert_eq!(sim.endpoints("pub").len(), 2);
}

#[test]
fn each_address_type_has_a_slice_even_without_endpoints() {
    // reconcileByAddressType makes its placeholder per address type.
    let mut sim = Sim::new(100);
    let dual = |name: &str| {
        with_spec(mk_svc(name, name), |s| {
            s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()])
        })
    };
    sim.ctrl.apply_service(&dual("empty"), sim.now);
    sim.ctrl.apply_service(&dual("v4-pods"), sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("p-1", "v4-pods", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    // Headless without families: both address types.
    let headless = with_spec(mk_svc("db", "db"), |s| {
        s.cluster_ip = Some("None".into());
        s.ip_families = None;
    });
    sim.ctrl.apply_service(&headless, sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("db-1", "db", &["10.244.1.11"], "node-a", true),
        sim.now,
    );
    sim.settle();
    let types = |svc: &str| {
        let mut t: Vec<(String, usize)> = sim
            .of_service(svc)
            .iter()
            .map(|s| (s.address_type.clone(), s.endpoints.len()))
            .collect();
        t.sort();
        t
    };
    let both = |v4: usize| vec![("IPv4".to_owned(), v4), ("IPv6".to_owned(), 0)];
    assert_eq!(types("empty"), both(0));
    assert_eq!(types("v4-pods"), both(1));
    assert_eq!(types("db"), both(1));
    // Settled: nothing more to write.
    sim.ctrl.apply_service(&dual("empty"), sim.now);
    assert!(sim.settle().is_empty());
}

#[test]
fn prefer_close_hints_each_endpoint_for_its_own_zone() {
    // TestReconcile_TrafficDistribution, PreferClose.
    let mut sim = Sim::new(100);
    let svc = |dist: Option<&str>| {
        with_spec(mk_svc("web", "web"), |s| {
            s.traffic_distribution = dist.map(str::to_owned)
        })
    };
    sim.ctrl.apply_service(&svc(Some("PreferClose")), sim.now);
    sim.ctrl.apply_pod(
        &mk_pod("web-1", "web", &["10.244.1.10"], "node-a", true),
        sim.now,
    );
    sim.ctrl.apply_pod(
        &mk_pod("web-2", "web", &["10.244.2.10"], "node-b", true),
        sim.now,
    );
    sim.settle();
    let hints = |sim: &Sim| -> Vec<(String, Option<Vec<String>>)> {
        sim.endpoints("web")
            .into_iter()
            .map(|(addr, e)| {
                let zones = e
                    .hints
                    .and_then(|h| h.for_zones)
                    .map(|z| z.into_iter().map(|z| z.name).collect::<Vec<_>>());
                (addr, zones)
            })
            .collect()
    };
    assert_eq!(
        hints(&sim),
        [
            ("10.244.1.10".to_owned(), Some(vec!["zone-a".to_owned()])),
            ("10.244.2.10".to_owned(), Some(vec!["zone-b".to_owned()])),
        ]
    );
    // Back to the default: the hints go, in one update of the slice.
    sim.ctrl.apply_service(&svc(None), sim.now);
    assert_eq!(count(&sim.settle()), (0, 1, 0));
    assert!(hints(&sim).iter().all(|(_, h)| h.is_none()));
}
