//! The ClusterIP admission webhook: AdmissionReview fixtures in, JSON
//! patches out; concurrent admissions; and the real HTTPS server on
//! loopback with a test CA, including a certificate rotation.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use portico::webhook::{self, WebhookState};
use portico_controllers::NetworkConfig;
use portico_controllers::clusterip::{ClusterIpController, Mode};
use portico_controllers::metrics::ClusterIpMetrics;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn state(leader: bool) -> WebhookState {
    let net = NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap();
    let mut index =
        ClusterIpController::new(&net, Mode::Audit, ClusterIpMetrics::default()).unwrap();
    index.reset(std::iter::empty());
    WebhookState {
        index: Arc::new(Mutex::new(index)),
        leader: Arc::new(AtomicBool::new(leader)),
        synced: Arc::new(AtomicBool::new(true)),
        reserve_for: Duration::from_secs(30),
        metrics: Default::default(),
    }
}

fn review_of(operation: &str, object: Value, old: Option<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": { "group": "", "version": "v1", "kind": "Service" },
            "resource": { "group": "", "version": "v1", "resource": "services" },
            "requestKind": { "group": "", "version": "v1", "kind": "Service" },
            "requestResource": { "group": "", "version": "v1", "resource": "services" },
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "operation": operation,
            "userInfo": { "username": "admin" },
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    }))
    .unwrap()
}

fn service(name: &str, spec: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name, "namespace": "default" }, "spec": spec })
}

/// The response, and its decoded JSON patch (if any).
fn answer(state: &WebhookState, body: &[u8]) -> (Value, Option<Value>) {
    let out = webhook::review(state, body).unwrap();
    let response = out["response"].clone();
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert!(
        response["patch"].is_null() || response["patch"].is_string(),
        "the API server reads a base64 string"
    );
    let patch = response["patch"].as_str().map(|p| {
        assert_eq!(response["patchType"], "JSONPatch");
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(p).unwrap())
            .unwrap()
    });
    (response, patch)
}

#[test]
fn a_new_service_gets_its_cluster_ip_as_a_json_patch() {
    let s = state(true);
    let (response, patch) = answer(
        &s,
        &review_of(
            "CREATE",
            service("web", json!({ "ports": [{ "port": 80 }] })),
            None,
        ),
    );
    assert_eq!(response["allowed"], true);
    let patch = patch.unwrap();
    let ip = patch[0]["value"].as_str().unwrap().to_owned();
    assert!(
        "10.96.0.0/12"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&ip.parse::<std::net::IpAddr>().unwrap())
    );
    assert_eq!(
        s.metrics
            .admissions
            .get_or_create(&webhook::AdmissionResult { result: "assigned" })
            .get(),
        1
    );
    assert_eq!(
        patch,
        json!([
            { "op": "add", "path": "/spec/clusterIP", "value": ip },
            { "op": "add", "path": "/spec/clusterIPs", "value": [ip] },
            { "op": "add", "path": "/spec/ipFamilies", "value": ["IPv4"] },
            { "op": "add", "path": "/spec/ipFamilyPolicy", "value": "SingleStack" },
        ])
    );
}

#[test]
fn requested_headless_and_external_name_services_are_left_alone() {
    let s = state(true);
    for spec in [
        json!({ "clusterIP": "10.96.0.10", "ports": [{ "port": 53 }] }),
        json!({ "clusterIP": "None", "selector": { "app": "db" } }),
        json!({ "type": "ExternalName", "externalName": "github.com" }),
    ] {
        let (response, patch) = answer(&s, &review_of("CREATE", service("x", spec.clone()), None));
        assert_eq!(response["allowed"], true, "{spec}");
        assert!(patch.is_none(), "{spec}");
    }
}

#[test]
fn an_external_name_service_turning_into_a_cluster_ip_service_gets_an_address() {
    let s = state(true);
    let old = service(
        "ext",
        json!({ "type": "ExternalName", "externalName": "github.com" }),
    );
    let new = service(
        "ext",
        json!({ "type": "ClusterIP", "ports": [{ "port": 443 }] }),
    );
    let (_, patch) = answer(&s, &review_of("UPDATE", new.clone(), Some(old)));
    assert_eq!(patch.unwrap()[1]["path"], "/spec/clusterIPs");
    // Other updates are left alone.
    let (_, patch) = answer(&s, &review_of("UPDATE", new.clone(), Some(new)));
    assert!(patch.is_none());
}

#[test]
fn a_replica_that_is_not_the_leader_lets_the_api_server_allocate() {
    let s = state(false);
    let (response, patch) = answer(
        &s,
        &review_of(
            "CREATE",
            service("web", json!({ "ports": [{ "port": 80 }] })),
            None,
        ),
    );
    assert_eq!(response["allowed"], true);
    assert!(patch.is_none());
}

#[test]
fn concurrent_admissions_never_get_the_same_address() {
    let s = state(true);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let (_, patch) = answer(
                            &s,
                            &review_of(
                                "CREATE",
                                service(&format!("s{t}-{i}"), json!({ "ports": [{ "port": 80 }] })),
                                None,
                            ),
                        );
                        patch.unwrap()[0]["value"].as_str().unwrap().to_owned()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 200);
}

// ---- HTTPS -----------------------------------------------------------------

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// One HTTPS POST to the webhook, trusting only `ca_pem`.
async fn post(addr: std::net::SocketAddr, ca_pem: &str, body: &[u8]) -> anyhow::Result<Value> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(
        ca_pem.as_bytes(),
    )?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.1")?.to_owned(),
            tcp,
        )
        .await?;
    let head = format!(
        "POST /mutate-services HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw)?;
    let (status, rest) = text.split_once("\r\n").unwrap_or_default();
    anyhow::ensure!(status.contains(" 200 "), "{status}");
    let body = rest
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok(serde_json::from_str(body)?)
}

#[tokio::test]
async fn the_webhook_answers_over_https_and_picks_up_a_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = pki();
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let tls = Arc::new(webhook::Tls::load(&cert, &key).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = webhook::router(state(true));
    let server = tokio::spawn(webhook::serve(
        listener,
        tls,
        app,
        Duration::from_millis(50),
        std::future::pending(),
    ));

    let body = review_of(
        "CREATE",
        service("web", json!({ "ports": [{ "port": 80 }] })),
        None,
    );
    let out = post(addr, &first.ca_pem, &body).await.unwrap();
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["allowed"], true);
    assert_eq!(out["response"]["patchType"], "JSONPatch");

    // Rotate: a certificate from another CA; new connections use it.
    let second = pki();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    let body = review_of(
        "CREATE",
        service("api", json!({ "ports": [{ "port": 80 }] })),
        None,
    );
    let mut rotated = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if post(addr, &second.ca_pem, &body).await.is_ok() {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the new certificate was never served");
    assert!(
        post(addr, &first.ca_pem, &body).await.is_err(),
        "the old CA no longer verifies"
    );
    server.abort();
}

/// The leader labels its own pod for the webhook Service and takes the
/// label off when it stops leading; a failed patch is retried.
#[tokio::test]
async fn the_leader_labels_its_pod_for_the_webhook_service() {
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use tower_test::mock::pair;

    let (mock, mut handle) = pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(mock, "portico-system");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(webhook::follow_leadership(
        kube::Api::namespaced(client, "portico-system"),
        "portico-controller-7d9f-abcde".to_owned(),
        rx,
        Duration::from_millis(10),
    ));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "portico-controller-7d9f-abcde", "namespace": "portico-system" }
    });
    let mut expect = async |label: Value, status: StatusCode| {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .expect("no request within 5 s")
            .expect("the mock closed");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().to_string(),
            "/api/v1/namespaces/portico-system/pods/portico-controller-7d9f-abcde?&fieldManager=portico"
        );
        assert_eq!(
            request.headers().get("content-type").unwrap(),
            "application/merge-patch+json"
        );
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(
            body,
            json!({ "metadata": { "labels": { "portico.dev/webhook-leader": label } } })
        );
        let reply = if status.is_success() {
            pod.clone()
        } else {
            json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status.as_u16(), "reason": "InternalError", "message": "etcd timeout" })
        };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    };
    // At start a stale label from an earlier leadership is removed.
    expect(Value::Null, StatusCode::OK).await;
    tx.send(true).unwrap();
    expect(json!("true"), StatusCode::INTERNAL_SERVER_ERROR).await;
    expect(json!("true"), StatusCode::OK).await;
    tx.send(false).unwrap();
    expect(Value::Null, StatusCode::OK).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends with the channel")
        .unwrap();
}

/// One request through the webhook's router (no TLS): status, body.
async fn call(
    state: &WebhookState,
    method: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri("/mutate-services");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = webhook::router(state.clone())
        .oneshot(req.body(axum::body::Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn invalid(state: &WebhookState) -> u64 {
    state
        .metrics
        .admissions
        .get_or_create(&webhook::AdmissionResult { result: "invalid" })
        .get()
}

#[tokio::test]
async fn hostile_bodies_get_a_clean_error_and_are_counted() {
    let s = state(true);
    let json = Some("application/json");
    let good = review_of(
        "CREATE",
        service("api", json!({ "ports": [{ "port": 80 }] })),
        None,
    );
    // Not JSON, JSON that is no AdmissionReview, a review without a request.
    for (body, what) in [
        (b"{not json".to_vec(), "malformed JSON"),
        (b"[]".to_vec(), "an array"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        (good[..good.len() / 2].to_vec(), "cut in half"),
    ] {
        let (status, text) = call(&s, "POST", json, body).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(!text.is_empty(), "{what}: the error says why");
    }
    // The wrong content type, or none.
    assert_eq!(
        call(&s, "POST", Some("text/plain"), good.clone()).await.0,
        415
    );
    assert_eq!(call(&s, "POST", None, good.clone()).await.0, 415);
    // Too large.
    let huge = vec![b' '; webhook::MAX_BODY + 1];
    assert_eq!(call(&s, "POST", json, huge).await.0, 413);
    // Not a POST.
    assert_eq!(call(&s, "GET", json, Vec::new()).await.0, 405);
    assert_eq!(invalid(&s), 6, "every refused review is counted");
    // And the webhook still answers a good one.
    let (status, text) = call(&s, "POST", json, good).await;
    assert_eq!(status, 200, "{text}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bodies_never_panic_the_webhook(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        let s = state(true);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (status, _) = runtime.block_on(call(&s, "POST", Some("application/json"), body));
        proptest::prop_assert!(status == 400 || status == 200, "{status}");
    }
}
