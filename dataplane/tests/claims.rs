//! Which Services the node programs, and who wins an address and port
//! that two Services claim: kube-proxy's `service-proxy-name` and
//! `headless` labels, `--service-proxy-name`, and the oldest claimant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_catalog::Key;
use portico_dataplane::names::Family;
use portico_dataplane::{Config, MemoryNft, Proxier, RecordingConntrack};
use support::*;

const HTTP: [(&str, &str, i32); 1] = [("http", "TCP", 8080)];
const PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS: &str = "service.kubernetes.io/headless";

type P = Proxier<MemoryNft, RecordingConntrack>;

fn proxier(cfg: Config) -> P {
    Proxier::new(cfg, MemoryNft::new(), RecordingConntrack::default())
}

/// The dispatch verdict of `addr . tcp . port`, if any.
fn dispatch(p: &P, key: &str) -> Option<String> {
    p.backend()
        .elements(Family::Ipv4, "service-ips")
        .unwrap()
        .get(key)
        .cloned()
        .flatten()
}

fn web(name: &str, ip: &str) -> Svc {
    svc("default", name, ip).port("http", "TCP", 80)
}

fn web_slice(name: &str, eps: &[Ep]) -> EndpointSlice {
    slice("default", &format!("{name}-1"), name, &HTTP, eps)
}

fn programmed(cfg: Config, services: &[Svc]) -> Vec<bool> {
    let slices: Vec<_> = services
        .iter()
        .map(|s| web_slice(s.0.metadata.name.as_deref().unwrap(), &[ep("10.244.1.2")]))
        .collect();
    let c = catalog(services, &slices);
    let mut p = proxier(cfg);
    p.full_sync(&c).unwrap();
    services
        .iter()
        .map(|s| {
            let ip = s.0.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
            dispatch(&p, &format!("{ip} . tcp . 80")).is_some()
        })
        .collect()
}

#[test]
fn services_another_proxy_owns_are_left_alone() {
    let services = [
        web("plain", "10.96.0.10"),
        web("other", "10.96.0.11").label(PROXY_NAME, "other-proxy"),
        web("empty", "10.96.0.12").label(PROXY_NAME, ""),
        web("mine", "10.96.0.13").label(PROXY_NAME, "portico"),
        web("headless-label", "10.96.0.14").label(HEADLESS, ""),
    ];
    assert_eq!(
        programmed(config(), &services),
        [true, false, false, false, false],
        "as kube-proxy: !service-proxy-name,!headless"
    );
    let named = Config {
        service_proxy_name: Some("portico".into()),
        ..config()
    };
    assert_eq!(
        programmed(named, &services),
        [false, false, false, true, false],
        "--service-proxy-name portico takes only the Services that name it"
    );
}

#[test]
fn adding_and_removing_the_proxy_label_follows_in_partial_syncs() {
    let plain = web("web", "10.96.0.10");
    let labelled = plain.clone().label(PROXY_NAME, "other-proxy");
    let slices = [web_slice("web", &[ep("10.244.1.2")])];
    let mut c = catalog(std::slice::from_ref(&plain), &slices);
    let mut p = proxier(config());
    p.full_sync(&c).unwrap();
    assert!(dispatch(&p, "10.96.0.10 . tcp . 80").is_some());

    c.apply_service(&labelled.0);
    let changes = c.take_changes();
    p.sync(&c, &changes).unwrap();
    assert_eq!(
        dispatch(&p, "10.96.0.10 . tcp . 80"),
        None,
        "labelled: gone"
    );
    assert!(
        p.model()
            .service(&Key::new("default", "web"))
            .unwrap()
            .entries
            .is_empty()
    );

    c.apply_service(&plain.0);
    let changes = c.take_changes();
    p.sync(&c, &changes).unwrap();
    assert!(
        dispatch(&p, "10.96.0.10 . tcp . 80").is_some(),
        "unlabelled: back"
    );
}

/// Two Services claim `203.0.113.50:80`: the older one has it, whatever
/// the names, and the other takes over only when it goes.
#[test]
fn the_oldest_of_two_services_claiming_an_external_address_wins() {
    let older = web("zz-older", "10.96.0.100")
        .external_ip("203.0.113.50")
        .created(1_000);
    let newer = web("aa-newer", "10.96.0.101")
        .external_ip("203.0.113.50")
        .created(2_000);
    let slices = [
        web_slice("zz-older", &[ep("10.244.1.2")]),
        web_slice("aa-newer", &[ep("10.244.2.2"), ep("10.244.3.2")]),
    ];
    let key = "203.0.113.50 . tcp . 80";
    let one = "goto pick-masq-1";
    let two = "goto pick-masq-2";

    let mut c = catalog(&[newer.clone(), older.clone()], &slices);
    let mut p = proxier(config());
    p.full_sync(&c).unwrap();
    assert_eq!(
        dispatch(&p, key).as_deref(),
        Some(one),
        "full sync: the older"
    );
    let conflicts = p.model().conflicts();
    assert_eq!(
        conflicts[0].1,
        [
            Key::new("default", "zz-older"),
            Key::new("default", "aa-newer")
        ],
        "the winner first"
    );

    // A partial sync that re-renders the newer Service does not move it.
    c.apply_service(&newer.clone().label("touched", "yes").0);
    let changes = c.take_changes();
    p.sync(&c, &changes).unwrap();
    assert_eq!(
        dispatch(&p, key).as_deref(),
        Some(one),
        "partial: still the older"
    );

    c.delete_service(&older.0);
    let changes = c.take_changes();
    p.sync(&c, &changes).unwrap();
    assert_eq!(
        dispatch(&p, key).as_deref(),
        Some(two),
        "the newer takes over"
    );

    // Back again (a new creation time: now it is the newer one).
    c.apply_service(&older.created(3_000).0);
    let changes = c.take_changes();
    p.sync(&c, &changes).unwrap();
    assert_eq!(
        dispatch(&p, key).as_deref(),
        Some(two),
        "a newcomer takes nothing"
    );
    let mut full = proxier(config());
    full.full_sync(&c).unwrap();
    assert_eq!(dispatch(&full, key).as_deref(), Some(two));
}
