//! Allocation benchmarks: allocate + release pairs on a /12 at 0 %, 50 % and
//! 99 % full, and on a sparse IPv6 /64 holding 1M addresses. Each iteration
//! allocates one address and releases it, so the fill level stays constant.
//!
//! Before the timings, prints the memory of a fully allocated /12 and of 1M
//! allocations in a /64 ([`Pool::heap_bytes`], and the growth of the
//! process's resident memory as a cross-check).
//!
//! ```text
//! cargo bench -p portico-ipam -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portico_ipam::{Family, Pool, PoolOptions};

const SLASH12: &str = "10.96.0.0/12";
const SLASH64: &str = "fd00::/64";
const SPARSE_COUNT: usize = 1_000_000;

fn pool(spec: &str, opts: PoolOptions) -> Pool {
    match Pool::parse(&[spec], opts) {
        Ok(p) => p.with_seed(0x5eed),
        Err(e) => panic!("{spec}: {e}"),
    }
}

/// Fills a pool to `count` dynamically allocated addresses.
fn fill(pool: &mut Pool, family: Family, count: u128) {
    for _ in 0..count {
        if let Err(e) = pool.allocate(family) {
            panic!("filling: {e}");
        }
    }
}

/// A /12 service range with `percent` % of its free addresses allocated.
fn slash12(percent: u128) -> Pool {
    let mut p = pool(SLASH12, PoolOptions::service_range());
    let free = p.usage(Family::V4).free;
    fill(&mut p, Family::V4, free * percent / 100);
    p
}

fn sparse_slash64() -> Pool {
    let mut p = pool(SLASH64, PoolOptions::service_range());
    fill(&mut p, Family::V6, SPARSE_COUNT as u128);
    p
}

/// Resident memory of the process, in bytes (Linux only).
fn rss() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn kib(bytes: usize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn report_memory() {
    let rss0 = rss();
    let mut full = pool(SLASH12, PoolOptions::service_range());
    let free = full.usage(Family::V4).free;
    fill(&mut full, Family::V4, free);
    let rss1 = rss();
    let u = full.usage(Family::V4);
    eprintln!(
        "memory: full /12 ({} of {} addresses used): heap_bytes = {} ({} bytes); RSS growth = {}",
        u.used,
        u.size,
        kib(full.heap_bytes()),
        full.heap_bytes(),
        rss0.zip(rss1)
            .map_or("n/a".into(), |(a, b)| kib(b.saturating_sub(a))),
    );
    drop(full);

    let rss0 = rss();
    let sparse = sparse_slash64();
    let rss1 = rss();
    eprintln!(
        "memory: /64 with {} allocations: heap_bytes = {} ({:.1} bytes/address); RSS growth = {}",
        sparse.usage(Family::V6).used,
        kib(sparse.heap_bytes()),
        sparse.heap_bytes() as f64 / SPARSE_COUNT as f64,
        rss0.zip(rss1)
            .map_or("n/a".into(), |(a, b)| kib(b.saturating_sub(a))),
    );
}

fn alloc_release(c: &mut Criterion) {
    report_memory();

    let mut group = c.benchmark_group("ipam/alloc_release");
    group.throughput(Throughput::Elements(1));
    for percent in [0, 50, 99] {
        let mut p = slash12(percent);
        group.bench_function(format!("v4_slash12_{percent}pct"), |b| {
            b.iter(|| {
                let ip = match p.allocate(Family::V4) {
                    Ok(ip) => ip,
                    Err(e) => panic!("{e}"),
                };
                black_box(p.release(black_box(ip)))
            })
        });
    }
    let mut p = sparse_slash64();
    group.bench_function("v6_slash64_sparse_1M", |b| {
        b.iter(|| {
            let ip = match p.allocate(Family::V6) {
                Ok(ip) => ip,
                Err(e) => panic!("{e}"),
            };
            black_box(p.release(black_box(ip)))
        })
    });
    group.finish();
}

criterion_group!(benches, alloc_release);
criterion_main!(benches);
