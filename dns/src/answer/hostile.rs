//! Hostile requests: arbitrary bytes and mutated valid queries go through
//! the whole request path (parsing, the zone, the cache, the answer
//! writer) and never panic; an answer keeps the request's ID and fits the
//! size the client can take. `PORTICO_FUZZ_CASES` sets how many cases
//! each property runs (`make fuzz` runs many; `make test` a few hundred).

use super::*;
use crate::fixtures::*;
use crate::index::{IndexWriter, Zone};
use crate::wire::HEADER_LEN;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use portico_catalog::Catalog;
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};

fn cases() -> u32 {
    std::env::var("PORTICO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// A zone with a ClusterIP Service, a headless one with endpoints and an
/// ExternalName, and a cache holding one outside answer.
struct Target {
    writer: IndexWriter,
    cache: Cache,
    metrics: DnsMetrics,
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        let zone = Zone::new("cluster.local", 5, PodsMode::Verified, &[]).unwrap();
        let mut writer = IndexWriter::new(Arc::new(zone));
        writer.set_synced(true);
        let mut catalog = Catalog::new();
        catalog.apply_service(&mk_svc(
            "default",
            "web",
            "10.96.0.10",
            &[("http", "TCP", 80)],
        ));
        catalog.apply_service(&mk_headless("default", "db", &[("pg", "TCP", 5432)]));
        catalog.apply_slice(&mk_slice(
            "default",
            "db-1",
            "db",
            vec![mk_ep("10.244.1.5", Some("db-0"), true)],
            &[("pg", "TCP", 5432)],
        ));
        catalog.apply_service(&mk_external("default", "out", "example.org"));
        let changes = catalog.take_changes();
        writer.apply(&catalog, &changes);
        let cache = Cache::new(
            64,
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(1800),
            Arc::new(std::time::Instant::now),
        );
        Target {
            writer,
            cache,
            metrics: DnsMetrics::default(),
        }
    })
}

fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if edns {
        m.set_edns(Edns::new());
    }
    m.to_vec().unwrap()
}

/// Valid queries to mutate.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        query("web.default.svc.cluster.local.", RecordType::A, false),
        query(
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            true,
        ),
        query("db-0.db.default.svc.cluster.local.", RecordType::AAAA, true),
        query("out.default.svc.cluster.local.", RecordType::A, false),
        query("10.0.96.10.in-addr.arpa.", RecordType::PTR, false),
        query("5-1-244-10.default.pod.cluster.local.", RecordType::A, true),
        query("example.org.", RecordType::MX, true),
    ]
}

/// The request path, as UDP and TCP run it; checks what must hold of any
/// answer.
fn run(req: &[u8]) {
    let t = target();
    let snap = t.writer.snapshot();
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut out = Vec::new();
        let outcome = answer(
            &snap,
            Some(&t.cache),
            &t.metrics,
            req,
            transport,
            1232,
            &mut out,
        );
        if outcome == Outcome::Reply {
            assert!(out.len() >= HEADER_LEN, "{req:?}: a reply without a header");
            assert_eq!(
                out[..2],
                req[..2],
                "{req:?}: the reply does not keep the ID"
            );
            if transport == Transport::Udp {
                assert!(out.len() <= 1232, "{req:?}: {} bytes over UDP", out.len());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(req in proptest::collection::vec(any::<u8>(), 0..700)) {
        run(&req);
    }

    #[test]
    fn mutated_queries_never_panic(
        seed in 0..7usize,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
        tail in proptest::collection::vec(any::<u8>(), 0..24),
    ) {
        let mut req = seeds()[seed].clone();
        for (at, byte) in flips {
            let n = req.len();
            req[at % n] = byte;
        }
        if let Some(at) = cut {
            let n = req.len();
            req.truncate(at % (n + 1));
        }
        req.extend(tail);
        run(&req);
    }
}
