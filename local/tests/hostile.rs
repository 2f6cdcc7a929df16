//! Hostile manifests: mutated valid manifests and arbitrary text go
//! through the loader and the reconcilers to a fixpoint, and nothing
//! panics: what cannot be used is a diagnostic (or the reconcile says
//! why it stopped). `PORTICO_FUZZ_CASES` sets how many cases run.
#![allow(clippy::unwrap_used)]

use portico_controllers::NetworkConfig;
use portico_local::load;
use proptest::prelude::*;
use std::path::Path;

fn cases() -> u32 {
    std::env::var("PORTICO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(48, |n: u32| (n / 8).max(1))
}

/// The lab of the examples: every kind the loader reads.
const LAB: &str = include_str!("../../examples/lab.yaml");

fn run(text: &str) {
    let manifests = load::parse(Path::new("fuzz.yaml"), text);
    let net = NetworkConfig::parse("10.96.0.0/12,fd96::/108", "10.244.0.0/16,fd44::/48").unwrap();
    // Settled, or stopped with a reason: both are fine; a panic is not.
    let _ = portico_local::reconcile_once(manifests, &net);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = LAB.as_bytes().to_vec();
        for (at, byte) in flips {
            let n = bytes.len();
            // Printable bytes and newlines: the mutations stay YAML-ish.
            const PICK: &[u8] = b" \n:-[]{}0123456789abcdefgxyz.,/'\"#&*!|>";
            bytes[at % n] = PICK[byte as usize % PICK.len()];
        }
        if let Some(at) = cut {
            let n = bytes.len();
            bytes.truncate(at % (n + 1));
        }
        run(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        run(&text);
    }
}
