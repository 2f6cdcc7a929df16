//! Scale benchmark of the node dataplane, with the real `nft` in network
//! namespaces of its own (root only):
//!
//! - full sync (render + apply) of 1,000, 10,000 and 50,000 Services with
//!   10 endpoints each, into an empty table and over the installed one;
//! - partial sync after one endpoint change, with its transaction size;
//! - first-packet latency: TCP connect time through a ClusterIP with 10
//!   Services installed and with 50,000.
//!
//! `cargo bench -p portico-dataplane --bench dataplane` (`make bench`).
//! `PORTICO_BENCH_SIZES=1000,10000` picks the sizes. Run without `--bench`
//! (as `cargo test --all-targets` does) it checks the same path on 200
//! Services, quickly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_catalog::Catalog;
use portico_dataplane::backend::netlink::Netlink;
use portico_dataplane::model::{Existing, Model, StaticSets};
use portico_dataplane::names::Family;
use portico_dataplane::{Backend, ConntrackTool, Nft, Proxier, SyncKind};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::lab::{Lab, in_netns};
use support::*;

const ENDPOINTS: usize = 10;

fn bench_slice(i: usize, endpoints: usize) -> EndpointSlice {
    bulk_slice("bench", i, endpoints, ENDPOINTS)
}

/// `n` Services with 10 endpoints each.
fn bench_catalog(n: usize) -> Catalog {
    let mut c = Catalog::new();
    for i in 0..n {
        c.apply_service(&bulk_service("bench", i).0);
        c.apply_slice(&bench_slice(i, ENDPOINTS));
    }
    c.take_changes();
    c
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn cpu_time() -> Duration {
    // utime + stime of this process and its waited-for children (nft).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14-17 (1-based) are utime, stime, cutime, cstime; `after`
    // starts at field 3.
    let ticks: u64 = f[11] + f[12] + f[13] + f[14];
    Duration::from_millis(ticks * 10)
}

/// Runs in a thread inside the lab's node namespace, so `nft` runs
/// there directly, as in `portico node`.
fn full_and_partial(n: usize) {
    // The same run, through each backend, each in a namespace of its own.
    for backend in ["nft", "netlink"] {
        let lab = Lab::new(0);
        let node = lab.node.clone();
        in_netns(&node, move || match backend {
            "nft" => measure(n, backend, Nft::new()),
            _ => measure(n, backend, Netlink::new().unwrap()),
        });
        drop(lab);
    }
}

fn measure<B: Backend>(n: usize, backend: &str, kernel: B) {
    let mut catalog = bench_catalog(n);

    // Rendering alone (pure).
    let start = Instant::now();
    let mut model = Model::build(&config(), &catalog);
    let existing: BTreeMap<Family, Existing> = BTreeMap::new();
    let tx = model.full_transaction(&config(), &existing, StaticSets::Keep);
    let script = tx.to_string();
    let render = start.elapsed();

    let mut p = Proxier::new(config(), kernel, ConntrackTool::new());
    let cpu = cpu_time();
    let first = p.full_sync(&catalog).unwrap();
    let first_cpu = cpu_time() - cpu;
    let cpu = cpu_time();
    let again = p.full_sync(&catalog).unwrap();
    let again_cpu = cpu_time() - cpu;
    assert_eq!(first.kind, SyncKind::Full);
    println!(
        "{backend:<8} full sync   {n:>6} Services x {ENDPOINTS}: render {} ({} ops, {:.1} MB script); \
         into an empty table {} (CPU {}), over the installed one {} (CPU {}); \
         {} chains, {} elements",
        ms(render),
        tx.len(),
        script.len() as f64 / 1e6,
        ms(first.duration),
        ms(first_cpu),
        ms(again.duration),
        ms(again_cpu),
        again.chains,
        again.elements
    );

    // One endpoint goes and comes back, alternately, on Services spread
    // over the catalog.
    partials(
        &mut p,
        &mut catalog,
        backend,
        "one endpoint removed or added",
        |i| [bench_slice(i, ENDPOINTS - 1), bench_slice(i, ENDPOINTS)],
    );
    // One endpoint moves to another address, the count staying: the
    // Service's verdict-map element stays, only its slot elements change.
    partials(
        &mut p,
        &mut catalog,
        backend,
        "one endpoint moved, the count the same",
        |i| {
            let mut moved = bench_slice(i, ENDPOINTS);
            moved.endpoints[ENDPOINTS - 1].addresses =
                vec![format!("10.250.{}.{}", (i >> 8) & 255, i & 255)];
            [moved, bench_slice(i, ENDPOINTS)]
        },
    );
}

/// Partial syncs of 10 Services spread over the catalog, each changed to
/// `slices(i)` one after the other; the median and max durations.
fn partials<B: Backend>(
    p: &mut Proxier<B, ConntrackTool>,
    catalog: &mut Catalog,
    backend: &str,
    what: &str,
    slices: impl Fn(usize) -> [EndpointSlice; 2],
) {
    let n = catalog.service_count();
    let mut durations = Vec::new();
    let mut ops = Vec::new();
    for round in 0..10 {
        let i = (round * 7919 + 17) % n;
        for slice in slices(i) {
            catalog.apply_slice(&slice);
            let changes = catalog.take_changes();
            let r = p.sync(catalog, &changes).unwrap();
            assert_eq!(r.kind, SyncKind::Partial);
            durations.push(r.duration);
            ops.push(r.operations);
        }
    }
    ops.sort();
    ops.dedup();
    println!(
        "{backend:<8} partial     {n:>6} Services: {what}: median {}, max {}; \
         transaction sizes {ops:?} operations",
        ms(median(durations.clone())),
        ms(*durations.iter().max().unwrap()),
    );
}

fn connect_times(lab: &Lab, dst: &str, n: usize) -> Vec<Duration> {
    let dst: SocketAddr = dst.parse().unwrap();
    in_netns(&lab.client, move || {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let s = TcpStream::connect_timeout(&dst, Duration::from_secs(2)).unwrap();
            times.push(start.elapsed());
            drop(s);
            std::thread::sleep(Duration::from_micros(200));
        }
        times
    })
}

/// Two labs side by side, one with 10 Services and one with `big`, each
/// with a real Service to one pod; connect times are taken in alternating
/// batches so that load elsewhere on the machine hits both alike.
fn first_packet_latency(big: usize, rounds: usize) {
    let real = |c: &mut Catalog| {
        c.apply_service(
            &svc("bench", "real", "10.96.255.200")
                .port("http", "TCP", 80)
                .0,
        );
        c.apply_slice(&slice(
            "bench",
            "real-1",
            "real",
            &[("http", "TCP", 8080)],
            &[ep("10.244.1.2")],
        ));
    };
    let mut labs = Vec::new();
    for n in [10, big] {
        let mut lab = Lab::new(1);
        lab.serve(1, 8080);
        let mut c = bench_catalog(n - 1);
        real(&mut c);
        let mut p: Proxier<Nft, ConntrackTool> =
            Proxier::new(config(), lab.nft(), ConntrackTool::in_netns(&lab.node));
        p.full_sync(&c).unwrap();
        labs.push((n, lab));
    }
    // Let the kernel finish freeing what the syncs replaced, and warm up.
    std::thread::sleep(Duration::from_secs(if rounds > 2 { 2 } else { 0 }));
    for (_, lab) in &labs {
        connect_times(lab, "10.96.255.200:80", 300);
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, (_, lab)) in labs.iter().enumerate() {
            times[i].extend(connect_times(lab, "10.96.255.200:80", 100));
        }
    }
    let mut medians = Vec::new();
    for ((n, _), t) in labs.iter().zip(&times) {
        let (med, p10, p90) = (
            median(t.clone()),
            percentile(t.clone(), 0.1),
            percentile(t.clone(), 0.9),
        );
        println!(
            "first packet {n:>6} Services: connect time median {:.1} µs (p10 {:.1} µs, p90 {:.1} µs, {} connections)",
            med.as_secs_f64() * 1e6,
            p10.as_secs_f64() * 1e6,
            p90.as_secs_f64() * 1e6,
            t.len()
        );
        medians.push((med, p10));
    }
    println!(
        "first packet ratio {big} / 10 Services: median {:.3}, p10 {:.3}",
        medians[1].0.as_secs_f64() / medians[0].0.as_secs_f64(),
        medians[1].1.as_secs_f64() / medians[0].1.as_secs_f64()
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !root_or_skip("dataplane benchmark") {
        return;
    }
    let default = if bench {
        vec![1_000, 10_000, 50_000]
    } else {
        vec![200]
    };
    let sizes: Vec<usize> = std::env::var("PORTICO_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or(default);
    for &n in &sizes {
        full_and_partial(n);
    }
    let big = sizes.iter().copied().max().unwrap_or(50_000).max(11);
    first_packet_latency(big, if bench { 20 } else { 2 });
}
