//! L2 announcement end to end, in the lab of `support/l2lab.rs`: the
//! client resolves the LoadBalancer address and connects to the Service;
//! when the announcing node's Node turns NotReady, or its agent is killed
//! (gossip notices) or stops (it says goodbye), another node answers and
//! the client's connections resume. Needs root; runs for real when
//! `PORTICO_REQUIRE_ROOT_TESTS=1`. How fast is `benches/failover.rs`'s
//! business (`make bench`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/l2lab.rs"]
mod lab;

use lab::*;
use std::time::{Duration, Instant};

#[test]
fn a_node_turning_not_ready_hands_its_address_to_another_and_connections_resume() {
    let Some(mut lab) = Lab::new(false) else {
        return;
    };
    for n in NODES {
        lab.start(n);
    }
    let (first, _) = lab
        .owner(None, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("nobody announces\n{}", lab.logs()));
    // Exactly one node answers, again and again.
    for _ in 0..3 {
        assert_eq!(lab.ask(Duration::from_millis(200)), [first.clone()].into());
    }
    lab.connects_through(&first, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("no connection through {first}: {e}\n{}", lab.logs()));

    std::fs::write(lab.manifest_path(), manifest(&[first.as_str()])).unwrap();
    let (second, took) = lab
        .owner(Some(&first), DEADLINE)
        .unwrap_or_else(|| panic!("no takeover within {DEADLINE:?}\n{}", lab.logs()));
    assert_ne!(second, first);
    eprintln!("{first} NotReady: {second} answers after {took:?}");
    lab.connects_through(&second, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("no connection through {second}: {e}\n{}", lab.logs()));
    assert_eq!(lab.ask(Duration::from_millis(200)), [second].into());
}

#[test]
fn a_killed_agent_is_noticed_by_gossip_and_another_node_answers() {
    let Some(mut lab) = Lab::new(true) else {
        return;
    };
    for n in NODES {
        lab.start(n);
    }
    let (first, second, took) = one_kill(&mut lab);
    eprintln!("{first} killed: {second} answers after {took:?}");
    lab.connects_through(&second, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("no connection through {second}: {e}\n{}", lab.logs()));
    // The dead node's address does not come back to it while it is dead.
    assert_eq!(lab.ask(Duration::from_millis(300)), [second].into());
}

#[test]
fn an_agent_that_stops_in_order_hands_its_address_over_with_its_goodbye() {
    let Some(mut lab) = Lab::new(true) else {
        return;
    };
    // A silent agent would be suspected for a minute: within the deadline,
    // only the goodbye can move the address.
    lab.patient = true;
    for n in NODES {
        lab.start(n);
    }
    let first = lab.settled_owner();
    let t0 = Instant::now();
    lab.terminate(&first);
    let (second, _) = lab
        .owner(Some(&first), DEADLINE)
        .unwrap_or_else(|| panic!("no takeover after {first} stopped\n{}", lab.logs()));
    eprintln!(
        "{first} stopped: {second} answers {:?} after SIGTERM",
        t0.elapsed()
    );
}
