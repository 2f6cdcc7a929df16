//! Scale benchmark of the EndpointSlice controller.
//!
//! `cargo bench --bench endpointslices` (what `make bench` runs):
//! 1. initial sync: 10,000 Services x 10 pods (100,000 pods) through
//!    `portico local`'s reconcile (ClusterIP allocation, EndpointSlices,
//!    the in-memory stores), on one thread: wall time and the process's peak
//!    resident memory;
//! 2. one pod change at that scale: the compute time of `apply_pod` +
//!    `flush` in the controller, which must yield exactly one slice write.
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it checks the
//! same at 100 Services, quickly.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Node, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_controllers::NetworkConfig;
use portico_controllers::endpointslices::{Config, EndpointSliceController};
use portico_controllers::metrics::EndpointSliceMetrics;
use portico_controllers::{Object, Write};
use portico_local::stored::StoredPod;
use portico_local::{load::Manifests, reconcile_once};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PODS_PER_SERVICE: usize = 10;

fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(format!("svc-{i}")),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), format!("app-{i}"))].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(svc: usize, j: usize, ready: bool) -> Pod {
    let n = svc * PODS_PER_SERVICE + j;
    let ip = format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256);
    Pod {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(format!("svc-{svc}-pod-{j}")),
            labels: Some([("app".to_owned(), format!("app-{svc}"))].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(format!("node-{}", n % 100)),
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn node(i: usize) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(format!("node-{i}")),
            labels: Some(
                [(
                    "topology.kubernetes.io/zone".to_owned(),
                    format!("zone-{}", i % 3),
                )]
                .into(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn manifests(services: usize) -> Manifests {
    Manifests {
        nodes: (0..100).map(node).collect(),
        services: (0..services).map(service).collect(),
        pods: (0..services)
            .flat_map(|s| (0..PODS_PER_SERVICE).map(move |j| pod(s, j, true)))
            .map(|p| StoredPod::new(p).expect("a pod serializes"))
            .collect(),
        ..Default::default()
    }
}

/// Peak and current resident memory of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn initial_sync(services: usize) {
    let net = NetworkConfig::parse("10.96.0.0/12", "10.128.0.0/9").expect("valid networks");
    let m = manifests(services);
    let (_, before) = memory_kib();
    let started = Instant::now();
    let world = reconcile_once(m, &net).expect("reconcile");
    let took = started.elapsed();
    let (peak, after) = memory_kib();
    let slices = world.endpoint_slices.store.state();
    let endpoints: usize = slices.iter().map(|s| s.endpoints.len()).sum();
    assert_eq!(endpoints, services * PODS_PER_SERVICE);
    assert_eq!(slices.len(), services);
    println!(
        "initial sync, {services} Services x {PODS_PER_SERVICE} pods: {:.2} s; {} slices, {endpoints} endpoints; \
         resident memory {:.0} MiB before (objects built), {:.0} MiB after, peak {:.0} MiB",
        took.as_secs_f64(),
        slices.len(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0,
    );
}

/// One pod change at scale: the time from the event to the single write.
fn one_change(services: usize, changes: usize) {
    let cfg = Config {
        batch_period: Duration::ZERO,
        ..Config::default()
    };
    let mut ctrl = EndpointSliceController::new(cfg, EndpointSliceMetrics::default());
    let now = Instant::now();
    let svcs: Vec<Service> = (0..services).map(service).collect();
    let pods: Vec<Pod> = (0..services)
        .flat_map(|s| (0..PODS_PER_SERVICE).map(move |j| pod(s, j, true)))
        .collect();
    ctrl.reset_services(svcs.iter(), now);
    ctrl.reset_pods(pods.iter(), now);
    ctrl.reset_nodes((0..100).map(node).collect::<Vec<_>>().iter(), now);
    ctrl.reset_slices(std::iter::empty(), now);
    // Carry out the initial creates as the API would.
    for (n, w) in ctrl.flush(now).into_iter().enumerate() {
        if let Write::Create(Object::EndpointSlice(s)) = w {
            let mut s = std::sync::Arc::unwrap_or_clone(s);
            s.metadata.name = Some(format!(
                "{}{n:05}",
                s.metadata.generate_name.clone().unwrap_or_default()
            ));
            s.metadata.resource_version = Some(n.to_string());
            ctrl.apply_slice(Arc::new(s), now);
        }
    }
    assert!(ctrl.flush(now).is_empty());

    let mut times = Vec::with_capacity(changes);
    for k in 0..changes {
        let svc = (k * 7919) % services;
        // 7919 is prime to the Service count: every change hits another Service.
        let changed = pod(svc, k % PODS_PER_SERVICE, false);
        let started = Instant::now();
        ctrl.apply_pod(&changed, now);
        let writes = ctrl.flush(now);
        times.push(started.elapsed());
        assert_eq!(writes.len(), 1, "one pod change, one slice write");
        if let Some(Write::Replace(Object::EndpointSlice(s))) = writes.first() {
            let mut s = (**s).clone();
            s.metadata.resource_version = Some(format!("u{k}"));
            ctrl.apply_slice(Arc::new(s), now);
            ctrl.flush(now);
        }
    }
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    println!(
        "one pod change at {services} Services x {PODS_PER_SERVICE} pods ({changes} changes): \
         median {:?}, p99 {:?}, max {:?} of compute to the single slice write",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

/// The cluster path: after the relist, Services arrive one watch event at
/// a time. Each event goes through the three reconcilers as `portico
/// controller` feeds them (ClusterIP audit, EndpointSlices with a flush,
/// LoadBalancer IPAM with a flush). The cost of an event must not grow
/// with the number of Services already known.
fn watch_events(services: usize) -> Duration {
    let net = NetworkConfig::parse("10.96.0.0/12", "10.128.0.0/9").expect("valid networks");
    let mut clusterip = portico_controllers::clusterip::ClusterIpController::new(
        &net,
        portico_controllers::clusterip::Mode::Audit,
        Default::default(),
    )
    .expect("index");
    let cfg = Config {
        batch_period: Duration::ZERO,
        ..Config::default()
    };
    let mut slices = EndpointSliceController::new(cfg, EndpointSliceMetrics::default());
    let mut lb = portico_controllers::lbipam::LbIpamController::new(
        Default::default(),
        &net,
        Default::default(),
    );
    let now = Instant::now();
    clusterip.reset(std::iter::empty());
    slices.reset_services(std::iter::empty::<&Service>(), now);
    slices.reset_pods(std::iter::empty::<&Pod>(), now);
    slices.reset_nodes((0..100).map(node).collect::<Vec<_>>().iter(), now);
    slices.reset_slices(std::iter::empty(), now);
    lb.reset_pools(std::iter::empty());
    lb.reset_namespaces(std::iter::empty());
    lb.reset_services(std::iter::empty());
    let svcs: Vec<Arc<Service>> = (0..services)
        .map(|i| {
            let mut s = service(i);
            let ip = format!(
                "10.{}.{}.{}",
                96 + (i + 2) / 65536,
                ((i + 2) / 256) % 256,
                (i + 2) % 256
            );
            if let Some(spec) = s.spec.as_mut() {
                spec.cluster_ip = Some(ip.clone());
                spec.cluster_ips = Some(vec![ip]);
            }
            Arc::new(s)
        })
        .collect();
    let started = Instant::now();
    let mut writes = 0;
    for svc in &svcs {
        writes += clusterip.apply(svc).len();
        slices.apply_service(svc, now);
        writes += slices.flush(now).len();
        lb.apply_service(svc);
        writes += lb.flush().len();
    }
    let took = started.elapsed();
    assert_eq!(writes, services, "one (empty) slice created per Service");
    println!(
        "watch events at {services} Services: {:.2} s, {:.1} us per Service event",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / services as f64
    );
    took
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (services, changes) = if bench { (10_000, 1_000) } else { (100, 20) };
    initial_sync(services);
    one_change(services, changes);
    let (small, large) = if bench { (5_000, 50_000) } else { (100, 1_000) };
    let a = watch_events(small);
    let b = watch_events(large);
    println!(
        "watch events: {large} / {small} Services cost {:.1}x ({}x the events)",
        b.as_secs_f64() / a.as_secs_f64(),
        large / small
    );
}
