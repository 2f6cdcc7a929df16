//! A DNS server on a generated cluster for benchmarks (`scripts/bench-dns.sh`).
//!
//! The cluster: 10,000 ClusterIP Services (port `http`), 1,000 headless
//! Services with 3 ready endpoints each (hostnames `pod-0..2`), spread over
//! 100 namespaces, and 100,000 pods. It can also write the same zone as a
//! zone file (for NSD) and a dnsperf query file: 80 % A for existing names
//! (one in ten of them headless), 10 % SRV, 10 % names that do not exist.
//!
//! ```sh
//! bench_server --listen 127.0.0.1:5300 [--zone-file F] [--queries F] [--no-serve]
//! ```

#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::{Pod, PodIP, PodStatus, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_catalog::Catalog;
use portico_dns::{Dns, DnsConfig};
use std::fmt::Write as _;
use std::net::SocketAddr;

const SERVICES: usize = 10_000;
const HEADLESS: usize = 1_000;
const ENDPOINTS: usize = 3;
const NAMESPACES: usize = 100;
const PODS: usize = 100_000;

fn pods() -> usize {
    std::env::var("BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PODS)
}
const QUERIES: usize = 100_000;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn ns(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

fn cluster_ip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

fn endpoint_ip(h: usize, e: usize) -> String {
    let n = h * ENDPOINTS + e;
    format!("10.244.{}.{}", 200 + n / 250, n % 250 + 1)
}

fn port() -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        protocol: Some("TCP".into()),
        port: 80,
        ..Default::default()
    }
}

fn catalog() -> Catalog {
    let mut c = Catalog::new();
    for i in 0..SERVICES {
        c.apply_service(&Service {
            metadata: meta(&ns(i), &format!("svc-{i}")),
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip(i)),
                ports: Some(vec![port()]),
                ..Default::default()
            }),
            status: None,
        });
    }
    for h in 0..HEADLESS {
        let name = format!("hl-{h}");
        c.apply_service(&Service {
            metadata: meta(&ns(h), &name),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                ports: Some(vec![port()]),
                ..Default::default()
            }),
            status: None,
        });
        let mut m = meta(&ns(h), &format!("{name}-abcde"));
        m.labels = Some([("kubernetes.io/service-name".to_owned(), name.clone())].into());
        c.apply_slice(&EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints: (0..ENDPOINTS)
                .map(|e| Endpoint {
                    addresses: vec![endpoint_ip(h, e)],
                    hostname: Some(format!("pod-{e}")),
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        });
    }
    // As a watch's first list arrives: one pod at a time.
    c.begin_pod_relist();
    for p in 0..pods() {
        c.apply_pod(&Pod {
            metadata: meta(&ns(p), &format!("pod-{p}-7d9f8c6b5-x2k4q")),
            spec: None,
            status: Some(PodStatus {
                pod_ips: Some(vec![PodIP {
                    ip: format!(
                        "10.{}.{}.{}",
                        100 + p / 62_500,
                        (p / 250) % 250,
                        p % 250 + 1
                    ),
                }]),
                phase: Some("Running".into()),
                ..Default::default()
            }),
        });
    }
    c.finish_pod_relist();
    c.take_changes();
    c
}

/// The same zone as a zone file.
fn zone_file() -> String {
    let mut z = String::new();
    z.push_str("$ORIGIN cluster.local.\n$TTL 5\n");
    z.push_str("@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n");
    z.push_str("@ IN NS ns.dns.cluster.local.\n");
    z.push_str("ns.dns IN A 127.0.0.1\n");
    z.push_str("dns-version IN TXT \"1.1.0\"\n");
    for i in 0..SERVICES {
        let n = format!("svc-{i}.{}.svc", ns(i));
        writeln!(z, "{n} IN A {}", cluster_ip(i)).unwrap();
        writeln!(z, "_http._tcp.{n} IN SRV 0 100 80 {n}.cluster.local.").unwrap();
    }
    for h in 0..HEADLESS {
        let n = format!("hl-{h}.{}.svc", ns(h));
        for e in 0..ENDPOINTS {
            writeln!(z, "{n} IN A {}", endpoint_ip(h, e)).unwrap();
            writeln!(z, "pod-{e}.{n} IN A {}", endpoint_ip(h, e)).unwrap();
            writeln!(
                z,
                "_http._tcp.{n} IN SRV 0 33 8080 pod-{e}.{n}.cluster.local."
            )
            .unwrap();
        }
    }
    z
}

/// dnsperf queries: 80 % A (one in ten headless), 10 % SRV, 10 % NXDOMAIN.
fn queries() -> String {
    let mut q = String::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for k in 0..QUERIES {
        match k % 10 {
            0 => {
                let i = next(SERVICES);
                writeln!(q, "_http._tcp.svc-{i}.{}.svc.cluster.local SRV", ns(i)).unwrap();
            }
            1 => {
                let i = next(SERVICES);
                writeln!(q, "nope-{i}.{}.svc.cluster.local A", ns(i)).unwrap();
            }
            2 => {
                let h = next(HEADLESS);
                writeln!(q, "hl-{h}.{}.svc.cluster.local A", ns(h)).unwrap();
            }
            _ => {
                let i = next(SERVICES);
                writeln!(q, "svc-{i}.{}.svc.cluster.local A", ns(i)).unwrap();
            }
        }
    }
    q
}

/// Times single-Service changes as a watch delivers them: change one
/// Service's ClusterIP, apply, publish a snapshot; then put it back.
fn incremental_updates(dns: &Dns, catalog: &mut Catalog) {
    const N: usize = 2000;
    let started = std::time::Instant::now();
    for k in 0..N {
        let i = (k * 7919) % SERVICES;
        let ip = if k % 2 == 0 {
            "10.99.0.1".to_owned()
        } else {
            cluster_ip(i)
        };
        catalog.apply_service(&Service {
            metadata: meta(&ns(i), &format!("svc-{i}")),
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip),
                ports: Some(vec![port()]),
                ..Default::default()
            }),
            status: None,
        });
        let changes = catalog.take_changes();
        dns.apply(catalog, &changes);
    }
    eprintln!(
        "bench_server: {N} single-Service updates (catalog + index + snapshot) took {:?} each",
        started.elapsed() / N as u32
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let mut serve = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap().parse().unwrap(),
            "--zone-file" => std::fs::write(args.next().unwrap(), zone_file()).unwrap(),
            "--queries" => std::fs::write(args.next().unwrap(), queries()).unwrap(),
            "--no-serve" => serve = false,
            other => panic!("unknown argument {other}"),
        }
    }
    if !serve {
        return;
    }
    let started = std::time::Instant::now();
    eprintln!("bench_server: rss at start {} KiB", rss_kib());
    let catalog = catalog();
    eprintln!("bench_server: rss with the catalog {} KiB", rss_kib());
    let dns = Dns::new(DnsConfig {
        listen,
        cache_size: 1000,
        ..DnsConfig::default()
    })
    .unwrap();
    dns.reset(&catalog);
    dns.mark_synced();
    eprintln!(
        "bench_server: {} services, {} pods, zone built in {:?}, rss {} KiB",
        catalog.service_count(),
        catalog.pod_count(),
        started.elapsed(),
        rss_kib()
    );
    let mut catalog = catalog;
    incremental_updates(&dns, &mut catalog);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let server = dns.serve(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        eprintln!("bench_server: listening on {listen}");
        server.await.unwrap();
    });
    drop(catalog);
}
