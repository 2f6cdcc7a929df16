#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::BlockError;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(specs: &[&str], opts: PoolOptions) -> Pool {
    Pool::parse(specs, opts).unwrap().with_seed(42)
}

/// Allocates until the family is full, returning the addresses in order.
fn drain(p: &mut Pool, family: Family) -> Vec<IpAddr> {
    let mut out = Vec::new();
    loop {
        match p.allocate(family) {
            Ok(a) => out.push(a),
            Err(AllocError::Full { family: f }) => {
                assert_eq!(f, family);
                return out;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[test]
fn parse_errors_surface_through_pool() {
    let err = Pool::parse(&["10.96.0.1/12"], PoolOptions::service_range()).unwrap_err();
    assert!(matches!(
        err,
        PoolError::Block(BlockError::HostBitsSet { .. })
    ));
    assert_eq!(
        err.to_string(),
        r#"invalid CIDR "10.96.0.1/12": host bits are set, did you mean "10.96.0.0/12"?"#
    );
    let err = Pool::parse(
        &["10.0.0.0/24", "192.168.56.70-192.168.56.60"],
        PoolOptions::lb_pool(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid address range "192.168.56.70-192.168.56.60": start is after end"#
    );
    let empty: [&str; 0] = [];
    assert_eq!(
        Pool::parse(&empty, PoolOptions::lb_pool()).unwrap_err(),
        PoolError::NoBlocks
    );
}

#[test]
fn overlapping_blocks_are_refused() {
    let err = Pool::parse(
        &["10.100.0.0/16", "192.168.0.0/24", "10.96.0.0/12"],
        PoolOptions::service_range(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        PoolError::Overlap {
            a: "10.100.0.0/16".parse().unwrap(),
            b: "10.96.0.0/12".parse().unwrap(),
        }
    );
    assert_eq!(
        err.to_string(),
        "address blocks 10.100.0.0/16 and 10.96.0.0/12 overlap"
    );
    let err = Pool::parse(
        &["192.168.56.60-192.168.56.70", "192.168.56.70"],
        PoolOptions::lb_pool(),
    )
    .unwrap_err();
    assert!(matches!(err, PoolError::Overlap { .. }));
    // Same addresses in different families do not overlap; adjacent blocks
    // do not either.
    pool(
        &["10.0.0.0/24", "10.0.1.0/24", "::a00:0/120"],
        PoolOptions::lb_pool(),
    );
}

#[test]
fn overlap_between_pools() {
    let services = pool(
        &["10.96.0.0/12", "fd00:10:96::/108"],
        PoolOptions::service_range(),
    );
    let pods = pool(
        &["10.244.0.0/16", "fd00:10:96::/112"],
        PoolOptions::lb_pool(),
    );
    assert_eq!(
        services.overlaps(&pods),
        Some((
            "fd00:10:96::/108".parse().unwrap(),
            "fd00:10:96::/112".parse().unwrap()
        ))
    );
    let lb = pool(&["192.168.56.60-192.168.56.70"], PoolOptions::lb_pool());
    assert_eq!(services.overlaps(&lb), None);
    assert_eq!(lb.overlaps(&services), None);
}

#[test]
fn range_block_has_exactly_eleven_addresses() {
    for opts in [PoolOptions::service_range(), PoolOptions::lb_pool()] {
        let mut p = pool(&["192.168.56.60-192.168.56.70"], opts);
        assert_eq!(
            p.usage(Family::V4),
            Usage {
                size: 11,
                used: 0,
                free: 11,
                reserved: 0
            }
        );
        let got: BTreeSet<IpAddr> = drain(&mut p, Family::V4).into_iter().collect();
        let want: BTreeSet<IpAddr> = (60..=70).map(|i| ip(&format!("192.168.56.{i}"))).collect();
        assert_eq!(got, want);
        assert_eq!(p.usage(Family::V4).free, 0);
    }
}

#[test]
fn network_broadcast_and_first_reserved_in_service_range() {
    let mut p = pool(&["10.0.0.0/24"], PoolOptions::service_range());
    assert_eq!(
        p.usage(Family::V4),
        Usage {
            size: 254,
            used: 0,
            free: 253,
            reserved: 1
        }
    );
    for a in ["10.0.0.0", "10.0.0.255", "10.0.0.1"] {
        assert!(p.contains(ip(a)));
        assert!(p.is_reserved(ip(a)));
        assert_eq!(
            p.allocate_ip(ip(a)),
            Err(AllocError::Reserved { ip: ip(a) })
        );
        assert!(!p.is_allocated(ip(a)));
        assert!(!p.release(ip(a)));
    }
    assert_eq!(
        AllocError::Reserved { ip: ip("10.0.0.1") }.to_string(),
        "10.0.0.1 is reserved"
    );
    // Network and broadcast stay refused even when asked explicitly.
    assert_eq!(
        p.allocate_reserved_ip(ip("10.0.0.0")),
        Err(AllocError::Reserved { ip: ip("10.0.0.0") })
    );
    assert_eq!(
        p.allocate_reserved_ip(ip("10.0.0.255")),
        Err(AllocError::Reserved {
            ip: ip("10.0.0.255")
        })
    );
    // kubernetes.default.
    p.allocate_reserved_ip(ip("10.0.0.1")).unwrap();
    assert!(p.is_allocated(ip("10.0.0.1")));
    assert_eq!(
        p.allocate_ip(ip("10.0.0.1")),
        Err(AllocError::InUse { ip: ip("10.0.0.1") })
    );
    assert_eq!(
        p.allocate_reserved_ip(ip("10.0.0.1")),
        Err(AllocError::InUse { ip: ip("10.0.0.1") })
    );
    assert_eq!(
        p.usage(Family::V4),
        Usage {
            size: 254,
            used: 1,
            free: 253,
            reserved: 0
        }
    );
    let got = drain(&mut p, Family::V4);
    assert_eq!(got.len(), 253);
    assert!(!got.contains(&ip("10.0.0.0")));
    assert!(!got.contains(&ip("10.0.0.1")));
    assert!(!got.contains(&ip("10.0.0.255")));
    assert_eq!(p.allocated().count(), 254);
    assert!(p.release(ip("10.0.0.1")));
    assert!(!p.release(ip("10.0.0.1")));
    assert_eq!(p.usage(Family::V4).reserved, 1);
    assert_eq!(
        p.allocate(Family::V4),
        Err(AllocError::Full { family: Family::V4 })
    );
}

#[test]
fn ipv6_service_range_excludes_subnet_router_anycast_only() {
    let mut p = pool(&["fd00:10:96::/124"], PoolOptions::service_range());
    // 16 addresses: ::0 excluded, ::1 reserved, no broadcast in IPv6.
    assert_eq!(
        p.usage(Family::V6),
        Usage {
            size: 15,
            used: 0,
            free: 14,
            reserved: 1
        }
    );
    assert_eq!(
        p.allocate_ip(ip("fd00:10:96::")),
        Err(AllocError::Reserved {
            ip: ip("fd00:10:96::")
        })
    );
    p.allocate_ip(ip("fd00:10:96::f")).unwrap();
    let got = drain(&mut p, Family::V6);
    assert_eq!(got.len(), 13);
}

#[test]
fn lb_pool_hands_out_network_and_broadcast() {
    let mut p = pool(&["192.168.56.0/30"], PoolOptions::lb_pool());
    assert_eq!(p.usage(Family::V4).size, 4);
    p.allocate_ip(ip("192.168.56.0")).unwrap();
    p.allocate_ip(ip("192.168.56.3")).unwrap();
    assert_eq!(drain(&mut p, Family::V4).len(), 2);
}

#[test]
fn tiny_cidrs_in_service_ranges() {
    // As in kube-apiserver: nothing allocatable in a /31 or /32.
    for (cidr, size) in [("10.0.0.0/32", 0), ("10.0.0.0/31", 0), ("10.0.0.0/30", 2)] {
        let p = pool(&[cidr], PoolOptions::service_range());
        assert_eq!(p.usage(Family::V4).size, size, "{cidr}");
    }
    let mut p = pool(&["10.0.0.0/30"], PoolOptions::service_range());
    // .1 is reserved, .2 is free.
    assert_eq!(p.allocate(Family::V4), Ok(ip("10.0.0.2")));
    let p = pool(&["fd00::/128"], PoolOptions::service_range());
    assert_eq!(p.usage(Family::V6).size, 0);
}

#[test]
fn dynamic_fills_upper_band_before_static_band() {
    // A /24 has a static band of 16: 10.0.0.1-10.0.0.16 (.1 reserved).
    let mut p = pool(&["10.0.0.0/24"], PoolOptions::service_range());
    let upper = drain_n(&mut p, 254 - 16);
    assert!(upper.iter().all(|a| a >= &ip("10.0.0.17")), "{upper:?}");
    let lower = drain(&mut p, Family::V4);
    assert_eq!(lower.len(), 15);
    assert!(
        lower
            .iter()
            .all(|a| a >= &ip("10.0.0.2") && a <= &ip("10.0.0.16"))
    );
}

fn drain_n(p: &mut Pool, n: usize) -> Vec<IpAddr> {
    (0..n).map(|_| p.allocate(Family::V4).unwrap()).collect()
}

#[test]
fn static_requests_work_in_both_bands() {
    let mut p = pool(&["10.96.0.0/12"], PoolOptions::service_range());
    p.allocate_ip(ip("10.96.0.10")).unwrap(); // static band
    p.allocate_ip(ip("10.96.1.10")).unwrap(); // dynamic band
    assert_eq!(
        p.allocate_ip(ip("10.96.0.10")),
        Err(AllocError::InUse {
            ip: ip("10.96.0.10")
        })
    );
    // Dynamic allocations avoid the static band (10.96.0.1-10.96.1.0).
    for _ in 0..2000 {
        let a = p.allocate(Family::V4).unwrap();
        assert!(a > ip("10.96.1.0"), "{a}");
    }
    assert_eq!(p.usage(Family::V4).used, 2002);
}

#[test]
fn static_band_only_for_cidrs_and_only_when_asked() {
    // A range has no static band.
    let mut p = pool(&["10.0.0.0-10.0.0.255"], PoolOptions::service_range());
    let mut seen_low = false;
    for _ in 0..128 {
        seen_low |= p.allocate(Family::V4).unwrap() <= ip("10.0.0.16");
    }
    assert!(seen_low);
    let opts = PoolOptions {
        static_band: false,
        ..PoolOptions::service_range()
    };
    let mut p = pool(&["10.0.0.0/24"], opts);
    let mut seen_low = false;
    for _ in 0..128 {
        seen_low |= p.allocate(Family::V4).unwrap() <= ip("10.0.0.16");
    }
    assert!(seen_low);
}

#[test]
fn allocate_ip_errors_and_release() {
    let mut p = pool(
        &["10.96.0.0/16", "192.168.56.60-192.168.56.70"],
        PoolOptions::service_range(),
    );
    assert_eq!(
        p.allocate_ip(ip("10.97.0.1")),
        Err(AllocError::OutOfRange {
            ip: ip("10.97.0.1")
        })
    );
    assert_eq!(
        p.allocate_ip(ip("fd00::1")),
        Err(AllocError::OutOfRange { ip: ip("fd00::1") })
    );
    assert_eq!(
        AllocError::OutOfRange {
            ip: ip("10.97.0.1")
        }
        .to_string(),
        "10.97.0.1 is not in the pool"
    );
    p.allocate_ip(ip("192.168.56.60")).unwrap();
    assert_eq!(
        p.allocate_ip(ip("192.168.56.60")).unwrap_err().to_string(),
        "192.168.56.60 is already allocated"
    );
    assert!(p.is_allocated(ip("192.168.56.60")));
    assert!(p.release(ip("192.168.56.60")));
    assert!(!p.release(ip("192.168.56.60")));
    assert!(!p.release(ip("1.2.3.4")));
    assert!(!p.is_allocated(ip("192.168.56.60")));
    p.allocate_ip(ip("192.168.56.60")).unwrap();
    assert!(!p.contains(ip("192.168.56.71")));
    assert!(p.contains(ip("10.96.255.255")));
    assert!(!p.contains(ip("10.95.255.255")));
}

#[test]
fn usage_counts() {
    let mut p = pool(&["10.96.0.0/12"], PoolOptions::service_range());
    let size = (1u128 << 20) - 2;
    assert_eq!(
        p.usage(Family::V4),
        Usage {
            size,
            used: 0,
            free: size - 1,
            reserved: 1
        }
    );
    assert_eq!(p.usage(Family::V6), Usage::default());
    for _ in 0..100 {
        p.allocate(Family::V4).unwrap();
    }
    p.allocate_ip(ip("10.96.0.5")).unwrap();
    let u = p.usage(Family::V4);
    assert_eq!((u.used, u.free), (101, size - 102));
    assert_eq!(u.size, u.used + u.free + u.reserved);
    let first = p.allocated().next().unwrap();
    assert_eq!(first, ip("10.96.0.5"));
    p.release(first);
    assert_eq!(p.usage(Family::V4).used, 100);
}

#[test]
fn avoid_buggy_ips() {
    let opts = PoolOptions {
        avoid_buggy_ips: true,
        ..PoolOptions::lb_pool()
    };
    let mut p = pool(&["192.168.0.0/23", "192.168.2.250-192.168.3.5"], opts);
    // 512 - 4 (.0 and .255 twice) + 12 - 2 (.255 and .0).
    assert_eq!(p.usage(Family::V4).size, 508 + 10);
    for a in [
        "192.168.0.0",
        "192.168.0.255",
        "192.168.1.0",
        "192.168.2.255",
        "192.168.3.0",
    ] {
        assert_eq!(
            p.allocate_ip(ip(a)),
            Err(AllocError::Reserved { ip: ip(a) })
        );
        assert_eq!(
            p.allocate_reserved_ip(ip(a)),
            Err(AllocError::Reserved { ip: ip(a) })
        );
        assert!(p.is_reserved(ip(a)));
    }
    let got = drain(&mut p, Family::V4);
    assert_eq!(got.len(), 518);
    assert!(got.iter().all(|a| match a {
        IpAddr::V4(v4) => !matches!(v4.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }));
    // IPv6 addresses are not affected.
    let p = pool(&["fd00::/120"], opts);
    assert_eq!(p.usage(Family::V6).size, 256);
}

#[test]
fn full_pool_and_missing_family() {
    let mut p = pool(&["10.0.0.0/28"], PoolOptions::service_range());
    // 16 addresses, no static band, 14 usable, 1 reserved.
    let got = drain(&mut p, Family::V4);
    assert_eq!(got.len(), 13);
    assert_eq!(
        p.allocate(Family::V4).unwrap_err().to_string(),
        "no free IPv4 address left in the pool"
    );
    assert_eq!(
        p.allocate(Family::V6),
        Err(AllocError::NoSuchFamily { family: Family::V6 })
    );
    assert_eq!(
        p.allocate(Family::V6).unwrap_err().to_string(),
        "the pool has no IPv6 addresses"
    );
    assert!(p.release(got[3]));
    assert_eq!(p.allocate(Family::V4), Ok(got[3]));
}

#[test]
fn mixed_family_pool() {
    let mut p = pool(
        &[
            "fd00:10:96::/108",
            "10.96.0.0/12",
            "192.168.56.60-192.168.56.70",
        ],
        PoolOptions::service_range(),
    );
    assert_eq!(
        p.families().collect::<Vec<_>>(),
        vec![Family::V4, Family::V6]
    );
    assert_eq!(p.blocks()[0].to_string(), "fd00:10:96::/108");
    let a4 = p.allocate(Family::V4).unwrap();
    let a6 = p.allocate(Family::V6).unwrap();
    assert_eq!(Family::of(a4), Family::V4);
    assert_eq!(Family::of(a6), Family::V6);
    assert!(p.contains(a4) && p.contains(a6));
    assert_eq!(p.allocated().collect::<Vec<_>>(), vec![a4, a6]);
    assert_eq!(p.usage(Family::V6).size, (1 << 20) - 1);
    assert_eq!(p.usage(Family::V4).size, (1 << 20) - 2 + 11);
    let only6 = pool(&["fd00::/64"], PoolOptions::lb_pool());
    assert_eq!(only6.families().collect::<Vec<_>>(), vec![Family::V6]);
}

#[test]
fn multiple_blocks_are_all_used() {
    let mut p = pool(
        &["10.0.0.0/29", "10.0.1.0/29", "10.0.2.0-10.0.2.3"],
        PoolOptions::lb_pool(),
    );
    let got: BTreeSet<IpAddr> = drain(&mut p, Family::V4).into_iter().collect();
    assert_eq!(got.len(), 20);
    assert_eq!(p.usage(Family::V4).free, 0);
}

#[test]
fn ipv6_slash64_is_sparse() {
    let mut p = pool(&["fd00::/64"], PoolOptions::lb_pool());
    assert_eq!(p.is_dense_at(ip("fd00::1")), Some(false));
    assert_eq!(p.usage(Family::V6).size, 1 << 64);
    let empty = p.heap_bytes();
    assert!(empty < 1024, "{empty}");
    let mut got = Vec::new();
    for _ in 0..1000 {
        let a = p.allocate(Family::V6).unwrap();
        assert!(p.contains(a));
        got.push(a);
    }
    let distinct: BTreeSet<IpAddr> = got.iter().copied().collect();
    assert_eq!(distinct.len(), 1000);
    assert_eq!(p.usage(Family::V6).used, 1000);
    // About 16 bytes per address, far from 2^64 bits.
    assert!(p.heap_bytes() < 64 * 1000, "{}", p.heap_bytes());
    p.allocate_ip(ip("fd00::dead:5")).unwrap();
    assert_eq!(
        p.allocate_ip(ip("fd00::dead:5")),
        Err(AllocError::InUse {
            ip: ip("fd00::dead:5")
        })
    );
    for a in &got {
        assert!(p.release(*a));
    }
    assert!(!p.release(got[0]));
    assert_eq!(p.allocated().collect::<Vec<_>>(), vec![ip("fd00::dead:5")]);
    assert_eq!(p.usage(Family::V6).used, 1);
}

#[test]
fn sparse_service_range_keeps_bands_and_reservations() {
    let mut p = pool(&["fd00::/64"], PoolOptions::service_range());
    assert_eq!(p.is_dense_at(ip("fd00::1")), Some(false));
    assert_eq!(
        p.usage(Family::V6),
        Usage {
            size: (1 << 64) - 1,
            used: 0,
            free: (1 << 64) - 2,
            reserved: 1
        }
    );
    assert_eq!(
        p.allocate_ip(ip("fd00::1")),
        Err(AllocError::Reserved { ip: ip("fd00::1") })
    );
    p.allocate_reserved_ip(ip("fd00::1")).unwrap();
    p.allocate_ip(ip("fd00::2")).unwrap();
    let a = p.allocate(Family::V6).unwrap();
    assert!(a > ip("fd00::100"));
    assert_eq!(
        p.allocated().collect::<Vec<_>>(),
        vec![ip("fd00::1"), ip("fd00::2"), a]
    );
    let snapshot = p.clone();
    let report = p.rebuild(p.allocated().map(|a| ((), a)).collect::<Vec<_>>());
    assert!(report.is_clean());
    assert_eq!(report.adopted, 3);
    assert_eq!(p, snapshot);
    assert!(p.release(ip("fd00::1")));
    assert!(!p.is_allocated(ip("fd00::1")));
    assert_eq!(p.usage(Family::V6).reserved, 1);
}

#[test]
fn large_sparse_block_falls_back_to_gap_search() {
    // A sparse (u128) block, filled in a small window by the caller: dynamic
    // allocation still finds free addresses.
    let mut p = pool(&["fd00::/32"], PoolOptions::lb_pool());
    assert_eq!(p.is_dense_at(ip("fd00::")), Some(false));
    for _ in 0..100 {
        p.allocate(Family::V6).unwrap();
    }
    assert_eq!(p.usage(Family::V6).used, 100);
    // A sparse IPv4 block (2^25 addresses) with avoid_buggy_ips.
    let opts = PoolOptions {
        avoid_buggy_ips: true,
        ..PoolOptions::lb_pool()
    };
    let mut p = pool(&["10.0.0.0/7"], opts);
    assert_eq!(p.is_dense_at(ip("10.0.0.1")), Some(false));
    assert_eq!(p.usage(Family::V4).size, (1 << 25) - 2 * (1 << 17));
    for _ in 0..1000 {
        let a = p.allocate(Family::V4).unwrap();
        let IpAddr::V4(v4) = a else { panic!() };
        assert!(!matches!(v4.octets()[3], 0 | 255));
    }
}

#[test]
fn dense_threshold() {
    let p = pool(&["10.0.0.0/8"], PoolOptions::lb_pool());
    assert_eq!(p.is_dense_at(ip("10.0.0.1")), Some(true));
    let p = pool(&["fd00::/104"], PoolOptions::lb_pool());
    assert_eq!(p.is_dense_at(ip("fd00::1")), Some(true));
    let p = pool(&["fd00::/103"], PoolOptions::lb_pool());
    assert_eq!(p.is_dense_at(ip("fd00::1")), Some(false));
}

#[test]
fn rebuild_reports_duplicates_and_out_of_range() {
    let mut p = pool(&["10.96.0.0/24", "fd00::/64"], PoolOptions::service_range());
    p.allocate_ip(ip("10.96.0.77")).unwrap();
    let report = p.rebuild(vec![
        ("default/kubernetes", ip("10.96.0.1")),
        ("a/one", ip("10.96.0.10")),
        ("b/two", ip("10.96.0.10")),
        ("a/one", ip("10.96.0.10")),
        ("c/three", ip("10.97.0.1")),
        ("d/four", ip("10.96.0.255")),
        ("e/five", ip("fd00::abcd")),
        ("f/six", ip("fd00::")),
        ("g/seven", ip("10.96.0.10")),
    ]);
    assert_eq!(report.adopted, 3);
    assert_eq!(
        report.duplicates,
        vec![
            Duplicate {
                ip: ip("10.96.0.10"),
                holder: "a/one",
                claimant: "b/two"
            },
            Duplicate {
                ip: ip("10.96.0.10"),
                holder: "a/one",
                claimant: "g/seven"
            }
        ]
    );
    assert_eq!(report.out_of_range, vec![("c/three", ip("10.97.0.1"))]);
    assert_eq!(
        report.unusable,
        vec![("d/four", ip("10.96.0.255")), ("f/six", ip("fd00::"))]
    );
    assert!(!report.is_clean());
    // The earlier allocation is gone: rebuild starts from scratch.
    assert!(!p.is_allocated(ip("10.96.0.77")));
    assert!(p.is_allocated(ip("10.96.0.1")));
    assert!(p.is_allocated(ip("10.96.0.10")));
    assert!(p.is_allocated(ip("fd00::abcd")));
    assert_eq!(p.usage(Family::V4).used, 2);
    assert_eq!(p.usage(Family::V4).reserved, 0);
}

#[test]
fn full_slash12_fits_in_256_kib() {
    let mut p = pool(&["10.96.0.0/12"], PoolOptions::service_range());
    let before = p.heap_bytes();
    let n = p.usage(Family::V4).free;
    for _ in 0..n {
        p.allocate(Family::V4).unwrap();
    }
    p.allocate_reserved_ip(ip("10.96.0.1")).unwrap();
    assert_eq!(
        p.allocate(Family::V4),
        Err(AllocError::Full { family: Family::V4 })
    );
    let u = p.usage(Family::V4);
    assert_eq!((u.used, u.free, u.reserved), (u.size, 0, 0));
    assert_eq!(p.heap_bytes(), before);
    assert!(p.heap_bytes() <= 256 * 1024, "{}", p.heap_bytes());
}

#[test]
fn seeds_make_allocation_reproducible() {
    let run = |seed| {
        let mut p = pool(&["10.96.0.0/12"], PoolOptions::service_range()).with_seed(seed);
        (0..10)
            .map(|_| p.allocate(Family::V4).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    let mut p = pool(&["10.96.0.0/12"], PoolOptions::service_range());
    p.set_seed(7);
    assert_eq!(p.allocate(Family::V4).unwrap(), run(7)[0]);
}

#[test]
fn debug_is_short() {
    let p = pool(&["10.96.0.0/12"], PoolOptions::service_range());
    let s = format!("{p:?}");
    assert!(s.len() < 400, "{s}");
    assert!(s.contains("10.96.0.0/12"));
}

#[test]
fn whole_address_space_blocks_do_not_overflow() {
    for opts in [PoolOptions::service_range(), PoolOptions::lb_pool()] {
        let mut p = pool(&["::/0", "0.0.0.0/0"], opts);
        let u = p.usage(Family::V6);
        assert_eq!(u.size, u.used + u.free + u.reserved);
        assert!(u.size >= u128::MAX - 1);
        assert_eq!(
            p.usage(Family::V4).size + 2 * u128::from(opts.reserve_network_broadcast),
            1 << 32
        );
        for _ in 0..100 {
            p.allocate(Family::V6).unwrap();
            p.allocate(Family::V4).unwrap();
        }
        p.allocate_ip(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"))
            .unwrap();
        assert_eq!(p.usage(Family::V6).used, 101);
        assert_eq!(p.allocated().count(), 201);
    }
}

#[test]
fn lb_pools_hand_out_the_lowest_free_address_first() {
    let mut pool = Pool::parse(
        &["192.168.56.60-192.168.56.70", "192.168.57.0/30"],
        PoolOptions::lb_pool(),
    )
    .unwrap();
    let v4 = |s: &str| -> IpAddr { s.parse().unwrap() };
    assert_eq!(pool.allocate(Family::V4).unwrap(), v4("192.168.56.60"));
    assert_eq!(pool.allocate(Family::V4).unwrap(), v4("192.168.56.61"));
    pool.allocate_ip(v4("192.168.56.62")).unwrap();
    assert_eq!(pool.allocate(Family::V4).unwrap(), v4("192.168.56.63"));
    assert!(pool.release(v4("192.168.56.60")));
    assert_eq!(
        pool.allocate(Family::V4).unwrap(),
        v4("192.168.56.60"),
        "a released address is the first again"
    );
    for _ in 64..=70 {
        pool.allocate(Family::V4).unwrap();
    }
    // The next block, from its network address: LB pools reserve nothing.
    assert_eq!(pool.allocate(Family::V4).unwrap(), v4("192.168.57.0"));

    let mut v6 = Pool::parse(&["fd00:56::/64"], PoolOptions::lb_pool()).unwrap();
    assert_eq!(
        v6.allocate(Family::V6).unwrap(),
        "fd00:56::".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        v6.allocate(Family::V6).unwrap(),
        "fd00:56::1".parse::<IpAddr>().unwrap()
    );

    let mut buggy = Pool::parse(
        &["192.168.56.255-192.168.57.1"],
        PoolOptions {
            avoid_buggy_ips: true,
            ..PoolOptions::lb_pool()
        },
    )
    .unwrap();
    assert_eq!(
        buggy.allocate(Family::V4).unwrap(),
        v4("192.168.57.1"),
        ".255 and .0 are skipped"
    );
}
