//! Fault survival at the controller's cluster edge: the API server fails
//! writes (409, 429, 500, no answer), cuts a watch in the middle of an
//! event, the Lease is lost in the middle of a write burst, and two
//! replicas lead at once. Each time: every LoadBalancer Service ends with
//! one address, no address is held twice, the failed write is sent again
//! once (no hot loop), and the metrics say what happened. Time is tokio's
//! paused clock; what a test prints (requests, time to converge) is what
//! docs/reliability.md reports.
#![allow(clippy::unwrap_used)]

mod support;

use http::Method;
use portico_controllers::reconcilers::{RETRY_DELAY, WriteFailure};
use portico_testkit::{MockApi, RETRY_AFTER_SECONDS};
use std::time::Duration;
use support::*;
use tokio::time::Instant;

/// Waits until every LoadBalancer Service holds one address; the (paused)
/// time it took.
async fn until_converged(api: &MockApi, since: Instant) -> std::time::Duration {
    api.wait_for("every LoadBalancer Service to hold an address", |_| {
        converged(api)
    })
    .await;
    since.elapsed()
}

fn failures(c: &Controller, reason: &'static str) -> u64 {
    c.metrics
        .write_failures
        .get_or_create(&WriteFailure { reason })
        .get()
}

#[tokio::test(start_paused = true)]
async fn a_status_write_the_api_server_fails_is_sent_again_once_and_lands() {
    for (code, reason) in [(409, "conflict"), (429, "throttled"), (500, "server")] {
        let started = Instant::now();
        let mut c = start(load_balancers(3), true);
        c.api
            .fail_next(Method::PATCH, "/services/lb-1/status", code);
        c.synced().await;
        // Not sent again before the pause is over: 1 s, or the 3 s a 429
        // asks for.
        let pause = if code == 429 {
            Duration::from_secs(RETRY_AFTER_SECONDS.into())
        } else {
            RETRY_DELAY
        };
        tokio::time::sleep_until(started + pause - Duration::from_millis(100)).await;
        assert_eq!(status_writes(&c.api, "lb-1"), 1, "{code}: not yet again");
        let took = until_converged(&c.api, started).await;
        c.a_minute_later().await;
        assert_eq!(
            status_writes(&c.api, "lb-1"),
            2,
            "{code}: one failure, one retry"
        );
        assert_eq!(status_writes(&c.api, "lb-0"), 1, "{code}");
        assert_eq!(duplicates(&c.api), 0, "{code}: {:?}", ingress(&c.api));
        assert_eq!(failures(&c, reason), 1, "{code}");
        assert_eq!(c.metrics.write_retries.get(), 1, "{code}");
        eprintln!(
            "{code}: {} requests, {} writes, converged after {took:?}",
            c.api.log().len(),
            c.api.writes().len()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_the_api_server_never_answers_times_out_and_is_sent_again() {
    let started = Instant::now();
    let mut c = start(load_balancers(3), true);
    c.api.hang_next(Method::PATCH, "/services/lb-1/status");
    c.synced().await;
    let took = until_converged(&c.api, started).await;
    c.a_minute_later().await;
    // The hung write was given up (a timeout, counted below) and sent again.
    assert_eq!(status_writes(&c.api, "lb-1"), 2);
    assert_eq!(duplicates(&c.api), 0);
    assert_eq!(failures(&c, "timeout"), 1);
    eprintln!(
        "no answer: {} requests, {} writes, converged after {took:?}",
        c.api.log().len(),
        c.api.writes().len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_watch_cut_in_the_middle_of_an_event_is_watched_again() {
    let mut c = start(load_balancers(2), true);
    c.synced().await;
    c.a_minute_later().await;
    let watches = |api: &MockApi| {
        api.log()
            .iter()
            .filter(|l| l.path == "/api/v1/services" && l.is_watch())
            .count()
    };
    let before = watches(&c.api);
    c.api.cut_watches("/api/v1/services");
    // A Service made after the cut still gets its address.
    let started = Instant::now();
    c.api.put(lb_named("lb-9", 9));
    let took = until_converged(&c.api, started).await;
    c.a_minute_later().await;
    assert!(watches(&c.api) > before, "watched again");
    assert_eq!(status_writes(&c.api, "lb-9"), 1);
    assert_eq!(duplicates(&c.api), 0);
    eprintln!("watch cut: converged {took:?} after the next Service");
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_in_a_write_burst_stops_the_burst_and_the_next_leader_finishes_it() {
    let mut c = start(load_balancers(10), true);
    // The third status write hangs, and the Lease is lost while it does.
    let lease = c.leader.clone();
    c.api
        .hang_next_then(Method::PATCH, "/services/lb-2/status", move || {
            lease.send_replace(false);
        });
    c.synced().await;
    c.a_minute_later().await;
    // Nothing was written after the hung write: the burst stopped there.
    let writes = c.api.writes();
    let hung = writes
        .iter()
        .position(|w| w.path.ends_with("/lb-2/status"))
        .unwrap();
    assert_eq!(writes.len(), hung + 1, "{:#?}", &writes[hung..]);
    let held = ingress(&c.api)
        .iter()
        .filter(|(_, ips)| !ips.is_empty())
        .count();
    assert!(held < 10, "{:?}", ingress(&c.api));
    // Leading again, the replica finishes what it left.
    let started = Instant::now();
    c.leader.send(true).unwrap();
    let took = until_converged(&c.api, started).await;
    assert_eq!(duplicates(&c.api), 0, "{:?}", ingress(&c.api));
    eprintln!("lease lost: converged {took:?} after leading again");
}

#[tokio::test(start_paused = true)]
async fn two_replicas_that_both_lead_give_no_address_twice() {
    let (api, client) = MockApi::start(load_balancers(10));
    let started = Instant::now();
    let mut a = start_on(api.clone(), client.clone(), true);
    let mut b = start_on(api.clone(), client, true);
    a.synced().await;
    b.synced().await;
    let took = until_converged(&api, started).await;
    a.a_minute_later().await;
    assert_eq!(duplicates(&api), 0, "{:?}", ingress(&api));
    let per_service: Vec<usize> = (0..10)
        .map(|i| status_writes(&api, &format!("lb-{i}")))
        .collect();
    // Each replica writes each status once (the same apply), no more.
    assert!(
        per_service.iter().all(|n| (1..=2).contains(n)),
        "{per_service:?}"
    );
    eprintln!(
        "two leaders: {} status writes for 10 Services, converged after {took:?}",
        per_service.iter().sum::<usize>()
    );
}

/// The node agent's writer (`write_in_order`): a write the API server
/// never answers is given up after `WRITE_TIMEOUT` and sent again; a 429
/// waits what the server asks for; the writes after them wait their turn.
#[tokio::test(start_paused = true)]
async fn the_node_agents_writer_times_out_a_hung_write_and_waits_what_a_429_asks() {
    use portico_controllers::driver::WRITE_TIMEOUT;
    use portico_controllers::write::{Apply, Target, TargetKind, Write};
    use portico_controllers::{ApiWriter, write_in_order};
    let (api, client) = MockApi::start(load_balancers(2));
    let status = |name: &str| {
        Write::Apply(Apply {
            target: Target {
                kind: TargetKind::Service,
                namespace: "shop".into(),
                name: name.into(),
            },
            status: true,
            patch: serde_json::json!({ "apiVersion": "v1", "kind": "Service",
                "status": { "loadBalancer": { "ingress": [{ "ip": format!("192.168.56.6{}", &name[3..]) }] } } }),
        })
    };
    api.hang_next(Method::PATCH, "/services/lb-0/status");
    api.fail_next(Method::PATCH, "/services/lb-1/status", 429);
    let (queue, writes) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let writer = tokio::spawn(write_in_order(
        ApiWriter::for_node(client, "n1"),
        writes,
        Duration::from_millis(500),
    ));
    queue.send(status("lb-0")).unwrap();
    queue.send(status("lb-1")).unwrap();
    drop(queue);
    // Just before the timeout, only the hung write was sent.
    tokio::time::sleep_until(started + WRITE_TIMEOUT - Duration::from_millis(100)).await;
    assert_eq!(api.writes().len(), 1);
    // Then the hung write is sent again after 0.5 s, and lb-1's first
    // write is refused with a 429; it is not sent again before the 3 s the
    // server asked for.
    let refused = started + WRITE_TIMEOUT + Duration::from_millis(500);
    let asked = Duration::from_secs(RETRY_AFTER_SECONDS.into());
    tokio::time::sleep_until(refused + asked - Duration::from_millis(100)).await;
    assert_eq!(api.writes().len(), 3, "the 429's pause is not over");
    writer.await.unwrap();
    let took = started.elapsed();
    let order: Vec<String> = api.writes().iter().map(|w| w.path.clone()).collect();
    assert_eq!(
        order,
        [
            "/api/v1/namespaces/shop/services/lb-0/status",
            "/api/v1/namespaces/shop/services/lb-0/status",
            "/api/v1/namespaces/shop/services/lb-1/status",
            "/api/v1/namespaces/shop/services/lb-1/status",
        ]
    );
    assert_eq!(duplicates(&api), 0);
    eprintln!("node writer: {} writes, done after {took:?}", order.len());
}
