//! ClusterIP index tests.
//!
//! Address conventions: IPv4 service range 10.96.0.0/12 (10.96.0.1 belongs to
//! `default/kubernetes`), IPv6 service range fd00:10:96::/108, pod network
//! 10.244.0.0/16. Small ranges (/28) where exhaustion matters.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::k8s::service_condition;
use crate::write::{Apply, TargetKind};
use k8s_openapi::DeepMerge;
use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::time::Duration;

mod upstream;

fn net(services: &str) -> NetworkConfig {
    NetworkConfig::parse(services, "10.244.0.0/16").unwrap()
}

fn ctrl(services: &str, mode: Mode) -> ClusterIpController {
    ClusterIpController::new(&net(services), mode, ClusterIpMetrics::default())
        .unwrap()
        .with_seed(7)
}

fn mk_svc(ns: &str, name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), name.to_owned())].into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_spec(mut svc: Service, f: impl FnOnce(&mut ServiceSpec)) -> Service {
    f(svc.spec.get_or_insert_with(Default::default));
    svc
}

fn requesting(svc: Service, ips: &[&str]) -> Service {
    with_spec(svc, |s| {
        s.cluster_ip = ips.first().map(|s| s.to_string());
        s.cluster_ips = Some(ips.iter().map(|s| s.to_string()).collect());
    })
}

fn created_at(mut svc: Service, secs: i64) -> Service {
    svc.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap(),
    ));
    svc
}

/// Merges the spec/status applies of `writes` into `svc`, as the local store does.
fn merged(svc: &Service, writes: &[Write]) -> Service {
    let mut out = svc.clone();
    for w in writes {
        if let Write::Apply(Apply { patch, .. }) = w {
            let patch: Service = serde_json::from_value(patch.clone()).unwrap();
            out.merge_from(patch);
        }
    }
    out
}

fn events(writes: &[Write]) -> Vec<(bool, String, String)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Event(e) => Some((e.warning, e.reason.clone(), e.note.clone())),
            _ => None,
        })
        .collect()
}

fn ips(svc: &Service) -> Vec<String> {
    svc.spec
        .as_ref()
        .unwrap()
        .cluster_ips
        .clone()
        .unwrap_or_default()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[track_caller]
fn assert_condition(svc: &Service, status: &str, needle: &str) {
    let c = service_condition(svc, CONDITION_CLUSTER_IP_ALLOCATED).expect("condition");
    assert_eq!(c.status, status);
    assert!(
        c.message.contains(needle),
        "{:?} does not contain {needle:?}",
        c.message
    );
}

#[test]
fn service_without_cluster_ip_gets_one_from_the_upper_band_of_the_range() {
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let svc = mk_svc("default", "web");
    let writes = c.apply(&svc);
    let svc = merged(&svc, &writes);
    let got = ips(&svc);
    assert_eq!(got.len(), 1);
    let addr = ip(&got[0]);
    assert!("10.96.0.0/12".parse::<IpNet>().unwrap().contains(&addr));
    // KEP-3070: the lowest 256 addresses are kept for static requests.
    assert!(
        u32::from(match addr {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => unreachable!(),
        }) >= u32::from(std::net::Ipv4Addr::new(10, 96, 1, 0))
    );
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some(got[0].as_str()));
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_owned()][..]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(
        events(&writes),
        vec![(
            false,
            "ClusterIPAllocated".into(),
            format!("allocated ClusterIPs {}", got[0])
        )]
    );
    assert_eq!(c.holder(addr), Some(&Key::new("default", "web")));
}

#[test]
fn unchanged_service_causes_no_writes() {
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let svc = mk_svc("default", "web");
    let svc = merged(&svc, &c.apply(&svc));
    assert!(c.apply(&svc).is_empty());
    assert!(c.reset([&svc]).is_empty());
    assert_eq!(ips(&svc).len(), 1);
}

#[test]
fn allocation_survives_a_reapply_before_the_write_lands() {
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let svc = mk_svc("default", "web");
    let first = merged(&svc, &c.apply(&svc));
    let again = merged(&svc, &c.apply(&svc));
    assert_eq!(ips(&first), ips(&again));
}

#[test]
fn requested_cluster_ip_in_range_is_honoured_even_in_the_static_band() {
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let svc = requesting(mk_svc("default", "dns"), &["10.96.0.10"]);
    let writes = c.apply(&svc);
    let svc = merged(&svc, &writes);
    assert_eq!(ips(&svc), vec!["10.96.0.10"]);
    assert!(
        events(&writes).is_empty(),
        "a granted request is not news: {writes:?}"
    );
    assert_eq!(
        c.holder(ip("10.96.0.10")),
        Some(&Key::new("default", "dns"))
    );
}

#[test]
fn requested_cluster_ip_outside_the_range_gets_no_address_an_event_and_a_condition() {
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let svc = requesting(mk_svc("default", "odd"), &["10.200.0.1"]);
    let writes = c.apply(&svc);
    assert_eq!(
        events(&writes),
        vec![(
            true,
            "ClusterIPOutOfRange".into(),
            "clusterIP 10.200.0.1 is outside every service range".into()
        )]
    );
    let svc = merged(&svc, &writes);
    assert_condition(&svc, "False", "outside every service range");
    assert!(c.held(&Key::new("default", "odd")).is_empty());
    assert_eq!(c.problems(&Key::new("default", "odd")).len(), 1);
    // Reconciling again reports nothing new.
    assert!(c.apply(&svc).is_empty());
}

#[test]
fn requested_cluster_ip_held_by_another_service_is_refused_until_released() {
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let a = requesting(mk_svc("default", "a"), &["10.96.0.20"]);
    let b = requesting(mk_svc("default", "b"), &["10.96.0.20"]);
    let a = merged(&a, &c.apply(&a));
    let writes = c.apply(&b);
    assert_eq!(
        events(&writes),
        vec![(
            true,
            "DuplicateClusterIP".into(),
            "clusterIP 10.96.0.20 is already held by Service default/a".into()
        )]
    );
    let b = merged(&b, &writes);
    assert_condition(&b, "False", "already held by Service default/a");

    // Deleting a frees the address, and b, which waited for it, gets it.
    let writes = c.delete(&a);
    let b = merged(&b, &writes);
    assert_eq!(c.holder(ip("10.96.0.20")), Some(&Key::new("default", "b")));
    assert_condition(&b, "True", "holds its ClusterIPs");
}

#[test]
fn headless_and_external_name_services_get_no_address() {
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let headless = requesting(mk_svc("default", "db"), &["None"]);
    let ext = with_spec(mk_svc("default", "ext-github"), |s| {
        s.type_ = Some("ExternalName".into());
        s.external_name = Some("github.com".into());
        s.selector = None;
    });
    let headless = merged(&headless, &c.apply(&headless));
    assert_eq!(ips(&headless), vec!["None"]);
    assert!(c.apply(&ext).is_empty());
    assert_eq!(c.usage()[0].1.used, 0);
    assert!(c.apply(&headless).is_empty());
}

#[test]
fn headless_services_get_their_families_as_from_the_api_server() {
    let mut c = ctrl("fd00:10:96::/108,10.96.0.0/12", Mode::Allocate);
    let with_selector = requesting(mk_svc("default", "db"), &["None"]);
    let spec = merged(&with_selector, &c.apply(&with_selector))
        .spec
        .unwrap();
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv6".to_owned()][..]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));

    let selectorless = with_spec(requesting(mk_svc("default", "ext-db"), &["None"]), |s| {
        s.selector = None
    });
    let spec = merged(&selectorless, &c.apply(&selectorless)).spec.unwrap();
    assert_eq!(
        spec.ip_families.as_deref(),
        Some(&["IPv6".to_owned(), "IPv4".to_owned()][..])
    );
    assert_eq!(spec.ip_family_policy.as_deref(), Some("RequireDualStack"));

    let mut single = ctrl("10.96.0.0/12", Mode::Allocate);
    let require = with_spec(requesting(mk_svc("default", "db"), &["None"]), |s| {
        s.ip_family_policy = Some("RequireDualStack".into())
    });
    let writes = single.apply(&require);
    assert_condition(&merged(&require, &writes), "False", "no IPv6 service range");
}

#[test]
fn dual_stack_follows_ip_family_policy_and_families() {
    let mut c = ctrl("10.96.0.0/12,fd00:10:96::/108", Mode::Allocate);
    let prefer = with_spec(mk_svc("default", "prefer"), |s| {
        s.ip_family_policy = Some("PreferDualStack".into());
        s.ip_families = Some(vec!["IPv6".into()]);
    });
    let got = ips(&merged(&prefer, &c.apply(&prefer)));
    assert_eq!(got.len(), 2);
    assert!(ip(&got[0]).is_ipv6() && ip(&got[1]).is_ipv4(), "{got:?}");

    let single = mk_svc("default", "single");
    let got = ips(&merged(&single, &c.apply(&single)));
    assert_eq!(got.len(), 1);
    assert!(
        ip(&got[0]).is_ipv4(),
        "the primary family is the first range's"
    );

    // Only IPv4 configured: PreferDualStack gets one, RequireDualStack none.
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let prefer = with_spec(mk_svc("default", "prefer"), |s| {
        s.ip_family_policy = Some("PreferDualStack".into());
    });
    assert_eq!(ips(&merged(&prefer, &c.apply(&prefer))).len(), 1);
    let require = with_spec(mk_svc("default", "require"), |s| {
        s.ip_family_policy = Some("RequireDualStack".into());
    });
    let writes = c.apply(&require);
    let require = merged(&require, &writes);
    assert!(ips(&require).is_empty());
    assert_condition(
        &require,
        "False",
        "needs an IPv6 address but no IPv6 service range",
    );
}

#[test]
fn inconsistent_specs_are_reported_not_allocated() {
    let mut c = ctrl("10.96.0.0/12,fd00:10:96::/108", Mode::Allocate);
    for (svc, needle) in [
        (
            with_spec(mk_svc("default", "a"), |s| {
                s.ip_families = Some(vec!["IPv5".into()])
            }),
            "\"IPv5\" is not a family",
        ),
        (
            requesting(mk_svc("default", "b"), &["10.96.0.30", "fd00:10:96::30"]),
            "SingleStack allows one family",
        ),
        (
            requesting(mk_svc("default", "c"), &["banana"]),
            "\"banana\" is not an IP address",
        ),
        (
            with_spec(requesting(mk_svc("default", "d"), &["10.96.0.31"]), |s| {
                s.ip_families = Some(vec!["IPv6".into()])
            }),
            "clusterIPs[0] 10.96.0.31 is IPv4 but ipFamilies[0] is IPv6",
        ),
    ] {
        let writes = c.apply(&svc);
        let svc = merged(&svc, &writes);
        assert_condition(&svc, "False", needle);
        assert_eq!(events(&writes).len(), 1);
    }
    assert_eq!(c.usage().iter().map(|(_, u)| u.used).sum::<u128>(), 0);
}

#[test]
fn the_first_address_belongs_to_the_kubernetes_service() {
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let thief = requesting(mk_svc("default", "thief"), &["10.96.0.1"]);
    let thief = merged(&thief, &c.apply(&thief));
    assert_condition(&thief, "False", "reserved");
    let k = requesting(mk_svc("default", "kubernetes"), &["10.96.0.1"]);
    let k = merged(&k, &c.apply(&k));
    assert_eq!(ips(&k), vec!["10.96.0.1"]);
}

#[test]
fn a_full_range_is_reported_and_a_release_serves_the_waiting_service() {
    // A /28 has 16 addresses: no static band, network and broadcast and
    // 10.96.0.1 reserved, so 13 to hand out.
    let mut c = ctrl("10.96.0.0/28", Mode::Allocate);
    let mut held = Vec::new();
    for i in 0..13 {
        let svc = mk_svc("default", &format!("s{i}"));
        let svc = merged(&svc, &c.apply(&svc));
        assert_eq!(ips(&svc).len(), 1, "s{i}");
        held.push(svc);
    }
    let late = mk_svc("default", "late");
    let writes = c.apply(&late);
    let late = merged(&late, &writes);
    assert_condition(&late, "False", "10.96.0.0/28 has no free address left");
    let writes = c.delete(&held[3]);
    let late = merged(&late, &writes);
    assert_eq!(ips(&late), ips(&held[3]), "{writes:#?}");
}

#[test]
fn reset_adopts_existing_addresses_before_allocating_and_the_oldest_keeps_a_duplicate() {
    let mut c = ctrl("10.96.0.0/28", Mode::Allocate);
    let newcomer = created_at(mk_svc("default", "new"), 0);
    let old = created_at(requesting(mk_svc("default", "old"), &["10.96.0.5"]), 10);
    let young = created_at(requesting(mk_svc("default", "young"), &["10.96.0.5"]), 20);
    let writes = c.reset([&newcomer, &young, &old]);
    assert_eq!(c.holder(ip("10.96.0.5")), Some(&Key::new("default", "old")));
    assert_eq!(c.problems(&Key::new("default", "young")).len(), 1);
    let newcomer = merged(&newcomer, &writes);
    assert_ne!(ips(&newcomer), vec!["10.96.0.5"]);
    assert_eq!(ips(&newcomer).len(), 1);
}

#[test]
fn audit_mode_mirrors_the_cluster_and_reports_each_problem_once() {
    let metrics = ClusterIpMetrics::default();
    let mut c =
        ClusterIpController::new(&net("10.96.0.0/12"), Mode::Audit, metrics.clone()).unwrap();
    let k = requesting(mk_svc("default", "kubernetes"), &["10.96.0.1"]);
    let a = created_at(requesting(mk_svc("default", "a"), &["10.96.5.5"]), 0);
    let b = created_at(requesting(mk_svc("team", "b"), &["10.96.5.5"]), 1);
    let out = requesting(mk_svc("default", "out"), &["10.200.0.9"]);
    let fresh = mk_svc("default", "not-yet-allocated");
    let writes = c.reset([&k, &b, &a, &out, &fresh]);
    assert_eq!(
        events(&writes),
        vec![
            (
                true,
                "ClusterIPOutOfRange".into(),
                "clusterIP 10.200.0.9 is outside every service range".into()
            ),
            (
                true,
                "DuplicateClusterIP".into(),
                "clusterIP 10.96.5.5 is already held by Service default/a".into()
            ),
        ]
    );
    assert!(
        writes.iter().all(|w| matches!(w, Write::Event(_))),
        "audit mode only reports"
    );
    assert_eq!(
        c.holder(ip("10.96.0.1")),
        Some(&Key::new("default", "kubernetes"))
    );
    assert!(c.held(&Key::new("default", "not-yet-allocated")).is_empty());

    // A relist reports nothing again; a change of b does not either.
    assert!(c.reset([&k, &b, &a, &out]).is_empty());
    assert!(c.apply(&b).is_empty());

    let gauge = |reason| {
        metrics
            .problems
            .get_or_create(&ProblemReason { reason })
            .get()
    };
    assert_eq!(gauge("DuplicateClusterIP"), 1);
    assert_eq!(gauge("ClusterIPOutOfRange"), 1);
    let used = metrics
        .addresses
        .get_or_create(&RangeState {
            range: "10.96.0.0/12".into(),
            state: "used",
        })
        .get();
    assert_eq!(used, 2.0);

    // When a goes away, b holds the address without a problem.
    assert!(c.delete(&a).is_empty());
    assert_eq!(c.holder(ip("10.96.5.5")), Some(&Key::new("team", "b")));
    assert_eq!(gauge("DuplicateClusterIP"), 0);
}

// ---- reuse quarantine and stable addresses --------------------------------

use portico_testkit::FakeClock;

fn quarantining(range: &str, clock: &FakeClock) -> ClusterIpController {
    ctrl(range, Mode::Allocate)
        .with_reuse_delay(Duration::from_secs(300))
        .with_clock(clock.source())
}

#[test]
fn a_freed_address_is_not_handed_out_again_before_the_reuse_delay() {
    // A /28: 13 addresses to hand out; fill it, free one.
    let clock = FakeClock::new();
    let mut c = quarantining("10.96.0.0/28", &clock);
    let mut svcs = Vec::new();
    for i in 0..13 {
        let s = mk_svc("default", &format!("s{i}"));
        svcs.push(merged(&s, &c.apply(&s)));
    }
    let freed = ips(&svcs[4]);
    assert!(c.delete(&svcs[4]).is_empty());
    assert_eq!(c.quarantined(), 1);
    let late = mk_svc("default", "late");
    let late = merged(&late, &c.apply(&late));
    assert_condition(&late, "False", "no free address left");
    clock.advance(Duration::from_secs(299));
    assert!(c.tick().is_empty(), "still in quarantine");
    clock.advance(Duration::from_secs(1));
    let late = merged(&late, &c.tick());
    assert_eq!(
        ips(&late),
        freed,
        "the quarantine is over: the waiting Service gets it"
    );
    assert_eq!(c.quarantined(), 0);
}

#[test]
fn a_recreated_service_gets_its_previous_address_back() {
    let clock = FakeClock::new();
    let mut c = quarantining("10.96.0.0/12", &clock);
    let web = mk_svc("default", "web");
    let first = merged(&web, &c.apply(&web));
    c.delete(&first);
    // Re-created within the quarantine: its own address, not another.
    let again = merged(&web, &c.apply(&web));
    assert_eq!(ips(&again), ips(&first));
    // Deleted again and re-created long after: still free, so still its own.
    c.delete(&again);
    clock.advance(Duration::from_secs(3600));
    let later = merged(&web, &c.apply(&web));
    assert_eq!(ips(&later), ips(&first));
    // Unless someone took it meanwhile.
    c.delete(&later);
    clock.advance(Duration::from_secs(3600));
    let thief = requesting(mk_svc("default", "thief"), &[ips(&first)[0].as_str()]);
    assert_eq!(
        ips(&merged(&thief, &c.apply(&thief))),
        ips(&first),
        "asking by name takes a freed address"
    );
    let last = merged(&web, &c.apply(&web));
    assert_ne!(ips(&last), ips(&first));
    assert_eq!(ips(&last).len(), 1);
}

#[test]
fn asking_for_a_quarantined_address_by_name_takes_it() {
    let clock = FakeClock::new();
    let mut c = quarantining("10.96.0.0/12", &clock);
    let a = requesting(mk_svc("default", "a"), &["10.96.0.50"]);
    let a = merged(&a, &c.apply(&a));
    c.delete(&a);
    let b = requesting(mk_svc("default", "b"), &["10.96.0.50"]);
    assert_eq!(ips(&merged(&b, &c.apply(&b))), ["10.96.0.50"]);
    assert_eq!(c.quarantined(), 0);
}

#[test]
fn a_relist_keeps_the_quarantine() {
    let clock = FakeClock::new();
    let mut c = quarantining("10.96.0.0/28", &clock);
    let mut svcs = Vec::new();
    for i in 0..13 {
        let s = mk_svc("default", &format!("s{i}"));
        svcs.push(merged(&s, &c.apply(&s)));
    }
    c.delete(&svcs[0]);
    let rest: Vec<&Service> = svcs[1..].iter().collect();
    let newcomer = mk_svc("default", "newcomer");
    let writes = c.reset(rest.into_iter().chain([&newcomer]));
    assert_condition(&merged(&newcomer, &writes), "False", "no free address left");
    assert_eq!(c.quarantined(), 1);
}

// ---- ClusterIPRanges --------------------------------------------------------

fn mk_range(name: &str, cidr: &str, team: &str, age: i64) -> portico_crds::ClusterIPRange {
    let mut r = portico_crds::ClusterIPRange::new(
        name,
        portico_crds::ClusterIPRangeSpec {
            cidr: cidr.into(),
            namespace_selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("team".to_owned(), team.to_owned())].into()),
                ..Default::default()
            },
        },
    );
    r.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + age).unwrap(),
    ));
    r
}

fn mk_ns(name: &str, team: &str) -> crate::k8s::Namespace {
    crate::k8s::Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("team".to_owned(), team.to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn range_status(writes: &[Write], name: &str) -> Option<serde_json::Value> {
    writes.iter().find_map(|w| match w {
        Write::Apply(a) if a.target.kind == TargetKind::ClusterIPRange && a.target.name == name => {
            Some(a.patch["status"].clone())
        }
        _ => None,
    })
}

#[test]
fn namespaces_selected_by_a_range_get_addresses_from_it_and_others_never_do() {
    // A small service range so that "never" is tested over many draws.
    let mut c = ctrl("10.96.0.0/24", Mode::Allocate);
    c.reset_namespaces([&mk_ns("team-a", "a"), &mk_ns("team-b", "b")]);
    let writes = c.reset_ranges([&mk_range("team-a", "10.96.0.128/26", "a", 0)]);
    let st = range_status(&writes, "team-a").expect("status");
    assert_eq!(
        (st["used"].as_i64(), st["free"].as_i64()),
        (Some(0), Some(64))
    );
    let block: IpNet = "10.96.0.128/26".parse().unwrap();
    for i in 0..40 {
        let a = mk_svc("team-a", &format!("a{i}"));
        let got = ips(&merged(&a, &c.apply(&a)));
        assert!(block.contains(&ip(&got[0])), "team-a got {got:?}");
        let b = mk_svc("team-b", &format!("b{i}"));
        let got = ips(&merged(&b, &c.apply(&b)));
        assert!(
            !block.contains(&ip(&got[0])),
            "team-b got {got:?} from team-a's range"
        );
    }
    // Asking by name for a free address of another team's range is
    // refused; the team itself may.
    let free = (128..192)
        .map(|i| format!("10.96.0.{i}"))
        .find(|a| c.holder(ip(a)).is_none())
        .unwrap();
    let thief = requesting(mk_svc("team-b", "thief"), &[free.as_str()]);
    assert_condition(
        &merged(&thief, &c.apply(&thief)),
        "False",
        "ClusterIPRange team-a (10.96.0.128/26), which does not select namespace team-b",
    );
    let own = requesting(mk_svc("team-a", "own"), &[free.as_str()]);
    assert_eq!(ips(&merged(&own, &c.apply(&own))), [free.as_str()]);
}

#[test]
fn a_full_range_is_reported_and_does_not_spill_into_the_service_range() {
    let mut c = ctrl("10.96.0.0/24", Mode::Allocate);
    c.reset_namespaces([&mk_ns("team-a", "a")]);
    c.reset_ranges([&mk_range("tiny", "10.96.0.200/30", "a", 0)]);
    for i in 0..4 {
        let a = mk_svc("team-a", &format!("a{i}"));
        assert_eq!(ips(&merged(&a, &c.apply(&a))).len(), 1);
    }
    let late = mk_svc("team-a", "late");
    let writes = c.apply(&late);
    assert_condition(
        &merged(&late, &writes),
        "False",
        "10.96.0.200/30 has no free address left",
    );
}

#[test]
fn ranges_outside_the_service_range_or_overlapping_an_older_one_are_rejected() {
    let mut c = ctrl("10.96.0.0/16", Mode::Allocate);
    let writes = c.reset_ranges([
        &mk_range("old", "10.96.16.0/20", "a", 0),
        &mk_range("newer", "10.96.20.0/24", "b", 10),
        &mk_range("outside", "10.200.0.0/24", "c", 20),
        &mk_range("sloppy", "10.96.40.1/24", "d", 30),
    ]);
    let ready = |name: &str| range_status(&writes, name).unwrap()["conditions"][0].clone();
    assert_eq!(ready("old")["status"], "True");
    assert_eq!(ready("newer")["reason"], "Overlap");
    assert_eq!(
        ready("newer")["message"],
        "10.96.20.0/24 overlaps ClusterIPRange old (10.96.16.0/20)"
    );
    assert_eq!(ready("outside")["reason"], "OutsideServiceRange");
    assert_eq!(
        ready("sloppy")["message"],
        "spec.cidr 10.96.40.1/24 has host bits set; did you mean 10.96.40.0/24?"
    );
    let events: Vec<&str> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Event(e) => Some(e.reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(events, [RANGE_CONFLICT; 3]);
    // Nothing changed: nothing is written again once the statuses show.
    let mut shown = Vec::new();
    for (name, age) in [("old", 0), ("newer", 10), ("outside", 20), ("sloppy", 30)] {
        let cidr = match name {
            "old" => "10.96.16.0/20",
            "newer" => "10.96.20.0/24",
            "outside" => "10.200.0.0/24",
            _ => "10.96.40.1/24",
        };
        let mut r = mk_range(name, cidr, "x", age);
        r.status = Some(serde_json::from_value(range_status(&writes, name).unwrap()).unwrap());
        shown.push(r);
    }
    let again = c.reset_ranges(shown.iter());
    assert!(again.is_empty(), "{again:#?}");
}

#[test]
fn creating_a_range_later_gives_parked_addresses_back_and_keeps_existing_services() {
    let mut c = ctrl("10.96.0.0/24", Mode::Allocate);
    c.reset_namespaces([&mk_ns("team-a", "a"), &mk_ns("team-b", "b")]);
    let early = requesting(mk_svc("team-b", "early"), &["10.96.0.130"]);
    let early = merged(&early, &c.apply(&early));
    c.reset_ranges([&mk_range("team-a", "10.96.0.128/26", "a", 0)]);
    // The Service already inside keeps its address (ranges affect new allocations).
    assert!(c.apply(&early).is_empty());
    assert_eq!(
        c.holder(ip("10.96.0.130")),
        Some(&Key::new("team-b", "early"))
    );
    // Removing the range lets everyone use the block again.
    c.delete_range(&mk_range("team-a", "10.96.0.128/26", "a", 0));
    let mut inside = 0;
    for i in 0..120 {
        let b = mk_svc("team-b", &format!("b{i}"));
        let got = ips(&merged(&b, &c.apply(&b)));
        if "10.96.0.128/26"
            .parse::<IpNet>()
            .unwrap()
            .contains(&ip(&got[0]))
        {
            inside += 1;
        }
    }
    assert!(
        inside > 0,
        "the block is open to everyone once the range is gone"
    );
}

// ---- admission ---------------------------------------------------------------

fn webhook_index(range: &str, clock: &FakeClock) -> ClusterIpController {
    ClusterIpController::new(&net(range), Mode::Audit, ClusterIpMetrics::default())
        .unwrap()
        .with_seed(3)
        .with_reuse_delay(Duration::from_secs(300))
        .with_clock(clock.source())
        .with_adoption_events(true)
}

fn assigned(a: Admission) -> Vec<String> {
    match a {
        Admission::Assign { ips, .. } => ips.iter().map(ToString::to_string).collect(),
        other => panic!("expected an assignment, got {other:?}"),
    }
}

/// The Service as the API server stores it after the webhook's patch.
fn as_created(svc: &Service, ips: &[String]) -> Service {
    requesting(
        svc.clone(),
        &ips.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

#[test]
fn admitted_addresses_stay_reserved_until_the_service_shows_up() {
    let clock = FakeClock::new();
    let mut c = webhook_index("10.96.0.0/12", &clock);
    c.reset(std::iter::empty());
    let (a, b) = (mk_svc("default", "a"), mk_svc("default", "b"));
    let ia = assigned(c.admit(&a, Duration::from_secs(30)));
    let ib = assigned(c.admit(&b, Duration::from_secs(30)));
    assert_ne!(ia, ib, "two creations in flight never get the same address");
    assert_eq!(
        assigned(c.admit(&a, Duration::from_secs(30))),
        ia,
        "a retried admission gets the same answer"
    );
    assert_eq!(c.pending(), 2);
    // A relist while they are in flight keeps the reservations.
    c.reset(std::iter::empty());
    assert_eq!(c.holder(ip(&ia[0])), Some(&Key::new("default", "a")));
    // a shows up with its address: no Event, no longer pending.
    assert!(c.apply(&as_created(&a, &ia)).is_empty());
    assert_eq!(c.pending(), 1);
    // b never shows up: its reservation ends.
    clock.advance(Duration::from_secs(31));
    c.tick();
    assert_eq!(c.pending(), 0);
    assert_eq!(c.holder(ip(&ib[0])), None);
}

#[test]
fn the_webhook_leaves_services_that_need_no_address_or_ask_for_their_own() {
    let clock = FakeClock::new();
    let mut c = webhook_index("10.96.0.0/12", &clock);
    let headless = requesting(mk_svc("default", "db"), &["None"]);
    let ext = with_spec(mk_svc("default", "ext"), |s| {
        s.type_ = Some("ExternalName".into())
    });
    let asks = requesting(mk_svc("default", "dns"), &["10.96.0.10"]);
    let bad = with_spec(mk_svc("default", "bad"), |s| {
        s.ip_family_policy = Some("RequireDualStack".into())
    });
    for svc in [&headless, &ext, &asks, &bad] {
        assert_eq!(c.admit(svc, Duration::from_secs(30)), Admission::Leave);
    }
    let dual = ClusterIpController::new(
        &net("10.96.0.0/12,fd00:10:96::/108"),
        Mode::Audit,
        ClusterIpMetrics::default(),
    )
    .unwrap()
    .admit(
        &with_spec(mk_svc("default", "d"), |s| {
            s.ip_family_policy = Some("PreferDualStack".into())
        }),
        Duration::from_secs(30),
    );
    match dual {
        Admission::Assign { ips, policy } => {
            assert_eq!(policy, "PreferDualStack");
            assert!(ips[0].is_ipv4() && ips[1].is_ipv6());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn admission_follows_quarantine_stable_addresses_and_ranges() {
    let clock = FakeClock::new();
    let mut c = webhook_index("10.96.0.0/24", &clock);
    c.reset_namespaces([&mk_ns("team-a", "a")]);
    c.reset_ranges([&mk_range("tiny", "10.96.0.200/31", "a", 0)]);
    c.reset(std::iter::empty());
    // Stable: web comes back to its address.
    let web = mk_svc("default", "web");
    let first = assigned(c.admit(&web, Duration::from_secs(30)));
    let created = as_created(&web, &first);
    c.apply(&created);
    c.delete(&created);
    assert_eq!(assigned(c.admit(&web, Duration::from_secs(30))), first);
    // Ranges: team-a draws from its block, and a full block refuses.
    for i in 0..2 {
        let got = assigned(c.admit(&mk_svc("team-a", &format!("a{i}")), Duration::from_secs(30)));
        assert!(
            got[0] == "10.96.0.200" || got[0] == "10.96.0.201",
            "{got:?}"
        );
    }
    match c.admit(&mk_svc("team-a", "late"), Duration::from_secs(30)) {
        Admission::Refuse(p) => assert_eq!(
            p.to_string(),
            "service range 10.96.0.200/31 has no free address left"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_service_the_api_server_allocated_itself_is_adopted_with_an_event() {
    let clock = FakeClock::new();
    let mut c = webhook_index("10.96.0.0/12", &clock);
    c.reset(std::iter::empty());
    let svc = requesting(mk_svc("default", "web"), &["10.96.7.7"]);
    assert_eq!(
        events(&c.apply(&svc)),
        vec![(
            false,
            "ClusterIPAdopted".into(),
            "ClusterIPs 10.96.7.7 were not handed out by Portico (asked for, or allocated by kube-apiserver while the webhook did not answer); Portico adopted them".into()
        )]
    );
    assert!(c.apply(&svc).is_empty(), "once");
}

fn ip_address(ip: &str, ns: &str, svc: &str) -> k8s_openapi::api::networking::v1::IPAddress {
    k8s_openapi::api::networking::v1::IPAddress {
        metadata: ObjectMeta {
            name: Some(ip.into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::networking::v1::IPAddressSpec {
            parent_ref: k8s_openapi::api::networking::v1::ParentReference {
                group: Some(String::new()),
                resource: "services".into(),
                namespace: Some(ns.into()),
                name: svc.into(),
            },
        }),
    }
}

#[test]
fn a_new_leader_never_hands_out_an_address_the_api_server_recorded() {
    // A /28: 13 addresses. The API server recorded 12 of them for Services
    // this replica has not seen in its watch yet.
    let clock = FakeClock::new();
    let mut c = webhook_index("10.96.0.0/28", &clock);
    let recorded: Vec<_> = (2..14)
        .map(|i| ip_address(&format!("10.96.0.{i}"), "default", &format!("x{i}")))
        .collect();
    c.reset_ip_addresses(recorded.iter());
    c.reset(std::iter::empty());
    assert_eq!(
        assigned(c.admit(&mk_svc("default", "new"), Duration::from_secs(30))),
        ["10.96.0.14"]
    );
    assert!(matches!(
        c.admit(&mk_svc("default", "late"), Duration::from_secs(30)),
        Admission::Refuse(_)
    ));
    // The recorded Services show up: they hold their addresses, no problem.
    let x2 = requesting(mk_svc("default", "x2"), &["10.96.0.2"]);
    let writes = c.apply(&x2);
    assert!(
        events(&writes).iter().all(|e| e.1 == "ClusterIPAdopted"),
        "{writes:?}"
    );
    assert_eq!(c.holder(ip("10.96.0.2")), Some(&Key::new("default", "x2")));
    // Another Service claiming a recorded address is a duplicate.
    let thief = requesting(mk_svc("default", "thief"), &["10.96.0.3"]);
    assert!(
        events(&c.apply(&thief))
            .iter()
            .any(|e| e.1 == "DuplicateClusterIP")
    );
    // The API server forgets an address (its Service is gone): free again.
    c.delete_ip_address(&ip_address("10.96.0.5", "default", "x5"));
    assert_eq!(
        assigned(c.admit(&mk_svc("default", "later"), Duration::from_secs(30))),
        ["10.96.0.5"]
    );
}
