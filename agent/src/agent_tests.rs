#![allow(clippy::unwrap_used)]
use super::*;
use portico_controllers::TargetKind;
use portico_crds::{IPPoolSpec, L2AnnouncementSpec};
use portico_dataplane::names::Family;
use portico_dataplane::{MemoryNft, RecordingConntrack};
use portico_testkit::objects;

type Agent = NodeAgent<MemoryNft, RecordingConntrack>;

fn net() -> NetworkConfig {
    NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap()
}

const PACING: Pacing = Pacing {
    min_sync_period: Duration::from_secs(1),
    sync_period: Some(Duration::from_secs(3600)),
};

fn agent(l2: Option<L2Agent>) -> Agent {
    NodeAgent::new(
        "n1",
        &net(),
        &Settings::default(),
        (MemoryNft::new(), RecordingConntrack::default()),
        PACING,
        l2,
        Instant::now(),
    )
    .unwrap()
}

fn node(name: &str, address: &str) -> Node {
    objects::node(name)
        .address("InternalIP", address)
        .ready(true)
        .build()
}

fn service(type_: &str) -> Service {
    let svc = objects::service("default", "web")
        .uid("6b1c1e1e-0000-4000-8000-000000000001")
        .cluster_ip("10.96.0.10")
        .type_(type_)
        .port(80, "TCP")
        .node_port(30080);
    if type_ == "LoadBalancer" {
        svc.ingress("192.168.56.60").build()
    } else {
        svc.build()
    }
}

fn slice(n: usize) -> EndpointSlice {
    (0..n)
        .fold(
            objects::slice("default", "web-1", "web").port(8080),
            |s, i| s.endpoint(&format!("10.244.{}.2", i + 1), None, None),
        )
        .build()
}

fn elements(a: &Agent, set: &str) -> Vec<String> {
    a.proxier()
        .backend()
        .elements(Family::Ipv4, set)
        .unwrap()
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k} : {v}"),
            None => k.clone(),
        })
        .collect()
}

#[test]
fn changes_become_rules_and_the_nodes_address_the_nodeport_addresses() {
    let mut a = agent(None);
    let t0 = Instant::now();
    a.on(
        Change::Services(Event::Reset(vec![Arc::new(service("NodePort"))])),
        t0,
    )
    .unwrap();
    a.on(Change::Slices(Event::Reset(vec![Arc::new(slice(1))])), t0)
        .unwrap();
    assert!(
        !a.synced() && a.due(t0).is_none(),
        "no sync before the Nodes are listed"
    );
    assert!(a.health(t0).is_err(), "no sync yet");
    a.on(
        Change::Nodes(Event::Reset(vec![Arc::new(node("n1", "192.168.56.31"))])),
        t0,
    )
    .unwrap();
    assert_eq!(a.due(t0), Some(t0));
    assert_eq!(a.sync(t0).unwrap().kind, SyncKind::Full);
    assert!(a.health(t0).is_ok());
    assert_eq!(
        a.due(t0),
        Some(t0 + Duration::from_secs(3600)),
        "only the periodic full sync"
    );
    assert_eq!(elements(&a, "nodeport-ips"), vec!["192.168.56.31"]);
    assert_eq!(
        elements(&a, "service-ips"),
        vec!["10.96.0.10 . tcp . 80 : goto pick-1"]
    );

    let t1 = t0 + Duration::from_secs(1);
    a.on(Change::Slices(Event::Apply(Arc::new(slice(2)))), t1)
        .unwrap();
    assert_eq!(a.sync(t1).unwrap().kind, SyncKind::Partial);
    assert_eq!(
        elements(&a, "service-nodeports"),
        vec!["tcp . 30080 : goto nodeport-pick-masq-2"]
    );

    // New node address: a full sync.
    let t2 = t1 + Duration::from_secs(1);
    a.on(
        Change::Nodes(Event::Apply(Arc::new(node("n1", "192.168.56.41")))),
        t2,
    )
    .unwrap();
    assert_eq!(a.sync(t2).unwrap().kind, SyncKind::Full);
    assert_eq!(elements(&a, "nodeport-ips"), vec!["192.168.56.41"]);

    let t3 = t2 + Duration::from_secs(1);
    a.on(
        Change::Services(Event::Delete(Arc::new(service("NodePort")))),
        t3,
    )
    .unwrap();
    assert_eq!(a.sync(t3).unwrap().kind, SyncKind::Partial);
    assert!(elements(&a, "service-ips").is_empty());
    // The periodic full sync comes an hour after the first, and is full.
    let later = t0 + Duration::from_secs(3600);
    assert_eq!(a.due(t3), Some(later));
    assert_eq!(a.sync(later).unwrap().kind, SyncKind::Full);
}

#[test]
fn a_failed_sync_makes_the_next_one_full_after_a_growing_pause() {
    let mut a = agent(None);
    let t0 = Instant::now();
    a.on(
        Change::Services(Event::Reset(vec![Arc::new(service("ClusterIP"))])),
        t0,
    )
    .unwrap();
    a.on(Change::Slices(Event::Reset(vec![Arc::new(slice(1))])), t0)
        .unwrap();
    a.on(
        Change::Nodes(Event::Reset(vec![Arc::new(node("n1", "192.168.56.31"))])),
        t0,
    )
    .unwrap();
    a.sync(t0).unwrap();
    a.on(Change::Slices(Event::Apply(Arc::new(slice(2)))), t0)
        .unwrap();
    let t1 = t0 + Duration::from_secs(1);
    a.proxier.backend_mut().fail_next("injected");
    let (kind, _) = a.sync(t1).unwrap_err();
    assert_eq!(kind, SyncKind::Partial);
    assert_eq!(a.failures(), 1);
    assert_eq!(a.due(t1), Some(t1 + a.pause()), "retried after a pause");
    let t2 = t1 + a.pause();
    assert_eq!(a.sync(t2).unwrap().kind, SyncKind::Full);
    assert_eq!(a.failures(), 0);
}

fn lab_link() -> Vec<portico_dataplane::l2::Link> {
    vec![portico_dataplane::l2::Link {
        name: "lab0".into(),
        mac: [2, 0, 0, 0, 0, 31],
        networks: vec!["192.168.56.31/24".parse().unwrap()],
        usable: true,
    }]
}

/// A responder that answers nothing: no raw socket is needed.
fn quiet(
    link: &portico_dataplane::l2::Link,
    _: Duration,
) -> std::io::Result<portico_dataplane::l2::Responder> {
    portico_dataplane::l2::Responder::inert(link)
}

fn lab(a: &mut Agent, nodes: Vec<Node>, t: Instant) {
    let pool = IPPool::new(
        "lab",
        IPPoolSpec {
            addresses: vec!["192.168.56.60-192.168.56.70".into()],
            ..Default::default()
        },
    );
    let announcement = L2Announcement::new("lab", L2AnnouncementSpec::default());
    for c in [
        Change::Services(Event::Reset(vec![Arc::new(service("LoadBalancer"))])),
        Change::Slices(Event::Reset(vec![Arc::new(slice(1))])),
        Change::Nodes(Event::Reset(nodes.into_iter().map(Arc::new).collect())),
        Change::Pools(Event::Reset(vec![Arc::new(pool)])),
        Change::Announcements(Event::Reset(vec![Arc::new(announcement)])),
    ] {
        a.on(c, t).unwrap();
    }
}

#[test]
fn the_node_that_takes_an_address_over_says_so_once_and_the_writer_writes_the_status() {
    let l2 = L2Agent::new("n1", Duration::from_secs(60)).with_io(lab_link, quiet);
    let mut a = agent(Some(l2));
    let t0 = Instant::now();
    lab(&mut a, vec![node("n1", "192.168.56.31")], t0);
    a.sync(t0).unwrap();
    let announced = a.announce(t0);
    assert_eq!(announced.takeovers.len(), 1, "{announced:?}");
    assert!(announced.writes_statuses, "n1 is the only live node");
    let writes = announced.into_writes();
    let what: Vec<String> = writes
        .iter()
        .map(|w| match w {
            Write::Apply(a) => format!("{:?} {}", a.target.kind, a.target.name),
            Write::Event(e) => format!("Event {}: {}", e.reason, e.note),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        what,
        [
            "L2Announcement lab",
            "Event L2Announcing: 192.168.56.60 announced by n1 (was none)",
            "Service web",
        ]
    );
    let Write::Apply(annotation) = &writes[2] else {
        unreachable!()
    };
    assert_eq!(annotation.target.kind, TargetKind::Service);
    assert_eq!(
        annotation.patch["metadata"]["annotations"]["portico.dev/announced-by"],
        "n1"
    );
    assert_eq!(a.announced(), ["192.168.56.60 (default/web)"]);
    // Nothing changed: nothing more to say.
    assert!(a.announce(t0).into_writes().is_empty());
    // The gossip hears of nobody else: the plan is the same.
    a.set_live(Some(BTreeSet::from(["n1".to_owned()])));
    let again = a.announce(t0);
    assert!(
        again.takeovers.is_empty() && again.writes.is_empty(),
        "{again:?}"
    );
}

#[test]
fn liveness_is_ready_and_gossip_alive_for_the_plan_and_the_status_writer_alike() {
    let l2 = L2Agent::new("n2", Duration::from_secs(60)).with_io(lab_link, quiet);
    let mut a = NodeAgent::new(
        "n2",
        &net(),
        &Settings::default(),
        (MemoryNft::new(), RecordingConntrack::default()),
        PACING,
        Some(l2),
        Instant::now(),
    )
    .unwrap();
    let t0 = Instant::now();
    lab(
        &mut a,
        vec![node("n1", "192.168.56.31"), node("n2", "192.168.56.32")],
        t0,
    );
    a.sync(t0).unwrap();
    // The gossip settles first: nothing is announced before.
    a.settle(t0 + Duration::from_secs(1));
    assert_eq!(a.next_wakeup(t0), Some(t0 + Duration::from_secs(1)));
    assert!(a.announce(t0).takeovers.is_empty());
    // n1's agent is alive in the gossip: n1 writes the statuses.
    let t1 = t0 + Duration::from_secs(1);
    a.set_live(Some(BTreeSet::from(["n1".to_owned(), "n2".to_owned()])));
    let with_n1 = a.announce(t1);
    assert!(!with_n1.writes_statuses);
    // n1's agent is gone though its Node is Ready: n2 writes, and any
    // address n1 held is n2's now.
    a.set_live(Some(BTreeSet::from(["n2".to_owned()])));
    let alone = a.announce(t1);
    assert!(alone.writes_statuses);
    assert_eq!(a.announced(), ["192.168.56.60 (default/web)"]);
    let peers = a.take_peers(7946).unwrap();
    assert_eq!(peers, ["192.168.56.31:7946".parse().unwrap()]);
    assert_eq!(a.take_peers(7946), None, "told once");
    assert_eq!(a.own_address(), Some("192.168.56.32".parse().unwrap()));
}
