//! Failover time of L2 announcement: in the L2 lab (three agents with
//! gossip), the announcing agent is killed 20 times; prints the median and
//! maximum time until another node answers ARP for the address. The
//! target is under 3 s. Needs root (`make bench` runs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/l2lab.rs"]
mod lab;

use lab::*;

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`:
    // the benchmark (20 kills) is for `cargo bench` alone.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("failover: a benchmark; `cargo bench -p portico --bench failover` runs it");
        return;
    }
    let Some(mut lab) = Lab::new(true) else {
        return;
    };
    for n in NODES {
        lab.start(n);
    }
    let mut times = Vec::new();
    for i in 0..20 {
        let (first, second, took) = one_kill(&mut lab);
        eprintln!(
            "kill {:2}: {first} -> {second} in {} ms",
            i + 1,
            took.as_millis()
        );
        times.push(took);
        lab.start(&first);
    }
    times.sort();
    let median = (times[9] + times[10]) / 2;
    let max = times[19];
    println!(
        "failover over 20 kills: median {} ms, max {} ms (min {} ms)",
        median.as_millis(),
        max.as_millis(),
        times[0].as_millis()
    );
}
