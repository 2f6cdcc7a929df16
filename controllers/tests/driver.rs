//! `portico controller`'s cluster edge against an in-memory API server,
//! through the real client and kube-runtime's watchers: list/watch events
//! in, the exact requests out, including relists, failed writes and the
//! leader's write gating. Time is tokio's paused clock.
#![allow(clippy::unwrap_used)]

mod support;

use http::Method;
use portico_testkit::Logged;
use serde_json::{Value, json};
use support::*;

/// A request's method and path.
fn summary(l: &Logged) -> (Method, String) {
    (l.method.clone(), l.path.clone())
}

#[tokio::test(start_paused = true)]
async fn the_leader_writes_slices_and_load_balancer_statuses_once() {
    let mut c = start(world(), true);
    c.synced().await;
    c.a_minute_later().await;
    let writes = c.api.writes();
    let paths: Vec<(Method, String)> = writes.iter().map(summary).collect();
    assert_eq!(
        paths,
        [
            (
                Method::POST,
                "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices".to_owned()
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/shop/services/front/status".to_owned()
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/shop/events".to_owned()
            ),
            (
                Method::PATCH,
                "/apis/portico.dev/v1alpha1/ippools/lab/status".to_owned()
            ),
        ],
        "{writes:#?}"
    );
    let slice = writes[0].body.as_ref().unwrap();
    assert_eq!(slice["metadata"]["generateName"], "web-");
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice.portico.dev"
    );
    assert_eq!(slice["endpoints"][0]["addresses"], json!(["10.244.1.5"]));
    assert_eq!(slice["endpoints"][0]["zone"], "z1");
    assert_eq!(slice["ports"][0]["port"], 8080);
    let status = writes[1].body.as_ref().unwrap();
    assert_eq!(
        status["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.168.56.60"
    );
    let event = writes[2].body.as_ref().unwrap();
    assert_eq!(
        (
            &event["reason"],
            &event["type"],
            &event["regarding"]["name"]
        ),
        (&json!("IPAllocated"), &json!("Normal"), &json!("front"))
    );
    for w in [&writes[1], &writes[3]] {
        assert_eq!(w.param("fieldManager"), Some("portico"));
        assert_eq!(w.param("force"), Some("true"));
    }
    // The slice came back through the watch; nothing is written again.
    assert_eq!(c.api.objects(SLICES).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_does_not_lead_writes_nothing_until_it_leads() {
    let mut c = start(world(), false);
    c.synced().await;
    c.a_minute_later().await;
    assert_eq!(c.api.writes(), [], "a follower only watches");
    c.leader.send(true).unwrap();
    c.api
        .wait_for("the new leader's writes", |log| {
            log.iter().filter(|l| l.is_write()).count() >= 4
        })
        .await;
    c.a_minute_later().await;
    assert_eq!(c.api.writes().len(), 4, "{:#?}", c.api.writes());
    assert_eq!(c.api.objects(SLICES).len(), 1);

    // The Lease is lost: a pod change is computed but not written.
    c.leader.send(false).unwrap();
    c.a_minute_later().await;
    c.api.put(pod("web-2", "10.244.1.6", true));
    c.a_minute_later().await;
    assert_eq!(c.api.writes().len(), 4, "{:#?}", c.api.writes());
    // Leading again: the slice catches up, once.
    c.leader.send(true).unwrap();
    c.api
        .wait_for("the slice update", |log| {
            log.iter().filter(|l| l.is_write()).count() >= 5
        })
        .await;
    c.a_minute_later().await;
    let writes = c.api.writes();
    assert_eq!(writes.len(), 5, "{writes:#?}");
    assert_eq!(writes[4].method, Method::PUT);
    let slice = &c.api.objects(SLICES)[0];
    assert_eq!(slice["endpoints"].as_array().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_expired_watch_relists_and_the_slice_follows_what_the_list_says() {
    let mut c = start(world(), true);
    c.synced().await;
    c.a_minute_later().await;
    let before = c.api.writes().len();
    let pod_lists = |log: &[Logged]| {
        log.iter()
            .filter(|l| l.path == "/api/v1/pods" && !l.is_watch())
            .count()
    };
    assert_eq!(pod_lists(&c.api.log()), 1);
    // The pods watch ends with 410 Gone; the pod turns unready meanwhile,
    // and only the new list says so.
    c.api.expire_watches("/api/v1/pods");
    c.api.put(pod("web-1", "10.244.1.5", false));
    c.api
        .wait_for("the slice update", |log| {
            log.iter().filter(|l| l.is_write()).count() > before
        })
        .await;
    c.a_minute_later().await;
    assert_eq!(pod_lists(&c.api.log()), 2, "one relist");
    let writes = c.api.writes();
    assert_eq!(writes.len(), before + 1, "{writes:#?}");
    assert_eq!(writes[before].method, Method::PUT);
    let slice = &c.api.objects(SLICES)[0];
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], false);
}

#[tokio::test(start_paused = true)]
async fn a_failed_status_write_is_sent_again_after_a_pause_and_only_once() {
    let logs = portico_testkit::logs::capture();
    let mut c = start(world(), true);
    c.api
        .fail_next(Method::PATCH, "/services/front/status", 500);
    c.synced().await;
    c.a_minute_later().await;
    let status_writes: Vec<Logged> = c
        .api
        .writes()
        .into_iter()
        .filter(|w| w.path.ends_with("/services/front/status"))
        .collect();
    assert_eq!(status_writes.len(), 2, "{status_writes:#?}");
    assert_eq!(status_writes[0].body, status_writes[1].body);
    // The log says what failed and that it is retried.
    let said = logs
        .text()
        .lines()
        .any(|l| l.contains("write failed") && l.contains("transient=true") && l.contains("front"));
    assert!(said, "{}", logs.text());
    let front = c.api.get(&lb()).unwrap();
    assert_eq!(
        front["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.168.56.60"
    );
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_cluster_ip_is_reported_once_across_a_relist_and_a_refused_slice_is_recomputed_once()
 {
    let mut twin = web();
    twin["metadata"]["name"] = json!("twin");
    twin["metadata"]["uid"] = json!("uid-twin");
    twin["metadata"]["creationTimestamp"] = json!("2026-01-02T00:00:00Z");
    twin["spec"]["selector"] = json!({ "app": "twin" });
    let mut objects = world();
    objects.push(twin);
    let mut c = start(objects, true);
    // The API refuses the first slice (422).
    c.api.fail_next(Method::POST, "/endpointslices", 422);
    c.synced().await;
    c.a_minute_later().await;
    c.api.expire_watches("/api/v1/services");
    c.a_minute_later().await;
    let log = c.api.log();
    let service_lists = log
        .iter()
        .filter(|l| l.path == "/api/v1/services" && !l.is_watch())
        .count();
    assert_eq!(service_lists, 2, "one relist");
    let warnings: Vec<&Value> = log
        .iter()
        .filter(|l| l.path.ends_with("/events"))
        .filter_map(|l| l.body.as_ref())
        .filter(|b| b["type"] == "Warning")
        .collect();
    // The duplicate once, across the relist; and the refused slice (the
    // first written, twin's) once, on its Service, as upstream's
    // FailedToUpdateEndpointSlices.
    let said: Vec<(String, String)> = warnings
        .iter()
        .map(|w| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (s(&w["reason"]), s(&w["regarding"]["name"]))
        })
        .collect();
    assert_eq!(
        said,
        [
            ("DuplicateClusterIP".to_owned(), "twin".to_owned()),
            ("FailedToUpdateEndpointSlices".to_owned(), "twin".to_owned()),
        ],
        "{warnings:#?}"
    );
    assert!(
        warnings[1]["note"]
            .as_str()
            .unwrap()
            .starts_with("Error updating Endpoint Slices for Service shop/twin: "),
        "{warnings:#?}"
    );
    let slice_posts = log
        .iter()
        .filter(|l| l.method == Method::POST && l.path.ends_with("/endpointslices"))
        .count();
    // twin's (refused, then recomputed once after the pause; a Service
    // that selects nothing still has a slice) and web's: no hot loop.
    assert_eq!(slice_posts, 3);
    assert_eq!(c.api.objects(SLICES).len(), 2);
}
