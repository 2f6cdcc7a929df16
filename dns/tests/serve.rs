//! The server over real sockets on loopback: every record kind and
//! negative answer over UDP and TCP, truncation, malformed packets,
//! forwarding to upstreams and stub domains (small DNS servers started
//! here on 127.0.0.1), the cache and its TTLs, and upstream failures.
//!
//! Addresses: the cluster as in `fixtures.rs`; the test upstream answers
//! `example.org` with 203.0.113.1, the stub server `corp.example` names
//! with 192.168.56.50 (answers only; no packet leaves loopback).

#![allow(clippy::unwrap_used)]

#[path = "../src/fixtures.rs"]
mod fixtures;

use fixtures::*;
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use portico_catalog::Catalog;
use portico_dns::{Dns, DnsConfig, PodsMode, StubDomain};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

// ---- a small upstream DNS server ---------------------------------------

/// A DNS server on 127.0.0.1 that answers from a function and counts the
/// queries it gets.
struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
}

type Answerer = fn(&Name, RecordType) -> Option<(ResponseCode, Vec<Record>, Vec<Record>)>;

impl Upstream {
    async fn start(answer: Answerer) -> Upstream {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let count = queries.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let q = req.queries[0].clone();
                let Some((rcode, answers, authority)) = answer(q.name(), q.query_type()) else {
                    continue; // a black hole
                };
                let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
                resp.metadata.response_code = rcode;
                resp.metadata.recursion_available = true;
                resp.add_query(q);
                resp.add_answers(answers);
                resp.add_authorities(authority);
                if req.edns.is_some() {
                    resp.set_edns(Edns::new());
                }
                let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
            }
        });
        Upstream { addr, queries }
    }

    fn count(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

fn a(name: &Name, ip: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(
        name.clone(),
        ttl,
        RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
    )
}

fn soa(zone: &str, ttl: u32) -> Record {
    let zone = Name::from_ascii(zone).unwrap();
    Record::from_rdata(
        zone.clone(),
        ttl,
        RData::SOA(SOA::new(zone.clone(), zone, 1, 60, 60, 60, ttl)),
    )
}

/// example.org → 203.0.113.1 (TTL 300); anything else NXDOMAIN.
fn internet(name: &Name, t: RecordType) -> Option<(ResponseCode, Vec<Record>, Vec<Record>)> {
    if name.to_lowercase().to_string() == "example.org." && t == RecordType::A {
        return Some((
            ResponseCode::NoError,
            vec![a(name, [203, 0, 113, 1], 300)],
            vec![],
        ));
    }
    Some((ResponseCode::NXDomain, vec![], vec![soa("org.", 300)]))
}

/// `*.corp.example` → 192.168.56.50 with a 1 s TTL; `missing.corp.example`
/// NXDOMAIN with a 1 s negative TTL.
fn corp(name: &Name, t: RecordType) -> Option<(ResponseCode, Vec<Record>, Vec<Record>)> {
    let n = name.to_lowercase().to_string();
    if n == "missing.corp.example." {
        return Some((
            ResponseCode::NXDomain,
            vec![],
            vec![soa("corp.example.", 1)],
        ));
    }
    if t == RecordType::A {
        return Some((
            ResponseCode::NoError,
            vec![a(name, [192, 168, 56, 50], 1)],
            vec![],
        ));
    }
    Some((ResponseCode::NoError, vec![], vec![soa("corp.example.", 1)]))
}

fn black_hole(_: &Name, _: RecordType) -> Option<(ResponseCode, Vec<Record>, Vec<Record>)> {
    None
}

// ---- the server under test ---------------------------------------------

struct Server {
    dns: Dns,
    /// The time the cache reads; tests move it.
    clock: portico_testkit::FakeClock,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<portico_dns::Result<()>>>,
}

impl Server {
    async fn start(config: DnsConfig, catalog: &Catalog, synced: bool) -> Server {
        let clock = portico_testkit::FakeClock::new();
        let dns = Dns::with_clock(
            DnsConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..config
            },
            clock.source(),
        )
        .unwrap();
        dns.reset(catalog);
        if synced {
            dns.mark_synced();
        }
        let listener = dns.bind().await.unwrap();
        let addr = listener.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(listener.run(async {
            let _ = rx.await;
        }));
        Server {
            dns,
            clock,
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("the server stops")
                .unwrap()
                .unwrap();
        }
    }
}

fn cluster() -> Catalog {
    let mut c = Catalog::new();
    c.apply_service(&mk_svc(
        "default",
        "web",
        "10.96.0.10,fd00:96::10",
        &[("http", "TCP", 80)],
    ));
    c.apply_service(&mk_headless("default", "db", &[("pg", "TCP", 5432)]));
    c.apply_slice(&mk_slice(
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
    c.apply_service(&mk_external(
        "default",
        "alias",
        "web.default.svc.cluster.local",
    ));
    c.apply_service(&mk_external("default", "corp-db", "db.corp.example"));
    c.apply_pod(&mk_pod("default", "web-1", &["10.244.0.5"]));
    c.apply_service(&mk_headless("default", "big", &[]));
    let eps = (0..200)
        .map(|i| {
            mk_ep(
                &format!("10.244.{}.{}", 10 + i / 250, i % 250 + 1),
                None,
                true,
            )
        })
        .collect();
    c.apply_slice(&mk_slice("default", "big-1", "big", eps, &[]));
    c
}

// ---- a client ----------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Via {
    Udp,
    Tcp,
}

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m
}

async fn exchange_bytes(addr: SocketAddr, req: &[u8], via: Via) -> Option<Vec<u8>> {
    let fut = async {
        match via {
            Via::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                s.send_to(req, addr).await.unwrap();
                let mut buf = vec![0u8; 65535];
                let n = s.recv(&mut buf).await.unwrap();
                buf.truncate(n);
                buf
            }
            Via::Tcp => {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let mut framed = (req.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(req);
                s.write_all(&framed).await.unwrap();
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await.unwrap();
                let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                s.read_exact(&mut buf).await.unwrap();
                buf
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), fut).await.ok()
}

async fn ask(addr: SocketAddr, name: &str, t: RecordType, via: Via) -> Message {
    let req = query(name, t);
    let bytes = exchange_bytes(addr, &req.to_vec().unwrap(), via)
        .await
        .unwrap_or_else(|| panic!("no answer for {name} {t} over {via:?}"));
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.metadata.id, req.metadata.id);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    m
}

/// Records as `name TYPE rdata`, sorted.
fn rrs(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records
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
        .collect();
    v.sort();
    v
}

fn has_zone_soa(m: &Message) -> bool {
    m.authorities.len() == 1
        && m.authorities[0].record_type() == RecordType::SOA
        && m.authorities[0].name.to_string() == "cluster.local."
}

// ---- tests -------------------------------------------------------------

#[tokio::test]
async fn every_record_kind_and_negative_answer_over_udp_and_tcp() {
    let internet = Upstream::start(internet).await;
    let server = Server::start(
        DnsConfig {
            upstreams: vec![internet.addr],
            ..DnsConfig::default()
        },
        &cluster(),
        true,
    )
    .await;
    let v6_ptr = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa.";
    let cases: Vec<(&str, RecordType, ResponseCode, Vec<String>)> = vec![
        ("web.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError, vec!["web.default.svc.cluster.local A 10.96.0.10".into()]),
        ("WEB.Default.Svc.Cluster.Local.", RecordType::AAAA, ResponseCode::NoError, vec!["web.default.svc.cluster.local AAAA fd00:96::10".into()]),
        ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV, ResponseCode::NoError, vec!["_http._tcp.web.default.svc.cluster.local SRV 0 50 80 web.default.svc.cluster.local".into()]),
        ("db.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError, vec!["db.default.svc.cluster.local A 10.244.0.1".into(), "db.default.svc.cluster.local A 10.244.0.2".into()]),
        ("db-0.db.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError, vec!["db-0.db.default.svc.cluster.local A 10.244.0.1".into()]),
        ("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV, ResponseCode::NoError, vec![
            "_pg._tcp.db.default.svc.cluster.local SRV 0 50 15432 10-244-0-2.db.default.svc.cluster.local".into(),
            "_pg._tcp.db.default.svc.cluster.local SRV 0 50 15432 db-0.db.default.svc.cluster.local".into(),
        ]),
        ("10.0.96.10.in-addr.arpa.", RecordType::PTR, ResponseCode::NoError, vec!["10.0.96.10.in-addr.arpa PTR web.default.svc.cluster.local".into()]),
        (v6_ptr, RecordType::PTR, ResponseCode::NoError, vec![format!("{} PTR web.default.svc.cluster.local", v6_ptr.trim_end_matches('.'))]),
        ("1.0.244.10.in-addr.arpa.", RecordType::PTR, ResponseCode::NoError, vec!["1.0.244.10.in-addr.arpa PTR db-0.db.default.svc.cluster.local".into()]),
        ("alias.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError, vec![
            "alias.default.svc.cluster.local CNAME web.default.svc.cluster.local".into(),
            "web.default.svc.cluster.local A 10.96.0.10".into(),
        ]),
        ("corp-db.default.svc.cluster.local.", RecordType::CNAME, ResponseCode::NoError, vec!["corp-db.default.svc.cluster.local CNAME db.corp.example".into()]),
        ("dns-version.cluster.local.", RecordType::TXT, ResponseCode::NoError, vec!["dns-version.cluster.local TXT 1.1.0".into()]),
        ("10-244-0-5.default.pod.cluster.local.", RecordType::A, ResponseCode::NoError, vec!["10-244-0-5.default.pod.cluster.local A 10.244.0.5".into()]),
        // Negative answers carry the zone's SOA.
        ("nope.default.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain, vec![]),
        ("db-2.db.default.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain, vec![]),
        ("10-244-0-6.default.pod.cluster.local.", RecordType::A, ResponseCode::NXDomain, vec![]),
        ("web.default.svc.cluster.local.", RecordType::TXT, ResponseCode::NoError, vec![]),
        ("default.svc.cluster.local.", RecordType::A, ResponseCode::NoError, vec![]),
    ];
    for via in [Via::Udp, Via::Tcp] {
        for (name, t, rcode, answers) in &cases {
            let m = ask(server.addr, name, *t, via).await;
            assert_eq!(m.metadata.response_code, *rcode, "{name} {t} over {via:?}");
            assert!(m.metadata.authoritative, "{name} {t} over {via:?}: AA");
            assert_eq!(&rrs(&m.answers), answers, "{name} {t} over {via:?}");
            if answers.is_empty() {
                assert!(has_zone_soa(&m), "{name} {t} over {via:?}: SOA");
            }
            if *t == RecordType::SRV && name.starts_with("_http") {
                assert_eq!(
                    rrs(&m.additionals),
                    vec![
                        "web.default.svc.cluster.local A 10.96.0.10",
                        "web.default.svc.cluster.local AAAA fd00:96::10"
                    ],
                    "over {via:?}"
                );
            }
            if *t == RecordType::SRV && name.starts_with("_pg") {
                assert_eq!(
                    rrs(&m.additionals),
                    vec![
                        "10-244-0-2.db.default.svc.cluster.local A 10.244.0.2",
                        "db-0.db.default.svc.cluster.local A 10.244.0.1"
                    ],
                    "over {via:?}"
                );
            }
        }
    }
    assert!(server.dns.metrics().queries("A", "NOERROR") >= 10);
    server.stop().await;
}

#[tokio::test]
async fn a_large_answer_is_truncated_over_udp_and_complete_over_tcp() {
    let server = Server::start(DnsConfig::default(), &cluster(), true).await;
    let m = ask(
        server.addr,
        "big.default.svc.cluster.local.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    let m = ask(
        server.addr,
        "big.default.svc.cluster.local.",
        RecordType::A,
        Via::Tcp,
    )
    .await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 200);
    server.stop().await;
}

#[tokio::test]
async fn malformed_packets_get_formerr_and_the_server_keeps_answering() {
    let server = Server::start(DnsConfig::default(), &cluster(), true).await;
    let good = query("web.default.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    // A header that promises a question it does not have.
    let mut cut = good.clone();
    cut.truncate(good.len() - 10);
    let resp = exchange_bytes(server.addr, &cut, Via::Udp).await.unwrap();
    let m = Message::from_vec(&resp).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // A label longer than the packet.
    let mut junk = good[..12].to_vec();
    junk.extend_from_slice(&[63, b'a', b'b']);
    let resp = exchange_bytes(server.addr, &junk, Via::Udp).await.unwrap();
    assert_eq!(
        Message::from_vec(&resp).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    // A compression loop in the question, then noise of every length.
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let _ = exchange_bytes(server.addr, &looped, Via::Udp).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for len in 0..300usize {
        let noise: Vec<u8> = (0..len).map(|i| (i * 31 + len * 7) as u8 & 0x7F).collect();
        sock.send_to(&noise, server.addr).await.unwrap();
    }
    // Over TCP too.
    let resp = exchange_bytes(server.addr, &cut, Via::Tcp).await.unwrap();
    assert_eq!(
        Message::from_vec(&resp).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    // Still answering.
    for via in [Via::Udp, Via::Tcp] {
        let m = ask(
            server.addr,
            "web.default.svc.cluster.local.",
            RecordType::A,
            via,
        )
        .await;
        assert_eq!(m.answers.len(), 1);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_missing_name_is_servfail_until_the_catalog_is_synced() {
    let server = Server::start(DnsConfig::default(), &cluster(), false).await;
    let missing = "nothing.default.svc.cluster.local.";
    let m = ask(server.addr, missing, RecordType::A, Via::Udp).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(!server.dns.is_synced());
    // A name already known is answered (CoreDNS answers what its caches
    // hold and turns only NXDOMAIN into SERVFAIL).
    let m = ask(
        server.addr,
        "web.default.svc.cluster.local.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    server.dns.mark_synced();
    let m = ask(server.addr, missing, RecordType::A, Via::Udp).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    server.stop().await;
}

#[tokio::test]
async fn changes_are_served_as_soon_as_they_are_applied() {
    let mut catalog = cluster();
    let server = Server::start(DnsConfig::default(), &catalog, true).await;
    catalog.apply_service(&mk_svc("team", "api", "10.96.0.20", &[]));
    catalog.delete_service(&mk_svc("default", "web", "", &[]));
    let changes = catalog.take_changes();
    server.dns.apply(&catalog, &changes);
    let m = ask(
        server.addr,
        "api.team.svc.cluster.local.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    assert_eq!(
        rrs(&m.answers),
        vec!["api.team.svc.cluster.local A 10.96.0.20"]
    );
    let m = ask(
        server.addr,
        "web.default.svc.cluster.local.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    server.stop().await;
}

#[tokio::test]
async fn other_names_go_upstream_and_stub_domains_to_their_servers() {
    let internet = Upstream::start(internet).await;
    let corp = Upstream::start(corp).await;
    let server = Server::start(
        DnsConfig {
            upstreams: vec![internet.addr],
            stub_domains: vec![StubDomain {
                domain: "corp.example".into(),
                servers: vec![corp.addr],
            }],
            ..DnsConfig::default()
        },
        &cluster(),
        true,
    )
    .await;
    for via in [Via::Udp, Via::Tcp] {
        let m = ask(server.addr, "Example.ORG.", RecordType::A, via).await;
        assert_eq!(
            rrs(&m.answers),
            vec!["example.org A 203.0.113.1"],
            "{via:?}"
        );
        assert_eq!(m.queries[0].name().to_string(), "Example.ORG.");
        assert!(!m.metadata.authoritative);
        let m = ask(server.addr, "db.corp.example.", RecordType::A, via).await;
        assert_eq!(
            rrs(&m.answers),
            vec!["db.corp.example A 192.168.56.50"],
            "{via:?}"
        );
        let m = ask(server.addr, "nothing.org.", RecordType::A, via).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // An ExternalName Service pointing into the stub domain.
        let m = ask(
            server.addr,
            "corp-db.default.svc.cluster.local.",
            RecordType::A,
            via,
        )
        .await;
        assert_eq!(
            rrs(&m.answers),
            vec![
                "corp-db.default.svc.cluster.local CNAME db.corp.example",
                "db.corp.example A 192.168.56.50"
            ],
            "{via:?}"
        );
    }
    // The internet never saw corp.example, and the cluster zone went nowhere.
    assert_eq!(internet.count(), 2);
    assert!(corp.count() >= 1);
    server.stop().await;
}

#[tokio::test]
async fn the_cache_honours_positive_and_negative_ttls() {
    let corp = Upstream::start(corp).await;
    let server = Server::start(
        DnsConfig {
            upstreams: vec![corp.addr],
            ..DnsConfig::default()
        },
        &Catalog::new(),
        true,
    )
    .await;
    let m = ask(server.addr, "x.corp.example.", RecordType::A, Via::Udp).await;
    assert_eq!(m.answers[0].ttl, 1);
    ask(server.addr, "x.corp.example.", RecordType::A, Via::Udp).await;
    ask(
        server.addr,
        "missing.corp.example.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    let m = ask(
        server.addr,
        "missing.corp.example.",
        RecordType::A,
        Via::Tcp,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(corp.count(), 2, "second answers came from the cache");
    assert_eq!(server.dns.metrics().cache_counts().0, 2);
    // The answers' TTLs (1 s) run out.
    server.clock.advance(Duration::from_millis(1100));
    ask(server.addr, "x.corp.example.", RecordType::A, Via::Udp).await;
    ask(
        server.addr,
        "missing.corp.example.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    assert_eq!(corp.count(), 4, "expired entries are asked again");
    server.stop().await;
}

#[tokio::test]
async fn a_failing_upstream_gives_servfail_from_the_server_itself() {
    let hole = Upstream::start(black_hole).await;
    // Nothing listens on this port: the kernel refuses at once.
    let closed = {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.local_addr().unwrap()
    };
    let server = Server::start(
        DnsConfig {
            upstreams: vec![closed, hole.addr],
            upstream_timeout: Duration::from_millis(300),
            ..DnsConfig::default()
        },
        &cluster(),
        true,
    )
    .await;
    for via in [Via::Udp, Via::Tcp] {
        let m = ask(server.addr, "example.org.", RecordType::A, via).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{via:?}");
    }
    // Each answer came from the server, after it had tried both
    // upstreams and given up on them itself (a refusal, a timeout of its
    // own) for each question: the client never had to time out.
    let metrics = server.dns.metrics();
    let (refused, timed_out) = (
        metrics.upstream_errors("network"),
        metrics.upstream_errors("timeout"),
    );
    assert!(
        refused >= 2 && timed_out >= 2,
        "{refused} refused, {timed_out} timed out"
    );
    // The zone is unaffected.
    let m = ask(
        server.addr,
        "web.default.svc.cluster.local.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    assert_eq!(m.answers.len(), 1);
    server.stop().await;
}

/// A hickory resolver that asks only `addr`, over the transports in `via`.
fn resolver(
    addr: SocketAddr,
    via: &[Via],
) -> hickory_resolver::Resolver<hickory_resolver::net::runtime::TokioRuntimeProvider> {
    use hickory_resolver::Resolver;
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;

    let connections = via
        .iter()
        .map(|v| {
            let mut c = match v {
                Via::Udp => ConnectionConfig::udp(),
                Via::Tcp => ConnectionConfig::tcp(),
            };
            c.port = addr.port();
            c
        })
        .collect();
    let ns = NameServerConfig::new(addr.ip(), true, connections);
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn a_real_resolver_resolves_cluster_names() {
    let server = Server::start(
        DnsConfig {
            pods: PodsMode::Verified,
            ..DnsConfig::default()
        },
        &cluster(),
        true,
    )
    .await;
    let resolver = resolver(server.addr, &[Via::Udp, Via::Tcp]);
    let ips: Vec<String> = resolver
        .lookup_ip("web.default.svc.cluster.local.")
        .await
        .unwrap()
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    assert!(ips.contains(&"10.96.0.10".to_owned()), "{ips:?}");
    // 200 addresses: the resolver retries over TCP after TC.
    let big = resolver
        .lookup_ip("big.default.svc.cluster.local.")
        .await
        .unwrap();
    assert_eq!(big.iter().filter(|ip| ip.is_ipv4()).count(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_real_resolver_gets_the_apex_ns_and_its_glue_over_udp_and_tcp() {
    let server = Server::start(
        DnsConfig {
            service_ips: vec!["10.96.0.10".parse().unwrap(), "fd00:96::a".parse().unwrap()],
            ..DnsConfig::default()
        },
        &cluster(),
        true,
    )
    .await;
    for via in [Via::Udp, Via::Tcp] {
        let resolver = resolver(server.addr, &[via]);
        let ns = resolver
            .lookup("cluster.local.", RecordType::NS)
            .await
            .unwrap_or_else(|e| panic!("NS over {via:?}: {e}"));
        assert_eq!(
            rrs(ns.answers()),
            ["cluster.local NS ns.dns.cluster.local"],
            "over {via:?}"
        );
        assert!(ns.message().metadata.authoritative, "over {via:?}");
        assert_eq!(
            rrs(ns.additionals()),
            [
                "ns.dns.cluster.local A 10.96.0.10",
                "ns.dns.cluster.local AAAA fd00:96::a"
            ],
            "over {via:?}"
        );
        let ips: Vec<String> = resolver
            .lookup_ip("ns.dns.cluster.local.")
            .await
            .unwrap_or_else(|e| panic!("ns.dns over {via:?}: {e}"))
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert!(
            ips.contains(&"10.96.0.10".to_owned()),
            "{ips:?} over {via:?}"
        );
        assert!(
            ips.contains(&"fd00:96::a".to_owned()),
            "{ips:?} over {via:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_registered() {
    let server = Server::start(DnsConfig::default(), &cluster(), true).await;
    ask(
        server.addr,
        "web.default.svc.cluster.local.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    let mut registry = prometheus_client::registry::Registry::default();
    server.dns.register(&mut registry);
    // The UDP thread counts the latency right after sending: wait for it.
    let mut text = String::new();
    for _ in 0..100 {
        text.clear();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        if text.contains("portico_dns_request_duration_seconds_count 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        text.contains(r#"portico_dns_queries_total{type="A",rcode="NOERROR"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("portico_dns_request_duration_seconds_count 1"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn several_udp_threads_share_one_port() {
    let server = Server::start(
        DnsConfig {
            udp_threads: 3,
            ..DnsConfig::default()
        },
        &cluster(),
        true,
    )
    .await;
    // Each query comes from its own socket, so the kernel spreads them.
    for _ in 0..20 {
        let m = ask(
            server.addr,
            "web.default.svc.cluster.local.",
            RecordType::A,
            Via::Udp,
        )
        .await;
        assert_eq!(m.answers.len(), 1);
    }
    server.stop().await;
}
