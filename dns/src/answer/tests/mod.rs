//! The answerer on its own: requests built with hickory-proto, answers
//! parsed back with it. No sockets (those are in tests/serve.rs).

use super::*;
use crate::fixtures::*;
use crate::index::{IndexWriter, Zone};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use portico_catalog::Catalog;
use std::sync::Arc;

mod coredns;

struct Cluster {
    catalog: Catalog,
    writer: IndexWriter,
    metrics: DnsMetrics,
}

impl Cluster {
    fn new(pods: PodsMode) -> Self {
        Cluster::with_ns(pods, "")
    }

    /// A cluster whose DNS Service has `ns_ips` (comma-separated).
    fn with_ns(pods: PodsMode, ns_ips: &str) -> Self {
        let ips: Vec<std::net::IpAddr> = ns_ips
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let zone = Zone::new("cluster.local", 5, pods, &ips).unwrap();
        let mut writer = IndexWriter::new(Arc::new(zone));
        writer.set_synced(true);
        Cluster {
            catalog: Catalog::new(),
            writer,
            metrics: DnsMetrics::default(),
        }
    }

    fn sync(&mut self) {
        let changes = self.catalog.take_changes();
        self.writer.apply(&self.catalog, &changes);
    }

    fn svc(&mut self, svc: k8s_openapi::api::core::v1::Service) -> &mut Self {
        self.catalog.apply_service(&svc);
        self.sync();
        self
    }

    fn slice(&mut self, s: k8s_openapi::api::discovery::v1::EndpointSlice) -> &mut Self {
        self.catalog.apply_slice(&s);
        self.sync();
        self
    }

    fn raw(&self, req: &[u8], transport: Transport) -> (Outcome, Vec<u8>) {
        let snap = self.writer.snapshot();
        let mut out = Vec::new();
        let o = answer(&snap, None, &self.metrics, req, transport, 1232, &mut out);
        (o, out)
    }

    fn ask_on(&self, name: &str, t: RecordType, transport: Transport) -> Message {
        let (o, out) = self.raw(&query(name, t, true), transport);
        assert_eq!(o, Outcome::Reply, "{name} {t} was not answered at once");
        Message::from_vec(&out).unwrap()
    }

    fn ask(&self, name: &str, t: RecordType) -> Message {
        self.ask_on(name, t, Transport::Udp)
    }
}

fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// `name TYPE rdata` of each record, names lowercase without the final dot.
fn rrs(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let name = r.name.to_lowercase().to_string();
            format!(
                "{} {} {}",
                name.trim_end_matches('.'),
                r.record_type(),
                r.data.to_string().trim_end_matches('.')
            )
        })
        .collect()
}

#[track_caller]
fn assert_answer(m: &Message, expected: &[&str]) {
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative, "AA must be set");
    assert_eq!(rrs(&m.answers), expected);
}

#[track_caller]
fn assert_negative(m: &Message, rcode: ResponseCode) {
    assert_eq!(m.metadata.response_code, rcode);
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty(), "{:?}", rrs(&m.answers));
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(m.authorities[0].name.to_string(), "cluster.local.");
}

fn web() -> Cluster {
    let mut c = Cluster::new(PodsMode::Verified);
    c.svc(mk_svc(
        "default",
        "web",
        "10.96.0.10,fd00:96::10",
        &[("http", "TCP", 80), ("dns", "UDP", 53), ("", "TCP", 8080)],
    ));
    c
}

#[test]
fn a_cluster_ip_service_has_a_and_aaaa_records() {
    let c = web();
    let m = c.ask("web.default.svc.cluster.local.", RecordType::A);
    assert_answer(&m, &["web.default.svc.cluster.local A 10.96.0.10"]);
    assert_eq!(m.answers[0].ttl, 5);
    assert!(m.metadata.recursion_available);
    assert!(m.edns.is_some());
    let m = c.ask("web.default.svc.cluster.local.", RecordType::AAAA);
    assert_answer(&m, &["web.default.svc.cluster.local AAAA fd00:96::10"]);
}

#[test]
fn names_are_case_insensitive_and_the_question_is_echoed_as_asked() {
    let c = web();
    let m = c.ask("WeB.DeFault.SVC.Cluster.Local.", RecordType::A);
    assert_answer(&m, &["web.default.svc.cluster.local A 10.96.0.10"]);
    assert_eq!(
        m.queries[0].name().to_string(),
        "WeB.DeFault.SVC.Cluster.Local."
    );
}

#[test]
fn a_missing_name_is_nxdomain_and_another_type_is_nodata_both_with_the_soa() {
    let c = web();
    assert_negative(
        &c.ask("nope.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &c.ask("web.other.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &c.ask("web.default.svc.cluster.local.", RecordType::MX),
        ResponseCode::NoError,
    );
    // Empty non-terminals exist.
    assert_negative(
        &c.ask("default.svc.cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
    assert_negative(
        &c.ask("svc.cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
    assert_negative(
        &c.ask("_tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ResponseCode::NoError,
    );
    assert_negative(
        &c.ask("cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
    let soa = c.ask("cluster.local.", RecordType::SOA);
    assert_eq!(soa.answers.len(), 1);
    assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
}

#[test]
fn named_ports_of_a_cluster_ip_service_have_srv_records() {
    let c = web();
    assert_answer(
        &c.ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
        &["_http._tcp.web.default.svc.cluster.local SRV 0 50 80 web.default.svc.cluster.local"],
    );
    assert_answer(
        &c.ask("_dns._udp.web.default.svc.cluster.local.", RecordType::SRV),
        &["_dns._udp.web.default.svc.cluster.local SRV 0 50 53 web.default.svc.cluster.local"],
    );
    assert_negative(
        &c.ask("_dns._tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ResponseCode::NXDomain,
    );
}

#[test]
fn cluster_ip_srv_answers_carry_the_service_addresses_in_additional() {
    let mut c = web();
    c.svc(mk_svc(
        "default",
        "v4",
        "10.96.0.20",
        &[("http", "TCP", 80)],
    ));
    let m = c.ask("_http._tcp.v4.default.svc.cluster.local.", RecordType::SRV);
    assert_answer(
        &m,
        &["_http._tcp.v4.default.svc.cluster.local SRV 0 100 80 v4.default.svc.cluster.local"],
    );
    assert_eq!(
        rrs(&m.additionals),
        ["v4.default.svc.cluster.local A 10.96.0.20"]
    );
    // Dual-stack: both families (and CoreDNS's weight, 100 shared by one
    // record per ClusterIP).
    let m = c.ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_answer(
        &m,
        &["_http._tcp.web.default.svc.cluster.local SRV 0 50 80 web.default.svc.cluster.local"],
    );
    assert_eq!(
        rrs(&m.additionals),
        [
            "web.default.svc.cluster.local A 10.96.0.10",
            "web.default.svc.cluster.local AAAA fd00:96::10",
        ]
    );
    assert_eq!(m.additionals[0].ttl, 5);
}

/// The SOA's MNAME.
#[track_caller]
fn mname(c: &Cluster) -> String {
    let m = c.ask("cluster.local.", RecordType::SOA);
    let hickory_proto::rr::RData::SOA(soa) = &m.answers[0].data else {
        panic!("not an SOA: {:?}", rrs(&m.answers));
    };
    soa.mname.to_string()
}

#[test]
fn the_apex_ns_names_the_soa_name_server_with_the_dns_service_addresses_as_glue() {
    let c = Cluster::with_ns(PodsMode::Verified, "10.96.0.10,fd00:96::a");
    let m = c.ask("Cluster.Local.", RecordType::NS);
    assert_answer(&m, &["cluster.local NS ns.dns.cluster.local"]);
    assert_eq!(m.answers[0].ttl, 5);
    assert!(m.authorities.is_empty());
    assert_eq!(
        rrs(&m.additionals),
        [
            "ns.dns.cluster.local A 10.96.0.10",
            "ns.dns.cluster.local AAAA fd00:96::a",
        ]
    );
    assert_eq!(mname(&c), "ns.dns.cluster.local.");
}

#[test]
fn without_a_dns_service_address_the_apex_ns_has_no_glue() {
    let c = Cluster::new(PodsMode::Verified);
    let m = c.ask("cluster.local.", RecordType::NS);
    assert_answer(&m, &["cluster.local NS ns.dns.cluster.local"]);
    assert!(m.additionals.is_empty(), "{:?}", rrs(&m.additionals));
    // The NS target still exists: NODATA, not NXDOMAIN.
    for t in [RecordType::A, RecordType::AAAA] {
        assert_negative(&c.ask("ns.dns.cluster.local.", t), ResponseCode::NoError);
    }
    assert_negative(
        &c.ask("dns.cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
    assert_negative(
        &c.ask("other.dns.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn the_name_server_answers_with_the_dns_service_addresses() {
    let c = Cluster::with_ns(PodsMode::Verified, "10.96.0.10,fd00:96::a");
    assert_answer(
        &c.ask("ns.dns.cluster.local.", RecordType::A),
        &["ns.dns.cluster.local A 10.96.0.10"],
    );
    assert_answer(
        &c.ask("NS.dns.cluster.local.", RecordType::AAAA),
        &["ns.dns.cluster.local AAAA fd00:96::a"],
    );
    assert_negative(
        &c.ask("ns.dns.cluster.local.", RecordType::TXT),
        ResponseCode::NoError,
    );
}

#[test]
fn the_name_server_is_nodata_for_a_family_without_an_address() {
    let c = Cluster::with_ns(PodsMode::Verified, "10.96.0.10");
    assert_answer(
        &c.ask("ns.dns.cluster.local.", RecordType::A),
        &["ns.dns.cluster.local A 10.96.0.10"],
    );
    assert_negative(
        &c.ask("ns.dns.cluster.local.", RecordType::AAAA),
        ResponseCode::NoError,
    );
    let m = c.ask("cluster.local.", RecordType::NS);
    assert_eq!(rrs(&m.additionals), ["ns.dns.cluster.local A 10.96.0.10"]);
    // And the other way round.
    let c = Cluster::with_ns(PodsMode::Verified, "fd00:96::a");
    assert_negative(
        &c.ask("ns.dns.cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
    assert_answer(
        &c.ask("ns.dns.cluster.local.", RecordType::AAAA),
        &["ns.dns.cluster.local AAAA fd00:96::a"],
    );
}

#[test]
fn any_at_the_apex_has_the_soa_and_the_ns() {
    let c = Cluster::with_ns(PodsMode::Verified, "10.96.0.10");
    let m = c.ask("cluster.local.", RecordType::ANY);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    let types: Vec<RecordType> = m.answers.iter().map(Record::record_type).collect();
    assert_eq!(types, [RecordType::SOA, RecordType::NS]);
    assert_eq!(rrs(&m.additionals), ["ns.dns.cluster.local A 10.96.0.10"]);
}

fn db() -> Cluster {
    let mut c = Cluster::new(PodsMode::Verified);
    c.svc(mk_headless("default", "db", &[("pg", "TCP", 5432)]));
    c.slice(mk_slice(
        "default",
        "db-1",
        "db",
        vec![
            mk_ep("10.244.0.1", Some("db-0"), true),
            mk_ep("10.244.0.2", None, true),
            mk_ep("10.244.0.3", Some("db-2"), false),
        ],
        &[("pg", "TCP", 15432)],
    ));
    c
}

#[test]
fn a_headless_service_answers_its_ready_endpoints() {
    let c = db();
    assert_answer(
        &c.ask("db.default.svc.cluster.local.", RecordType::A),
        &[
            "db.default.svc.cluster.local A 10.244.0.1",
            "db.default.svc.cluster.local A 10.244.0.2",
        ],
    );
    assert_answer(
        &c.ask("db-0.db.default.svc.cluster.local.", RecordType::A),
        &["db-0.db.default.svc.cluster.local A 10.244.0.1"],
    );
    assert_answer(
        &c.ask("10-244-0-2.db.default.svc.cluster.local.", RecordType::A),
        &["10-244-0-2.db.default.svc.cluster.local A 10.244.0.2"],
    );
    // Not ready: no name.
    assert_negative(
        &c.ask("db-2.db.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn a_headless_service_without_ready_endpoints_does_not_exist() {
    let mut c = Cluster::new(PodsMode::Verified);
    c.svc(mk_headless("default", "db", &[]));
    assert_negative(
        &c.ask("db.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    c.slice(mk_slice(
        "default",
        "db-1",
        "db",
        vec![mk_ep("10.244.0.3", Some("db-2"), false)],
        &[],
    ));
    assert_negative(
        &c.ask("db.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    // publishNotReadyAddresses publishes them.
    let mut svc = mk_headless("default", "db", &[]);
    svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    c.svc(svc);
    assert_answer(
        &c.ask("db.default.svc.cluster.local.", RecordType::A),
        &["db.default.svc.cluster.local A 10.244.0.3"],
    );
}

#[test]
fn headless_srv_has_one_record_per_ready_endpoint_and_their_addresses() {
    let c = db();
    let m = c.ask("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV);
    assert_answer(
        &m,
        &[
            "_pg._tcp.db.default.svc.cluster.local SRV 0 50 15432 db-0.db.default.svc.cluster.local",
            "_pg._tcp.db.default.svc.cluster.local SRV 0 50 15432 10-244-0-2.db.default.svc.cluster.local",
        ],
    );
    let mut extra = rrs(&m.additionals);
    extra.sort();
    assert_eq!(
        extra,
        vec![
            "10-244-0-2.db.default.svc.cluster.local A 10.244.0.2",
            "db-0.db.default.svc.cluster.local A 10.244.0.1",
        ]
    );
}

#[test]
fn ptr_records_name_cluster_ips_and_headless_endpoints() {
    let mut c = db();
    c.svc(mk_svc("default", "web", "10.96.0.10,fd00:96::10", &[]));
    assert_answer(
        &c.ask("10.0.96.10.in-addr.arpa.", RecordType::PTR),
        &["10.0.96.10.in-addr.arpa PTR web.default.svc.cluster.local"],
    );
    let v6 = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa.";
    assert_answer(
        &c.ask(v6, RecordType::PTR),
        &[&format!(
            "{} PTR web.default.svc.cluster.local",
            v6.trim_end_matches('.')
        )],
    );
    assert_answer(
        &c.ask("1.0.244.10.in-addr.arpa.", RecordType::PTR),
        &["1.0.244.10.in-addr.arpa PTR db-0.db.default.svc.cluster.local"],
    );
    // Unknown addresses go upstream.
    let (o, _) = c.raw(
        &query("9.9.244.10.in-addr.arpa.", RecordType::PTR, true),
        Transport::Udp,
    );
    assert_eq!(o, Outcome::Forward(Forward::Query));
}

#[test]
fn an_external_name_service_is_a_cname() {
    let mut c = web();
    c.svc(mk_external("default", "corp-db", "db.corp.example"));
    c.svc(mk_external(
        "default",
        "alias",
        "web.default.svc.cluster.local",
    ));
    assert_answer(
        &c.ask("corp-db.default.svc.cluster.local.", RecordType::CNAME),
        &["corp-db.default.svc.cluster.local CNAME db.corp.example"],
    );
    // Inside the zone the CNAME is followed at once.
    assert_answer(
        &c.ask("alias.default.svc.cluster.local.", RecordType::A),
        &[
            "alias.default.svc.cluster.local CNAME web.default.svc.cluster.local",
            "web.default.svc.cluster.local A 10.96.0.10",
        ],
    );
    // Outside, by the forwarder.
    let (o, _) = c.raw(
        &query("corp-db.default.svc.cluster.local.", RecordType::A, true),
        Transport::Udp,
    );
    let Outcome::Forward(Forward::Chase { target, answers }) = o else {
        panic!("expected a chase, got {o:?}");
    };
    assert_eq!(target, b"\x02db\x04corp\x07example\x00");
    assert_eq!(answers.1, 1);
}

#[test]
fn the_schema_version_is_published() {
    let c = web();
    assert_answer(
        &c.ask("dns-version.cluster.local.", RecordType::TXT),
        &["dns-version.cluster.local TXT 1.1.0"],
    );
}

#[test]
fn pod_records_follow_the_pods_mode() {
    let mut c = Cluster::new(PodsMode::Verified);
    c.catalog
        .apply_pod(&mk_pod("default", "web-1", &["10.244.0.5", "fd00:244::5"]));
    c.sync();
    assert_answer(
        &c.ask("10-244-0-5.default.pod.cluster.local.", RecordType::A),
        &["10-244-0-5.default.pod.cluster.local A 10.244.0.5"],
    );
    assert_answer(
        &c.ask("fd00-244--5.default.pod.cluster.local.", RecordType::AAAA),
        &["fd00-244--5.default.pod.cluster.local AAAA fd00:244::5"],
    );
    // Verified: only existing pods, in their namespace.
    assert_negative(
        &c.ask("10-244-0-6.default.pod.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &c.ask("10-244-0-5.other.pod.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &c.ask("10-244-0-5.default.pod.cluster.local.", RecordType::AAAA),
        ResponseCode::NoError,
    );
    c.catalog.delete_pod(&mk_pod("default", "web-1", &[]));
    c.sync();
    assert_negative(
        &c.ask("10-244-0-5.default.pod.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );

    let c = Cluster::new(PodsMode::Insecure);
    assert_answer(
        &c.ask("10-1-2-3.any.pod.cluster.local.", RecordType::A),
        &["10-1-2-3.any.pod.cluster.local A 10.1.2.3"],
    );
    let c = Cluster::new(PodsMode::Disabled);
    assert_negative(
        &c.ask("10-1-2-3.any.pod.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn until_synced_a_missing_name_is_servfail_and_other_names_are_forwarded() {
    let mut c = web();
    c.writer.set_synced(false);
    // CoreDNS's notSyncedTestCases: SERVFAIL with the SOA, never NXDOMAIN.
    let m = c.ask("svc0.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.answers.is_empty());
    assert_eq!(rrs(&m.authorities).len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    // What is known already is answered.
    assert_answer(
        &c.ask("web.default.svc.cluster.local.", RecordType::A),
        &["web.default.svc.cluster.local A 10.96.0.10"],
    );
    let (o, _) = c.raw(&query("example.org.", RecordType::A, true), Transport::Udp);
    assert_eq!(o, Outcome::Forward(Forward::Query));
}

#[test]
fn malformed_requests_get_formerr_and_responses_are_ignored() {
    let c = web();
    // A header claiming a question that is not there.
    let mut bad = query("web.default.svc.cluster.local.", RecordType::A, false);
    bad.truncate(20);
    let (o, out) = c.raw(&bad, Transport::Udp);
    assert_eq!(o, Outcome::Reply);
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.metadata.id, u16::from_be_bytes([bad[0], bad[1]]));
    // Too short for a header: nothing.
    assert_eq!(c.raw(&[1, 2, 3], Transport::Udp).0, Outcome::Drop);
    // A response: nothing (no reflection loops).
    let mut resp = query("web.default.svc.cluster.local.", RecordType::A, false);
    resp[2] |= 0x80;
    assert_eq!(c.raw(&resp, Transport::Udp).0, Outcome::Drop);
    // Two questions.
    let mut two = Message::query();
    for _ in 0..2 {
        two.add_query(Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
    }
    let (_, out) = c.raw(&two.to_vec().unwrap(), Transport::Udp);
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    // Another opcode.
    let mut notify = query("web.default.svc.cluster.local.", RecordType::A, false);
    notify[2] = (notify[2] & !0x78) | (4 << 3);
    let (_, out) = c.raw(&notify, Transport::Udp);
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::NotImp
    );
    // EDNS version 1.
    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    let (_, out) = c.raw(&m.to_vec().unwrap(), Transport::Udp);
    // BADVERS (16; hickory names the code BADSIG, which shares it).
    assert_eq!(
        u16::from(Message::from_vec(&out).unwrap().metadata.response_code),
        16
    );
    // Other classes are refused in the zone.
    let mut chaos = query("web.default.svc.cluster.local.", RecordType::A, false);
    let n = chaos.len();
    chaos[n - 2..].copy_from_slice(&u16::from(DNSClass::CH).to_be_bytes());
    let (_, out) = c.raw(&chaos, Transport::Udp);
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
}

#[test]
fn a_large_answer_is_truncated_over_udp_and_complete_over_tcp() {
    let mut c = Cluster::new(PodsMode::Verified);
    c.svc(mk_headless("default", "big", &[]));
    let eps = (0..200)
        .map(|i| mk_ep(&format!("10.244.{}.{}", i / 250, i % 250 + 1), None, true))
        .collect();
    c.slice(mk_slice("default", "big-1", "big", eps, &[]));
    let m = c.ask_on(
        "big.default.svc.cluster.local.",
        RecordType::A,
        Transport::Udp,
    );
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    let m = c.ask_on(
        "big.default.svc.cluster.local.",
        RecordType::A,
        Transport::Tcp,
    );
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 200);
    // Without EDNS the limit is 512 bytes.
    let (_, out) = c.raw(
        &query("big.default.svc.cluster.local.", RecordType::A, false),
        Transport::Udp,
    );
    assert!(out.len() <= 512);
}

#[test]
fn deleting_a_service_removes_its_names_and_empty_parents() {
    let mut c = web();
    c.svc(mk_svc("default", "other", "10.96.0.11", &[]));
    c.catalog
        .delete_service(&mk_svc("default", "web", "10.96.0.10", &[]));
    c.sync();
    assert_negative(
        &c.ask("web.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &c.ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &c.ask("default.svc.cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
    c.catalog
        .delete_service(&mk_svc("default", "other", "10.96.0.11", &[]));
    c.sync();
    assert_negative(
        &c.ask("default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    let (o, _) = c.raw(
        &query("10.0.96.10.in-addr.arpa.", RecordType::PTR, true),
        Transport::Udp,
    );
    assert_eq!(o, Outcome::Forward(Forward::Query));
}

#[test]
fn queries_are_counted_by_type_and_rcode() {
    let c = web();
    c.ask("web.default.svc.cluster.local.", RecordType::A);
    c.ask("nope.default.svc.cluster.local.", RecordType::A);
    assert_eq!(c.metrics.queries("A", "NOERROR"), 1);
    assert_eq!(c.metrics.queries("A", "NXDOMAIN"), 1);
}

#[test]
fn requests_with_records_in_other_sections_are_parsed_in_full() {
    let c = web();
    // A query carrying an answer record (as some clients do for NOTIFY-like
    // traffic): still a query, still answered.
    let mut m = Message::query();
    let name = Name::from_ascii("web.default.svc.cluster.local.").unwrap();
    m.add_query(Query::query(name.clone(), RecordType::A));
    m.add_answer(Record::from_rdata(
        name,
        5,
        hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(1, 2, 3, 4)),
    ));
    let (o, out) = c.raw(&m.to_vec().unwrap(), Transport::Udp);
    assert_eq!(o, Outcome::Reply);
    assert_answer(
        &Message::from_vec(&out).unwrap(),
        &["web.default.svc.cluster.local A 10.96.0.10"],
    );
    // An additional record that is cut short: FORMERR.
    let mut bad = query("web.default.svc.cluster.local.", RecordType::A, true);
    bad.truncate(bad.len() - 3);
    let (_, out) = c.raw(&bad, Transport::Udp);
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes: no panic, and whatever is sent back is a DNS message
        /// that answers the same ID.
        #[test]
        fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let c = db();
            for transport in [Transport::Udp, Transport::Tcp] {
                let (o, out) = c.raw(&bytes, transport);
                if o == Outcome::Reply {
                    prop_assert!(out.len() >= 12);
                    prop_assert_eq!(&out[..2], &bytes[..2]);
                    prop_assert!(Message::from_vec(&out).is_ok());
                }
            }
        }

        /// Valid queries with a few bytes changed.
        #[test]
        fn mutated_queries_never_panic(
            name in prop::sample::select(vec![
                "web.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local.",
                "10-244-0-5.default.pod.cluster.local.",
                "1.0.244.10.in-addr.arpa.",
                "example.org.",
            ]),
            edns in any::<bool>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let c = db();
            let mut q = query(name, RecordType::A, edns);
            for (i, b) in flips {
                let at = i.index(q.len());
                q[at] = b;
            }
            for transport in [Transport::Udp, Transport::Tcp] {
                let (o, out) = c.raw(&q, transport);
                if o == Outcome::Reply {
                    prop_assert!(Message::from_vec(&out).is_ok());
                    if transport == Transport::Udp {
                        prop_assert!(out.len() <= 1232);
                    }
                }
            }
        }
    }
}
