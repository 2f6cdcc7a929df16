//! Property tests: the pool against a reference model.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use portico_ipam::{AllocError, Family, Pool, PoolOptions};
use proptest::prelude::*;

/// Small pools of various shapes: dense and sparse, CIDRs and ranges, one
/// or two families.
const SHAPES: &[&[&str]] = &[
    &["10.0.0.0/26"],
    &["10.0.0.0/24"],
    &["192.168.56.60-192.168.56.70", "192.168.56.100/30"],
    &["10.0.0.0/28", "fd00::/124"],
    &["10.0.0.250-10.0.1.5"],
    &["fd00::/120", "fd00:1::5"],
];

fn options() -> impl Strategy<Value = PoolOptions> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(n, s, f, b, l)| PoolOptions {
            reserve_network_broadcast: n,
            static_band: s,
            reserve_first: f,
            avoid_buggy_ips: b,
            lowest_first: l,
        })
}

fn build(shape: usize, opts: PoolOptions, seed: u64) -> Pool {
    Pool::parse(SHAPES[shape], opts).unwrap().with_seed(seed)
}

/// Every address of the pool's blocks.
fn all_addresses(pool: &Pool) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for b in pool.blocks() {
        let mut a = b.first();
        loop {
            out.push(a);
            if a == b.last() {
                break;
            }
            a = match a {
                IpAddr::V4(v) => IpAddr::V4((u32::from(v) + 1).into()),
                IpAddr::V6(v) => IpAddr::V6((u128::from(v) + 1).into()),
            };
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Allocate(Family),
    /// Index into the pool's addresses plus a few outside it.
    AllocateIp(usize),
    AllocateReserved(usize),
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop_oneof![Just(Family::V4), Just(Family::V6)].prop_map(Op::Allocate),
        2 => any::<usize>().prop_map(Op::AllocateIp),
        1 => any::<usize>().prop_map(Op::AllocateReserved),
        2 => any::<usize>().prop_map(Op::Release),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random operations agree with a BTreeSet model, and an address is
    /// never handed out twice.
    #[test]
    fn agrees_with_reference_model(
        shape in 0..SHAPES.len(),
        opts in options(),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let mut pool = build(shape, opts, seed);
        let mut candidates = all_addresses(&pool);
        candidates.push("10.200.0.1".parse().unwrap());
        candidates.push("fd99::1".parse().unwrap());
        // Which addresses dynamic allocation may return, per the pool itself.
        let dynamic: BTreeSet<IpAddr> = candidates
            .iter()
            .copied()
            .filter(|&a| pool.contains(a) && !pool.is_reserved(a))
            .collect();
        let mut model: BTreeSet<IpAddr> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Allocate(family) => {
                    let free = dynamic
                        .iter()
                        .filter(|a| Family::of(**a) == family && !model.contains(*a))
                        .count();
                    match pool.allocate(family) {
                        Ok(a) => {
                            prop_assert!(dynamic.contains(&a), "{a} is not allocatable");
                            prop_assert!(model.insert(a), "{a} handed out twice");
                        }
                        Err(AllocError::Full { .. }) => prop_assert_eq!(free, 0),
                        Err(AllocError::NoSuchFamily { .. }) => {
                            prop_assert!(pool.families().all(|f| f != family));
                        }
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                }
                Op::AllocateIp(i) | Op::AllocateReserved(i) => {
                    let a = candidates[i % candidates.len()];
                    let explicit = matches!(op, Op::AllocateReserved(_));
                    let res = if explicit {
                        pool.allocate_reserved_ip(a)
                    } else {
                        pool.allocate_ip(a)
                    };
                    if !pool.contains(a) {
                        prop_assert_eq!(res, Err(AllocError::OutOfRange { ip: a }));
                    } else if model.contains(&a) {
                        prop_assert_eq!(res, Err(AllocError::InUse { ip: a }));
                    } else if dynamic.contains(&a) {
                        prop_assert_eq!(res, Ok(()));
                        model.insert(a);
                    } else if res.is_ok() {
                        // Only the reserved first address, and only explicitly.
                        prop_assert!(explicit);
                        model.insert(a);
                    } else {
                        prop_assert_eq!(res, Err(AllocError::Reserved { ip: a }));
                    }
                }
                Op::Release(i) => {
                    let a = candidates[i % candidates.len()];
                    prop_assert_eq!(pool.release(a), model.remove(&a));
                }
            }
            for family in [Family::V4, Family::V6] {
                let u = pool.usage(family);
                prop_assert_eq!(u.size, u.used + u.free + u.reserved);
                let used = model.iter().filter(|a| Family::of(**a) == family).count();
                prop_assert_eq!(u.used, used as u128);
            }
        }
        prop_assert_eq!(pool.allocated().collect::<BTreeSet<_>>(), model.clone());
        for a in &candidates {
            prop_assert_eq!(pool.is_allocated(*a), model.contains(a));
        }
    }

    /// Rebuilding from `allocated()` gives back the same state.
    #[test]
    fn rebuild_from_allocated_is_identity(
        shape in 0..SHAPES.len(),
        opts in options(),
        seed in any::<u64>(),
        allocations in 0usize..100,
        releases in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        take_reserved in any::<bool>(),
    ) {
        let mut pool = build(shape, opts, seed);
        let mut got = Vec::new();
        for _ in 0..allocations {
            for family in [Family::V4, Family::V6] {
                if let Ok(a) = pool.allocate(family) {
                    got.push(a);
                }
            }
        }
        for r in releases {
            if !got.is_empty() {
                pool.release(got[r.index(got.len())]);
            }
        }
        if take_reserved {
            for b in pool.blocks().to_vec() {
                if let Some(net) = b.cidr() {
                    let second = match net.network() {
                        IpAddr::V4(v) => IpAddr::V4((u32::from(v).wrapping_add(1)).into()),
                        IpAddr::V6(v) => IpAddr::V6((u128::from(v).wrapping_add(1)).into()),
                    };
                    let _ = pool.allocate_reserved_ip(second);
                }
            }
        }
        let observed: Vec<(String, IpAddr)> =
            pool.allocated().map(|a| (a.to_string(), a)).collect();
        let mut rebuilt = build(shape, opts, seed ^ 1);
        rebuilt.allocate(Family::V4).ok();
        let report = rebuilt.rebuild(observed.clone());
        prop_assert!(report.is_clean(), "{:?}", report);
        prop_assert_eq!(report.adopted, observed.len());
        prop_assert_eq!(&rebuilt, &pool);
    }

    /// Allocating until full returns exactly `free` distinct addresses
    /// (`size` when nothing is reserved), then `Full`.
    #[test]
    fn allocating_until_full_returns_size_addresses(
        shape in 0..SHAPES.len(),
        opts in options(),
        seed in any::<u64>(),
    ) {
        let mut pool = build(shape, opts, seed);
        for family in pool.families().collect::<Vec<_>>() {
            let before = pool.usage(family);
            let mut seen = BTreeSet::new();
            loop {
                match pool.allocate(family) {
                    Ok(a) => prop_assert!(seen.insert(a), "{a} twice"),
                    Err(e) => {
                        prop_assert_eq!(e, AllocError::Full { family });
                        break;
                    }
                }
            }
            prop_assert_eq!(seen.len() as u128, before.free);
            prop_assert_eq!(before.size, before.free + before.reserved);
            if !opts.reserve_first {
                prop_assert_eq!(seen.len() as u128, before.size);
            }
            let after = pool.usage(family);
            prop_assert_eq!(after.free, 0);
            prop_assert_eq!(pool.allocate(family), Err(AllocError::Full { family }));
        }
    }
}

#[test]
fn lb_pool_drains_to_exactly_size() {
    let mut pool = Pool::parse(&["192.168.56.0/28", "fd00::/124"], PoolOptions::lb_pool())
        .unwrap()
        .with_seed(3);
    for family in [Family::V4, Family::V6] {
        let size = pool.usage(family).size;
        let got: BTreeSet<IpAddr> = std::iter::from_fn(|| pool.allocate(family).ok()).collect();
        assert_eq!(got.len() as u128, size);
        assert_eq!(size, 16);
    }
}
