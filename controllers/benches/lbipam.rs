//! Scale benchmark of LoadBalancer IPAM.
//!
//! `cargo bench -p portico-controllers --bench lbipam` (what `make bench`
//! runs): 10,000 `type: LoadBalancer` Services over 10 IPPools of 1,024
//! addresses each, on one thread:
//! 1. initial assignment: one flush that assigns every Service and writes
//!    its status, Event and the pools' statuses;
//! 2. re-adoption after a restart: a fresh index fed the same Services with
//!    the addresses in their statuses; one flush that must keep every
//!    address and write no Service status.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it checks the
//! same at 500 Services.

use k8s_openapi::DeepMerge;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_controllers::lbipam::{Config, LbIpamController};
use portico_controllers::metrics::LbIpamMetrics;
use portico_controllers::{NetworkConfig, TargetKind, Write};
use portico_crds::{IPPool, IPPoolSpec};
use std::time::Instant;

const POOLS: usize = 10;

fn pool(i: usize) -> IPPool {
    IPPool::new(
        &format!("pool-{i}"),
        IPPoolSpec {
            addresses: vec![format!("172.{}.{}.0/22", 16 + i / 64, (i % 64) * 4)],
            priority: i as i32,
            ..Default::default()
        },
    )
}

fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(format!("ns-{}", i % 50)),
            name: Some(format!("lb-{i}")),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ip_families: Some(vec!["IPv4".into()]),
            ports: Some(vec![ServicePort {
                port: 443,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn controller() -> LbIpamController {
    let net = NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").expect("networks");
    LbIpamController::new(Config::default(), &net, LbIpamMetrics::default())
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = if bench { 10_000 } else { 500 };
    let pools: Vec<IPPool> = (0..POOLS).map(pool).collect();
    let mut services: Vec<Service> = (0..n).map(service).collect();

    let mut ctrl = controller();
    ctrl.reset_pools(pools.iter());
    ctrl.reset_namespaces(std::iter::empty());
    ctrl.reset_services(services.iter());
    let started = Instant::now();
    let writes = ctrl.flush();
    let assign = started.elapsed();
    let statuses: Vec<&Write> = writes
        .iter()
        .filter(|w| matches!(w, Write::Apply(a) if a.target.kind == TargetKind::Service))
        .collect();
    assert_eq!(statuses.len(), n, "every Service gets its status");
    assert_eq!(ctrl.assignments().count(), n);

    // What the API would now hold: the statuses written.
    for (svc, w) in services.iter_mut().zip(&statuses) {
        if let Write::Apply(a) = w {
            let patch: Service = serde_json::from_value(a.patch.clone()).expect("patch");
            svc.merge_from(patch);
        }
    }
    let mut fresh = controller();
    fresh.reset_pools(pools.iter());
    fresh.reset_namespaces(std::iter::empty());
    fresh.reset_services(services.iter());
    let started = Instant::now();
    let writes = fresh.flush();
    let adopt = started.elapsed();
    let rewritten = writes
        .iter()
        .filter(|w| matches!(w, Write::Apply(a) if a.target.kind == TargetKind::Service))
        .count();
    assert_eq!(rewritten, 0, "a restart rewrites no Service");
    assert_eq!(fresh.assignments().count(), n);
    println!(
        "{n} LoadBalancer Services over {POOLS} pools: initial assignment {:.1} ms ({:.1} us per Service), \
         re-adoption after a restart {:.1} ms ({:.1} us per Service), 0 Service writes on re-adoption",
        assign.as_secs_f64() * 1e3,
        assign.as_secs_f64() * 1e6 / n as f64,
        adopt.as_secs_f64() * 1e3,
        adopt.as_secs_f64() * 1e6 / n as f64,
    );
}
