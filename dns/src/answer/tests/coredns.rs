//! Cases from CoreDNS's `kubernetes` plugin tests (`handler_test.go`,
//! `reverse_test.go`) and the CI suite of coredns/ci, in Portico's
//! fixtures.

use super::*;

#[test]
fn a_service_name_has_srv_records_for_every_port() {
    // handler_test: "svc1.testns.svc.cluster.local. SRV" -> 0 100 80 svc1.
    let mut c = Cluster::new(PodsMode::Verified);
    c.svc(mk_svc(
        "default",
        "svc1",
        "10.96.0.11",
        &[("http", "TCP", 80)],
    ));
    let m = c.ask("svc1.default.svc.cluster.local.", RecordType::SRV);
    assert_answer(
        &m,
        &["svc1.default.svc.cluster.local SRV 0 100 80 svc1.default.svc.cluster.local"],
    );
    assert_eq!(
        rrs(&m.additionals),
        ["svc1.default.svc.cluster.local A 10.96.0.11"]
    );
    // Dual-stack with three ports (one unnamed): 100 / (2 addresses x 3
    // ports) each.
    let c = web();
    assert_answer(
        &c.ask("web.default.svc.cluster.local.", RecordType::SRV),
        &[
            "web.default.svc.cluster.local SRV 0 16 80 web.default.svc.cluster.local",
            "web.default.svc.cluster.local SRV 0 16 53 web.default.svc.cluster.local",
            "web.default.svc.cluster.local SRV 0 16 8080 web.default.svc.cluster.local",
        ],
    );
    // A headless Service's name: one record per ready endpoint and port,
    // pointing at the endpoint's name.
    let c = db();
    let m = c.ask("db.default.svc.cluster.local.", RecordType::SRV);
    assert_answer(
        &m,
        &[
            "db.default.svc.cluster.local SRV 0 50 15432 db-0.db.default.svc.cluster.local",
            "db.default.svc.cluster.local SRV 0 50 15432 10-244-0-2.db.default.svc.cluster.local",
        ],
    );
    assert_eq!(m.additionals.len(), 2);
}

#[test]
fn headless_srv_weights_count_every_address_before_merging() {
    // handler_test "_http._tcp.hdls1": 4 IPv4 and 2 IPv6 endpoints, two of
    // which share a hostname: 100 / 6.
    let mut c = Cluster::new(PodsMode::Verified);
    c.svc(mk_headless("testns", "hdls1", &[("http", "TCP", 80)]));
    let http = [("http", "TCP", 80)];
    c.slice(mk_slice(
        "testns",
        "hdls1-v4",
        "hdls1",
        vec![
            mk_ep("172.0.0.2", None, true),
            mk_ep("172.0.0.3", None, true),
            mk_ep("172.0.0.4", Some("dup-name"), true),
            mk_ep("172.0.0.5", Some("dup-name"), true),
        ],
        &http,
    ));
    c.slice(mk_slice(
        "testns",
        "hdls1-v6",
        "hdls1",
        vec![
            mk_ep("5678:abcd::1", None, true),
            mk_ep("5678:abcd::2", None, true),
        ],
        &http,
    ));
    let m = c.ask(
        "_http._tcp.hdls1.testns.svc.cluster.local.",
        RecordType::SRV,
    );
    let mut got = rrs(&m.answers);
    got.sort();
    assert_eq!(
        got,
        [
            "_http._tcp.hdls1.testns.svc.cluster.local SRV 0 16 80 172-0-0-2.hdls1.testns.svc.cluster.local",
            "_http._tcp.hdls1.testns.svc.cluster.local SRV 0 16 80 172-0-0-3.hdls1.testns.svc.cluster.local",
            "_http._tcp.hdls1.testns.svc.cluster.local SRV 0 16 80 5678-abcd--1.hdls1.testns.svc.cluster.local",
            "_http._tcp.hdls1.testns.svc.cluster.local SRV 0 16 80 5678-abcd--2.hdls1.testns.svc.cluster.local",
            "_http._tcp.hdls1.testns.svc.cluster.local SRV 0 16 80 dup-name.hdls1.testns.svc.cluster.local",
        ]
    );
    let mut extra = rrs(&m.additionals);
    extra.sort();
    assert_eq!(extra.len(), 6, "both addresses of dup-name: {extra:?}");
}

#[test]
fn endpoints_of_a_cluster_ip_service_have_names_and_ptr_records() {
    // reverse_test: the PTR of an endpoint of a ClusterIP Service names
    // the endpoint; handler_test answers `ep1a.svc1…` with its address.
    let mut c = Cluster::new(PodsMode::Verified);
    c.svc(mk_svc(
        "testns",
        "svc1",
        "10.96.0.11",
        &[("http", "TCP", 80)],
    ));
    c.slice(mk_slice(
        "testns",
        "svc1-1",
        "svc1",
        vec![
            mk_ep("172.0.0.1", Some("ep1a"), true),
            mk_ep("172.0.0.2", None, true),
            mk_ep("172.0.0.9", Some("gone"), false),
        ],
        &[("http", "TCP", 80)],
    ));
    assert_answer(
        &c.ask("ep1a.svc1.testns.svc.cluster.local.", RecordType::A),
        &["ep1a.svc1.testns.svc.cluster.local A 172.0.0.1"],
    );
    assert_answer(
        &c.ask("172-0-0-2.svc1.testns.svc.cluster.local.", RecordType::A),
        &["172-0-0-2.svc1.testns.svc.cluster.local A 172.0.0.2"],
    );
    assert_answer(
        &c.ask("1.0.0.172.in-addr.arpa.", RecordType::PTR),
        &["1.0.0.172.in-addr.arpa PTR ep1a.svc1.testns.svc.cluster.local"],
    );
    // Not ready: neither.
    assert_negative(
        &c.ask("gone.svc1.testns.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    // The Service's own name still answers its ClusterIP only.
    assert_answer(
        &c.ask("svc1.testns.svc.cluster.local.", RecordType::A),
        &["svc1.testns.svc.cluster.local A 10.96.0.11"],
    );
}

#[test]
fn an_external_name_that_is_an_address_is_not_served() {
    let mut c = Cluster::new(PodsMode::Verified);
    c.svc(mk_external("testns", "external-ip", "1.2.3.4"));
    for t in [RecordType::A, RecordType::CNAME] {
        assert_negative(
            &c.ask("external-ip.testns.svc.cluster.local.", t),
            ResponseCode::NXDomain,
        );
    }
}

#[test]
fn pod_zone_exists_with_pods_disabled() {
    // handler_test runs with pods disabled: "pod.cluster.local. A" is
    // NOERROR with the SOA; names under it do not exist.
    let c = Cluster::new(PodsMode::Disabled);
    assert_negative(
        &c.ask("pod.cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
    assert_negative(
        &c.ask("10-1-2-3.any.pod.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn ttls_of_dns_version_and_the_soa() {
    // handler_test: dns-version TXT has TTL 28800; the SOA's TTL is the
    // zone's, at most 300 s, with the zone's TTL as its minimum field.
    let c = web();
    let m = c.ask("dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 28_800);

    let zone = Zone::new("cluster.local", 600, PodsMode::Disabled, &[]).unwrap();
    let mut writer = IndexWriter::new(Arc::new(zone));
    writer.set_synced(true);
    let c = Cluster {
        catalog: Catalog::new(),
        writer,
        metrics: DnsMetrics::default(),
    };
    let m = c.ask("cluster.local.", RecordType::SOA);
    assert_eq!(m.answers[0].ttl, 300);
    let m = c.ask("nothing.cluster.local.", RecordType::A);
    assert_eq!(m.authorities[0].ttl, 300);
    let soa = m.authorities[0].data.to_string();
    assert!(soa.ends_with(" 600"), "{soa}");
}

fn namespace(name: &str) -> k8s_openapi::api::core::v1::Namespace {
    k8s_openapi::api::core::v1::Namespace {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl Cluster {
    fn namespace(&mut self, name: &str, present: bool) {
        if present {
            self.catalog.apply_namespace(&namespace(name));
        } else {
            self.catalog.delete_namespace(&namespace(name));
        }
        self.sync();
    }
}

#[test]
fn a_namespace_that_exists_answers_nodata_and_one_that_does_not_nxdomain() {
    // handler_pod_verified_test "svcns.svc.cluster.local. A": NOERROR with
    // the SOA for a namespace without Services; findPods: NXDOMAIN for a
    // namespace that does not exist.
    let mut c = web();
    let ask = |c: &Cluster, name: &str| c.ask(name, RecordType::A);
    // No Namespace known (manifests without any): names follow the records.
    assert_negative(
        &ask(&c, "emptyns.svc.cluster.local."),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ask(&c, "default.svc.cluster.local."),
        ResponseCode::NoError,
    );
    c.namespace("default", true);
    c.namespace("emptyns", true);
    assert_negative(
        &ask(&c, "emptyns.svc.cluster.local."),
        ResponseCode::NoError,
    );
    assert_negative(
        &ask(&c, "emptyns.pod.cluster.local."),
        ResponseCode::NoError,
    );
    assert_negative(
        &ask(&c, "nosuchns.svc.cluster.local."),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ask(&c, "nosuchns.pod.cluster.local."),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ask(&c, "web.emptyns.svc.cluster.local."),
        ResponseCode::NXDomain,
    );
    // Services come and go below a namespace; its name stays.
    c.svc(mk_svc("emptyns", "api", "10.96.0.30", &[]));
    c.catalog
        .delete_service(&mk_svc("emptyns", "api", "10.96.0.30", &[]));
    c.sync();
    assert_negative(
        &ask(&c, "emptyns.svc.cluster.local."),
        ResponseCode::NoError,
    );
    // The Namespace goes: so does its name.
    c.namespace("emptyns", false);
    assert_negative(
        &ask(&c, "emptyns.svc.cluster.local."),
        ResponseCode::NXDomain,
    );
    // The default namespace keeps answering (its Service holds it too).
    c.namespace("default", false);
    assert_negative(
        &ask(&c, "default.svc.cluster.local."),
        ResponseCode::NoError,
    );

    // Insecure pod records: only in namespaces that exist.
    let mut c = Cluster::new(PodsMode::Insecure);
    c.namespace("podns", true);
    assert_answer(
        &ask(&c, "10-1-2-3.podns.pod.cluster.local."),
        &["10-1-2-3.podns.pod.cluster.local A 10.1.2.3"],
    );
    assert_negative(
        &ask(&c, "10-1-2-3.nosuchns.pod.cluster.local."),
        ResponseCode::NXDomain,
    );
}
